-- Remove a stream from its activity-tracking shard unless it was published
-- to after the cutoff, so a publish during a cleanup sweep keeps it tracked.
--
-- KEYS[1]  tracking shard (stream_timestamps:{N})
-- ARGV[1]  stream key (the member)
-- ARGV[2]  cutoff as Unix time in seconds
--
-- Returns 1 when the member was removed, else 0.

local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) <= tonumber(ARGV[2]) then
    return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0

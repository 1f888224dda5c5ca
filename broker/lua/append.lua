-- Check for a retried message_id, check the channel's publish rate limit,
-- append one entry and, on END, set the stream's expiry, as one atomic step.
--
-- KEYS[1]  stream key
-- KEYS[2]  rate-limit counter, hash-tagged with the stream key (same slot)
-- KEYS[3]  optional: the message_id's dedup key, hash-tagged with the stream
--          key (same slot); absent when deduplication is off
-- ARGV[1]  encoded PublishRequest, stored in field "data"
-- ARGV[2]  approximate maximum stream length (XADD MAXLEN ~)
-- ARGV[3]  publishes allowed per window
-- ARGV[4]  window length in milliseconds
-- ARGV[5]  "1" when the entry is the END, else "0"
-- ARGV[6]  stream lifetime after END in seconds
-- ARGV[7]  dedup window in milliseconds (read only with KEYS[3])
-- ARGV[8]  "1" when the caller skipped tracking the stream because it tracked
--          it moments ago: then the stream must already exist, else "0"
--
-- Returns {1, entry id} when appended, {2, original entry id} when KEYS[3]
-- remembers an earlier append of the same message_id, {0, milliseconds until
-- the window ends} when the limit is used up, or {3, 0} when ARGV[8] is "1"
-- and the stream does not exist (it was deleted or expired since the caller
-- tracked it): the caller tracks it and runs the script again, so a stream is
-- never created untracked. A duplicate, a rejected publish or {3, 0} changes
-- nothing except giving a counter that lost its expiry a new one.

local dedup_key = KEYS[3]

-- The duplicate check comes first, so a retry neither counts against the
-- rate limit nor fails on it.
if dedup_key then
    local original_id = redis.call('GET', dedup_key)
    if original_id then
        return {2, original_id}
    end
end

local limit = tonumber(ARGV[3])
local window_ms = tonumber(ARGV[4])

local used = tonumber(redis.call('GET', KEYS[2]) or '0')
if used >= limit then
    local remaining_ms = redis.call('PTTL', KEYS[2])
    if remaining_ms < 0 then
        -- A counter without an expiry would block the channel for good.
        redis.call('PEXPIRE', KEYS[2], window_ms)
        remaining_ms = window_ms
    end
    return {0, remaining_ms}
end

if ARGV[8] == '1' and redis.call('EXISTS', KEYS[1]) == 0 then
    return {3, 0}
end

local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'data', ARGV[1])

-- The counter moves only after the append succeeded, and the first publish
-- of a window starts the window.
if redis.call('INCR', KEYS[2]) == 1 then
    redis.call('PEXPIRE', KEYS[2], window_ms)
end

if ARGV[5] == '1' then
    redis.call('EXPIRE', KEYS[1], ARGV[6])
end

if dedup_key then
    redis.call('SET', dedup_key, id, 'PX', ARGV[7])
end

return {1, id}

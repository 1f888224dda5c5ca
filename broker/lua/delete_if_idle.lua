-- Delete a stream whose newest entry is older than the cutoff.
--
-- KEYS[1]  stream key
-- ARGV[1]  cutoff as Unix time in milliseconds
--
-- Returns 1 when the stream was deleted and -1 when it received an entry at or
-- after the cutoff and is kept. Returns 0 when there is no stream under the
-- key: it is gone, or the key has another type and is left alone.

if redis.call('TYPE', KEYS[1]).ok ~= 'stream' then
    return 0
end

local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #newest > 0 then
    local newest_ms = tonumber(string.match(newest[1][1], '^(%d+)'))
    if newest_ms >= tonumber(ARGV[1]) then
        return -1
    end
end

redis.call('DEL', KEYS[1])
return 1

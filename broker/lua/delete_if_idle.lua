-- Delete a stream whose newest entry is older than the cutoff.
--
-- KEYS[1]  stream key
-- ARGV[1]  idle time in milliseconds
-- ARGV[2]  now as Unix time in milliseconds, or an empty string for this
--          server's own clock (TIME), which also stamped the entry ids
--
-- The cutoff is now minus the idle time. Returns 1 when the stream was
-- deleted and -1 when it received an entry at or after the cutoff and is
-- kept. Returns 0 when there is no stream under the key: it is gone, or the
-- key has another type and is left alone.

if redis.call('TYPE', KEYS[1]).ok ~= 'stream' then
    return 0
end

local now_ms = tonumber(ARGV[2])
if now_ms == nil then
    local time = redis.call('TIME')
    now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end
local cutoff_ms = now_ms - tonumber(ARGV[1])

local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #newest > 0 then
    local newest_ms = tonumber(string.match(newest[1][1], '^(%d+)'))
    if newest_ms >= cutoff_ms then
        return -1
    end
end

redis.call('DEL', KEYS[1])
return 1

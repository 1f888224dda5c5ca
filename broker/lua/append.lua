-- Check the channel's publish rate limit, append one entry and, on END, set
-- the stream's expiry, as one atomic step.
--
-- KEYS[1]  stream key
-- KEYS[2]  rate-limit counter, hash-tagged with the stream key (same slot)
-- ARGV[1]  encoded PublishRequest, stored in field "data"
-- ARGV[2]  approximate maximum stream length (XADD MAXLEN ~)
-- ARGV[3]  publishes allowed per window
-- ARGV[4]  window length in milliseconds
-- ARGV[5]  "1" when the entry is the END, else "0"
-- ARGV[6]  stream lifetime after END in seconds
--
-- Returns {1, entry id} when appended, or {0, milliseconds until the window
-- ends} when the limit is used up. A rejected publish changes nothing except
-- giving a counter that lost its expiry a new one.

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

local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'data', ARGV[1])

-- The counter moves only after the append succeeded, and the first publish
-- of a window starts the window.
if redis.call('INCR', KEYS[2]) == 1 then
    redis.call('PEXPIRE', KEYS[2], window_ms)
end

if ARGV[5] == '1' then
    redis.call('EXPIRE', KEYS[1], ARGV[6])
end

return {1, id}

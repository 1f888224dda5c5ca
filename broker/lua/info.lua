-- Read a stream's length, first and last entry ids and expiry in one step.
--
-- KEYS[1]  stream key
--
-- Returns nil when the key does not exist, else {length, first id or nil,
-- last id or nil, PTTL in milliseconds (-1 when there is no expiry)}.

if redis.call('EXISTS', KEYS[1]) == 0 then
    return false
end

local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local first_id = false
local last_id = false
if #first > 0 then
    first_id = first[1][1]
end
if #last > 0 then
    last_id = last[1][1]
end

return {redis.call('XLEN', KEYS[1]), first_id, last_id, redis.call('PTTL', KEYS[1])}

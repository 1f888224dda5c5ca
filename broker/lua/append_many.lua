-- Append several entries to one stream in order, as one atomic step. Each
-- entry gets what append.lua does for one: the duplicate check, the
-- channel's rate limit, XADD, the expiry on END and remembering its
-- message_id. The first entry that the rate limit rejects ends the script,
-- and no entry after it is appended.
--
-- KEYS[1]    stream key
-- KEYS[2]    rate-limit counter, hash-tagged with the stream key (same slot)
-- KEYS[2+i]  when ARGV[7] is "1": the dedup key of entry i, hash-tagged with
--            the stream key (same slot), or the rate-limit key again for an
--            entry without a message_id
-- ARGV[1]    approximate maximum stream length (XADD MAXLEN ~)
-- ARGV[2]    publishes allowed per window
-- ARGV[3]    window length in milliseconds
-- ARGV[4]    stream lifetime after END in seconds
-- ARGV[5]    dedup window in milliseconds (read only when ARGV[7] is "1")
-- ARGV[6]    "1" when the caller skipped tracking the stream because it
--            tracked it moments ago: then the stream must already exist
-- ARGV[7]    "1" when deduplication is on, else "0"
-- ARGV[8]    one digit per entry, the sum of 1 when the entry is the END
--            and 2 when KEYS[2+i] is its dedup key (it has a message_id)
-- ARGV[8+i]  entry i: encoded PublishRequest, stored in field "data"
--
-- Returns {1, 0, "id_1 ... id_n"} when every entry was appended or found to
-- be a duplicate (the original entry id is then returned in its place),
-- {0, milliseconds until the window ends, "id_1 ... id_k"} when the rate
-- limit rejected entry k+1, or {3, 0, ""} when ARGV[6] is "1" and the stream
-- does not exist before the first XADD: then nothing was written, and the
-- caller tracks the stream and runs the script again. The ids are joined
-- with spaces into one reply element, which the client parses faster than
-- one element per id.

local limit = tonumber(ARGV[2])
local window_ms = tonumber(ARGV[3])
local dedup = ARGV[7] == '1'
local flags = ARGV[8]
local count = #ARGV - 8

local used = tonumber(redis.call('GET', KEYS[2]) or '0')
local appended = 0
local ids = {}

for i = 1, count do
    local data = ARGV[8 + i]
    local flag = string.byte(flags, i) - 48
    local is_end = flag % 2 == 1
    local has_message_id = dedup and flag >= 2
    local dedup_key = KEYS[2 + i]

    local original_id = false
    if has_message_id then
        original_id = redis.call('GET', dedup_key)
    end

    if original_id then
        ids[#ids + 1] = original_id
    else
        if used >= limit then
            -- The counter moves by the entries appended so far, as after
            -- that many calls of append.lua.
            if appended > 0 and redis.call('INCRBY', KEYS[2], appended) == appended then
                redis.call('PEXPIRE', KEYS[2], window_ms)
            end
            local remaining_ms = redis.call('PTTL', KEYS[2])
            if remaining_ms < 0 then
                -- A counter without an expiry would block the channel for good.
                redis.call('PEXPIRE', KEYS[2], window_ms)
                remaining_ms = window_ms
            end
            return {0, remaining_ms, table.concat(ids, ' ')}
        end

        if appended == 0 and ARGV[6] == '1' and redis.call('EXISTS', KEYS[1]) == 0 then
            return {3, 0, ''}
        end

        local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'data', data)
        used = used + 1
        appended = appended + 1
        if is_end then
            redis.call('EXPIRE', KEYS[1], ARGV[4])
        end
        if has_message_id then
            redis.call('SET', dedup_key, id, 'PX', ARGV[5])
        end
        ids[#ids + 1] = id
    end
end

-- The first publish of a window starts the window, as in append.lua.
if appended > 0 and redis.call('INCRBY', KEYS[2], appended) == appended then
    redis.call('PEXPIRE', KEYS[2], window_ms)
end
return {1, 0, table.concat(ids, ' ')}

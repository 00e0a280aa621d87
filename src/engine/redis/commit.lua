-- Commits one plan of sessiondb's session logic atomically, or nothing.
--
-- KEYS holds every key the plan touches; operands named `*key` below are
-- indexes into KEYS. ARGV[1] is the index of the plan's done-marker key,
-- ARGV[2] the marker's lifetime in ms, ARGV[3] the events streams'
-- retention (entries kept per stream), ARGV[4] the committing node's origin
-- tag (stored with its events). From ARGV[5] on comes the program,
-- one instruction after another, each an opcode and its operands. Every
-- key of one program is in one bucket (one hash slot), so the script runs
-- on a cluster as on one server.
--
--   R skey rev                 the session hash's revision is `rev` ('' = no session)
--   A akey n m1 .. mn          the actor set holds exactly m1 .. mn
--   I skey ekey akey nkey member digest score rev record
--                              insert a session, its expiry and actor entries, count +1
--   U skey ekey member score rev record
--                              rewrite a session's record, move its expiry entry
--   D skey ekey akey nkey member digest
--                              delete a session and its entries, count -1
--   X ekey member              drop an expiry entry
--   T akey present             the arrival note exists ('1') or not ('0')
--   P ikey id value            store intent `id` in the intent hash
--   Q ikey id                  drop intent `id`
--   V akey ms                  note an arrival, kept for ms
--   E xkey qkey channel payload
--                              append an event to a stream, numbered by counter
--                              qkey, and publish it on the shard channel
--
-- Every precondition is checked before the first write (Redis has no
-- rollback). The done marker makes a retried call (same marker) a no-op;
-- such a call still writes (it renews the marker), so that a WAITAOF or
-- WAIT after it on the same connection covers the first call's writes.
-- Returns {'ok', xkey, prev, id, n, ...} with, for every event appended, its
-- stream, the id of the entry before it ('0-0' for none), its own id and
-- its sequence number,
-- {'conflict', key} when a precondition does not hold, or {'done'}.
--
-- A stream entry holds n (sequence), p (the entry before it), o (origin)
-- and e (the event's JSON); the channel message is the same, as
-- "n\np\nid\no\ne": a node that hears a message whose p is not the last
-- entry it heard reads the stream from there (see `events.rs`).

local marker = KEYS[tonumber(ARGV[1])]
if redis.call('EXISTS', marker) == 1 then
  redis.call('PEXPIRE', marker, ARGV[2])
  return {'done'}
end
local marker_ttl = ARGV[2]
local retention = ARGV[3]
local origin = ARGV[4]
local n = #ARGV

local function key(i)
  return KEYS[tonumber(ARGV[i])]
end

-- Pass 1: preconditions, and the program's shape. Nothing is written.
local i = 5
while i <= n do
  local op = ARGV[i]
  if op == 'R' then
    local rev = redis.call('HGET', key(i + 1), 'v')
    if not rev then
      rev = ''
    end
    if rev ~= ARGV[i + 2] then
      return {'conflict', key(i + 1)}
    end
    i = i + 3
  elseif op == 'A' then
    local set = key(i + 1)
    local count = tonumber(ARGV[i + 2])
    if redis.call('SCARD', set) ~= count then
      return {'conflict', set}
    end
    for j = 1, count do
      if redis.call('SISMEMBER', set, ARGV[i + 2 + j]) == 0 then
        return {'conflict', set}
      end
    end
    i = i + 3 + count
  elseif op == 'I' then
    i = i + 10
  elseif op == 'U' then
    i = i + 7
  elseif op == 'D' then
    i = i + 7
  elseif op == 'X' then
    i = i + 3
  elseif op == 'T' then
    local present = redis.call('EXISTS', key(i + 1))
    if tostring(present) ~= ARGV[i + 2] then
      return {'conflict', key(i + 1)}
    end
    i = i + 3
  elseif op == 'P' then
    i = i + 4
  elseif op == 'Q' then
    i = i + 3
  elseif op == 'V' then
    i = i + 3
  elseif op == 'E' then
    i = i + 5
  else
    return redis.error_reply('sessiondb: unknown plan instruction ' .. tostring(op))
  end
end
if i ~= n + 1 then
  return redis.error_reply('sessiondb: truncated plan')
end

-- Pass 2: the changes and events. Counts and event sequence numbers are
-- summed in Lua and written once per key, and each stream's last entry is
-- looked up once: a reap batch changes many sessions of one bucket.
local out = {'ok'}
local counts, count_keys = {}, {}
local sequences, sequence_keys = {}, {}
local last_ids = {}
local function count(k, delta)
  if counts[k] == nil then
    counts[k] = 0
    count_keys[#count_keys + 1] = k
  end
  counts[k] = counts[k] + delta
end
i = 5
while i <= n do
  local op = ARGV[i]
  if op == 'R' then
    i = i + 3
  elseif op == 'A' then
    i = i + 3 + tonumber(ARGV[i + 2])
  elseif op == 'I' then
    redis.call('HSET', key(i + 1), 'r', ARGV[i + 9], 'v', ARGV[i + 8])
    redis.call('ZADD', key(i + 2), ARGV[i + 7], ARGV[i + 5])
    redis.call('SADD', key(i + 3), ARGV[i + 6])
    count(key(i + 4), 1)
    i = i + 10
  elseif op == 'U' then
    redis.call('HSET', key(i + 1), 'r', ARGV[i + 6], 'v', ARGV[i + 5])
    redis.call('ZADD', key(i + 2), ARGV[i + 4], ARGV[i + 3])
    i = i + 7
  elseif op == 'D' then
    redis.call('DEL', key(i + 1))
    redis.call('ZREM', key(i + 2), ARGV[i + 5])
    redis.call('SREM', key(i + 3), ARGV[i + 6])
    count(key(i + 4), -1)
    i = i + 7
  elseif op == 'X' then
    redis.call('ZREM', key(i + 1), ARGV[i + 2])
    i = i + 3
  elseif op == 'T' then
    i = i + 3
  elseif op == 'P' then
    redis.call('HSET', key(i + 1), ARGV[i + 2], ARGV[i + 3])
    i = i + 4
  elseif op == 'Q' then
    redis.call('HDEL', key(i + 1), ARGV[i + 2])
    i = i + 3
  elseif op == 'V' then
    redis.call('SET', key(i + 1), '1', 'PX', ARGV[i + 2])
    i = i + 3
  elseif op == 'E' then
    local stream, qkey = key(i + 1), key(i + 2)
    local prev = last_ids[stream]
    if prev == nil then
      local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
      prev = '0-0'
      if last[1] then
        prev = last[1][1]
      end
    end
    if sequences[qkey] == nil then
      sequences[qkey] = tonumber(redis.call('GET', qkey) or '0')
      sequence_keys[#sequence_keys + 1] = qkey
    end
    sequences[qkey] = sequences[qkey] + 1
    local n = tostring(sequences[qkey])
    local id = redis.call('XADD', stream, 'MAXLEN', retention, '*', 'n', n, 'p', prev, 'o', origin, 'e', ARGV[i + 4])
    redis.call('SPUBLISH', ARGV[i + 3], n .. '\n' .. prev .. '\n' .. id .. '\n' .. origin .. '\n' .. ARGV[i + 4])
    last_ids[stream] = id
    out[#out + 1] = stream
    out[#out + 1] = prev
    out[#out + 1] = id
    out[#out + 1] = n
    i = i + 5
  end
end
for _, k in ipairs(count_keys) do
  if counts[k] ~= 0 then
    redis.call('INCRBY', k, counts[k])
  end
end
for _, k in ipairs(sequence_keys) do
  redis.call('SET', k, sequences[k])
end
redis.call('SET', marker, '1', 'PX', marker_ttl)
return out

-- Commits one plan of sessiondb's session logic atomically, or nothing.
--
-- The program is a list of instructions in ARGV, from ARGV[5] on, each an
-- opcode and its operands; the keys each instruction names are taken in
-- order from KEYS, from KEYS[2] on (a key may come more than once). Every
-- key of one program is in one bucket (one hash slot), so the script runs
-- on a cluster as on one server. The preconditions come first: all of them
-- are checked before the first write (Redis has no rollback).
--
--   R  skey           rev        the session's revision is `rev` ('' = no session)
--   A  akey           n m1..mn   the actor's set holds exactly m1 .. mn
--   T  akey           present    the arrival note exists ('1') or not ('0')
--   I  skey ekey akey member digest score rev record
--                                insert a session with its expiry and actor entries
--   U  skey ekey      member score rev record
--                                rewrite a session; its expiry entry moves to
--                                `score` unless that is '' (it stays)
--   D  skey ekey akey member digest
--                                delete a session and its entries
--   X  ekey           member     drop an expiry entry
--   P  ikey           channel id value
--                                store intent `id`, and say so on the channel
--                                ("i\nid")
--   Q  ikey           channel id drop intent `id`, and say so ("j\nid")
--   F                 channel at say that an entry was filed at `at` without
--                                an event ("f\nat")
--   V  akey           ms         note an arrival, kept for ms
--   E  xkey hkey      channel origin retention k events
--                                the plan's k events (JSON lines): numbered
--                                on from the head hkey (fields n, the last
--                                number, and p, the last entry), appended to
--                                stream xkey as one entry naming the one
--                                before it, published on the shard channel
--
-- ARGV[1] is the commit's id. ARGV[2] is '1' when the call is sent again
-- after its answer was lost: if the id is found where the first call left
-- it, it had committed, and this one returns {'done'} changing nothing.
-- ARGV[3] says where the id is left: 'h' in field `m` of the session hash
-- KEYS[1] (the first session the plan writes: no key of its own), 'k' as
-- key KEYS[1] kept ARGV[4] ms (a plan that writes no session hash), '-'
-- nowhere (a plan that writes nothing).
--
-- Returns {'ok', id, n, p} for a plan with events (its stream entry, the
-- number of its last event and the entry before it), {'ok'} for one
-- without, {'conflict'} when a precondition does not hold, or {'done'}.
--
-- A stream entry holds n (the number of its last event), k (how many), p
-- (the entry before it: numbers start again after a failover lost them,
-- entry ids do not), o (the origin node) and e (the events, one JSON per
-- line); the channel message is the same as "n\nk\np\nid\no\ne".

local id = ARGV[1]
local marker = KEYS[1]
local mode = ARGV[3]
if ARGV[2] == '1' then
  if mode == 'h' and redis.call('HGET', marker, 'm') == id then
    return {'done'}
  elseif mode == 'k' and redis.call('EXISTS', marker) == 1 then
    return {'done'}
  end
end

local n = #ARGV
local a = 5
local k = 2
local out = {'ok'}

-- The preconditions.
while a <= n do
  local op = ARGV[a]
  if op == 'R' then
    local rev = redis.call('HGET', KEYS[k], 'v') or ''
    if rev ~= ARGV[a + 1] then
      return {'conflict'}
    end
    k = k + 1
    a = a + 2
  elseif op == 'A' then
    local set = KEYS[k]
    local count = tonumber(ARGV[a + 1])
    if redis.call('SCARD', set) ~= count then
      return {'conflict'}
    end
    for j = 1, count do
      if redis.call('SISMEMBER', set, ARGV[a + 1 + j]) == 0 then
        return {'conflict'}
      end
    end
    k = k + 1
    a = a + 2 + count
  elseif op == 'T' then
    if tostring(redis.call('EXISTS', KEYS[k])) ~= ARGV[a + 1] then
      return {'conflict'}
    end
    k = k + 1
    a = a + 2
  else
    break
  end
end

-- The changes and the events. Deletions in a row (a reap batch) are sent
-- as one DEL and one ZREM per index, and one SREM per actor.
local dels, zrems, srems = {}, {}, {}
local function flush()
  if #dels > 0 then
    redis.call('DEL', unpack(dels))
    dels = {}
  end
  for key, members in pairs(zrems) do
    redis.call('ZREM', key, unpack(members))
  end
  zrems = {}
  for key, members in pairs(srems) do
    redis.call('SREM', key, unpack(members))
  end
  srems = {}
end
local function add(t, key, member)
  local list = t[key]
  if not list then
    list = {}
    t[key] = list
  end
  list[#list + 1] = member
end
while a <= n do
  local op = ARGV[a]
  if op ~= 'D' then
    flush()
  end
  if op == 'I' then
    redis.call('HSET', KEYS[k], 'r', ARGV[a + 5], 'v', ARGV[a + 4], 'm', id)
    redis.call('ZADD', KEYS[k + 1], ARGV[a + 3], ARGV[a + 1])
    redis.call('SADD', KEYS[k + 2], ARGV[a + 2])
    k = k + 3
    a = a + 6
  elseif op == 'U' then
    redis.call('HSET', KEYS[k], 'r', ARGV[a + 4], 'v', ARGV[a + 3], 'm', id)
    if ARGV[a + 2] ~= '' then
      redis.call('ZADD', KEYS[k + 1], ARGV[a + 2], ARGV[a + 1])
    end
    k = k + 2
    a = a + 5
  elseif op == 'D' then
    dels[#dels + 1] = KEYS[k]
    add(zrems, KEYS[k + 1], ARGV[a + 1])
    add(srems, KEYS[k + 2], ARGV[a + 2])
    k = k + 3
    a = a + 3
  elseif op == 'X' then
    redis.call('ZREM', KEYS[k], ARGV[a + 1])
    k = k + 1
    a = a + 2
  elseif op == 'P' then
    redis.call('HSET', KEYS[k], ARGV[a + 2], ARGV[a + 3])
    redis.call('SPUBLISH', ARGV[a + 1], 'i\n' .. ARGV[a + 2])
    k = k + 1
    a = a + 4
  elseif op == 'Q' then
    redis.call('HDEL', KEYS[k], ARGV[a + 2])
    redis.call('SPUBLISH', ARGV[a + 1], 'j\n' .. ARGV[a + 2])
    k = k + 1
    a = a + 3
  elseif op == 'F' then
    redis.call('SPUBLISH', ARGV[a + 1], 'f\n' .. ARGV[a + 2])
    a = a + 3
  elseif op == 'V' then
    redis.call('SET', KEYS[k], '1', 'PX', ARGV[a + 1])
    k = k + 1
    a = a + 2
  elseif op == 'E' then
    local count = ARGV[a + 4]
    local head = redis.call('HMGET', KEYS[k + 1], 'n', 'p')
    local last = (tonumber(head[1]) or 0) + tonumber(count)
    local prev = head[2] or '0-0'
    local entry = redis.call('XADD', KEYS[k], 'MAXLEN', '~', ARGV[a + 3], '*',
      'n', last, 'k', count, 'p', prev, 'o', ARGV[a + 2], 'e', ARGV[a + 5])
    redis.call('HSET', KEYS[k + 1], 'n', last, 'p', entry)
    redis.call('SPUBLISH', ARGV[a + 1], last .. '\n' .. count .. '\n' .. prev .. '\n'
      .. entry .. '\n' .. ARGV[a + 2] .. '\n' .. ARGV[a + 5])
    out = {'ok', entry, tostring(last), prev}
    k = k + 2
    a = a + 6
  else
    return redis.error_reply('sessiondb: bad plan instruction ' .. tostring(op))
  end
end
flush()
if mode == 'k' then
  redis.call('SET', marker, '1', 'PX', ARGV[4])
end
return out

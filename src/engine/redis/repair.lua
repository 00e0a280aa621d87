-- Applies one repair of the consistency check (`upkeep.rs`) atomically,
-- and only while what it repairs is still as the check found it, so that a
-- change another node made since the check is never undone.
--
--   ARGV[1] = 'index': KEYS[1] the session's hash, KEYS[2] an index key;
--     ARGV[2] the session's revision as the check saw it ('' = no session),
--     ARGV[3] one of ZADD, SADD, ZREM, SREM, and its operands from ARGV[4].
--     Applied only if the session's revision is still ARGV[2].
--   ARGV[1] = 'malformed': KEYS[1] an index key, ARGV[2] ZREM or SREM,
--     ARGV[3] a malformed member (it names no session to guard by, and no
--     change makes it well-formed).
--   ARGV[1] = 'quarantine': KEYS[1] a session's hash whose record does not
--     decode, KEYS[2] the bucket's quarantine hash, ARGV[2] the name to
--     keep it under. (A record that does not decode is never rewritten by
--     a change, so it is moved aside as found.)
--
-- Returns 1 when applied, 0 when the store had changed.

local op = ARGV[1]
if op == 'index' then
  local rev = redis.call('HGET', KEYS[1], 'v')
  if not rev then
    rev = ''
  end
  if rev ~= ARGV[2] then
    return 0
  end
  local edit = ARGV[3]
  if edit ~= 'ZADD' and edit ~= 'SADD' and edit ~= 'ZREM' and edit ~= 'SREM' then
    return redis.error_reply('sessiondb: unknown repair ' .. tostring(edit))
  end
  redis.call(edit, KEYS[2], unpack(ARGV, 4))
  return 1
elseif op == 'malformed' then
  if ARGV[2] ~= 'ZREM' and ARGV[2] ~= 'SREM' then
    return redis.error_reply('sessiondb: unknown repair ' .. tostring(ARGV[2]))
  end
  return redis.call(ARGV[2], KEYS[1], ARGV[3])
elseif op == 'quarantine' then
  local bytes = redis.call('HGET', KEYS[1], 'r')
  if not bytes then
    return 0
  end
  redis.call('HSET', KEYS[2], ARGV[2], bytes)
  redis.call('DEL', KEYS[1])
  return 1
end
return redis.error_reply('sessiondb: unknown repair ' .. tostring(op))

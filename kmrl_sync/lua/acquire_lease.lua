--[[
acquire_lease: take a connector's lease if it is free, already ours, or held by a holder we
proved dead (a SIGKILLed run on this same host).

KEYS[1]  lease   HASH {token, host, pid, run_id, acquired_at}, with a TTL

ARGV[1]  our token
ARGV[2]  TTL in milliseconds
ARGV[3]  host
ARGV[4]  pid
ARGV[5]  run id
ARGV[6]  acquired_at (ISO 8601)
ARGV[7]  token of a dead holder we may replace, or ''

Reply: {1} when the lease is ours; {0, token, host, pid, run_id, acquired_at, ttl_ms} otherwise.
--]]

local current = redis.call('HGET', KEYS[1], 'token')
if current and current ~= ARGV[1] and current ~= ARGV[7] then
  local h = redis.call('HMGET', KEYS[1], 'token', 'host', 'pid', 'run_id', 'acquired_at')
  return {0, h[1], h[2] or '', h[3] or '', h[4] or '', h[5] or '', redis.call('PTTL', KEYS[1])}
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'token', ARGV[1], 'host', ARGV[3], 'pid', ARGV[4], 'run_id', ARGV[5],
           'acquired_at', ARGV[6])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return {1}

--[[
acquire_lease: take a connector's lease if it is free, already ours, or held by a holder we
proved dead (see kmrl_sync/engine/identity.py: same host, boot and PID namespace, and its pid gone).

KEYS[1]  lease   HASH {token, run_id, acquired_at, host, boot, pidns, pid, start}, with a TTL

ARGV[1]  our token
ARGV[2]  TTL in milliseconds
ARGV[3]  token of a dead holder we may replace, or ''
ARGV[4..] field, value, field, value, ...: who we are (run_id, acquired_at, host, boot, pidns,
         pid, start); written as given, so a holder's description can grow without this script

Reply: {1} when the lease is ours; otherwise {0, ttl_ms, field, value, ...}: the holder's whole
hash (a lease written by an older kmrl-sync lacks the newer fields).
--]]

local current = redis.call('HGET', KEYS[1], 'token')
if current and current ~= ARGV[1] and current ~= ARGV[3] then
  local reply = {0, redis.call('PTTL', KEYS[1])}
  for _, item in ipairs(redis.call('HGETALL', KEYS[1])) do
    reply[#reply + 1] = item
  end
  return reply
end
redis.call('DEL', KEYS[1])
local fields = {'token', ARGV[1]}
for i = 4, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return {1}

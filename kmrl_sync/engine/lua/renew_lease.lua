--[[
renew_lease: extend our lease, only if it is still ours (compare-and-renew).

KEYS[1]  lease   HASH with a TTL
ARGV[1]  our token
ARGV[2]  TTL in milliseconds

Reply: 1 renewed; 0 the lease expired or belongs to someone else (stop committing).
--]]

if redis.call('HGET', KEYS[1], 'token') == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
  return 1
end
return 0

--[[
release_lease: give the lease back, only if it is still ours (never delete a successor's lease).

KEYS[1]  lease   HASH
ARGV[1]  our token

Reply: 1 released; 0 it was not ours (already expired or taken over).
--]]

if redis.call('HGET', KEYS[1], 'token') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0

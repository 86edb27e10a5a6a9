--[[
reset_connector: forget what a connector has sent so its next sync is a full one.

Document hashes (and the defaults they rely on) are left alone: workers may still be looking them
up, and the next sync rewrites them. Without `known`, no document counts as sent. Refuses while
another run holds the lease, so a reset never races a sync.

KEYS[1]  lease          HASH
KEYS[2 ..]              the keys to delete: known, cursor, auxkeys, failures, the state of releases
                        before issue 18 (versions, index, fingerprints), the aux keys themselves
                        (read by the caller from auxkeys)

ARGV[1]  our lease token ('' when we hold no lease: then any live lease refuses the reset)

Reply: number of keys deleted, or error 'LEASE_HELD <run id>'.
--]]

local holder = redis.call('HGET', KEYS[1], 'token')
if holder and holder ~= ARGV[1] then
  return redis.error_reply('LEASE_HELD ' .. tostring(redis.call('HGET', KEYS[1], 'run_id')))
end
local removed = 0
for i = 2, #KEYS do
  removed = removed + redis.call('DEL', KEYS[i])
end
return removed

--[[
list_known: the next page of known native ids in byte order, with their fingerprints.

Lets a connector merge-join its own sorted listing against what was synced, holding one page at a
time instead of the whole library, at one round trip per page.

KEYS[1]  index          ZSET  known native ids (all scores 0)
KEYS[2]  fingerprints   HASH  native id -> fingerprint

ARGV[1]  exclusive lower bound ('' = from the start)
ARGV[2]  page size

Reply: flat array {id1, fp1, id2, fp2, ...}; a missing fingerprint is returned as ''.
--]]

local lower = (ARGV[1] == '') and '-' or ('(' .. ARGV[1])
local ids = redis.call('ZRANGEBYLEX', KEYS[1], lower, '+', 'LIMIT', 0, tonumber(ARGV[2]))
if #ids == 0 then
  return {}
end
local fps = redis.call('HMGET', KEYS[2], unpack(ids))
local out = {}
for i = 1, #ids do
  out[#out + 1] = ids[i]
  out[#out + 1] = fps[i] or ''
end
return out

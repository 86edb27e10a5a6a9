--[[
list_known: the next page of known native ids in byte order, with their fingerprints.

Lets a connector merge-join its own sorted listing against what was synced, holding one page at a
time instead of the whole library, at one round trip per page.

KEYS[1]  known          ZSET  "<native id>\0<fingerprint>", all scores 0 (commit_batch.lua)

ARGV[1]  exclusive lower bound: a native id ('' = from the start)
ARGV[2]  page size

Reply: flat array {id1, fp1, id2, fp2, ...}; a document without a fingerprint has ''.
Ids hold no NUL, so every member of an id greater than ARGV[1] sorts at or after ARGV[1] .. '\1',
and those of ARGV[1] itself (ARGV[1] .. '\0' ..) before it.
--]]

local lower = (ARGV[1] == '') and '-' or ('[' .. ARGV[1] .. '\1')
local members = redis.call('ZRANGEBYLEX', KEYS[1], lower, '+', 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for i = 1, #members do
  local member = members[i]
  local nul = string.find(member, '\0', 1, true)
  out[#out + 1] = string.sub(member, 1, nul - 1)
  out[#out + 1] = string.sub(member, nul + 1)
end
return out

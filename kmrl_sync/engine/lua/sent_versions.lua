--[[
sent_versions: the version last sent of each native id, or nil when it was never sent (or was
deleted, or the connector was reset since).

A document counts as sent when `known` holds it; the version is its hash's `version`, or its
`sha256` where the hash stores none (the two are equal then; engine/docview.py).

KEYS[1]       known      ZSET  "<native id>\0<fingerprint>" (commit_batch.lua)
KEYS[2 ..]               the doc hash of each id, in ARGV order

ARGV[1 ..]    native ids

Reply: one version (or nil) per id, in order.
--]]

local out = {}
for i = 1, #ARGV do
  local native = ARGV[i]
  local found = redis.call('ZRANGEBYLEX', KEYS[1], '[' .. native .. '\0', '(' .. native .. '\1', 'LIMIT', 0, 1)[1]
  if found then
    local sent = redis.call('HMGET', KEYS[i + 1], 'version', 'sha256')
    out[i] = sent[1] or sent[2] or ''
  else
    out[i] = false
  end
end
return out

--[[
commit_batch: apply one batch of document changes atomically, in one round trip.

Either everything in the batch happens (doc hashes written, work items pushed, versions recorded,
failed documents listed, cursor advanced) or nothing does, so a crash before this call means the batch is redone and a crash
after it means it is done. Running it twice with the same input pushes nothing the second time:
a document is only pushed when its version differs from the one recorded as sent.

KEYS[1]  known          ZSET  "<native id>\0<fingerprint>", score 0: documents sent and not deleted
                              since, in id order ({connector} tag, like every key but KEYS[6])
KEYS[2]  docdefaults    HASH  what the connector's documents share, written once (engine/docview.py)
KEYS[3]  cursor         STRING connector checkpoint
KEYS[4]  lease          HASH  {token, host, pid, run_id, ...}; fencing for the commit
KEYS[5]  stats          HASH  cumulative counters
KEYS[6]  queue          LIST (celery/list formats: Celery's plain name) or STREAM (stream format)
KEYS[7]  auxkeys        SET   names of the connector's aux keys (so reset can find them)
KEYS[8]  failures       HASH  native id ('' = the connector itself) -> JSON {reason, since, last,
                              attempts}: documents that failed and have not been committed since
KEYS[9 .. 8+n]          doc hash of each entry, in entry order: <prefix>:doc:{<connector>}:<native id>
KEYS[9+n .. ]           aux keys referred to by aux ops (1-based index into this tail)

ARGV[1]  lease token; '' skips the fencing check (one-shot tools that hold no lease)
ARGV[2]  '1' to set the cursor to ARGV[3], '0' to leave it
ARGV[3]  new cursor value
ARGV[4]  queue format: 'celery' | 'list' | 'stream'
ARGV[5]  push side for list formats: 'L' (LPUSH, FIFO for BRPOP consumers) or 'R' (front of the line)
ARGV[6]  timestamp (ISO 8601, UTC) recorded as synced_at / deleted_at
ARGV[7]  connector name
ARGV[8]  n, number of entries
ARGV[9]  m, number of aux ops
ARGV[10] the defaults this batch's documents rely on: "field\0value\0field\0value..." or ''. One the
         defaults hash holds with another value refuses the batch; missing ones are written.
ARGV[11] f, number of failure records
ARGV[12] how many failed documents the failures hash keeps (the least recently failed go first)
ARGV[13] how many commits this run made before this one (its lease's `commits` field counts them), or
         '' (no lease). The run's own commits are strictly ordered, so the field holds ARGV[13]
         (this batch is new) or ARGV[13] + 1 (this batch was applied and its reply lost: replaying it
         is harmless, see below); less means Redis lost commits it had acknowledged (a failover to a
         replica that had not received them): refused, so the run stops and the next one redoes
         them from the state Redis still has, instead of committing a cursor past the lost batches
ARGV[14] celery format: the process task's message template: literal, slot name, literal, ... joined
         by NULs; the slots are body, id, argsrepr and tag (queues.py); '' in other formats
ARGV[15] celery format: the same for the delete task
ARGV[16] celery format: the stem of this batch's task ids; entry i's id is the stem, i - 1 in 8 hex
         digits and a closing quote
ARGV[17] celery format: the stem of this batch's delivery tags (i - 1 in 12 hex digits, a quote)
then, from ARGV[18], n entries, in one of two shapes:
  packed (the usual): "op\0native id\0version\0fingerprint\0[s]pF\0field\0value\0..." -- F
           metadata pairs joined by NULs (the caller packs only when no field or value holds a NUL)
           -- then the tail as a second argument
  spread:  "op\0native id\0version\0fingerprint\0[s]F", then 2*F arguments field, value, ..., then
           the tail
  op is 'u' upsert | 'd' delete; 's': the version equals the pairs' sha256 and is not stored (a
  hash without `version` has its sha256 as version). The pairs are the stored (compact) form of the
  metadata, written to the doc hash as they are, after status, synced_at and version; the tail is,
  in celery format, the message's base64 body, followed, for a document id JSON or Python's repr
  would escape, by a NUL and the message's argsrepr (otherwise written here as "['<id>']"); in list
  / stream formats the full metadata as a JSON object (embedded in the queue item)
then m aux ops of 4 arguments each: op ('hset' | 'hdel' | 'del'), aux key index, field, value
then f failure records of 2 arguments each: native id ('' = the connector itself), reason (bounded
  by the caller; cut at 2000 bytes here too)
A document counts as sent at version V when `known` holds it and its hash's version (or sha256) is
V: a native id never holds a NUL, so its member is the one in ["<id>\0", "<id>\1").
Every id the batch touches (upserted, deleted, or unchanged at its version) leaves the failures
hash: it has been committed. Then this batch's failures are recorded: a document failing again keeps
its `since` and counts one more attempt (a batch replayed after a lost reply counts twice; the
count is for people, nothing depends on it).
The document id is "<connector>:<native id>"; its hash key arrives in KEYS like every key.

Reply: {created, updated, deleted, unchanged}, or an error reply, with nothing written:
  'LEASE_LOST <holder run id>'
  'COMMITS_LOST <count Redis holds> <count expected>': see ARGV[13]
  'DEFAULTS_CHANGED <field>': a default the batch relies on is stored with another value
  'BAD_ENTRY <i>' / 'BAD_AUX_OP <op>': malformed arguments (a bug of the caller)
  'OOM KMRL_MEMORY used=<bytes> maxmemory=<bytes> needed=<bytes> policy=<policy>': the batch would
  not fit under maxmemory (see the memory guard below)
  Redis' own 'OOM command not allowed ...' when Redis was already out of memory as this started

Memory: Redis refuses a script only at its first write that needs memory, and only when it was out
of memory as the script started; once a script has written, every later write goes through. A batch
begun just under the limit would end a whole batch over it. So, before any write: under noeviction
(the policy Redis is meant to run with), the batch is refused when the memory Redis counts against
maxmemory plus an estimate of what the batch stores would pass maxmemory; under every policy, the
first write is one Redis refuses when it is out of memory. Under volatile-*/allkeys-* Redis evicts
to make room instead, so only the second guard applies there. The guard reads INFO memory; where an
ACL denies INFO it is skipped (the second guard still holds).
--]]

local token = ARGV[1]
if token ~= '' then
  local holder = redis.call('HGET', KEYS[4], 'token')
  if holder ~= token then
    return redis.error_reply('LEASE_LOST ' .. tostring(redis.call('HGET', KEYS[4], 'run_id')))
  end
  local done, expected = tonumber(redis.call('HGET', KEYS[4], 'commits') or '0'), tonumber(ARGV[13])
  if expected and done ~= expected and done ~= expected + 1 then
    return redis.error_reply(string.format('COMMITS_LOST %d %d', done, expected))
  end
end

-- "a\0b\0c" -> {'a', 'b', 'c'}; '' -> {}
local function split_nul(s)
  local out = {}
  if s == '' then return out end
  local pos = 1
  while true do
    local stop = string.find(s, '\0', pos, true)
    out[#out + 1] = string.sub(s, pos, (stop or 0) - 1)
    if not stop then break end
    pos = stop + 1
  end
  return out
end

-- The defaults the batch relies on: one stored with another value refuses it (see docview.py).
local defaults = split_nul(ARGV[10])
for i = 1, #defaults, 2 do
  local stored = redis.call('HGET', KEYS[2], defaults[i])
  if stored and stored ~= defaults[i + 1] then
    return redis.error_reply('DEFAULTS_CHANGED ' .. defaults[i])
  end
end

-- The memory guard (see the header). The estimate is the batch's arguments and keys with a quarter
-- more for allocator rounding, plus 1 KiB per entry for the hash, set and list entries around them:
-- measured on Redis 6.2 (libc malloc) and 7.0 (jemalloc), a batch stores at most its argument bytes
-- plus 0.8 KiB per document, in every queue format (tests/adversarial/test_redis_memory.py).
if redis.replicate_commands then  -- Redis 6.2 with lua-replicate-commands off: INFO would forbid writes
  redis.replicate_commands()
end
local info = redis.pcall('INFO', 'memory')
if type(info) == 'string' then
  local maxmemory = tonumber(string.match(info, 'maxmemory:(%d+)')) or 0
  local policy = string.match(info, 'maxmemory_policy:(%S+)') or ''
  if maxmemory > 0 and policy == 'noeviction' then
    local used = (tonumber(string.match(info, 'used_memory:(%d+)')) or 0)
      - (tonumber(string.match(info, 'mem_not_counted_for_evict:(%d+)')) or 0)
    local bytes = 0
    for i = 1, #ARGV do bytes = bytes + #ARGV[i] end
    for i = 1, #KEYS do bytes = bytes + #KEYS[i] end
    if ARGV[4] == 'celery' then  -- each message is assembled here from a template of this size
      bytes = bytes + tonumber(ARGV[8]) * math.max(#ARGV[14], #ARGV[15])
    end
    local needed = math.ceil(bytes * 1.25) + 1024 * tonumber(ARGV[8])
    if used + needed > maxmemory then
      return redis.error_reply(string.format('OOM KMRL_MEMORY used=%.0f maxmemory=%.0f needed=%.0f policy=%s',
                                             used, maxmemory, needed, policy))
    end
  end
end
-- The first write: SETRANGE of nothing changes nothing (and creates no key), but Redis refuses it,
-- and with it the whole script, when it was out of memory as the script started.
redis.call('SETRANGE', KEYS[3], 0, '')

local format, side, now, connector = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local n, m = tonumber(ARGV[8]), tonumber(ARGV[9])
local push = (side == 'R') and 'RPUSH' or 'LPUSH'
local created, updated, deleted, unchanged = 0, 0, 0, 0

-- Commands over many values are sent in slices: Lua's unpack has a stack limit.
local function bulk(command, key, values)
  local step = 2000
  for i = 1, #values, step do
    redis.call(command, key, unpack(values, i, math.min(i + step - 1, #values)))
  end
end

-- Pass 1: parse the entry headers; look up what was sent of each id (its `known` member, and the
-- version its hash holds).
local entries = {}
local o = 18
for i = 1, n do
  local op, native, version, fp, same, packed, f, rest =
    string.match(ARGV[o], '^(%Z*)%z(%Z*)%z(%Z*)%z(%Z*)%z(s?)(p?)(%d+)()')
  if not op then
    return redis.error_reply('BAD_ENTRY ' .. i)
  end
  f = tonumber(f)
  if packed == 'p' then
    entries[i] = {op, native, version, fp, f, o, rest + 1, same == 's'}  -- pairs in ARGV[o] from rest + 1
    o = o + 2
  else
    entries[i] = {op, native, version, fp, f, o + 1, -1, same == 's'}  -- pairs in ARGV[o + 1 ..]
    o = o + 2 * f + 2
  end
end
-- Checked before any write, like everything that can refuse the batch.
for j = 0, m - 1 do
  local op = ARGV[o + 4 * j]
  if op ~= 'hset' and op ~= 'hdel' and op ~= 'del' then
    return redis.error_reply('BAD_AUX_OP ' .. tostring(op))
  end
end

-- One field list reused for every doc hash: three fixed pairs (the last, version, overwritten by
-- the document's own pairs when it is not stored), then the document's pairs.
local fields = {'status', '', 'synced_at', now, 'version', ''}

-- The entry's pairs into fields[base + 1 ..] (when wanted) and its tail; returns the field count
-- and the tail.
local function open_entry(e, want_fields, base)
  local f, arg, pos = e[5], e[6], e[7]
  if pos == -1 then
    if want_fields then
      for j = 1, 2 * f do fields[base + j] = ARGV[arg + j - 1] end
    end
    return base + 2 * f, ARGV[arg + 2 * f]
  end
  if not want_fields then
    return base + 2 * f, ARGV[arg + 1]
  end
  local s = ARGV[arg]
  for j = 1, 2 * f do
    local stop = string.find(s, '\0', pos, true) or (#s + 1)
    fields[base + j] = string.sub(s, pos, stop - 1)
    pos = stop + 1
  end
  return base + 2 * f, ARGV[arg + 1]
end

-- Celery format: the two message templates as {literal, slot, literal, ...}.
local templates = {}
if format == 'celery' then
  templates = {process = split_nul(ARGV[14]), delete = split_nul(ARGV[15])}
end
local id_stem, tag_stem = ARGV[16], ARGV[17]

-- Entry i's message from its template: body and argsrepr from its tail, id and tag numbered by i.
local function celery_message(template, i, doc_id, tail)
  local body, argsrepr = tail, nil
  local cut = string.find(tail, '\0', 1, true)
  if cut then
    body, argsrepr = string.sub(tail, 1, cut - 1), string.sub(tail, cut + 1)
  else
    argsrepr = '"[\'' .. doc_id .. '\']"'
  end
  local values = {body = '"' .. body .. '"', id = id_stem .. string.format('%08x"', i - 1),
                  argsrepr = argsrepr, tag = tag_stem .. string.format('%012x"', i - 1)}
  local out = {}
  for k = 1, #template do
    out[k] = (k % 2 == 0) and values[template[k]] or template[k]
  end
  return table.concat(out)
end

local function queue_item(i, doc_id, event, tail)
  if format == 'list' then
    return '{"document_id":' .. cjson.encode(doc_id) .. ',"event":"' .. event ..
      '","connector":' .. cjson.encode(connector) .. ',"metadata":' .. tail .. '}'
  end
  return celery_message(event == 'deleted' and templates.delete or templates.process, i, doc_id, tail)
end

-- Pass 2: decide per entry, in order. `current` is each id's version as of this point of the
-- batch (false = deleted), so an id repeated within the batch is judged against its earlier entry;
-- `fps` its fingerprint, `members` its `known` member as stored before the batch (false: none).
local current, fps, members, touched, pushes = {}, {}, {}, {}, {}
for i = 1, n do
  local e = entries[i]
  local op, native, version, fp = e[1], e[2], e[3], e[4]
  local doc_key = KEYS[8 + i]
  if members[native] == nil then
    touched[#touched + 1] = native
    local found = redis.call('ZRANGEBYLEX', KEYS[1], '[' .. native .. '\0', '(' .. native .. '\1', 'LIMIT', 0, 1)[1]
    members[native] = found or false
    fps[native] = found and string.sub(found, #native + 2) or ''
    if found then
      local sent = redis.call('HMGET', doc_key, 'version', 'sha256')
      current[native] = sent[1] or sent[2] or ''
    else
      current[native] = false
    end
  end
  local old = current[native]
  local doc_id = connector .. ':' .. native
  if op == 'u' then
    if old == version then
      unchanged = unchanged + 1
    else
      local event = old and 'updated' or 'created'
      fields[2], fields[6] = event, version
      local count, tail = open_entry(e, true, e[8] and 4 or 6)  -- 4: the pairs overwrite version
      redis.call('DEL', doc_key)
      redis.call('HSET', doc_key, unpack(fields, 1, count))
      if format == 'stream' then
        redis.call('XADD', KEYS[6], '*', 'document_id', doc_id, 'event', event, 'metadata', tail)
      else
        pushes[#pushes + 1] = queue_item(i, doc_id, event, tail)
      end
      if event == 'created' then created = created + 1 else updated = updated + 1 end
    end
    current[native] = version
    if fp ~= '' then fps[native] = fp end
  else
    if old then
      local _, tail = open_entry(e, false, 0)
      redis.call('HSET', doc_key, 'status', 'deleted', 'deleted_at', now)
      if format == 'stream' then
        redis.call('XADD', KEYS[6], '*', 'document_id', doc_id, 'event', 'deleted', 'metadata', tail)
      else
        pushes[#pushes + 1] = queue_item(i, doc_id, 'deleted', tail)
      end
      deleted = deleted + 1
    else
      unchanged = unchanged + 1
    end
    current[native] = false
    fps[native] = ''
  end
end

-- Pass 3: the final `known` member of every id the batch touched, in a few bulk commands.
local add, remove = {}, {}
for _, native in ipairs(touched) do
  local before = members[native]
  local after = current[native] and (native .. '\0' .. fps[native]) or false
  if before ~= after then
    if before then remove[#remove + 1] = before end
    if after then
      add[#add + 1] = 0
      add[#add + 1] = after
    end
  end
end
bulk(push, KEYS[6], pushes)
bulk('ZREM', KEYS[1], remove)
bulk('ZADD', KEYS[1], add)
if #defaults > 0 then
  bulk('HSET', KEYS[2], defaults)
end

local aux_key_base = 8 + n
for j = 1, m do
  local op, key = ARGV[o], KEYS[aux_key_base + tonumber(ARGV[o + 1])]
  if op == 'hset' then
    redis.call('HSET', key, ARGV[o + 2], ARGV[o + 3])
    redis.call('SADD', KEYS[7], key)
  elseif op == 'hdel' then
    redis.call('HDEL', key, ARGV[o + 2])
  else
    redis.call('DEL', key)
  end
  o = o + 4
end

-- Failed documents (KEYS[8]): what this batch committed is off the list, then its failures go on.
local failures = KEYS[8]
local n_failures, keep = tonumber(ARGV[11]), tonumber(ARGV[12])
if #touched > 0 and redis.call('EXISTS', failures) == 1 then
  bulk('HDEL', failures, touched)
end
if n_failures > 0 then
  local recorded, order = {}, {}
  for _ = 1, n_failures do
    local native, reason = ARGV[o], string.sub(ARGV[o + 1], 1, 2000)
    o = o + 2
    local entry = recorded[native]
    if not entry then  -- one attempt per batch, however often the connector reported it
      local ok, stored = pcall(cjson.decode, redis.call('HGET', failures, native) or '')
      entry = (ok and type(stored) == 'table') and stored or {since = now, attempts = 0}
      entry.attempts = (tonumber(entry.attempts) or 0) + 1
      entry.last = now
      recorded[native] = entry
      order[#order + 1] = native
    end
    entry.reason = reason  -- the last one reported
  end
  for _, native in ipairs(order) do
    redis.call('HSET', failures, native, cjson.encode(recorded[native]))
  end
  local excess = redis.call('HLEN', failures) - keep
  if excess > 0 then  -- drop the least recently failed (ties: in id order)
    local all, by_age = redis.call('HGETALL', failures), {}
    for i = 1, #all, 2 do
      local ok, entry = pcall(cjson.decode, all[i + 1])
      by_age[#by_age + 1] = {(ok and type(entry) == 'table' and tostring(entry.last)) or '', all[i]}
    end
    table.sort(by_age, function(a, b)
      if a[1] ~= b[1] then return a[1] < b[1] end
      return a[2] < b[2]
    end)
    local drop = {}
    for i = 1, excess do drop[i] = by_age[i][2] end
    bulk('HDEL', failures, drop)
  end
end

if ARGV[2] == '1' then
  redis.call('SET', KEYS[3], ARGV[3])
end
if token ~= '' and ARGV[13] ~= '' then  -- always written, so a replay is a write too (WAIT follows it)
  redis.call('HSET', KEYS[4], 'commits', tonumber(ARGV[13]) + 1)
end
if created + updated + deleted > 0 then
  redis.call('HINCRBY', KEYS[5], 'total_created', created)
  redis.call('HINCRBY', KEYS[5], 'total_updated', updated)
  redis.call('HINCRBY', KEYS[5], 'total_deleted', deleted)
end
return {created, updated, deleted, unchanged}

--[[
commit_batch: apply one batch of document changes atomically, in one round trip.

Either everything in the batch happens (doc hashes written, work items pushed, versions recorded,
cursor advanced) or nothing does, so a crash before this call means the batch is redone and a crash
after it means it is done. Running it twice with the same input pushes nothing the second time:
a document is only pushed when its version differs from the one recorded as sent.

KEYS[1]  versions       HASH  native id -> version last sent          ({connector} tag)
KEYS[2]  index          ZSET  native ids known to exist, score 0 (lex order for merge scans)
KEYS[3]  fingerprints   HASH  native id -> cheap change token (stat signature, etag, ...)
KEYS[4]  cursor         STRING connector checkpoint
KEYS[5]  lease          HASH  {token, host, pid, run_id, ...}; fencing for the commit
KEYS[6]  stats          HASH  cumulative counters
KEYS[7]  queue          LIST (celery/list formats) or STREAM (stream format)
KEYS[8]  auxkeys        SET   names of the connector's aux keys (so reset can find them)
KEYS[9 .. 8+n]          doc hash of each entry, in entry order: <prefix>:doc:<document_id>
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
then n entries, each of 2 + 2*f arguments:
  header   "op\0native id\0version\0fingerprint\0f" -- op 'u' upsert | 'd' delete; f = metadata pairs
  2*f      metadata field, value, field, value, ... (written to the doc hash as they are)
  tail     celery format: the ready message (upsert: process task, delete: delete task);
           list / stream formats: the metadata as a JSON object (embedded in the queue item)
then m aux ops of 4 arguments each: op ('hset' | 'hdel' | 'del'), aux key index, field, value
The document id is "<connector>:<native id>"; its hash key arrives in KEYS like every key.

Reply: {created, updated, deleted, unchanged} or an error reply 'LEASE_LOST <holder run id>'.
--]]

local token = ARGV[1]
if token ~= '' then
  local holder = redis.call('HGET', KEYS[5], 'token')
  if holder ~= token then
    return redis.error_reply('LEASE_LOST ' .. tostring(redis.call('HGET', KEYS[5], 'run_id')))
  end
end

local format, side, now, connector = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local n, m = tonumber(ARGV[8]), tonumber(ARGV[9])
local push = (side == 'R') and 'RPUSH' or 'LPUSH'
local created, updated, deleted, unchanged = 0, 0, 0, 0

local function emit(doc_id, event, tail)
  if format == 'celery' then
    redis.call(push, KEYS[7], tail)
  elseif format == 'list' then
    redis.call(push, KEYS[7], '{"document_id":' .. cjson.encode(doc_id) .. ',"event":"' .. event ..
      '","connector":' .. cjson.encode(connector) .. ',"metadata":' .. tail .. '}')
  else
    redis.call('XADD', KEYS[7], '*', 'document_id', doc_id, 'event', event, 'metadata', tail)
  end
end

local o = 10
for i = 1, n do
  local op, native, version, fp, f = string.match(ARGV[o], '^(%Z*)%z(%Z*)%z(%Z*)%z(%Z*)%z(%d+)$')
  if not op then
    return redis.error_reply('BAD_ENTRY ' .. i)
  end
  f = tonumber(f)
  local first, last = o + 1, o + 2 * f
  local tail = ARGV[last + 1]
  o = last + 2
  local doc_id = connector .. ':' .. native
  local doc_key = KEYS[8 + i]
  local old = redis.call('HGET', KEYS[1], native)
  if op == 'u' then
    if old == version then
      unchanged = unchanged + 1
    else
      local event = old and 'updated' or 'created'
      redis.call('DEL', doc_key)
      if f > 0 then
        redis.call('HSET', doc_key, 'document_id', doc_id, 'connector', connector, 'status', event,
                   'version', version, 'synced_at', now, unpack(ARGV, first, last))
      else
        redis.call('HSET', doc_key, 'document_id', doc_id, 'connector', connector, 'status', event,
                   'version', version, 'synced_at', now)
      end
      emit(doc_id, event, tail)
      redis.call('HSET', KEYS[1], native, version)
      if event == 'created' then created = created + 1 else updated = updated + 1 end
    end
    redis.call('ZADD', KEYS[2], 0, native)
    if fp ~= '' then redis.call('HSET', KEYS[3], native, fp) end
  else
    if old then
      redis.call('HDEL', KEYS[1], native)
      redis.call('HSET', doc_key, 'status', 'deleted', 'deleted_at', now)
      emit(doc_id, 'deleted', tail)
      deleted = deleted + 1
    else
      unchanged = unchanged + 1
    end
    redis.call('ZREM', KEYS[2], native)
    redis.call('HDEL', KEYS[3], native)
  end
end

local aux_key_base = 8 + n
for j = 1, m do
  local op, key = ARGV[o], KEYS[aux_key_base + tonumber(ARGV[o + 1])]
  if op == 'hset' then
    redis.call('HSET', key, ARGV[o + 2], ARGV[o + 3])
    redis.call('SADD', KEYS[8], key)
  elseif op == 'hdel' then
    redis.call('HDEL', key, ARGV[o + 2])
  elseif op == 'del' then
    redis.call('DEL', key)
  else
    return redis.error_reply('BAD_AUX_OP ' .. tostring(op))
  end
  o = o + 4
end

if ARGV[2] == '1' then
  redis.call('SET', KEYS[4], ARGV[3])
end
if created + updated + deleted > 0 then
  redis.call('HINCRBY', KEYS[6], 'total_created', created)
  redis.call('HINCRBY', KEYS[6], 'total_updated', updated)
  redis.call('HINCRBY', KEYS[6], 'total_deleted', deleted)
end
return {created, updated, deleted, unchanged}

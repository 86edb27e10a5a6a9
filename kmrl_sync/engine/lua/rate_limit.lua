--[[
rate_limit: one outbound-request permit from a token bucket shared by every daemon of a tenant.

Microsoft throttles per app per tenant, so all kmrl-sync processes talking to the same tenant
draw from one bucket kept in Redis. The clock is Redis' own (TIME), so hosts with skewed clocks
still agree. A throttle answer seen by any process (429/503 with Retry-After) is recorded as a
pause that every other process honours too.

KEYS[1]  bucket  HASH {tokens, ts (ms), paused_until (ms)}  (hash tag per tenant)

ARGV[1]  rate: permits per second (> 0)
ARGV[2]  burst: bucket capacity (>= 1)
ARGV[3]  op: 'take' (ask for one permit) or 'pause' (record a throttle window)
ARGV[4]  for 'pause': milliseconds from now during which nobody may send

Reply: for 'take', 0 when the permit is granted, else the milliseconds to wait before asking
again (nothing is consumed then); for 'pause', the pause end (ms, Redis clock).
--]]

local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts', 'paused_until')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
local paused_until = tonumber(state[3]) or 0

if ARGV[3] == 'pause' then
  local untl = now + tonumber(ARGV[4])
  if untl > paused_until then
    redis.call('HSET', KEYS[1], 'paused_until', untl)
    paused_until = untl
  end
  return paused_until
end

if now < paused_until then
  return paused_until - now
end

if now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate / 1000)
end
if tokens >= 1 then
  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens - 1), 'ts', now)
  return 0
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now)
return math.max(1, math.ceil((1 - tokens) * 1000 / rate))

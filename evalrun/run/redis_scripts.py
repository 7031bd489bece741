"""The shared limiter's Lua scripts (see `shared_limiter.py`). Each runs atomically in Redis and
reads the time from Redis (`TIME`), so every process books on one clock. Numbers travel back as
strings: Redis would truncate a Lua float reply to an integer."""

# KEYS: state hash, peers zset. ARGV: seconds per request (0: unpaced), seconds per token (0: none),
# estimated tokens, process id, peer ttl, spacing margin, key ttl.
# Reply: {booked 0/1, wait s, blocked-for s, adaptive req/s or '', processes sharing}
BOOK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local h = redis.call('HMGET', KEYS[1], 'last', 'tok', 'blocked', 'adaptive')
local last = tonumber(h[1]) or -1e18
local tok = tonumber(h[2]) or 0
local blocked = tonumber(h[3]) or 0
local adaptive = tonumber(h[4])
local interval = tonumber(ARGV[1])
local tok_per = tonumber(ARGV[2])
if adaptive and adaptive > 0 then interval = math.max(interval, tonumber(ARGV[6]) / adaptive) end
local ready = blocked
if interval > 0 then ready = math.max(ready, last + interval) end
if tok_per > 0 then ready = math.max(ready, tok) end
redis.call('ZADD', KEYS[2], now, ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[5]))
redis.call('EXPIRE', KEYS[2], ARGV[7])
local peers = redis.call('ZCARD', KEYS[2])
local booked = 0
if ready <= now then
  booked = 1
  redis.call('HSET', KEYS[1], 'last', tostring(now))
  if tok_per > 0 then
    redis.call('HSET', KEYS[1], 'tok', tostring(math.max(now, tok) + tonumber(ARGV[3]) * tok_per))
  end
  redis.call('EXPIRE', KEYS[1], ARGV[7])
end
return {booked, tostring(math.max(0, ready - now)), tostring(math.max(0, blocked - now)), tostring(adaptive or ''), peers}
"""

BLOCK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local until_ = now + tonumber(ARGV[1])
local blocked = tonumber(redis.call('HGET', KEYS[1], 'blocked')) or 0
if until_ > blocked then redis.call('HSET', KEYS[1], 'blocked', tostring(until_)) end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""

# ARGV: pace in force (req/s), episode length (s), DECREASE, MIN_RATE, ttl
DECREASE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local h = redis.call('HMGET', KEYS[1], 'episode_end', 'adaptive', 'ceiling', 'probing')
if now < (tonumber(h[1]) or 0) then return 0 end
local offered = tonumber(ARGV[1])
local adaptive = tonumber(h[2])
if adaptive and adaptive < offered then offered = adaptive end
local ceiling = offered
if h[4] == '1' and tonumber(h[3]) then ceiling = tonumber(h[3]) end
local new = math.max(tonumber(ARGV[4]), offered * tonumber(ARGV[3]))
redis.call('HSET', KEYS[1], 'adaptive', tostring(new), 'ceiling', tostring(math.max(tonumber(ARGV[4]), ceiling)),
  'episode_end', tostring(now + tonumber(ARGV[2])), 'next_inc', tostring(now + tonumber(ARGV[2])),
  'clean', '0', 'probing', '0')
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""

# ARGV: episode length, INCREASE, PROBE_AFTER, ttl
INCREASE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local h = redis.call('HMGET', KEYS[1], 'adaptive', 'ceiling', 'next_inc', 'clean')
local adaptive, ceiling = tonumber(h[1]), tonumber(h[2])
if not adaptive or not ceiling or now < (tonumber(h[3]) or 0) then return 0 end
redis.call('HSET', KEYS[1], 'next_inc', tostring(now + tonumber(ARGV[1])))
if adaptive < ceiling then
  redis.call('HSET', KEYS[1], 'adaptive', tostring(math.min(ceiling, adaptive + tonumber(ARGV[2]) * ceiling)))
else
  local clean = (tonumber(h[4]) or 0) + 1
  if clean >= tonumber(ARGV[3]) then
    redis.call('HSET', KEYS[1], 'clean', '0', 'probing', '1', 'adaptive', tostring(ceiling * (1 + tonumber(ARGV[2]))))
  else
    redis.call('HSET', KEYS[1], 'clean', tostring(clean))
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""

"""The shared limiter's Lua scripts (see `shared_limiter.py`). Each runs atomically in Redis and
reads the time from Redis (`TIME`), so every process books on one clock. Numbers travel back as
strings: Redis would truncate a Lua float reply to an integer."""

# KEYS: state hash, peers zset. ARGV: seconds per request (0: unpaced), seconds per token (0: none),
# estimated tokens, process id, peer ttl, spacing margin, key ttl.
# Reply: {booked 0/1, wait s, blocked-for s, adaptive req/s or '', processes sharing, ceiling or ''}
BOOK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local h = redis.call('HMGET', KEYS[1], 'last', 'tok', 'blocked', 'adaptive', 'ceiling')
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
return {booked, tostring(math.max(0, ready - now)), tostring(math.max(0, blocked - now)), tostring(adaptive or ''), peers,
  tostring(h[5] or '')}
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

# The learnt rate, decided by the process that heard the 429s or the clean episode (adaptive.py)
# and set for everyone unless another process already changed it within the episode.
# ARGV: new adaptive req/s, new ceiling req/s, episode length s, 1 for a decrease / 0 for an
# increase, ttl. A decrease is refused inside the episode of the last one; an increase before
# the next increase is due.
ADAPT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local h = redis.call('HMGET', KEYS[1], 'episode_end', 'next_inc')
local decrease = ARGV[4] == '1'
if decrease and now < (tonumber(h[1]) or 0) then return 0 end
if (not decrease) and now < (tonumber(h[2]) or 0) then return 0 end
local ends = tostring(now + tonumber(ARGV[3]))
redis.call('HSET', KEYS[1], 'adaptive', ARGV[1], 'ceiling', ARGV[2], 'next_inc', ends)
if decrease then redis.call('HSET', KEYS[1], 'episode_end', ends) end
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""

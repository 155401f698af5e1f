"""Lua scripts of the Redis lease semaphore (acquire, batched renew, release)."""

from __future__ import annotations

# Keys (all share the hash tag ``{<prefix>:<name>}`` so they live in one Redis Cluster slot):
#   KEYS[1] holders  ZSET  member "<proc>#<fence>" -> expiry (server ms)
#   KEYS[2] counts   HASH  proc -> number of members of that proc in holders
#   KEYS[3] procs    ZSET  proc -> heartbeat expiry (server ms); live processes for min_per_process
#   KEYS[4] meta     HASH  epoch (server ms at creation), fence (counter), quiet_until (server ms)
#   KEYS[5] wake     LIST  one item pushed per release while someone waits; waiters BLPOP it
#   KEYS[6] waiting  STRING set (with a short TTL) by every refused acquire: "someone waits"
#
# Every time value comes from ``redis.call('TIME')`` on the server; clients never send one.
# Numbers are formatted with '%d' before they go back to Redis: Lua's default number
# formatting ('%.14g') would turn a 16-digit fence into "1.7e+15".

_PRELUDE = """
local holders, counts, procs, meta, wake = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local waiting = KEYS[6]
local function fmt(n) return string.format('%d', n) end
local function proc_of(member) return string.match(member, '^(.*)#') end
local function dec(proc)
  local n = redis.call('HINCRBY', counts, proc, -1)
  if n <= 0 then redis.call('HDEL', counts, proc) end
end
"""

# Server time and the helpers that need it (acquire and renew; release needs no clock).
_CLOCK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function purge_holders()
  local expired = redis.call('ZRANGEBYSCORE', holders, '-inf', fmt(now), 'LIMIT', 0, 1000)
  for i = 1, #expired do
    redis.call('ZREM', holders, expired[i])
    local p = proc_of(expired[i])
    if p then dec(p) end
  end
end
local function purge()
  purge_holders()
  redis.call('ZREMRANGEBYSCORE', procs, '-inf', fmt(now))
end
-- Returns epoch, 1 if the meta key had to be created (first use or Redis lost its data).
local function ensure_meta(quiet_ms)
  local epoch = redis.call('HGET', meta, 'epoch')
  if epoch then return tonumber(epoch), 0 end
  redis.call('HSET', meta, 'epoch', fmt(now), 'fence', fmt(now * 1000),
             'quiet_until', fmt(now + quiet_ms))
  return now, 1
end
local function touch(ttl_ms)
  local keep = fmt(math.max(3 * ttl_ms, 60000))
  redis.call('PEXPIRE', holders, keep)
  redis.call('PEXPIRE', counts, keep)
  redis.call('PEXPIRE', procs, keep)
  redis.call('PEXPIRE', meta, fmt(math.max(3 * ttl_ms, 86400000)))
end
"""

# ARGV: proc, limit, ttl_ms, min_per (0 = off), max_per (0 = off), quiet_ms, proc_ttl_ms
# Returns {1, fence, epoch, now, expiry, count_after}
#      or {0, reason, count, mine, wait_ms, epoch}; reason in quiet|max|full|reserved
ACQUIRE = (
    _PRELUDE
    + _CLOCK
    + """
local proc = ARGV[1]
local limit = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local min_per = tonumber(ARGV[4])
local max_per = tonumber(ARGV[5])
local quiet_ms = tonumber(ARGV[6])
local proc_ttl = tonumber(ARGV[7])
-- The common path (a free slot, no fair-share options) makes 7 redis.call()s.
local m = redis.call('HMGET', meta, 'epoch', 'quiet_until')
local epoch, quiet_until, fresh = tonumber(m[1]), tonumber(m[2] or '0'), false
if not epoch then
  epoch, quiet_until, fresh = now, now + quiet_ms, true
  redis.call('HSET', meta, 'epoch', fmt(now), 'fence', fmt(now * 1000),
             'quiet_until', fmt(quiet_until))
end
purge_holders()
if min_per > 0 then
  redis.call('ZREMRANGEBYSCORE', procs, '-inf', fmt(now))
  redis.call('ZADD', procs, fmt(now + proc_ttl), proc)
end
local count = redis.call('ZCARD', holders)
local mine = 0
if min_per > 0 or max_per > 0 or count >= limit or now < quiet_until then
  mine = tonumber(redis.call('HGET', counts, proc) or '0')
end
local function refuse(reason, wait_ms)
  touch(ttl)
  if reason == 'full' or reason == 'reserved' then
    redis.call('SET', waiting, '1', 'PX', 2000)
  end
  return {0, reason, count, mine, wait_ms, epoch}
end
if now < quiet_until then return refuse('quiet', quiet_until - now) end
if max_per > 0 and mine >= max_per then return refuse('max', 0) end
if count >= limit then return refuse('full', 0) end
if min_per > 0 and mine >= min_per then
  local live = redis.call('ZRANGE', procs, 0, -1)
  local flat = redis.call('HGETALL', counts)
  local held = {}
  for i = 1, #flat, 2 do held[flat[i]] = tonumber(flat[i + 1]) end
  local reserved = 0
  for i = 1, #live do
    if live[i] ~= proc then
      local c = held[live[i]] or 0
      if c < min_per then reserved = reserved + (min_per - c) end
    end
  end
  if count + reserved >= limit then return refuse('reserved', 0) end
end
local fence = redis.call('HINCRBY', meta, 'fence', 1)
local expiry = now + ttl
redis.call('ZADD', holders, fmt(expiry), proc .. '#' .. fmt(fence))
redis.call('HINCRBY', counts, proc, 1)
if count == 0 or fresh then touch(ttl) end  -- renewals keep the TTLs fresh after that
return {1, fence, epoch, now, expiry, count + 1}
"""
)

# ARGV: proc, ttl_ms, proc_ttl_ms, quiet_ms, member...
# Renews every listed member of this process in one call; a member that is gone (expired,
# or Redis lost its data) is re-added even above the limit, because its resource exists.
# Returns {epoch, fresh, now, expiry, count, quiet_until, missing_member...}
RENEW = (
    _PRELUDE
    + _CLOCK
    + """
local proc = ARGV[1]
local ttl = tonumber(ARGV[2])
local proc_ttl = tonumber(ARGV[3])
local quiet_ms = tonumber(ARGV[4])
local epoch, fresh = ensure_meta(quiet_ms)
purge()
redis.call('ZADD', procs, fmt(now + proc_ttl), proc)
local expiry = fmt(now + ttl)
local missing = {}
for i = 5, #ARGV do
  local m = ARGV[i]
  if redis.call('ZSCORE', holders, m) then
    redis.call('ZADD', holders, 'XX', expiry, m)
  else
    redis.call('ZADD', holders, expiry, m)
    redis.call('HINCRBY', counts, proc, 1)
    missing[#missing + 1] = m
  end
end
touch(ttl)
local quiet_until = tonumber(redis.call('HGET', meta, 'quiet_until') or '0')
local out = {epoch, fresh, now, now + ttl, redis.call('ZCARD', holders), quiet_until}
for i = 1, #missing do out[#out + 1] = missing[i] end
return out
"""
)

# ARGV: proc, limit, member...
# Returns the number of members removed. While a waiter exists (the 'waiting' flag, refreshed
# by every refused acquire, at least every 0.5 s), each removal pushes one wake-up.
RELEASE = (
    _PRELUDE
    + """
local proc = ARGV[1]
local limit = tonumber(ARGV[2])
local removed = 0
for i = 3, #ARGV do
  if redis.call('ZREM', holders, ARGV[i]) == 1 then
    dec(proc)
    removed = removed + 1
  end
end
if removed > 0 then
  if redis.call('EXISTS', waiting) == 1 then
    for i = 1, removed do redis.call('LPUSH', wake, '1') end
    redis.call('LTRIM', wake, 0, limit - 1)
    redis.call('PEXPIRE', wake, 10000)
  else
    redis.call('DEL', wake)  -- nobody waits: leave no stale wake-ups behind
  end
end
return removed
"""
)

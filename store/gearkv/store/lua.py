"""Every Lua script the Redis backend runs, with the keys (KEYS) and arguments (ARGV) it takes.

A script runs atomically on one node, so each one touches keys of one hash slot only: a session's keys
share the tag ``{tenant:session}`` and a tenant's accounting keys ``{tenant}`` (see ``redis_keys``).
Chunk values live in all slots and are never touched from a script.
"""

from __future__ import annotations

from gearkv.store.backend import COMMIT_IDS_KEPT

# Charge a new chunk to the tenant unless it is already accounted; -1 = over quota (nothing changed).
RESERVE = """
local known = redis.call('ZSCORE', KEYS[1], ARGV[1])
if known then
  if tonumber(ARGV[4]) > tonumber(known) then redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1]) end
  return 1
end
local quota = tonumber(ARGV[5])
local u = redis.call('HMGET', KEYS[3], 'stored', 'manifest_bytes')
local used = tonumber(u[1] or '0') + tonumber(u[2] or '0')
if quota > 0 and used + tonumber(ARGV[2]) > quota then return -1 end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2] .. ':' .. ARGV[3])
redis.call('HINCRBY', KEYS[3], 'stored', ARGV[2])
redis.call('HINCRBY', KEYS[3], 'raw', ARGV[3])
redis.call('HINCRBY', KEYS[3], 'chunks', 1)
return 0
"""

# Standalone Redis, no quota: refresh the chunk's TTL if it exists (1 = deduplicated), else charge
# it to the tenant (0). Pipelined with the SET NX that writes the value: one round trip per upload.
# KEYS: chunk, ledger, sizes, usage. ARGV: member, stored, raw, expires, ttl_ms.
CLAIM = """
if redis.call('PEXPIRE', KEYS[1], ARGV[5]) == 1 then return 1 end
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[2] .. ':' .. ARGV[3])
  redis.call('HINCRBY', KEYS[4], 'stored', ARGV[2])
  redis.call('HINCRBY', KEYS[4], 'raw', ARGV[3])
  redis.call('HINCRBY', KEYS[4], 'chunks', 1)
end
return 0
"""

# Charge a session's manifest to its tenant: the ledger member "s:<session id>" holds the bytes of
# its latest manifest (messages and attributes included), so a commit changes the charge by the
# difference; -1 = a growth over quota (nothing changed). Every byte a tenant makes the store hold
# counts, not only chunks. KEYS: ledger, sizes, usage. ARGV: member, bytes, expires, quota.
CHARGE_SESSION = """
local old = redis.call('HGET', KEYS[2], ARGV[1])
local before = 0
if old then before = tonumber(string.sub(old, 1, string.find(old, ':') - 1)) end
local delta = tonumber(ARGV[2]) - before
local quota = tonumber(ARGV[4])
local u = redis.call('HMGET', KEYS[3], 'stored', 'manifest_bytes')
local used = tonumber(u[1] or '0') + tonumber(u[2] or '0')
if quota > 0 and delta > 0 and used + delta > quota then return -1 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2] .. ':0')
redis.call('HINCRBY', KEYS[3], 'manifest_bytes', delta)
return 0
"""

# Settle ledger entries whose expiry passed: re-score chunks and sessions still alive, release the
# gone ones. ARGV: now, then (member, its key's PTTL) pairs.
SETTLE = """
local now = tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  local member = ARGV[i]
  local pttl = tonumber(ARGV[i + 1])
  if pttl > 0 then
    redis.call('ZADD', KEYS[1], 'XX', now + pttl, member)
  elseif pttl == -1 then
    redis.call('ZADD', KEYS[1], 'XX', now + 86400000, member)
  else
    local sizes = redis.call('HGET', KEYS[2], member)
    if sizes then
      local sep = string.find(sizes, ':')
      local stored = tonumber(string.sub(sizes, 1, sep - 1))
      if string.sub(member, 1, 2) == 's:' then
        redis.call('HINCRBY', KEYS[3], 'manifest_bytes', -stored)
      else
        redis.call('HINCRBY', KEYS[3], 'stored', -stored)
        redis.call('HINCRBY', KEYS[3], 'raw', -tonumber(string.sub(sizes, sep + 1)))
        redis.call('HINCRBY', KEYS[3], 'chunks', -1)
      end
      redis.call('HDEL', KEYS[2], member)
    end
    redis.call('ZREM', KEYS[1], member)
  end
end
return 0
"""

# Milliseconds on the Redis server's clock: leases of every store replica share one clock.
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# Compare-and-set commit of one session (KEYS share a hash tag: one slot, atomic). The session hash
# holds the manifest (field m) beside its version, so nothing can evict one without the other. It keeps
# the last COMMIT_IDS_KEPT commit ids, each with the digest of its request, as fields c<version>
# ("<id> <digest>"; a retry of one replays its version: {1, v}; the id reused for other content is
# refused: {5, v}), so it does not grow with the session's turns. A live lease of another holder
# refuses the commit ({3, holder, ms left}); a version other than the expected one too
# ({0, current}), and so does a manifest mark other than the one the store relied on ({4}: the
# session changed under the commit).
# The commit writes the new manifest's mark and gives back its own lease. Constant work: one HMGET
# reads the kept commit ids, whatever the version.
# KEYS: session, lease. ARGV: expected, commit id, manifest, ttl, turns, tokens, raw, stored,
# updated, holder, lease id, base mark ('' = none relied on), new mark, request digest.
COMMIT = (
    f"local KEPT = {COMMIT_IDS_KEPT}\n"
    + _NOW
    + """
local cur = 0
if redis.call('HEXISTS', KEYS[1], 'm') == 1 then
  cur = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
end
if cur > 0 then
  local names = {}
  for i = cur, math.max(1, cur - KEPT + 1), -1 do names[#names + 1] = 'c' .. i end
  local ids = redis.call('HMGET', KEYS[1], unpack(names))
  for j = 1, #names do
    local rec = ids[j]
    if rec then
      local sp = string.find(rec, ' ', 1, true)
      local id = sp and string.sub(rec, 1, sp - 1) or rec
      if id == ARGV[2] then
        if sp and string.sub(rec, sp + 1) ~= ARGV[14] then return {5, cur - j + 1} end
        return {1, cur - j + 1}
      end
    end
  end
end
local l = redis.call('HMGET', KEYS[2], 'holder', 'id', 'until')
if ARGV[10] ~= '' and l[1] and l[1] ~= ARGV[10] and tonumber(l[3]) > now then
  return {3, l[1], tonumber(l[3]) - now}
end
if cur ~= tonumber(ARGV[1]) then return {0, cur} end
if ARGV[12] ~= '' and redis.call('HGET', KEYS[1], 'mk') ~= ARGV[12] then return {4} end
local v = cur + 1
if cur == 0 then redis.call('DEL', KEYS[1]) end
if v > KEPT then redis.call('HDEL', KEYS[1], 'c' .. (v - KEPT)) end
redis.call('HSET', KEYS[1], 'm', ARGV[3], 'v', v, 'c' .. v, ARGV[2] .. ' ' .. ARGV[14],
  'ttl', ARGV[4], 'turns', ARGV[5], 'tokens', ARGV[6], 'raw', ARGV[7], 'stored', ARGV[8],
  'updated', ARGV[9], 'mk', ARGV[13])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if l[2] and ARGV[11] ~= '' and l[2] == ARGV[11] then redis.call('DEL', KEYS[2]) end
return {2, v}
"""
)

# Take or renew a session's turn lease and read its version (and manifest when it changed).
# KEYS: session, lease. ARGV: holder, lease id, lease ms, known version, default session ttl.
# Returns {0, holder, ms left} while another holder's lease is live, else
# {1, version, abandoned (0/1), abandoned holder, manifest or ''}. A lease that expired without a
# commit or EndTurn (another id) marks its turn abandoned; the mark ('lost') passes to the new lease
# until a commit deletes the lease.
BEGIN_TURN = (
    _NOW
    + """
local l = redis.call('HMGET', KEYS[2], 'holder', 'id', 'until', 'lost', 'lost_holder')
local lost, lost_holder = 0, ''
if l[1] then
  local live = tonumber(l[3]) > now
  if live and l[1] ~= ARGV[1] then return {0, l[1], tonumber(l[3]) - now} end
  if l[4] == '1' then lost, lost_holder = 1, l[5] or '' end
  if not live and l[2] ~= ARGV[2] then lost, lost_holder = 1, l[1] end
end
local lease_ms = tonumber(ARGV[3])
local cur, m = 0, ''
local ttl = tonumber(ARGV[5])
if redis.call('HEXISTS', KEYS[1], 'm') == 1 then
  local h = redis.call('HMGET', KEYS[1], 'v', 'ttl')
  cur = tonumber(h[1] or '0')
  ttl = tonumber(h[2] or ARGV[5])
  redis.call('PEXPIRE', KEYS[1], ttl)
  if cur ~= tonumber(ARGV[4]) then m = redis.call('HGET', KEYS[1], 'm') end
end
redis.call('HSET', KEYS[2], 'holder', ARGV[1], 'id', ARGV[2], 'until', now + lease_ms,
  'lost', lost, 'lost_holder', lost_holder)
redis.call('PEXPIRE', KEYS[2], math.max(ttl, 2 * lease_ms))
return {1, cur, lost, lost_holder, m}
"""
)

# Give a lease back (only if it is still ARGV[1]); an abandoned mark stays, as an expired lease.
END_TURN = """
if redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'lost') == '1' then
  redis.call('HSET', KEYS[1], 'until', 0, 'id', '')
else
  redis.call('DEL', KEYS[1])
end
return 1
"""

# Read a manifest and refresh the session with its own TTL. KEYS: session. ARGV: default ttl.
TOUCH_SESSION = """
local h = redis.call('HMGET', KEYS[1], 'm', 'ttl')
if not h[1] then return false end
redis.call('PEXPIRE', KEYS[1], h[2] or ARGV[1])
return h[1]
"""

# KEYS: session, lease.
DELETE_SESSION = """
local existed = redis.call('HEXISTS', KEYS[1], 'm')
redis.call('DEL', KEYS[1], KEYS[2])
return existed
"""

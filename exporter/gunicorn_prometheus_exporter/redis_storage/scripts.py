"""The Lua scripts: every write and every read of a prefix is one atomic script call, so
a flush is one round trip, a scrape is one round trip, and folding an instance's counts
into the durable totals happens exactly once even when several readers and writers see it
vanish at the same moment.

All keys of a prefix share one hash slot (see ``keys``); ``KEYS[1]`` (the heartbeat set)
routes the call in a Redis Cluster, and the other keys of the prefix are derived from the
base passed in ``ARGV[1]``."""
from __future__ import annotations

import hashlib
from typing import Any, List, Sequence, Tuple

_PRELUDE = r"""
pcall(redis.replicate_commands)
local P = ARGV[1]
local function server_time()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000, t
end
local function folded_type(f)
  return string.sub(f, 1, 8) == 'counter_' or string.sub(f, 1, 10) == 'histogram_'
      or string.sub(f, 1, 8) == 'summary_'
end
-- Fold an incarnation: its counters, histograms and summaries are added to the durable
-- total of its node, its gauges go, and a tombstone makes sure it is never folded twice
-- nor written again under the same name.
local function fold(id, now, snapshot_ttl)
  if redis.call('ZSCORE', P .. 'gone', id) then return 0 end
  local data = P .. 'i:' .. id
  local node = redis.call('HGET', P .. 'node', id)
  if not node then node = '' end
  local total = P .. 't:' .. node
  local flat = redis.call('HGETALL', data)
  local n = 0
  for i = 1, #flat, 2 do
    local f = flat[i]
    if folded_type(f) then
      redis.pcall('HINCRBYFLOAT', total, f, flat[i + 1])
      n = n + 1
    end
  end
  if n > 0 then redis.call('SADD', P .. 'tn', node) end
  if #flat > 0 then
    redis.call('RENAME', data, P .. 'f:' .. id)
    redis.call('EXPIRE', P .. 'f:' .. id, snapshot_ttl)
  end
  redis.call('ZREM', P .. 'hb', id)
  redis.call('HDEL', P .. 'node', id)
  redis.call('ZADD', P .. 'gone', now, id)
  return 1
end
-- Fold every incarnation whose last flush is older than dead_after (but ``except``).
local function reap(now, dead_after, except, snapshot_ttl)
  local n = 0
  local stale = redis.call('ZRANGEBYSCORE', P .. 'hb', '-inf', '(' .. (now - dead_after))
  for _, id in ipairs(stale) do
    if id ~= except then n = n + fold(id, now, snapshot_ttl) end
  end
  return n
end
-- A hash as one string, fields and values separated by NUL: one bulk reply per hash
-- instead of two per field keeps the client's parsing cheap for thousands of series.
local function packed(key)
  return table.concat(redis.call('HGETALL', key), '\0')
end
local function chunked(command, key, items, first, last)
  local batch = {}
  for i = first, last do
    batch[#batch + 1] = items[i]
    if #batch >= 1000 then
      redis.call(command, key, unpack(batch))
      batch = {}
    end
  end
  if #batch > 0 then redis.call(command, key, unpack(batch)) end
end
"""

#: ARGV: base, incarnation, node, meta JSON, full, final, ttl, refresh ttl, dead_after (0: no
#: reaping), snapshot ttl, tombstone seconds, number of field/value pairs, the pairs, then
#: the fields to delete. Returns {status, reaped}: status 'ok', 'resync' (our data is
#: missing: Redis lost it, send everything) or 'folded' (we were folded: take a new name).
FLUSH = _PRELUDE + r"""
local id, node, meta = ARGV[2], ARGV[3], ARGV[4]
local full, final = ARGV[5] == '1', ARGV[6] == '1'
local ttl, refresh = tonumber(ARGV[7]), ARGV[8] == '1'
local dead_after, snapshot_ttl = tonumber(ARGV[9]), tonumber(ARGV[10])
local keep_tombstones = tonumber(ARGV[11])
local npairs = tonumber(ARGV[12])
local now = server_time()
if redis.call('ZSCORE', P .. 'gone', id) then return {'folded', 0} end
local data = P .. 'i:' .. id
if full then
  redis.call('DEL', data)
  redis.call('HSET', data, '@', meta)
  redis.call('HSET', P .. 'node', id, node)
elseif redis.call('EXISTS', data) == 0 then
  return {'resync', 0}
end
local first_del = 13 + 2 * npairs
if npairs > 0 then chunked('HSET', data, ARGV, 13, first_del - 1) end
if #ARGV >= first_del then chunked('HDEL', data, ARGV, first_del, #ARGV) end
redis.call('ZADD', P .. 'hb', now, id)
local reaped = 0
if dead_after > 0 then reaped = reap(now, dead_after, id, snapshot_ttl) end
if final then fold(id, now, snapshot_ttl) end
if refresh or full or final then
  redis.call('ZREMRANGEBYSCORE', P .. 'gone', '-inf', '(' .. (now - keep_tombstones))
  local keys = {P .. 'hb', P .. 'node', P .. 'tn', P .. 'gone'}
  if not final then keys[#keys + 1] = data end
  for _, n in ipairs(redis.call('SMEMBERS', P .. 'tn')) do keys[#keys + 1] = P .. 't:' .. n end
  for _, k in ipairs(keys) do
    if ttl > 0 then redis.call('EXPIRE', k, ttl) else redis.call('PERSIST', k) end
  end
end
return {'ok', reaped}
"""

#: ARGV: base, node ('' for every node), dead_after (0: no reaping), snapshot ttl.
#: Returns {time seconds, time microseconds, reaped, number of nodes, {node, fields}...,
#: {incarnation, heartbeat, node, fields}...}; fields: a hash's HGETALL joined by NUL.
READ = _PRELUDE + r"""
local scope, dead_after, snapshot_ttl = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local now, t = server_time()
local reaped = 0
if dead_after > 0 then reaped = reap(now, dead_after, '', snapshot_ttl) end
local nodes
if scope == '' then nodes = redis.call('SMEMBERS', P .. 'tn') else nodes = {scope} end
local out = {t[1], t[2], reaped, #nodes}
for _, n in ipairs(nodes) do
  out[#out + 1] = n
  out[#out + 1] = packed(P .. 't:' .. n)
end
local hb = redis.call('ZRANGE', P .. 'hb', 0, -1, 'WITHSCORES')
for i = 1, #hb, 2 do
  local id = hb[i]
  local node = redis.call('HGET', P .. 'node', id)
  if not node then node = '' end
  if scope == '' or node == scope then
    out[#out + 1] = id
    out[#out + 1] = hb[i + 1]
    out[#out + 1] = node
    out[#out + 1] = packed(P .. 'i:' .. id)
  end
end
return out
"""

SCRIPTS = {"flush": FLUSH, "read": READ}
SHAS = {name: hashlib.sha1(src.encode()).hexdigest() for name, src in SCRIPTS.items()}


def call(client: Any, name: str, keys: Sequence[str], args: Sequence[Any]) -> Tuple[Any, int]:
    """Run a script by its hash, sending its text only when the server does not know it
    (first use, or after a restart). Returns (reply, round trips)."""
    from redis.exceptions import NoScriptError

    try:
        return client.evalsha(SHAS[name], len(keys), *keys, *args), 1
    except NoScriptError:
        return client.eval(SCRIPTS[name], len(keys), *keys, *args), 2


def unpack_hash(packed: str) -> List[Tuple[str, str]]:
    """Field/value pairs of a hash packed by ``packed()`` in the scripts."""
    if not packed:
        return []
    flat = packed.split("\0")
    return list(zip(flat[0::2], flat[1::2]))

"""The Lua scripts: every write and every read of a prefix is one atomic script call, so
a flush is one round trip, a scrape is one round trip, and folding an instance's counts
into the durable totals happens exactly once even when several readers and writers see it
vanish at the same moment.

All keys of a prefix share one hash slot (see ``keys``); ``KEYS[1]`` (the heartbeat set)
routes the call in a Redis Cluster, and the other keys of the prefix are derived from the
base passed in ``ARGV[1]``."""
from __future__ import annotations

import hashlib
import os
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
-- The inverse of packed(): a list of fields and values.
local function unpacked(s)
  local out = {}
  if s == '' then return out end
  local start = 1
  while true do
    local i = string.find(s, '\0', start, true)
    if not i then
      out[#out + 1] = string.sub(s, start)
      return out
    end
    out[#out + 1] = string.sub(s, start, i - 1)
    start = i + 1
  end
end
-- The prefix's epoch: created by the first write into a prefix that has none (an empty
-- Redis after a restart without persistence, or an expired prefix), so that a reader that
-- knew another epoch knows the data it read before is lost. ``token`` comes from the client.
local function epoch(create, token, ttl)
  local key = P .. 'epoch'
  local e = redis.call('HGET', key, 'id')
  if e or not create then return e or '' end
  local _, t = server_time()
  e = t[1] .. '.' .. string.format('%06d', tonumber(t[2])) .. '-' .. token
  redis.call('HSET', key, 'id', e)
  if ttl > 0 then redis.call('EXPIRE', key, ttl) end
  return e
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
#: reaping), snapshot ttl, tombstone seconds, the epoch this writer last wrote under ('' if
#: none), a token for a new epoch, number of field/value pairs, the pairs, then the fields to
#: delete. Returns {status, reaped, epoch}: status 'ok', 'resync' (our data is missing or is
#: not of our epoch: Redis lost it, send everything) or 'folded' (we were folded: take a new
#: name). A full flush creates the prefix's epoch if there is none; every flush checks that
#: its data carries the epoch of its last flush ('@e'), one HGET.
FLUSH = _PRELUDE + r"""
local id, node, meta = ARGV[2], ARGV[3], ARGV[4]
local full, final = ARGV[5] == '1', ARGV[6] == '1'
local ttl, refresh = tonumber(ARGV[7]), ARGV[8] == '1'
local dead_after, snapshot_ttl = tonumber(ARGV[9]), tonumber(ARGV[10])
local keep_tombstones = tonumber(ARGV[11])
local known, token = ARGV[12], ARGV[13]
local npairs = tonumber(ARGV[14])
local now = server_time()
if redis.call('ZSCORE', P .. 'gone', id) then return {'folded', 0, ''} end
local data = P .. 'i:' .. id
local e = known
if full then
  e = epoch(true, token, ttl)
  redis.call('DEL', data)
  redis.call('HSET', data, '@', meta, '@e', e)
  redis.call('HSET', P .. 'node', id, node)
elseif known == '' or redis.call('HGET', data, '@e') ~= known then
  -- our data is gone, or was put back by a reader after a loss (without '@e')
  return {'resync', 0, ''}
end
local first_del = 15 + 2 * npairs
if npairs > 0 then chunked('HSET', data, ARGV, 15, first_del - 1) end
if #ARGV >= first_del then chunked('HDEL', data, ARGV, first_del, #ARGV) end
redis.call('ZADD', P .. 'hb', now, id)
local reaped = 0
if dead_after > 0 then reaped = reap(now, dead_after, id, snapshot_ttl) end
if final then fold(id, now, snapshot_ttl) end
if refresh or full or final then
  redis.call('ZREMRANGEBYSCORE', P .. 'gone', '-inf', '(' .. (now - keep_tombstones))
  local keys = {P .. 'hb', P .. 'node', P .. 'tn', P .. 'gone', P .. 'epoch'}
  if not final then keys[#keys + 1] = data end
  for _, n in ipairs(redis.call('SMEMBERS', P .. 'tn')) do keys[#keys + 1] = P .. 't:' .. n end
  for _, k in ipairs(keys) do
    if ttl > 0 then redis.call('EXPIRE', k, ttl) else redis.call('PERSIST', k) end
  end
end
return {'ok', reaped, e}
"""

# The read of a prefix, shared by READ and RESTORE. ARGV[2..4]: node ('' for every node),
# dead_after (0: no reaping), snapshot ttl. Appends to ``out`` {time seconds, time
# microseconds, reaped, epoch ('' if none), number of nodes, {node, fields}...,
# {incarnation, heartbeat, node, fields}...}; fields: a hash's HGETALL joined by NUL.
_READ_BODY = r"""
local function read_prefix(out)
  local scope, dead_after, snapshot_ttl = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
  local now, t = server_time()
  local reaped = 0
  if dead_after > 0 then reaped = reap(now, dead_after, '', snapshot_ttl) end
  local nodes
  if scope == '' then nodes = redis.call('SMEMBERS', P .. 'tn') else nodes = {scope} end
  for _, v in ipairs({t[1], t[2], reaped, epoch(false), #nodes}) do out[#out + 1] = v end
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
end
"""

#: ARGV: base, node ('' for every node), dead_after (0: no reaping), snapshot ttl.
READ = _PRELUDE + _READ_BODY + r"""
return read_prefix({})
"""

#: After a reader found the epoch changed (Redis lost data it had read): put back what it
#: remembers, then read as READ does. ARGV: base, node, dead_after, snapshot ttl (as READ),
#: the epoch the reader knew, a token for a new epoch, ttl, then what it last read:
#: * number of nodes, {node, fields}...: the durable totals per node;
#: * number of tombstones, {incarnation, node}...: instances it saw folded;
#: * number of instances, {incarnation, node, fields}...: the instances it served.
#: Each node is restored once per epoch, by the first reader to get here with a memory of it
#: (non-empty totals, instances or tombstones), from that reader's memory alone, so that two
#: memories taken at different moments never both count one instance: the totals are added
#: (HINCRBYFLOAT: folds done since the loss stay), the tombstones put back, and every
#: instance that has neither written since the loss (heartbeat) nor been folded since gets
#: its remembered fields back, marked '@r' (a full flush of its writer replaces them), with
#: the heartbeat of now: it is served until its writer flushes again, or folded from these
#: values by the usual reaping after dead_after. A later reader only raises the counters of
#: instances restored so (per field, the larger value: it may have read them later).
#: Returns {nodes restored, instances restored, instances merged}, then READ's reply.
RESTORE = _PRELUDE + _READ_BODY + r"""
local ttl = tonumber(ARGV[7])
local e = epoch(true, ARGV[6], ttl)
local result = {0, 0, 0}
if e ~= ARGV[5] then
  local now = server_time()
  local stamp = P .. 'epoch'
  local mine = {}
  local function claim(node)
    if mine[node] == nil then
      mine[node] = redis.call('HSETNX', stamp, 't:' .. node, now) == 1
      if mine[node] then result[1] = result[1] + 1 end
    end
    return mine[node]
  end
  local touched = {}
  local i = 8
  for _ = 1, tonumber(ARGV[i]) do
    local node, flat = ARGV[i + 1], unpacked(ARGV[i + 2])
    i = i + 2
    if #flat > 0 and claim(node) then
      local total = P .. 't:' .. node
      for j = 1, #flat, 2 do
        if folded_type(flat[j]) then redis.pcall('HINCRBYFLOAT', total, flat[j], flat[j + 1]) end
      end
      redis.call('SADD', P .. 'tn', node)
      touched[#touched + 1] = total
    end
  end
  i = i + 1
  for _ = 1, tonumber(ARGV[i]) do
    local id, node = ARGV[i + 1], ARGV[i + 2]
    i = i + 2
    if claim(node) and not redis.call('ZSCORE', P .. 'hb', id) then
      redis.call('ZADD', P .. 'gone', 'NX', now, id)
    end
  end
  i = i + 1
  for _ = 1, tonumber(ARGV[i]) do
    local id, node, flat = ARGV[i + 1], ARGV[i + 2], unpacked(ARGV[i + 3])
    i = i + 3
    local data = P .. 'i:' .. id
    local mine_node = claim(node)
    if redis.call('ZSCORE', P .. 'gone', id) then
      -- folded since the loss, or known as folded by the reader that restored its node
    elseif not redis.call('ZSCORE', P .. 'hb', id) then
      if mine_node then
        redis.call('DEL', data)
        chunked('HSET', data, flat, 1, #flat)
        redis.call('HDEL', data, '@e')
        redis.call('HSET', data, '@r', e)
        redis.call('HSET', P .. 'node', id, node)
        redis.call('ZADD', P .. 'hb', now, id)
        touched[#touched + 1] = data
        result[2] = result[2] + 1
      end
    elseif redis.call('HGET', data, '@r') == e then
      for j = 1, #flat, 2 do
        if folded_type(flat[j]) then
          local have = tonumber(redis.call('HGET', data, flat[j]))
          local value = tonumber(flat[j + 1])
          if value and (not have or value > have) then
            redis.call('HSET', data, flat[j], flat[j + 1])
          end
        end
      end
      result[3] = result[3] + 1
    end
  end
  if ttl > 0 then
    for _, k in ipairs({P .. 'hb', P .. 'node', P .. 'tn', P .. 'gone', stamp}) do
      touched[#touched + 1] = k
    end
    for _, k in ipairs(touched) do
      if redis.call('EXISTS', k) == 1 then redis.call('EXPIRE', k, ttl) end
    end
  end
end
return read_prefix(result)
"""

SCRIPTS = {"flush": FLUSH, "read": READ, "restore": RESTORE}
SHAS = {name: hashlib.sha1(src.encode()).hexdigest() for name, src in SCRIPTS.items()}


def token() -> str:
    """Random part of a new epoch (only used when the script creates one)."""
    return os.urandom(6).hex()


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

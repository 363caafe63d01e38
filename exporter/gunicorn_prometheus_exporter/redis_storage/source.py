"""The Redis reader of the standalone exporter (``serve`` with ``REDIS_ENABLED=true``).

One script call per scrape returns a whole prefix (or one node's part of it): the durable
totals and every live instance's shards, after folding instances whose heartbeat is older
than ``Timing.dead_after``. The shards are merged by the directory collector's ``Merger``,
so the exposition is exactly what file mode gives, with these rules across instances:

* counters, histograms and summaries are summed (the same labels as in file mode);
* the plugin's own gauges (per worker and per master: memory, in flight, capacity,
  desired workers, ...) and gauges of multiprocess mode ``all``/``liveall`` carry an
  ``instance`` label; other gauges of the application merge by their mode (sum, max, min,
  most recent) across instances.

With ``REDIS_SCOPE=node`` only the instances that run on ``NODE_NAME`` (and the totals of
that node's ended instances) are served, so that one exporter per node never serves a
series another one serves too.

Redis losing its data (a restart without persistence) never makes a served counter go
backwards: the reader remembers what its last read served and under which epoch of the
prefix; a read that finds another epoch puts back, in one more script call (``RESTORE``),
the durable totals and the instances that have not flushed since, and reads again."""
from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

from prometheus_client.metrics_core import Metric

from .. import families
from ..collector import Merger, ReadStats, Shard, gc_paused, health_families
from . import connection, scripts
from .keys import (EXEMPLAR_SHARD, META_FIELD, SEPARATOR, TOMBSTONE_SECONDS, Layout, Timing,
                   parse_shard)

_PLUGIN_IDENTITY = re.compile(r"^[wm]\d+(\.monitor)?$")


class _View:
    """One shard of one instance (or of a node's totals) with its keys in a stable order."""

    __slots__ = ("shard", "keys", "positions", "recent")

    def __init__(self, shard: Shard) -> None:
        self.shard = shard
        self.keys: List[str] = []
        self.positions: Dict[str, int] = {}
        self.recent = shard.op == "recent"


def _extra(typ: str, mode: str, identity: str, incarnation: str) -> Tuple[Tuple[str, str], ...]:
    if typ == "gauge" and (mode in ("all", "liveall") or _PLUGIN_IDENTITY.match(identity)):
        return (("instance", incarnation),)
    return ()


def _exemplars(entries: Dict[str, str]) -> List[tuple]:
    """The exemplars of an instance's exemplar shard (unreadable fields left out)."""
    out = []
    for key, text in entries.items():
        parts = text.split(" ")
        if len(parts) == 4:
            try:
                out.append((key, float(parts[0]), float(parts[1]), parts[2], parts[3]))
            except ValueError:
                continue
    return out


class RedisSource:
    def __init__(self, settings: Any, log: logging.Logger) -> None:
        r = settings.redis
        self.settings = settings
        self.log = log
        self.layout = Layout(r.key_prefix)
        self.timing = Timing.from_settings(settings)
        self.scope = r.node_name if r.scope == "node" else ""
        where = connection.describe(settings)
        scope = f", node {self.scope!r}" if self.scope else ", all nodes"
        self.description = f"{where} prefix {r.key_prefix!r}{scope}"
        self._password = connection.target(settings).password
        self.state = ReadStats()
        self.merger = Merger()
        self._views: Dict[Tuple[str, str, str], _View] = {}
        self._lock = threading.Lock()
        self._client: Any = None
        self._was_up: Optional[bool] = None
        self._healthy_since: Optional[float] = None
        self.instances: Dict[str, float] = {}  # served incarnation -> flush age
        self.round_trips = 0
        self.folded = 0
        self.restores = 0
        # what the last read served, per epoch of the prefix (see ``_restore``)
        self._epoch = ""
        self._totals: Dict[str, str] = {}  # node -> packed durable totals
        self._served: Dict[str, Tuple[str, str]] = {}  # incarnation -> (node, packed fields)
        self._gone: Dict[str, Tuple[str, float]] = {}  # folded -> (node, monotonic when seen)

    # -- the source interface --------------------------------------------------------------
    def collect(self) -> Iterator[Any]:
        with self._lock:
            families = self.read()
        yield from families
        yield from health_families(self.state, "redis")
        yield from self._health()

    def ready(self) -> bool:
        """Redis reads are bounded by the client's socket timeouts."""
        return True

    def warm_up(self) -> None:
        """Nothing read at start: a read here decides what counters continue from (see
        ``_restore``), so only scrapes read Redis."""

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # noqa: BLE001
                pass
            self._client = None

    # -- reading ---------------------------------------------------------------------------
    def read(self) -> List[Metric]:
        started = time.perf_counter()
        try:
            with gc_paused():
                families = self._read()
        except (*connection.errors(), ValueError, IndexError, TypeError) as exc:
            # unreachable, refused, or a reply we cannot parse (keys of the prefix written
            # by something else): health metrics only, the scrape itself never fails
            families = []
            self.state.source_up = 0
            self.instances = {}
            self._healthy_since = None
            if self._was_up is not False:
                self.log.error("cannot read %s (%s); serving health metrics only until it "
                               "answers", self.description, self._safe(exc))
            self._was_up = False
            if self.settings.redis.cluster or self.settings.redis.sentinels:
                self.close()
        else:
            self.state.source_up = 1
            self.state.last_success = time.time()
            if self._was_up is False:
                self.log.info("reading %s again", self.description)
            self._was_up = True
        self.state.last_duration = time.perf_counter() - started
        return families

    def _read(self) -> List[Metric]:
        if self._client is None:
            self._client = connection.connect(self.settings)
        now = time.monotonic()
        if self._healthy_since is None:
            reap = False
        else:
            reap = now - self._healthy_since >= self.timing.dead_after
        args = [self.layout.base, self.scope or "", self.timing.dead_after if reap else 0,
                self.timing.snapshot_ttl]
        reply, trips = scripts.call(self._client, "read", [self.layout.hb], args)
        i = 0
        epoch = str(reply[3])
        if self._epoch and epoch != self._epoch and (self._served or self._gone
                                                      or any(self._totals.values())):
            reply, more = self._restore(args, epoch)
            trips += more
            i = 3
            epoch = str(reply[i + 3])
        if self._healthy_since is None:
            self._healthy_since = now
        self.round_trips = trips
        server_now = int(reply[i]) + int(reply[i + 1]) / 1e6
        folded = int(reply[i + 2])
        if folded:
            self.folded += folded
            self.log.info("folded %d vanished instance(s) of prefix %r into its totals",
                          folded, self.layout.prefix)
        batches: List[Tuple[Shard, list]] = []
        self._exemplars: list = []  # filled by _add from the instances' exemplar shards
        seen = set()
        values_read = 0
        totals: Dict[str, str] = {}
        served: Dict[str, Tuple[str, str]] = {}
        nodes = int(reply[i + 4])
        i += 5
        for _ in range(nodes):  # totals of ended instances, per node
            node, flat = reply[i], reply[i + 1]
            i += 2
            totals[node] = flat
            values_read += self._add("t", node, "", flat, batches, seen)
        instances: Dict[str, float] = {}
        while i < len(reply):
            incarnation, heartbeat, node, flat = reply[i:i + 4]
            i += 4
            served[incarnation] = (node, flat)
            instances[incarnation] = max(0.0, server_now - float(heartbeat))
            values_read += self._add("i", incarnation, incarnation, flat, batches, seen)
        for gone in set(self._views) - seen:
            del self._views[gone]
        self._remember(epoch, totals, served, now)
        self.instances = instances
        self.state.last_files = len(batches)
        self.state.last_values = values_read
        families = self.merger.merge(batches, self.merger.newest_exemplars(self._exemplars))
        if len(self.merger.registry.keys) > 4 * values_read + 10000:
            self.merger = Merger()  # forget series of long-gone instances
            self.state.resets += 1
            self._views.clear()
        return families

    def _restore(self, args: list, epoch: str) -> Tuple[Any, int]:
        """Redis lost data we read (its epoch changed): put back the durable totals and the
        instances that have not flushed since, from what we served last, then read."""
        restore = [*args, self._epoch, scripts.token(), self.timing.ttl, len(self._totals)]
        for node, flat in self._totals.items():
            restore += (node, flat)
        restore.append(len(self._gone))
        for incarnation, (node, _) in self._gone.items():
            restore += (incarnation, node)
        restore.append(len(self._served))
        for incarnation, (node, flat) in self._served.items():
            restore += (incarnation, node, flat)
        reply, trips = scripts.call(self._client, "restore", [self.layout.hb], restore)
        nodes, restored, merged = int(reply[0]), int(reply[1]), int(reply[2])
        self.restores += 1
        self.log.warning("%s lost data (epoch %r, now %r): restored %d node(s) from the "
                         "values last read (durable totals, and %d instance(s) that have not "
                         "flushed since: served until they flush again or are folded); %d "
                         "instance(s) restored by another reader", self.description,
                         self._epoch, epoch or None, nodes, restored, merged)
        return reply, trips

    def _remember(self, epoch: str, totals: Dict[str, str],
                  served: Dict[str, Tuple[str, str]], now: float) -> None:
        """What this read served: restored by ``_restore`` should Redis lose it."""
        if epoch == self._epoch:
            for incarnation, (node, _) in self._served.items():
                if incarnation not in served:  # folded (the only way out of the heartbeats)
                    self._gone[incarnation] = (node, now)
        else:
            self._gone.clear()
        while self._gone:
            oldest = next(iter(self._gone))
            if len(self._gone) <= 10000 and now - self._gone[oldest][1] < TOMBSTONE_SECONDS:
                break
            del self._gone[oldest]
        self._epoch = epoch
        self._totals = totals
        self._served = served

    def _add(self, kind: str, owner: str, incarnation: str, packed: str,
             batches: List[Tuple[Shard, list]], seen: set) -> int:
        grouped: Dict[str, Dict[str, str]] = {}
        for name, value in scripts.unpack_hash(packed):
            if name.startswith(META_FIELD):  # '@' (about the instance), '@r' (restored)
                continue
            shard, _, key = name.partition(SEPARATOR)
            grouped.setdefault(shard, {})[key] = value
        count = 0
        exemplars = grouped.pop(EXEMPLAR_SHARD, None)
        if exemplars:
            self._exemplars += _exemplars(exemplars)
        for shard_name, entries in grouped.items():
            view = self._view(kind, owner, incarnation, shard_name, entries)
            if view is None:
                continue
            seen.add((kind, owner, shard_name))
            if len(view.keys) > len(view.shard.targets):
                self.merger.index(view.shard, view.keys)
            values: list = []
            try:
                if view.recent:
                    for key in view.keys:
                        value, _, stamp = entries[key].partition(" ")
                        values += (float(value), float(stamp or 0.0))
                else:
                    values = [float(entries[key]) for key in view.keys]
            except ValueError:
                self.state.read_errors += 1
                continue
            batches.append((view.shard, values))
            count += len(view.keys)
        return count

    def _view(self, kind: str, owner: str, incarnation: str, shard_name: str,
              entries: Dict[str, str]) -> Optional[_View]:
        key = (kind, owner, shard_name)
        view = self._views.get(key)
        if view is not None and any(k not in entries for k in view.keys):
            view = None  # fields went away: number this shard afresh
        if view is None:
            parsed = parse_shard(shard_name)
            if parsed is None:
                self.state.read_errors += 1
                return None
            extra = _extra(parsed.typ, parsed.mode, parsed.identity, incarnation) \
                if incarnation else ()
            view = self._views[key] = _View(Shard(parsed.typ, parsed.mode, parsed.identity,
                                                  extra))
        for k in entries:
            if k not in view.positions:
                view.positions[k] = len(view.keys)
                view.keys.append(k)
        return view

    # -- health ----------------------------------------------------------------------------
    def _health(self) -> Iterator[Metric]:
        def metric(spec: families.Family) -> Metric:
            return Metric(spec.name, spec.help, spec.typ)

        served = metric(families.REDIS_INSTANCES)
        served.add_sample(families.REDIS_INSTANCES.sample, {}, len(self.instances))
        yield served
        if self.instances:
            age = metric(families.REDIS_FLUSH_AGE)
            for incarnation, seconds in sorted(self.instances.items()):
                age.add_sample(families.REDIS_FLUSH_AGE.sample, {"instance": incarnation},
                               round(seconds, 3))
            yield age
        trips = metric(families.REDIS_ROUND_TRIPS)
        trips.add_sample(families.REDIS_ROUND_TRIPS.sample, {}, self.round_trips)
        yield trips
        folded = metric(families.REDIS_FOLDED)
        folded.add_sample(families.REDIS_FOLDED.sample, {}, self.folded)
        yield folded

    def _safe(self, exc: BaseException) -> str:
        text = f"{type(exc).__name__}: {exc}"
        if self._password:
            text = text.replace(self._password, "********")
        return text

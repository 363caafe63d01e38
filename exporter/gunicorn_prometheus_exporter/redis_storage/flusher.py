"""Ships one gunicorn instance's multiprocess directory to Redis.

Runs as a background task of the metrics server process (one per gunicorn master), never
in a worker: requests only ever touch their local mapped files. Every ``flush_interval``
it reads the directory (the same incremental readers as the collector), compares each
shard's values with what Redis already has, and sends only the changed fields, the
removed ones and a heartbeat in one script call: one round trip, a handful of Redis
commands per flush whatever the request rate.

What is sent is state (absolute values), not events: a flush that fails is simply
superseded by the next one, an outage of any length costs no memory, and Redis losing
its data (a restart without persistence) is repaired by sending everything again: the
flush script tells a flusher so when the prefix's epoch (see ``scripts``) is not the one of
its previous flush, even if a reader has meanwhile put remembered values back.

Lifetimes (see ``scripts``): ``close()`` (the metrics process's SIGTERM at gunicorn's
shutdown) sends the final values and folds the instance into the durable per-prefix
totals in the same atomic call, unless another master shares the directory (a USR2
upgrade continues it). An instance that vanishes without closing is folded by the first
reader or writer that finds its heartbeat older than ``Timing.dead_after``. If that
happens to a live instance (a flusher stalled that long), its flusher finds itself folded,
takes the next incarnation name and subtracts what was folded (a baseline) from then on,
so nothing is counted twice."""
from __future__ import annotations

import json
import os
import random
import re
import socket
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .. import families
from ..collector import DirectoryCollector
from ..master_id import MasterId
from ..storage import directory as storage_dir
from ..storage.store import ProcessStore
from ..version import __version__
from ..writer import Writer
from . import connection, instance, scripts
from .keys import (EXEMPLAR_SHARD, FOLDED_TYPES, META_FIELD, TOMBSTONE_SECONDS, Layout,
                   Timing, field, shard_name)

_MASTER = re.compile(r"^m\d+$")
#: a full resend now and then repairs a Redis restored from an older snapshot
FULL_EVERY = 300.0
HEALTH_SUFFIX = ".redis"


class Flusher:
    name = "redis-flush"

    def __init__(self, settings: Any, directory: str, log: Any,
                 master: Optional[MasterId] = None) -> None:
        """``master``: whom the metrics process works for (default: its parent, with no
        claimed identity: no health gauges, no other master to tell apart)."""
        r = settings.redis
        self.master = master if master is not None else MasterId(os.getppid(), None)
        self.settings = settings
        self.directory = directory
        self.log = log
        self.interval = r.flush_interval
        self.timing = Timing.from_settings(settings)
        self.layout = Layout(r.key_prefix)
        self.node = r.node_name or ""
        self.where = connection.describe(settings)
        self._password = connection.target(settings).password
        self.collector = DirectoryCollector(directory)
        self.incarnation, self.baseline, closed_by = instance.load(
            directory, instance.default_name(r.instance_id), self.master.pid)
        #: our master already folded this instance at its shutdown (and then started this
        #: metrics process again while exiting): nothing left to ship
        self.closed = closed_by is not None and closed_by == self.master.pid
        self._client: Any = None
        self._sent: Dict[str, Dict[str, str]] = {}
        #: shard name -> (generation, values) last shipped: the same values of another
        #: file under the name (other keys) are no reason to skip it
        self._last_values: Dict[str, Optional[Tuple[int, tuple]]] = {}
        #: shard name -> (generation of the file's keys, field names of those keys)
        self._names: Dict[str, Tuple[int, List[str]]] = {}
        self._need_full = True
        #: the prefix's epoch of our last flush: when it changes, Redis lost what we sent
        self._epoch = ""
        self._up: Optional[bool] = None
        self._failures = 0
        self._retry_at = 0.0
        self._healthy_since: Optional[float] = None
        self._last_reap = self._last_refresh = self._last_full = float("-inf")
        self.last_success: Optional[float] = None
        self.reaped = 0
        self._health = _health_writer(directory, self.master, log)
        self._meta = json.dumps({"host": socket.gethostname(), "node": self.node,
                                 "pid": os.getppid(),
                                 "started": instance.master_start(self.master.pid),
                                 "version": __version__}, sort_keys=True)

    # -- the task --------------------------------------------------------------------------
    def run(self) -> None:
        now = time.monotonic()
        if now < self._retry_at or self.closed:
            return
        started = time.perf_counter()
        try:
            self._flush(final=False)
        except connection.errors() as exc:
            self._failed(exc)
            return
        self._succeeded(time.perf_counter() - started)

    def close(self) -> None:
        """Final flush, and fold this instance into the totals (graceful shutdown)."""
        if self.closed:
            return
        fold = not self._other_master_live()
        if self._up is False:
            self.log.warning("prometheus: %s is unreachable at shutdown; instance %s keeps "
                             "its last flushed values and is folded by the next reader or "
                             "writer after %.0fs", self.where, self.incarnation,
                             self.timing.dead_after)
        else:
            try:
                self._flush(final=fold)
                if fold:
                    self.closed = True
                    instance.save(self.directory, self.incarnation, self.baseline,
                                  closed_by=self.master.pid)
                    self.log.info("prometheus: folded instance %s into the totals of Redis "
                                  "prefix %r", self.incarnation, self.layout.prefix)
            except connection.errors() as exc:
                self.log.warning("prometheus: final flush to %s failed (%s); instance %s is "
                                 "folded by the next reader or writer after %.0fs", self.where,
                                 self._safe(exc), self.incarnation, self.timing.dead_after)
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # noqa: BLE001 - closing only
                pass
            self._client = None

    # -- one flush -------------------------------------------------------------------------
    def _connect(self) -> Any:
        if self._client is None:
            self._client = connection.connect(self.settings)
        return self._client

    def _flush(self, final: bool) -> None:
        client = self._connect()
        now = time.monotonic()
        full = self._need_full or now - self._last_full >= FULL_EVERY
        status = self._ship(client, full, final)
        if status == "resync":
            status = self._ship(client, True, final)
        if status == "folded":
            self._revive(client)
            status = self._ship(client, True, final)
        if status != "ok":
            raise _Unexpected(f"unexpected flush reply {status!r}")

    def _ship(self, client: Any, full: bool, final: bool) -> str:
        pairs, deletes, staged, gone = self._changes(full)
        now = time.monotonic()
        t = self.timing
        reap = (self._healthy_since is not None
                and now - self._healthy_since >= t.dead_after
                and now - self._last_reap >= t.dead_after / 4)
        refresh = now - self._last_refresh >= (max(1.0, t.ttl / 4) if t.ttl else 3600.0)
        args = [self.layout.base, self.incarnation, self.node, self._meta, int(full),
                int(final), t.ttl, int(refresh), t.dead_after if reap else 0,
                t.snapshot_ttl, TOMBSTONE_SECONDS, self._epoch, scripts.token(),
                len(pairs) // 2, *pairs, *deletes]
        reply, _ = scripts.call(client, "flush", [self.layout.hb], args)
        status, reaped = str(reply[0]), int(reply[1])
        if status != "ok":
            return status
        self._epoch = str(reply[2])
        for name, (fields, values) in staged.items():
            self._sent[name] = fields
            self._last_values[name] = values
        for name in gone:
            self._sent.pop(name, None)
            self._last_values.pop(name, None)
            self._names.pop(name, None)
        if full:
            self._need_full = False
            self._last_full = now
        if reap:
            self._last_reap = now
        if refresh:
            self._last_refresh = now
        if reaped:
            self.reaped += reaped
            self.log.info("prometheus: folded %d vanished instance(s) of Redis prefix %r "
                          "into its totals", reaped, self.layout.prefix)
        return status

    def _changes(self, full: bool) -> Tuple[List[str], List[str], Dict[str, tuple], List[str]]:
        pairs: List[str] = []
        deletes: List[str] = []
        staged: Dict[str, tuple] = {}
        seen = set()
        for shard, reader, values in self.collector.shards():
            if shard.identity.endswith(HEALTH_SUFFIX):
                continue
            name = shard_name(shard.typ, shard.mode, shard.identity)
            seen.add(name)
            shipped = (shard.generation, values)
            if not full and self._last_values.get(name) == shipped:
                continue
            fields = self._fields(name, shard, reader.keys, values)
            old = {} if full else self._sent.get(name, {})
            for f, v in fields.items():
                if old.get(f) != v:
                    pairs += (f, v)
            deletes += [f for f in old if f not in fields]
            staged[name] = (fields, shipped)
        exemplars = self._exemplar_fields()
        if exemplars or EXEMPLAR_SHARD in self._sent:
            seen.add(EXEMPLAR_SHARD)
            old = {} if full else self._sent.get(EXEMPLAR_SHARD, {})
            for f, v in exemplars.items():
                if old.get(f) != v:
                    pairs += (f, v)
            deletes += [f for f in old if f not in exemplars]
            staged[EXEMPLAR_SHARD] = (exemplars, None)
        gone = [name for name in self._sent if name not in seen]
        if not full:
            for name in gone:
                deletes += list(self._sent[name])
        return pairs, deletes, staged, gone

    def _exemplar_fields(self) -> Dict[str, str]:
        """The newest exemplar of each sample across the instance's workers, as fields."""
        newest: Dict[str, tuple] = {}
        for key, timestamp, value, trace_id, span_id in self.collector.exemplars():
            if key not in newest or newest[key][0] < timestamp:
                newest[key] = (timestamp, value, trace_id, span_id)
        return {field(EXEMPLAR_SHARD, key): f"{t!r} {v!r} {trace} {span}"
                for key, (t, v, trace, span) in newest.items()}

    def _fields(self, name: str, shard: Any, keys: Sequence[str],
                values: tuple) -> Dict[str, str]:
        cached = self._names.get(name)
        if cached is None or cached[0] != shard.generation or len(cached[1]) > len(keys):
            cached = self._names[name] = (shard.generation, [])  # a new file: new keys
        names = cached[1]
        prefix = name + "\n"
        names.extend(prefix + key for key in keys[len(names):])
        if shard.op == "recent":
            return {f: f"{values[2 * i]!r} {values[2 * i + 1]!r}" for i, f in enumerate(names)}
        base = self.baseline if shard.typ in FOLDED_TYPES else None
        if base:
            return {f: repr(values[i] - base.get(f, 0.0)) for i, f in enumerate(names)}
        return {f: repr(values[i]) for i, f in enumerate(names)}

    def _revive(self, client: Any) -> None:
        """We were folded while alive: go on under the next incarnation, subtracting what
        the totals already hold of our values."""
        old = self.incarnation
        folded = client.hgetall(self.layout.snapshot(old))
        source = "the folded snapshot"
        if not folded:
            folded = {f: v for fields in self._sent.values() for f, v in fields.items()}
            source = "the last flushed values"
        baseline = dict(self.baseline)
        if folded:
            for f, v in folded.items():
                if f != META_FIELD and f.split("_", 1)[0] in FOLDED_TYPES:
                    baseline[f] = baseline.get(f, 0.0) + float(v)
        else:  # nothing known: the directory as it is now was folded
            source = "the directory's current values"
            for shard, reader, values in self.collector.shards():
                if shard.typ in FOLDED_TYPES and not shard.identity.endswith(HEALTH_SUFFIX):
                    name = shard_name(shard.typ, shard.mode, shard.identity)
                    for i, key in enumerate(reader.keys):
                        baseline[name + "\n" + key] = values[i]
        self.incarnation = instance.next_incarnation(old)
        self.closed = False
        self.baseline = baseline
        instance.save(self.directory, self.incarnation, baseline)
        self._sent.clear()
        self._last_values.clear()
        self._names.clear()
        self._need_full = True
        self.log.warning("prometheus: instance %s was folded into the Redis totals while "
                         "alive (no flush for %.0fs); continuing as %s with a baseline from "
                         "%s", old, self.timing.dead_after, self.incarnation, source)

    # -- health ----------------------------------------------------------------------------
    def _succeeded(self, duration: float) -> None:
        now = time.monotonic()
        if self._up is False:
            self.log.info("prometheus: %s is reachable again; flushed instance %s",
                          self.where, self.incarnation)
        self._up = True
        self._failures = 0
        if self._healthy_since is None:
            self._healthy_since = now
        self.last_success = time.time()
        self._set_health(1.0, duration)

    def _failed(self, exc: BaseException) -> None:
        self._failures += 1
        delay = min(self.timing.backoff_cap, 0.25 * 2 ** min(self._failures - 1, 10))
        self._retry_at = time.monotonic() + delay * random.uniform(0.8, 1.2)
        self._need_full = True
        self._healthy_since = None
        if self._up is not False:
            self.log.warning("prometheus: cannot flush metrics to %s (%s); requests are "
                             "unaffected and recorded locally, flushing resumes when it "
                             "answers (retrying in the background)", self.where,
                             self._safe(exc))
        else:
            self.log.debug("prometheus: %s still unreachable: %s", self.where, self._safe(exc))
        self._up = False
        if self.settings.redis.cluster or self.settings.redis.sentinels:
            self._drop_client()
        self._set_health(0.0, None)

    def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001
                pass

    def _set_health(self, up: float, duration: Optional[float]) -> None:
        if self._health is None:
            return
        try:
            self._health.set_gauge(families.REDIS_UP, up)
            if self.last_success is not None:
                self._health.set_gauge(families.REDIS_LAST_FLUSH, self.last_success)
            if duration is not None:
                self._health.set_gauge(families.REDIS_FLUSH_DURATION, duration)
        except OSError:
            pass

    def _safe(self, exc: BaseException) -> str:
        text = f"{type(exc).__name__}: {exc}"
        if self._password:
            text = text.replace(self._password, "********")
        return text

    def _other_master_live(self) -> bool:
        own = self.master.identity
        try:
            live = storage_dir.live_identities(self.directory)
        except OSError:
            return False
        return any(alive and _MASTER.match(identity) and identity != own
                   for identity, alive in live.items())


class _Unexpected(Exception):
    pass


def _health_writer(directory: str, master: MasterId, log: Any) -> Optional[Writer]:
    """Gauges of this flusher in the directory, under the master's identity plus
    ``.redis`` (alive exactly as long as the master), served by the instance's own
    metrics server and never shipped."""
    if master.identity is None:
        return None
    try:
        return Writer(ProcessStore(directory, master.identity + HEALTH_SUFFIX), log=log)
    except OSError:
        return None

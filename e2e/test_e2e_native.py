"""Native histograms, end to end: a real Prometheus 2.42 with
``--enable-feature=native-histograms`` (it then asks for the protobuf exposition and ingests a
histogram that has native buckets as native only) scrapes real gunicorn, sync and gevent
workers, two each, and a Redis-mode pair through the standalone exporter.

Requests of known durations (``/slow?ms=``) in three groups whose sizes put p50, p90 and p99
each inside one group, with durations just above a bucket's lower bound so that scheduling
overhead keeps a group in one bucket. Asserted through PromQL: ``histogram_count`` equals
the requests sent, exactly; ``histogram_quantile`` is within the schema's bound of the true
quantile of the durations sent; no counter reset over a worker's SIGKILL (the slot's next
worker continues its counts)."""
from __future__ import annotations

import http.client
import math
import os
import signal
import threading
import time
import uuid
from typing import List

import pytest

import promapi
from gunicorn_prometheus_exporter.storage import native
from promapi import JOB
from support.procs import Exporter, Gunicorn, wait_pid_gone
from support.redis import RedisServer, redis_env

SCHEMA = 3
#: what Prometheus 2.42's histogram_quantile can be off by: it interpolates linearly inside
#: the bucket that holds the rank, so one bucket's width, 2^(2^-schema) - 1 (9.05% at 3);
#: the geometric midpoint of a bucket would be within native.relative_error (4.33%)
BOUND = 2.0 ** (2.0 ** -SCHEMA) - 1.0
#: (milliseconds, requests): 0.4-0.6% above the lower bounds of buckets -18, -8 and 0, so
#: that up to 8% (15 ms at the shortest) of scheduling overhead keeps a group in one bucket
GROUPS = ((194, 30), (460, 16), (921, 2))
#: the group that holds each quantile's rank (ranks 24, 44 and 48 of 48)
GROUP_OF = {0.5: 194, 0.9: 460, 0.99: 921}
DURATION = "gunicorn_http_request_duration_seconds"


@pytest.fixture(scope="module")
def native_prometheus(tmp_path_factory):
    binary = promapi.prometheus_binary()
    if binary is None:
        pytest.skip("prometheus is not installed (apt-get install prometheus; make system-deps)")
    prom = promapi.Prometheus(binary, tmp_path_factory.mktemp("prometheus-native"), None,
                             features=("native-histograms",))
    yield prom
    prom.stop()


class Timed:
    """Sends ``/slow?ms=`` requests and keeps the duration each asked for."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.durations: List[float] = []
        self.failures: List[str] = []

    def send(self, port: int, ms: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request("GET", f"/slow?ms={ms}")
            resp = conn.getresponse()
            resp.read()
            with self.lock:
                if resp.status == 200:
                    self.durations.append(ms / 1000.0)
                else:
                    self.failures.append(f"/slow?ms={ms}: {resp.status}")
        except OSError as exc:
            with self.lock:
                self.failures.append(f"/slow?ms={ms}: {exc!r}")
        finally:
            conn.close()

    def groups(self, ports: List[int]) -> None:
        """Every group's requests, spread over ``ports``, two clients per port (one per
        worker: a request never waits for a busy sync worker)."""
        threads = 2 * len(ports)
        work = [ms for ms, n in GROUPS for _ in range(n)]
        lock = threading.Lock()

        def client() -> None:
            while True:
                with lock:
                    if not work:
                        return
                    ms = work.pop()
                    port = ports[len(work) % len(ports)]
                self.send(port, ms)

        clients = [threading.Thread(target=client, daemon=True) for _ in range(threads)]
        for c in clients:
            c.start()
        for c in clients:
            c.join(120)
        assert not self.failures, self.failures[:5]

    def quantile(self, q: float) -> float:
        """The value of rank ceil(q * n), as histogram_quantile ranks."""
        ordered = sorted(self.durations)
        return ordered[max(1, math.ceil(q * len(ordered) - 1e-9)) - 1]


def _assert_native(prom, scenario: str, timed: Timed, since: float) -> None:
    sel = f'job="{JOB}",scenario="{scenario}",route="/slow"'
    total = float(len(timed.durations))
    prom.wait_for(f"histogram_count(sum({DURATION}{{{sel}}}))", total, timeout=30)
    # ingested as native only: no classic bucket series for this family
    assert prom.query(f"{DURATION}_bucket{{{sel}}}") == []
    for q in (0.5, 0.9, 0.99):
        got = prom.scalar(f"histogram_quantile({q}, sum({DURATION}{{{sel}}}))")
        true = timed.quantile(q)
        assert true == GROUP_OF[q] / 1000.0
        assert got is not None and abs(got - true) <= BOUND * true, (q, got, true)
    _assert_never_decreased(prom, sel, since)


def _assert_never_decreased(prom, sel: str, since: float) -> None:
    """Every stored sample of histogram_count per series, over the whole scenario, is at
    least the one before it: no counter reset, whatever happened to the workers."""
    series = prom.query_range(f"histogram_count({DURATION}{{{sel}}})", since, time.time(),
                              step=1.0)
    assert series, f"no native series for {sel}"
    for s in series:
        values = [v for _, v in s["values"]]
        drops = [(a, b) for a, b in zip(values, values[1:]) if b < a]
        assert not drops, (s["metric"], drops)


@pytest.mark.parametrize("worker_class", ["sync", "gunicorn_prometheus_exporter."
                                                   "PrometheusGeventWorker"],
                         ids=["sync", "gevent"])
def test_native_histogram_counts_quantiles_and_sigkill(native_prometheus, tmp_path,
                                                        worker_class):
    if "Gevent" in worker_class:
        pytest.importorskip("gevent")
    prom = native_prometheus
    scenario = f"native_{worker_class.rsplit('.', 1)[-1]}"
    since = time.time()
    g = Gunicorn(tmp_path, worker_class=worker_class, workers=2,
                 env={"PROMETHEUS_NATIVE_SCHEMA": str(SCHEMA)})
    try:
        g.wait_ready(workers=2)
        prom.add_target(g.metrics_port, scenario)
        timed = Timed()
        timed.groups([g.port])
        _assert_native(prom, scenario, timed, since)
        # a worker killed once its requests are recorded; its slot's next worker continues
        g.scrape_until(lambda s: s.total("gunicorn_http_requests_total") == len(timed.durations)
                       and s.value("gunicorn_workers", state="busy") == 0)
        victim = g.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        wait_pid_gone(victim)
        g.wait_ready(workers=2)
        timed.groups([g.port])
        _assert_native(prom, scenario, timed, since)
    finally:
        prom.remove_target(scenario)
        g.stop()


@pytest.mark.redis
def test_native_histogram_of_a_redis_mode_pair(native_prometheus, tmp_path):
    """Two instances ship their native buckets to Redis; the standalone exporter merges them
    and serves them to the protobuf scrape."""
    prom = native_prometheus
    scenario = "native_redis"
    since = time.time()
    started: list = []
    try:
        server = RedisServer(tmp_path)
        started.append(server)
        env = redis_env(server, "native" + uuid.uuid4().hex[:8],
                        PROMETHEUS_NATIVE_SCHEMA=SCHEMA)
        gs = []
        for i in range(2):
            directory = tmp_path / f"g{i}"
            directory.mkdir()
            g = Gunicorn(directory, workers=2, env=env)
            started.append(g)
            g.wait_ready(workers=2)
            gs.append(g)
        exporter = Exporter(env)
        started.append(exporter)
        prom.add_target(exporter.port, scenario)
        timed = Timed()
        timed.groups([g.port for g in gs])
        _assert_native(prom, scenario, timed, since)
    finally:
        prom.remove_target(scenario)
        for item in reversed(started):
            item.stop()


def test_group_durations_sit_just_above_a_bucket_bound():
    """The premise of the quantile checks: each group's duration is less than 1% above its
    bucket's lower bound, leaving more than 7% of the bucket for overhead."""
    for ms, _ in GROUPS:
        index = native.bucket_index(ms / 1000.0, SCHEMA)
        lower = native.upper_bound(SCHEMA, index - 1)
        assert 1.0 < ms / 1000.0 / lower < 1.01, ms

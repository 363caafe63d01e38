"""Redis mode, end to end: two gunicorn instances ship their metrics to one Redis (our own
redis-server on a free loopback port), the standalone exporter (`gunicorn-prometheus-exporter
serve`, REDIS_ENABLED=true) serves the aggregate, and the real Prometheus scrapes the exporter.
Exact totals through faults: SIGKILL of a worker, Redis killed and restarted empty, HUP,
max_requests churn and a USR2 upgrade of one instance."""
import os
import signal
import time
import uuid

import pytest

from promapi import JOB, SCRAPE_INTERVAL as SCRAPE
from promql_checks import assert_no_resets, assert_totals
from support.procs import Exporter, Gunicorn, wait_pid_gone
from support.redis import RedisServer, redis_env, redis_server_bin
from traffic import Background, Ledger, burst
from support.scrape import scrape
from support.wait import until

pytestmark = pytest.mark.redis


@pytest.fixture
def redis_stack(scenario, prometheus, tmp_path):
    """start(n_instances, **gunicorn kwargs) -> (redis, [gunicorn...], exporter); the exporter
    is the one target Prometheus scrapes for this scenario."""
    redis_server_bin()
    started = []

    def start(instances=2, extra_args=None, **kwargs):
        server = RedisServer(tmp_path)
        started.append(server)
        env = redis_env(server, "e2e" + uuid.uuid4().hex[:8])
        gs = [scenario(workers=2, scraped=False, env=env, label=f"{scenario.name}_g{i}",
                       extra_args=(extra_args or {}).get(i), **kwargs)
              for i in range(instances)]
        exporter = Exporter(env)
        started.append(exporter)
        exporter.label = scenario.name
        prometheus.add_target(exporter.port, scenario.name)
        return server, gs, exporter

    yield start
    prometheus.remove_target(scenario.name)
    for item in reversed(started):
        item.stop()


def recorded(gs):
    """Requests the instances themselves report (their own metrics port)."""
    return sum(g.scrape().total("gunicorn_http_requests_total") for g in gs)


def test_two_instances_through_sigkill_and_redis_restart(redis_stack, prometheus, scenario):
    since = time.time()
    server, gs, exporter = redis_stack(instances=2)
    ports = [g.port for g in gs]
    ledger = Ledger()
    burst(ports, ledger, 180)
    assert_totals(prometheus, scenario.name, ledger, since)
    sel = f'job="{JOB}",scenario="{scenario.name}"'
    prometheus.wait_for(f"gunicorn_exporter_redis_instances{{{sel}}}", 2.0)

    # SIGKILL a worker of the first instance (once what it answered is recorded)
    until(lambda: recorded(gs) == ledger.total, message="requests recorded")
    victim = gs[0].worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    wait_pid_gone(victim)
    gs[0].wait_ready(workers=2)
    burst(ports, ledger, 180)
    assert_totals(prometheus, scenario.name, ledger, since)
    prometheus.wait_for(f'sum(gunicorn_master_worker_restart_total{{{sel},reason="killed"}})',
                        1.0)

    # Redis killed while both instances serve; restarted empty 3 s later
    with Background(gs[0].port, ledger) as bg0, Background(gs[1].port, ledger) as bg1:
        until(lambda: bg0.sent > 20 and bg1.sent > 20, message="traffic to start")
        server.stop()
        prometheus.wait_for(f'gunicorn_exporter_source_up{{{sel},source="redis"}}', 0.0,
                            timeout=10)
        down_at = time.monotonic()
        until(lambda: time.monotonic() - down_at >= 3, timeout=5, message="3 s of outage")
        server.start()
        prometheus.wait_for(f'gunicorn_exporter_source_up{{{sel},source="redis"}}', 1.0,
                            timeout=10)
        prometheus.wait_for(f"gunicorn_exporter_redis_instances{{{sel}}}", 2.0)
        settled_at = time.time() + SCRAPE  # the next scrape sees both instances again
        mark = bg0.sent + bg1.sent
        until(lambda: bg0.sent + bg1.sent >= mark + 60 and time.time() > settled_at + 3,
              message="traffic after the restart")
    assert_totals(prometheus, scenario.name, ledger, since, timeout=30)
    prometheus.wait_for(f"gunicorn_exporter_redis_instances{{{sel}}}", 2.0)
    # No reset over the whole run: while Redis is down the exporter serves no series, and
    # once it is back it never serves a partial sum (the reader restores what Redis lost
    # until every instance has flushed again; see test_redis_restart_never_serves_...).
    assert_no_resets(prometheus, scenario.name, since)


def test_redis_restart_never_serves_a_partial_aggregate(tmp_path):
    """Minimal reproduction, no Prometheus: two instances, 20 requests each, no traffic
    after that; Redis restarted empty. The second instance's metrics process (its flusher) is
    paused for 1.5 s across the restart (less than the 3 s after which an instance counts as
    dead), which only widens the window in which it has not re-flushed yet. The exporter's
    total must never be below the 40 it served before the outage."""
    redis_server_bin()
    server = RedisServer(tmp_path)
    env = redis_env(server, "e2e" + uuid.uuid4().hex[:8])
    gs, exporter, paused = [], None, None
    try:
        for _ in range(2):  # one after the other: see test_two_instances_started_together
            gs.append(Gunicorn(tmp_path, workers=1, env=env).wait_ready(workers=1))
        exporter = Exporter(env)
        burst([g.port for g in gs], Ledger(), 40)
        until(lambda: exporter_total(exporter) == 40, timeout=15, message="40 requests served")
        server.stop()
        until(lambda: exporter_total(exporter) == 0, timeout=10, message="the outage seen")
        paused = gs[1].monitor_pid()
        os.kill(paused, signal.SIGSTOP)
        server.start()
        served = []
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:  # bounded: 1.5 s of reads, every 20 ms
            served.append(exporter_total(exporter))
            time.sleep(0.02)
        os.kill(paused, signal.SIGCONT)
        paused = None
        until(lambda: exporter_total(exporter) == 40, timeout=10, message="40 served again")
        assert min(t for t in served if t) == 40, f"served after the restart: {sorted(set(served))}"
    finally:
        if paused is not None:
            os.kill(paused, signal.SIGCONT)
        if exporter is not None:
            exporter.stop()
        for g in gs:
            g.stop()
        server.stop()


def test_two_instances_started_together_are_two_instances(tmp_path):
    """Two gunicorn masters started back to back on this host (as two services of one machine
    may be), 20 requests each: the exporter serves 2 instances and 40 requests. (Their Redis
    instance ids once collided when both starts fell in one clock tick; fixed in e85c84e by
    adding the master's pid.)"""
    redis_server_bin()
    server = RedisServer(tmp_path)
    env = redis_env(server, "e2e" + uuid.uuid4().hex[:8])
    gs, exporter = [], None
    try:
        gs = [Gunicorn(tmp_path, workers=1, env=env) for _ in range(2)]  # no wait between
        for g in gs:
            g.wait_ready(workers=1)
        exporter = Exporter(env)
        burst([g.port for g in gs], Ledger(), 40)
        assert recorded(gs) == 40
        until(lambda: exporter_total(exporter) == 40, timeout=10,
              message="the exporter to serve both instances' 40 requests")
        assert scrape(exporter.port).value("gunicorn_exporter_redis_instances") == 2
    finally:
        if exporter is not None:
            exporter.stop()
        for g in gs:
            g.stop()
        server.stop()


def exporter_total(exporter) -> float:
    return scrape(exporter.port).total("gunicorn_http_requests_total")


def test_hup_churn_and_usr2_of_one_instance(redis_stack, prometheus, scenario, tmp_path):
    """Instance 0 reloads (HUP) and is upgraded (USR2, then TERM of the old master);
    instance 1 churns workers (--max-requests 7). The aggregate stays exact and monotonic."""
    since = time.time()
    pidfile = str(tmp_path / "g0.pid")
    server, gs, exporter = redis_stack(
        instances=2, extra_args={0: ["--pid", pidfile],
                                 1: ["--max-requests", "7", "--max-requests-jitter", "0"]})
    ledger = Ledger()
    sel = f'job="{JOB}",scenario="{scenario.name}"'
    with Background(gs[0].port, ledger) as bg0, Background(gs[1].port, ledger) as bg1:
        until(lambda: bg0.sent > 30 and bg1.sent > 30, message="traffic to start")
        gs[0].signal(signal.SIGHUP)
        gs[0].scrape_until(lambda s: s.total("gunicorn_master_worker_restart_total",
                                             reason="reload") == 2, timeout=30)
        mark = bg0.sent
        until(lambda: bg0.sent >= mark + 30, message="traffic after HUP")
        old = gs[0].pid
        gs[0].signal(signal.SIGUSR2)
        until(lambda: os.path.exists(pidfile + ".2"), timeout=30, message="new master")
        new = int(open(pidfile + ".2").read())
        until(lambda: len(_children(new)) >= 3, timeout=30, message="new master's workers")
        mark = bg0.sent
        until(lambda: bg0.sent >= mark + 30, message="traffic, both masters up")
        os.kill(old, signal.SIGTERM)  # graceful: QUIT would cut requests short
        wait_pid_gone(old)
        mark = bg0.sent
        until(lambda: bg0.sent >= mark + 30, message="traffic after the old master left")
    assert not ledger.failures, "\n".join(
        ledger.failures[:10] + [f"--- instance {g.port} ---\n{g.output()[-5000:]}" for g in gs])
    assert_totals(prometheus, scenario.name, ledger, since, timeout=30)
    restarts = prometheus.by(f"sum by (reason) (gunicorn_master_worker_restart_total{{{sel}}})",
                             "reason")
    assert restarts.get(("reload",)) == 2.0, restarts
    assert restarts.get(("max_requests",), 0) >= (bg1.sent // 2) // 7 - 1, restarts
    assert_no_resets(prometheus, scenario.name, since)


def _children(pid):
    import psutil
    try:
        return psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return []

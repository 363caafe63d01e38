"""Redis down at run time and at start-up: no request fails or slows, nothing is lost."""
import threading
import time

import psutil
import pytest

from redis_procs import (RedisServer, bounded_wait, exporter, prefix,  # noqa: F401
                         redis_env, redis_server, requests_total, send)
from support.procs import free_port
from support.wait import until

pytestmark = pytest.mark.redis


class Load(threading.Thread):
    """Requests one after another until stopped (bounded: at most 60 s, 100,000 requests)."""

    def __init__(self, g) -> None:
        super().__init__(daemon=True)
        self.g = g
        self.stop = threading.Event()
        self.sent = 0
        self.failed = []
        self.latencies = []  # (start monotonic, seconds)

    def run(self) -> None:
        deadline = time.monotonic() + 60
        while not self.stop.is_set() and time.monotonic() < deadline and self.sent < 100000:
            started = time.monotonic()
            try:
                status, _ = self.g.request("/", timeout=10)
                if status != 200:
                    self.failed.append(status)
            except OSError as exc:
                self.failed.append(repr(exc))
            self.latencies.append((started, time.monotonic() - started))
            self.sent += 1


def test_redis_down_for_10s_under_load(start_gunicorn, redis_server, exporter, prefix):
    server = redis_server()
    g = start_gunicorn(env=redis_env(server, prefix)).wait_ready(2)
    e = exporter(redis_env(server, prefix))
    monitor = psutil.Process(g.monitor_pid())
    load = Load(g)
    load.start()
    until(lambda: load.sent > 50, timeout=20, message="load to start")
    e.scrape_until(lambda s: requests_total(s) > 0)
    rss_before = monitor.memory_info().rss

    server.stop()
    down_at = time.monotonic()
    g.scrape_until(lambda s: s.value("gunicorn_exporter_redis_up") == 0)
    assert e.scrape().value("gunicorn_exporter_source_up", source="redis") == 0
    bounded_wait(10 - (time.monotonic() - down_at))
    up_at = time.monotonic()
    server.start()  # same port, empty: without persistence Redis lost everything
    bounded_wait(1)
    load.stop.set()
    load.join(15)
    assert not load.failed
    during = [secs for started, secs in load.latencies if down_at <= started <= up_at]
    assert len(during) > 100
    assert max(during) < 1.0, max(during)  # a Redis timeout would show as >= 1 s here

    # the flusher sends the whole state again: exact totals, although Redis lost them
    s = e.scrape_until(lambda s: requests_total(s) == load.sent, timeout=30)
    assert s.total("gunicorn_http_request_duration_seconds_count") == load.sent
    g.scrape_until(lambda s: s.value("gunicorn_exporter_redis_up") == 1)
    assert monitor.memory_info().rss - rss_before < 8 * 1024 * 1024
    out = g.output()
    assert out.count("cannot flush metrics to redis://") == 1  # once, not per retry
    assert "is reachable again" in out


def test_start_with_redis_down_then_up(start_gunicorn, exporter, prefix, tmp_path):
    port = free_port()

    class Absent:  # where Redis will be
        pass
    absent = Absent()
    absent.port = port
    g = start_gunicorn(env=redis_env(absent, prefix)).wait_ready(2)
    send(g, 5)
    g.scrape_until(lambda s: s.value("gunicorn_exporter_redis_up") == 0
                       and requests_total(s) == 5)
    assert "cannot flush metrics to redis://127.0.0.1:%d/0" % port in g.output()
    server = RedisServer(tmp_path, port=port)
    try:
        e = exporter(redis_env(server, prefix))
        e.scrape_until(lambda s: requests_total(s) == 5, timeout=30)
        g.scrape_until(lambda s: s.value("gunicorn_exporter_redis_up") == 1)
        send(g, 2)
        e.scrape_until(lambda s: requests_total(s) == 7)
    finally:
        server.stop()

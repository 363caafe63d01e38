"""The metrics port under hostile clients (issue 13): a flood of connections that idle,
trickle their headers or do not read their answers never keeps a well-behaved scraper out;
a header prometheus_client cannot parse is the client's problem, not a server error; the
basic auth scheme is case-insensitive and an absolute-form request target is served."""
from __future__ import annotations

import base64
import http.client
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import pytest

from support.hostile import Flood
from support.procs import Gunicorn
from support.scrape import Scrape

HOSTILE = 200
SCRAPES = 200
REQUIRED = 0.99
SCRAPE_DEADLINE = 2.0


def _proc_status(pid: int) -> Dict[str, str]:
    with open(f"/proc/{pid}/status") as fh:
        return dict(line.rstrip("\n").split(":\t", 1) for line in fh if ":\t" in line)


def _threads_and_rss(pid: int) -> Tuple[int, int]:
    status = _proc_status(pid)
    return int(status["Threads"]), int(status["VmRSS"].split()[0])


def _scrape_once(port: int) -> Optional[Scrape]:
    """One scrape by a well-behaved client on a new connection: its answer, or None when
    the answer was not a complete 200 within SCRAPE_DEADLINE seconds."""
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=SCRAPE_DEADLINE)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200 or time.monotonic() - started > SCRAPE_DEADLINE:
            return None
        return Scrape(body.decode())
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def test_hostile_flood_leaves_scrapes_answered_with_bounded_threads(start_gunicorn):
    """200 hostile connections (idle, slowloris, slow readers), reopened as soon as the
    server ends them: at least 99% of 200 scrapes get a full 200 within 2 s, the metrics
    process never has more than its connection cap of threads for connections, and its
    memory stays bounded."""
    from gunicorn_prometheus_exporter.server.http import MAX_CONNECTIONS

    g: Gunicorn = start_gunicorn(workers=1)
    g.wait_ready(workers=1)
    monitor = g.monitor_pid()
    baseline = _scrape_once(g.metrics_port)
    assert baseline is not None
    threads_before, rss_before = _threads_and_rss(monitor)
    answered = 0
    threads_most, rss_most = threads_before, rss_before
    with Flood(g.metrics_port, count=HOSTILE) as flood:
        # the flood is in place: every hostile connection open
        deadline = time.monotonic() + 20
        while flood.report.most_open < HOSTILE and time.monotonic() < deadline:
            time.sleep(0.05)
        assert flood.report.most_open == HOSTILE, flood.report
        for _ in range(SCRAPES):
            scraped = _scrape_once(g.metrics_port)
            # an exact value in each answer: the one worker's capacity series
            if scraped is not None and len(scraped.series("gunicorn_worker_capacity")) == 1:
                answered += 1
            threads, rss = _threads_and_rss(monitor)
            threads_most, rss_most = max(threads_most, threads), max(rss_most, rss)
            time.sleep(0.02)  # the scraper's own pace
        report = flood.stop()
    assert report.errors == []
    print(f"\nscrapes answered within {SCRAPE_DEADLINE:g} s under {HOSTILE} hostile "
          f"connections: {answered}/{SCRAPES}; hostile connections opened {report.opened}, "
          f"reopened after the server ended them {report.reopened}; threads {threads_before}"
          f" -> at most {threads_most}; RSS {rss_before} -> at most {rss_most} KiB")
    assert answered >= REQUIRED * SCRAPES, (answered, report, g.output()[-3000:])
    assert report.reopened > 0  # the server did end hostile connections to make room
    # one thread per connection at most, whatever the flood
    assert threads_most <= threads_before + MAX_CONNECTIONS
    assert rss_most - rss_before < 64 * 1024, (rss_before, rss_most)
    assert g.proc.poll() is None and monitor == g.monitor_pid()  # nothing restarted


# -- in-process server: headers and targets ------------------------------------------------------

class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: List[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def server(request) -> Iterator[Tuple[int, _Records]]:
    """The metrics server in this process (users from the ``users`` marker's dict of
    user -> password), one collect function with one exact sample."""
    from prometheus_client.core import CounterMetricFamily

    from gunicorn_prometheus_exporter.server.http import Exposition, MetricsServer
    from gunicorn_prometheus_exporter.server.sockets import listening_socket
    from gunicorn_prometheus_exporter.server.webconfig import WebConfig

    def collect():
        family = CounterMetricFamily("hostile_test_scrapes", "test family")
        family.add_metric([], 7.0)
        yield family

    users = getattr(request, "param", {}) or {}
    web = WebConfig()
    if users:
        import bcrypt

        web.users = {u: bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=4))
                     for u, p in users.items()}
    records = _Records()
    log = logging.getLogger(f"hostile-{id(records)}")
    log.setLevel(logging.DEBUG)
    log.addHandler(records)
    log.propagate = False
    srv = MetricsServer(listening_socket("127.0.0.1", 0), Exposition(collect, "test"), web, log)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield srv.server_address[1], records
    finally:
        srv.shutdown()
        srv.server_close()


def _raw(port: int, request: bytes) -> Tuple[int, Dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()


def _get(port: int, target: str = "/metrics",
         headers: Optional[Dict[str, str]] = None) -> Tuple[int, Dict[str, str], bytes]:
    """One raw ``GET target`` with ``headers`` verbatim (no client library normalises a
    hostile value), on a connection closed after the answer."""
    lines = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    return _raw(port, f"GET {target} HTTP/1.1\r\nHost: x\r\n{lines}"
                      "Connection: close\r\n\r\n".encode())


@pytest.mark.parametrize("accept", [
    "application/openmetrics-text; version=abc",
    "text/plain; version=1.x.y",
    "application/openmetrics-text; version=1.x, text/plain;q=0.5",
])
def test_hostile_accept_header_gets_text_format_and_logs_no_error(server, accept):
    port, records = server
    for _ in range(20):
        status, headers, body = _get(port, headers={"Accept": accept})
        assert status == 200
        assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert Scrape(body.decode()).value("hostile_test_scrapes_total") == 7.0
    assert [r.getMessage() for r in records.records if r.levelno >= logging.WARNING] == []


@pytest.mark.parametrize("target", [
    "http://127.0.0.1:9091/metrics",
    "HTTP://localhost/metrics?x=1",
    "https://example.test:443/metrics",
])
def test_hostile_absolute_form_target_is_served(server, target):
    port, _ = server
    status, headers, body = _get(port, target)
    assert status == 200
    assert Scrape(body.decode()).value("hostile_test_scrapes_total") == 7.0


def test_hostile_absolute_form_of_other_paths(server):
    port, _ = server
    for target, expected in (("http://127.0.0.1:9091", b"OK"),  # no path: "/"
                             ("http://127.0.0.1:9091/-/healthy", b"OK\n"),
                             ("http://127.0.0.1:9091/nope", b"Not Found\n")):
        status, _, body = _get(port, target)
        if expected == b"OK":
            assert status == 200 and body.startswith(b"<!DOCTYPE html>")
        else:
            assert body == expected


def _auth(scheme: str, user: str, password: str) -> str:
    return f"{scheme} " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize("server", [{"prom": "s3cret"}], indirect=True)
@pytest.mark.parametrize("scheme", ["Basic", "basic", "BASIC", "bAsIc"])
def test_hostile_basic_auth_scheme_is_case_insensitive(server, scheme):
    port, _ = server
    ok = _get(port, headers={"Authorization": _auth(scheme, "prom", "s3cret")})
    assert ok[0] == 200
    assert Scrape(ok[2].decode()).value("hostile_test_scrapes_total") == 7.0
    wrong = _get(port, headers={"Authorization": _auth(scheme, "prom", "wrong")})
    assert wrong[0] == 401
    other = _get(port, headers={"Authorization": f"Bearer {_auth('', 'prom', 's3cret')[1:]}"})
    assert other[0] == 401

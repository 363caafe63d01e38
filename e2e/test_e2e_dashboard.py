"""The dashboard's rows of queue time, protocols and WebSockets, and the dirty-worker pool,
run as Grafana runs them: every query of those rows, with the dashboard's variables filled
in for this scenario, evaluated by the real Prometheus scraping real gunicorn (the native
ASGI worker with h2c and a WebSocket echo, and a WSGI app with gunicorn 27's dirty pool)."""
import json
import os
import signal
import time
from pathlib import Path

import pytest

from apps.dirty_app import DIRTY_APP, POOL_ARGS
from chart.metric_names import DASHBOARD
from promapi import JOB

TESTS = ["--chdir", str(Path(__file__).resolve().parents[1] / "tests")]
ASGI = "gunicorn_prometheus_exporter.PrometheusASGIWorker"
H2C = ["--http-protocols", "h2,h1", "--http2-cleartext", "both"]
ROWS = ("Queue time", "Protocols and WebSockets", "Dirty workers")
SELECTOR = '{job=~"$job", namespace=~"$namespace"'


def row_queries() -> dict:
    """{panel title: [expr of each target]} of the panels in the rows of ``ROWS``."""
    dash = json.loads(DASHBOARD.read_text())
    rows = [p for p in dash["panels"] if p["type"] == "row" and p["title"].startswith(ROWS)]
    assert len(rows) == len(ROWS)
    return {p["title"]: [t["expr"] for t in p["targets"]]
            for row in rows for p in row["panels"]}


def filled(expr: str, scenarios: str) -> str:
    """The query Grafana sends with $job = this suite's job, narrowed to ``scenarios`` (one
    Prometheus serves every test), every namespace, and a 1 min rate interval."""
    assert SELECTOR in expr, expr
    return (expr.replace(SELECTOR, f'{{job="{JOB}", scenario=~"{scenarios}"')
            .replace("$__rate_interval", "1m"))


def _values(prometheus, promql: str) -> dict:
    """{(values of the labels but job and namespace, in label-name order): value}."""
    return {tuple(v for k, v in sorted(r["metric"].items()) if k not in ("job", "namespace")):
            r["value"] for r in prometheus.query(promql)}


def test_queue_time_protocol_websocket_and_dirty_rows_show_what_was_sent(scenario, prometheus):
    pytest.importorskip("gunicorn.dirty", reason="gunicorn >= 27 (dirty workers)")
    httpx = pytest.importorskip("httpx", reason="tests/requirements-frameworks.txt")
    pytest.importorskip("h2", reason="tests/requirements-frameworks.txt")
    pytest.importorskip("websockets", reason="tests/requirements-frameworks.txt")
    from websockets.sync.client import connect

    web = scenario(workers=1, label=f"{scenario.name}_asgi", app="apps.traced:asgi_app",
                   worker_class=ASGI, extra_args=TESTS + H2C)
    pool = scenario(workers=1, label=f"{scenario.name}_dirty", app="apps.dirty_app:app",
                    extra_args=TESTS + POOL_ARGS)
    scenarios = f"{web.label}|{pool.label}"
    sel = f'job="{JOB}", scenario=~"{scenarios}"'
    # every series these rows read exists at zero in the first scrape but those whose labels
    # come with the first request (route, status) or failure: one of each first, then the
    # rest once Prometheus holds them, so that rate() sees every request after it
    assert pool.request("/fail") == (500, b"DirtyAppError")
    assert pool.request("/square?x=2") == (200, b"4")
    assert web.request("/")[0] == 200
    prometheus.wait_for(f"sum(gunicorn_dirty_task_failures_total{{{sel}}})", 1.0)
    prometheus.wait_for(f"sum(gunicorn_http_requests_total{{{sel}}})", 3.0)

    # five requests the proxy stamped 150 ms before sending (queued in (0.1, 0.25] s), two
    # with a malformed stamp
    for _ in range(5):
        stamp = f"t={time.time() - 0.15:.3f}"
        assert web.request("/", headers={"X-Request-Start": stamp})[0] == 200
    for _ in range(2):
        assert web.request("/", headers={"X-Request-Start": "t=soon"})[0] == 200
    with httpx.Client(http1=False, http2=True, base_url=f"http://127.0.0.1:{web.port}") as c:
        for _ in range(3):
            assert c.get("/").http_version == "HTTP/2"
    url = f"ws://127.0.0.1:{web.port}/echo"
    with connect(url) as closed:
        closed.send("a")
        assert closed.recv(10) == "a"
    for path in ("/square?x=3", "/square?x=4", "/fail"):
        assert pool.request(path)[0] in (200, 500)
    os.kill(pool.dirty_pids()[0], signal.SIGTERM)  # a dirty worker exits (and is replaced)

    with connect(url) as held:  # open while the dashboard is read
        held.send("b")
        assert held.recv(10) == "b"
        prometheus.wait_for(f"sum(gunicorn_websocket_connections{{{sel}}})", 1.0)
        prometheus.wait_for(f"sum(gunicorn_http_request_queue_duration_seconds_count{{{sel}}})",
                            5.0)
        prometheus.wait_for(f"sum by (state) (gunicorn_dirty_workers{{{sel}}})",
                            {("busy",): 0.0, ("idle",): 2.0}, labels=("state",), timeout=30)
        prometheus.wait_for(f"sum(gunicorn_dirty_worker_exits_total{{{sel}}})", 1.0,
                            timeout=30)
        prometheus.wait_for(f"sum(gunicorn_dirty_tasks_total{{{sel}}})", 5.0)
        results = {title: [_values(prometheus, filled(e, scenarios)) for e in exprs]
                   for title, exprs in row_queries().items()}

    def within(values: dict, low: float, high: float) -> bool:
        return bool(values) and all(low < v <= high for v in values.values())

    queue = results["Queue time p50 / p90 / p99"]
    assert len(queue) == 3 and all(within(q, 0.1, 0.25) for q in queue), queue
    invalid, stamped = results["Queue stamps not observed, by reason"]
    assert set(invalid) == {("malformed",), ("negative",), ("too_large",)}
    assert invalid[("malformed",)] > 0 and invalid[("negative",)] == invalid[("too_large",)] == 0
    assert within(stamped, 0, 1e9), stamped
    by_protocol, http11 = results["Requests by protocol"]
    assert set(by_protocol) == {("HTTP/1.0",), ("HTTP/2",), ("websocket",)}, by_protocol
    assert by_protocol[("HTTP/1.0",)] == 0 and by_protocol[("HTTP/2",)] > 0
    assert by_protocol[("websocket",)] > 0 and within(http11, 0, 1e9), http11
    assert results["Open WebSocket connections"] == [{(): 1.0}]  # sum by (pod): no pod here
    durations = results["WebSocket connection duration p50 / p90 / p99"]
    assert len(durations) == 3 and all(within(d, 0, 1.0) for d in durations), durations
    busy_idle, desired = results["Dirty workers busy / idle"]
    assert busy_idle == {("busy",): 0.0, ("idle",): 2.0} and desired == {(): 2.0}
    tasks, = results["Dirty tasks per app"]
    assert set(tasks) == {(DIRTY_APP,)} and within(tasks, 0, 1e9), tasks
    task_durations = results["Dirty task duration p50 / p90 / p99 per app"]
    assert all(set(d) == {(DIRTY_APP,)} and within(d, 0, 0.005) for d in task_durations)
    failures, = results["Dirty task failures by app and error type"]
    assert set(failures) == {(DIRTY_APP, "ValueError")} and within(failures, 0, 1e9), failures
    exits, = results["Dirty worker exits by reason"]
    assert exits[("exited",)] > 0 and all(v == 0 for k, v in exits.items() if k != ("exited",))


"""Failed requests are exactly the requests whose application raised, on every worker type,
when connections close after each response: with gunicorn's keep-alive off and with a
client that sends ``Connection: close``. (gunicorn's async workers end a connection by
raising StopIteration after the response; that was once counted as a failed request.)"""
from __future__ import annotations

import http.client
import os
from collections import Counter
from typing import Dict, List, Tuple

import pytest

from frameworks.mix import eventlet_gunicorn, exporter_path_env, require
from support.procs import REPO, Gunicorn

PREFIX = "gunicorn_prometheus_exporter."
#: name -> (worker class, app attribute of tests/apps/raising.py, packages it needs)
WORKERS: Dict[str, Tuple[str, str, Tuple[str, ...]]] = {
    "sync": ("PrometheusWorker", "app", ()),
    "gthread": ("PrometheusThreadWorker", "app", ()),
    "gevent": ("PrometheusGeventWorker", "app", ("gevent",)),
    "eventlet": ("PrometheusEventletWorker", "app", ()),
    "asgi": ("PrometheusASGIWorker", "asgi", ()),
    "uvicorn": ("PrometheusUvicornWorker", "asgi", ("uvicorn", "uvicorn_worker")),
}
#: how each connection ends after one response
MODES = {
    "keepalive-off": (["--keep-alive", "0"], {}),
    "connection-close": ([], {"Connection": "close"}),
}
#: path -> requests sent; /error and /late raise (before and after the status line)
PLAN = {"/": 7, "/error": 3, "/late": 2}


def _send(port: int, path: str, headers: Dict[str, str]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        expected = 500 if path == "/error" else 200
        assert resp.status == expected, (path, resp.status)
        try:
            resp.read()
        except (http.client.IncompleteRead, ConnectionError):
            assert path == "/late"  # cut short after its first chunk
    finally:
        conn.close()


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("worker", list(WORKERS))
def test_failed_requests_are_the_raising_requests(tmp_path, worker, mode):
    cls, attribute, packages = WORKERS[worker]
    require(*packages)
    extra_args, headers = MODES[mode]
    env = {"PYTHONPATH": os.pathsep.join([str(REPO / "tests"),
                                          exporter_path_env()["PYTHONPATH"]])}
    gunicorn = None
    if worker == "eventlet":
        gunicorn = eventlet_gunicorn()
        extra_args = extra_args + ["--control-socket", str(tmp_path / "ctl.sock")]
    g = Gunicorn(tmp_path, app=f"apps.raising:{attribute}", worker_class=PREFIX + cls,
                 workers=1, extra_args=extra_args, env=env, gunicorn=gunicorn)
    try:
        g.wait_ready(workers=1)
        for path, count in PLAN.items():
            for _ in range(count):
                _send(g.port, path, headers)
        sent = sum(PLAN.values())
        s = g.scrape_until(lambda s: s.total("gunicorn_http_requests_total") >= sent)
        failed: Counter = Counter()
        for labels, value in s.series("gunicorn_worker_failed_requests_total").items():
            labels = dict(labels)
            failed[(labels["endpoint"], labels["error_type"])] += value
        assert dict(failed) == {("/error", "AppError"): 3, ("/late", "AppError"): 2}, \
            g.output()[-3000:]
        assert s.total("gunicorn_http_requests_total") == sent
        assert s.total("gunicorn_worker_requests_total") == sent
        assert s.value("gunicorn_http_requests_total", method="GET", route="/",
                       status="200") == PLAN["/"]
        assert s.value("gunicorn_http_requests_total", method="GET", route="/error",
                       status="500") == PLAN["/error"]
        assert s.total("gunicorn_worker_error_handling_total") == 0
    finally:
        g.stop()


__all__: List[str] = []

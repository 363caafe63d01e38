"""What the async workers add beyond the mix: in-flight counts concurrent requests and
capacity is worker_connections, the sampler runs under monkey-patching, the eventlet
worker's one-line refusal on gunicorn >= 26, and lazy imports."""
import os
import signal
import subprocess
import sys
import threading
from importlib import metadata

import pytest

from frameworks.mix import FASTAPI, Example, eventlet_gunicorn, exporter_path_env, require
from support.procs import Gunicorn, gunicorn_bin
from support.wait import until

GUNICORN_MAJOR = int(metadata.version("gunicorn").split(".")[0])


def _concurrency(tmp_path, config, app, gunicorn=None, env=None):
    """3 requests held open at once: in-flight 3, capacity 1000, sampler alive."""
    g = Example(tmp_path, config, app, workers=1, gunicorn=gunicorn,
                env={"PROMETHEUS_SAMPLE_INTERVAL": "0.2", **(env or {})},
                extra_args=["--worker-connections", "1000"])
    try:
        g.wait_ready(workers=1)
        threads = [threading.Thread(target=g.request, args=("/slow?ms=1500",))
                   for _ in range(3)]
        for t in threads:
            t.start()
        s = g.scrape_until(lambda s: s.total("gunicorn_worker_in_flight_requests") == 3)
        assert s.total("gunicorn_worker_capacity") == 1000
        first = s.total("gunicorn_worker_uptime_seconds")
        # the sampler keeps sampling while requests wait (a greenlet on the worker's hub)
        until(lambda: g.scrape().total("gunicorn_worker_uptime_seconds") > first + 0.3,
              timeout=5, message="the sampler to sample again")
        for t in threads:
            t.join()
        s = g.scrape_until(lambda s: s.total("gunicorn_http_requests_total") == 3)
        assert s.total("gunicorn_worker_in_flight_requests") == 0
        assert s.value("gunicorn_http_requests_total", method="GET", route="/slow",
                       status="200") == 3
    finally:
        g.stop()


def test_gevent_counts_concurrent_requests(tmp_path):
    require("gevent")
    _concurrency(tmp_path, "gunicorn_gevent_async.conf.py",
                 "gunicorn_prometheus_exporter.demo.app:app")


def test_eventlet_counts_concurrent_requests(tmp_path):
    _concurrency(tmp_path, "gunicorn_eventlet_async.conf.py",
                 "gunicorn_prometheus_exporter.demo.app:app", gunicorn=eventlet_gunicorn(),
                 env=exporter_path_env())


@pytest.mark.parametrize("config,packages", [
    ("gunicorn_asgi.conf.py", ()),
    ("gunicorn_uvicorn.conf.py", ("uvicorn", "uvicorn_worker")),
], ids=["asgi", "uvicorn"])
def test_asgi_workers_sample_on_their_loop_in_one_thread(tmp_path, config, packages):
    """The ASGI workers' resource sampler is a timer of their event loop, not a thread: it
    samples again and again, and the worker process keeps a single thread (a second one
    makes every later malloc of the process dearer: docs/benchmarks.md, uvicorn)."""
    require("fastapi", *packages)
    g = Example(tmp_path, config, FASTAPI.module, workers=1,
                env={"PROMETHEUS_SAMPLE_INTERVAL": "0.2"})
    try:
        g.wait_ready(workers=1)
        first = g.scrape().total("gunicorn_worker_uptime_seconds")
        until(lambda: g.scrape().total("gunicorn_worker_uptime_seconds") > first + 0.3,
              timeout=5, message="the sampler to sample again")
        [worker] = g.worker_pids()
        assert os.listdir(f"/proc/{worker}/task") == [str(worker)]
    finally:
        g.stop()


@pytest.mark.skipif(GUNICORN_MAJOR < 26, reason="gunicorn < 26 still has the eventlet worker")
def test_eventlet_worker_on_new_gunicorn_stops_with_one_line(tmp_path):
    result = subprocess.run(
        [gunicorn_bin(),
         "--bind", "127.0.0.1:0", "--control-socket", str(tmp_path / "ctl.sock"),
         "--worker-class", "gunicorn_prometheus_exporter.PrometheusEventletWorker",
         "gunicorn_prometheus_exporter.demo.app:app"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "mp"), "PATH": "/usr/bin:/bin"})
    assert result.returncode != 0
    ours = [line for line in (result.stdout + result.stderr).splitlines()
            if "[INFO]" not in line and line.strip()]
    assert ours == [ours[0]] and "PrometheusEventletWorker needs gunicorn 23.0 to 25.3" \
        in ours[0], result.stdout + result.stderr


def test_importing_the_package_imports_no_async_library():
    code = ("import sys, gunicorn_prometheus_exporter as g; "
            "assert callable(g.load_yaml_config); "
            "bad = [m for m in ('gevent', 'eventlet', 'uvicorn', 'uvicorn_worker', "
            "'flask', 'django', 'pyramid', 'starlette') if m in sys.modules]; "
            "assert not bad, bad; "
            "import gunicorn_prometheus_exporter.frameworks; "
            "assert 'flask' not in sys.modules and 'starlette' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


SLOW_ASGI = '''
import asyncio


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await asyncio.sleep(float(scope["query_string"].decode().split("=")[1]) / 1000)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"5")]})
    await send({"type": "http.response.body", "body": b"slow\\n"})
'''
STOPPING = [
    ("sync", "sync", "gunicorn_prometheus_exporter.demo.app:app", ()),
    ("gevent", "gunicorn_prometheus_exporter.PrometheusGeventWorker",
     "gunicorn_prometheus_exporter.demo.app:app", ("gevent",)),
    ("asgi", "gunicorn_prometheus_exporter.PrometheusASGIWorker", "slow_asgi:app",
     ("gunicorn.workers.gasgi",)),
    ("uvicorn", "gunicorn_prometheus_exporter.PrometheusUvicornWorker", "slow_asgi:app",
     ("uvicorn", "uvicorn_worker")),
]


@pytest.mark.parametrize("name,worker_class,app,packages", STOPPING,
                         ids=[s[0] for s in STOPPING])
def test_a_terminated_worker_reports_stopping_while_it_drains(tmp_path, name, worker_class,
                                                               app, packages):
    """TERM to a worker with a request in flight: while it finishes that request the worker
    is `stopping` (no longer `running`), the request is still counted, and the worker's
    own intent makes its restart one TERM'd exit, as for every worker type (the native
    ASGI worker takes its signals through the event loop, uvicorn's through its server)."""
    require(*packages)
    (tmp_path / "slow_asgi.py").write_text(SLOW_ASGI)
    g = Gunicorn(tmp_path, app=app, worker_class=worker_class, workers=1,
                 extra_args=["--graceful-timeout", "20"])
    try:
        g.wait_ready(workers=1)
        [pid] = g.worker_pids()
        slow = threading.Thread(target=g.request, args=("/slow?ms=2500",))
        slow.start()
        g.scrape_until(lambda s: s.total("gunicorn_worker_in_flight_requests") == 1)
        os.kill(pid, signal.SIGTERM)
        s = g.scrape_until(lambda s: s.total("gunicorn_worker_state", state="stopping") == 1)
        assert s.total("gunicorn_worker_state", state="running") == 0
        assert s.total("gunicorn_worker_in_flight_requests") == 1
        slow.join()
        s = g.scrape_until(lambda s: s.total("gunicorn_worker_state", state="running") == 1
                           and s.total("gunicorn_http_requests_total") == 1)
        assert s.value("gunicorn_http_requests_total", method="GET", route="/slow",
                       status="200") == 1
        assert s.total("gunicorn_worker_state", state="stopping") == 0
        s = g.scrape_until(lambda s: s.total("gunicorn_master_worker_restart_total") == 1)
        assert s.value("gunicorn_master_worker_restart_total", reason="scale_down") == 1
    finally:
        g.stop()

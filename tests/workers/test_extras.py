"""Every extra installs alone and its workers boot: a fresh virtual environment with only
``./exporter[EXTRA]`` (the bare package too, and no test dependency) runs each worker the
extra is for under real gunicorn and counts the requests sent, exactly. Without gevent,
choosing the gevent (or uvicorn) worker stops start-up with one line naming the extra.

The environments come from tests/workers/extras-venvs.sh (``make test-deps`` builds them
once per CI run); each test runs it first, which builds a missing or stale environment and
is a no-op otherwise, so a missing environment is built, never skipped."""
from __future__ import annotations

import os
import subprocess
import urllib.request
import uuid
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

from support.procs import REPO, Process, free_port
from support.redis import RedisServer, redis_env
from support.scrape import scrape
from support.wait import until

SCRIPT = REPO / "tests" / "workers" / "extras-venvs.sh"
ROOT = Path(os.environ.get("GPE_EXTRAS_VENVS", REPO / ".venv-extras"))
WSGI = "gunicorn_prometheus_exporter.demo.app:app"
ASGI = "apps.raising:asgi"
#: test tools that must not be in a user's environment (they hid a missing dependency)
TEST_TOOLS = {"pytest", "requests", "trustme", "flask", "httpx"}

#: extra -> (worker classes it must boot, with their app; distributions it must bring)
EXTRAS: Dict[str, Tuple[List[Tuple[str, str]], List[str]]] = {
    "bare": ([("PrometheusWorker", WSGI), ("PrometheusThreadWorker", WSGI)], []),
    "gevent": ([("PrometheusGeventWorker", WSGI)], ["gevent", "packaging"]),
    "eventlet": ([("PrometheusEventletWorker", WSGI)], ["eventlet"]),
    "async": ([("PrometheusGeventWorker", WSGI), ("PrometheusEventletWorker", WSGI)],
              ["gevent", "eventlet", "packaging"]),
    "asgi": ([("PrometheusASGIWorker", ASGI), ("PrometheusUvicornWorker", ASGI)],
             ["uvicorn", "uvicorn-worker"]),
    "redis": ([("PrometheusWorker", WSGI)], ["redis"]),
    "all": ([("PrometheusGeventWorker", WSGI), ("PrometheusASGIWorker", ASGI),
             ("PrometheusUvicornWorker", ASGI), ("PrometheusWorker", WSGI)],
            ["gevent", "packaging", "uvicorn", "uvicorn-worker", "redis"]),
}
REQUESTS = 3


def venv(name: str) -> Path:
    """The environment of ``name``, built now if it is missing or older than ./exporter."""
    result = subprocess.run(["bash", str(SCRIPT), name], capture_output=True, text=True,
                            timeout=900, env={**os.environ, "GPE_EXTRAS_VENVS": str(ROOT)})
    assert result.returncode == 0, (f"{SCRIPT} {name} failed (make test-deps builds the "
                                    f"extras environments):\n{result.stdout}{result.stderr}")
    return ROOT / name


def installed(path: Path) -> Dict[str, str]:
    out = subprocess.run([str(path / "bin" / "python"), "-m", "pip", "list",
                          "--format=freeze", "--disable-pip-version-check"],
                         capture_output=True, text=True, timeout=120).stdout
    return dict(line.lower().split("==", 1) for line in out.splitlines() if "==" in line)


def _env(path: Path, **extra: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PROMETHEUS_", "REDIS_", "GUNICORN_", "PYTHON", "VIRTUAL_ENV"))}
    # tests/ only for the ASGI app module (plain code, no test dependency)
    return {**env, "PATH": f"{path / 'bin'}:{env.get('PATH', '')}", "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(REPO / "tests"), **extra}


def _boot_and_count(path: Path, tmp: Path, cls: str, app: str,
                    env: Optional[Dict[str, str]] = None) -> None:
    port, metrics_port = free_port(), free_port()
    args = [str(path / "bin" / "gunicorn"), "--bind", f"127.0.0.1:{port}", "--workers", "1",
            "--worker-class", f"gunicorn_prometheus_exporter.{cls}",
            "--control-socket", str(tmp / f"ctl-{port}.sock"), app]
    g = Process(args, _env(path, PROMETHEUS_METRICS_PORT=str(metrics_port),
                           PROMETHEUS_BIND_ADDRESS="127.0.0.1",
                           PROMETHEUS_MULTIPROC_DIR=str(tmp / f"mp-{port}"), **(env or {})),
                cwd=str(tmp))
    try:
        until(lambda: g.proc.poll() is None and len(
            scrape(metrics_port).series("gunicorn_worker_capacity")) == 1, timeout=60,
              message=f"{cls} to boot in {path.name}")
        for _ in range(REQUESTS):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as resp:
                assert resp.status == 200
        s = until(lambda: (lambda s: s if s.total("gunicorn_http_requests_total") >= REQUESTS
                           else None)(scrape(metrics_port)), timeout=20,
                  message=f"{REQUESTS} requests counted")
        assert s.total("gunicorn_http_requests_total") == REQUESTS, s.text
        assert s.value("gunicorn_http_requests_total", method="GET", route="/",
                       status="200") == REQUESTS
        if env and env.get("REDIS_ENABLED") == "true":
            until(lambda: scrape(metrics_port).value("gunicorn_exporter_redis_up") == 1,
                  timeout=20, message="Redis storage up")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- gunicorn ({path.name}, {cls}) ---\n"
                             f"{g.output()[-3000:]}") from None
    finally:
        g.stop()


@pytest.mark.timeout(900)  # it may build its environment first
@pytest.mark.parametrize("name", list(EXTRAS))
def test_extra_installs_alone_and_its_workers_count(tmp_path, name):
    path = venv(name)
    workers, needs = EXTRAS[name]
    have = installed(path)
    assert "gunicorn-prometheus-exporter" in have
    assert not TEST_TOOLS & set(have), sorted(TEST_TOOLS & set(have))
    assert set(needs) <= set(have), (name, sorted(have))
    if name in ("eventlet", "async"):
        assert int(have["gunicorn"].split(".")[0]) < 26  # the eventlet worker's gunicorn
    redis = RedisServer(tmp_path) if "redis" in needs else None
    try:
        for cls, app in workers:
            env = None
            if redis is not None and cls == "PrometheusWorker":
                env = redis_env(redis, "x" + uuid.uuid4().hex[:8])
            _boot_and_count(path, tmp_path, cls, app, env)
    finally:
        if redis is not None:
            redis.stop()


@pytest.mark.timeout(900)
@pytest.mark.parametrize("cls,extra,missing", [
    ("PrometheusGeventWorker", "gevent", "gevent"),
    ("PrometheusUvicornWorker", "asgi", "uvicorn_worker"),
])
def test_a_worker_without_its_library_stops_with_one_line(tmp_path, cls, extra, missing):
    path = venv("bare")
    result = subprocess.run(
        [str(path / "bin" / "gunicorn"), "--bind", f"127.0.0.1:{free_port()}",
         "--control-socket", str(tmp_path / "ctl.sock"),
         "--worker-class", f"gunicorn_prometheus_exporter.{cls}", WSGI],
        capture_output=True, text=True, timeout=60, cwd=str(tmp_path),
        env=_env(path, PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "mp"),
                 PROMETHEUS_METRICS_PORT=str(free_port())))
    output = result.stdout + result.stderr
    assert result.returncode != 0
    ours = [line for line in output.splitlines() if line.strip() and "[INFO]" not in line]
    assert ours == [f"{cls} needs {'gevent' if extra == 'gevent' else 'uvicorn-worker'} "
                    f"(No module named '{missing}'): install "
                    f"gunicorn-prometheus-exporter[{extra}]"], output
    assert "Traceback" not in output

"""The fixed request mix of the framework and worker-type tests, the example apps under real
gunicorn, and the exact expectations: counts per {method,route,status}, byte sums per
route, one failed request per raised exception with its class name."""
from __future__ import annotations

import http.client
import importlib.util
import os
import re
import socket
import subprocess
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

from support.procs import REPO, Gunicorn, Process, free_port, gunicorn_bin

EXAMPLE = REPO / "example"

#: (key, method, path, body) — body: None, bytes, or a tuple of chunks sent chunked
MIX: List[Tuple[str, str, str, object]] = [
    ("index", "GET", "/", None),
    ("index", "GET", "/", None),
    ("user", "GET", "/users/1", None),
    ("user", "GET", "/users/22", None),
    ("user", "GET", "/users/333", None),
    ("unmatched", "GET", "/nope/abc", None),
    ("boom", "GET", "/boom", None),
    ("raw", "GET", "/raw", None),
    ("upload", "POST", "/upload", (b"a" * 300, b"b" * 400, b"c" * 77)),
    ("upload", "POST", "/upload", b"z" * 1000),
    ("stream", "GET", "/stream?n=5", None),
    ("file", "GET", "/file", None),
]
UPLOADED = 777 + 1000
STATUS = {"index": 200, "user": 200, "unmatched": 404, "boom": 500, "upload": 200,
          "stream": 200, "file": 200}


class App:
    """How one example application answers the mix."""

    def __init__(self, name: str, module: str, package: str, user_route: str,
                 asgi: bool = False, extra: Optional[List[Tuple[str, str, str, str]]] = None):
        self.name = name
        self.module = module
        self.package = package  # what must be importable, for the skip line
        self.asgi = asgi
        self.routes = {"index": "/", "user": user_route, "unmatched": "unmatched",
                       "boom": "/boom", "raw": "/raw", "upload": "/upload",
                       "stream": "/stream", "file": "/file"}
        self.extra = extra or []  # (key, path, route, status)

    @property
    def raw_status(self) -> int:
        # WSGI: the body fails before its first chunk, gunicorn answers 500 itself;
        # ASGI: the body fails after a first chunk of 10 bytes under status 200
        return 200 if self.asgi else 500

    @property
    def raw_bytes(self) -> int:
        return 10 if self.asgi else 0


FLASK = App("flask", "app:app", "flask", "/users/<int:user_id>")
DJANGO = App("django", "django_project.wsgi:application", "django", "/users/<int:user_id>")
PYRAMID = App("pyramid", "pyramid_app:app", "pyramid", "/users/{user_id:\\d+}")
FASTAPI = App("fastapi", "async_app:app", "fastapi", "/users/{user_id}", asgi=True)
STARLETTE = App("starlette", "starlette_app:app", "starlette", "/users/{user_id:int}",
                asgi=True, extra=[("item", "/api/items/7", "/api/items/{item_id}", "200")])


def require(*packages: str) -> None:
    for package in packages:
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} is not installed (pip install -r "
                        f"tests/requirements-frameworks.txt)")


class Example(Gunicorn):
    """An example config and app from example/, run as documented: ``gunicorn -c CONFIG
    APP`` in example/, on free ports (the worker class comes from the config)."""

    def __init__(self, tmp: Path, config: str, app: str, workers: int = 1,
                 extra_args: Optional[List[str]] = None, env: Optional[Dict[str, str]] = None,
                 gunicorn: Optional[str] = None) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        self.directory = str(tmp / f"mp-{self.port}")
        full_env = {**os.environ, "PROMETHEUS_METRICS_PORT": str(self.metrics_port),
                    "PROMETHEUS_BIND_ADDRESS": "127.0.0.1",
                    "PROMETHEUS_MULTIPROC_DIR": self.directory,
                    "PYTHONUNBUFFERED": "1", **(env or {})}
        args = [gunicorn or gunicorn_bin(), "-c", str(EXAMPLE / config),
                "--bind", f"127.0.0.1:{self.port}", "--workers", str(workers),
                "--graceful-timeout", "3"]
        if _version(gunicorn) >= (25, 1):  # else the default control socket is shared
            args += ["--control-socket", str(tmp / f"ctl-{self.port}.sock")]
        args += (extra_args or []) + [app]
        Process.__init__(self, args, full_env, cwd=str(EXAMPLE))


def _version(gunicorn: Optional[str]) -> Tuple[int, int]:
    if gunicorn is None:
        from importlib import metadata

        text = metadata.version("gunicorn")
    else:
        out = subprocess.run([gunicorn, "--version"], capture_output=True, text=True,
                             timeout=60)
        text = out.stdout + out.stderr
    found = re.search(r"(\d+)\.(\d+)", text)
    return (int(found.group(1)), int(found.group(2))) if found else (0, 0)


def _request(port: int, method: str, path: str, body: object) -> Tuple[Optional[int], int]:
    """(status, body bytes received); a response cut short counts what arrived."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {}
        if isinstance(body, tuple):
            headers["Transfer-Encoding"] = "chunked"
            conn.request(method, path, body=iter(body), headers=headers, encode_chunked=True)
        else:
            conn.request(method, path, body=body, headers=headers)
        try:
            resp = conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionError):
            return None, 0
        try:
            return resp.status, len(resp.read())
        except http.client.IncompleteRead as exc:
            return resp.status, len(exc.partial)
        except (ConnectionError, socket.timeout):
            return resp.status, 0
    finally:
        conn.close()


def run_mix(g: Gunicorn, app: App) -> None:
    """Send the mix to ``g`` and assert what its metrics say about it, exactly."""
    counts: Counter = Counter()
    sent: Counter = Counter()
    failures = {("GET", "/boom", "HandledError"): 1.0, ("GET", "/raw", "RawError"): 1.0}
    requests = [(k, m, p, b, app.routes[k]) for k, m, p, b in MIX]
    requests += [(k, "GET", p, None, r) for k, p, r, _ in app.extra]
    for key, method, path, body, route in requests:
        status, received = _request(g.port, method, path, body)
        if key == "raw":
            expected_status, received = app.raw_status, app.raw_bytes
        else:
            expected_status = STATUS.get(key, 200)
            assert status == expected_status, (path, status, g.output()[-3000:])
        counts[(method, route, str(expected_status))] += 1
        sent[(method, route)] += received
    total = sum(counts.values())
    s = g.scrape_until(lambda s: s.total("gunicorn_http_requests_total") >= total
                       and s.total("gunicorn_worker_failed_requests_total") >= 2)
    got = {(dict(ls)["method"], dict(ls)["route"], dict(ls)["status"]): v
           for ls, v in s.series("gunicorn_http_requests_total").items()}
    assert got == dict(counts), (got, dict(counts), g.output()[-2000:])
    for (method, route), nbytes in sent.items():
        assert s.value("gunicorn_http_response_size_bytes_sum", method=method,
                       route=route) == nbytes, (method, route)
    assert s.total("gunicorn_http_request_size_bytes_sum") == UPLOADED
    assert s.value("gunicorn_http_request_size_bytes_sum", method="POST",
                   route="/upload") == UPLOADED
    assert s.total("gunicorn_http_request_duration_seconds_count") == total
    assert s.total("gunicorn_worker_requests_total") == total
    failed: Dict[Tuple[str, str, str], float] = Counter()
    for ls, v in s.series("gunicorn_worker_failed_requests_total").items():
        labels = dict(ls)
        failed[(labels["method"], labels["endpoint"], labels["error_type"])] += v
    assert dict(failed) == failures, g.output()[-3000:]
    assert s.total("gunicorn_worker_error_handling_total") == 0


def eventlet_gunicorn() -> str:
    """The gunicorn of a virtual environment with gunicorn <= 25.3 and eventlet."""
    candidates = [os.environ.get("GPE_EVENTLET_VENV", ""), str(REPO / ".venv-eventlet"),
                  "/tmp/venvs/g25"]
    for venv in candidates:
        binary = Path(venv) / "bin" / "gunicorn"
        if venv and binary.exists():
            return str(binary)
    pytest.skip("no eventlet environment (bash tests/workers/eventlet-venv.sh creates "
                ".venv-eventlet with gunicorn 25.3 and eventlet)")
    raise AssertionError("unreachable")


def python_of(gunicorn: str) -> str:
    return str(Path(gunicorn).with_name("python"))


def exporter_path_env() -> Dict[str, str]:
    """Makes the plugin importable from a venv that does not install it."""
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "exporter"),
                                                         os.environ.get("PYTHONPATH")]))}


__all__ = ["App", "Example", "run_mix", "require", "FLASK", "DJANGO", "PYRAMID", "FASTAPI",
           "STARLETTE", "eventlet_gunicorn", "exporter_path_env"]

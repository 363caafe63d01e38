"""Instructions the plugin adds to a WSGI request, counted in process by callgrind: what a
sync, gthread or gevent worker runs for one request (gunicorn's ``Response``, the hello
world app, the body of the response written to a socket that discards it), N times in one
loop, bare and with the plugin as a worker installs it (the application wrapper of
``workers.body.metered`` and the ``pre_request``/``post_request`` hooks) recording into a
real worker store: compiled, and the Python path with ``GUNICORN_PROMETHEUS_NO_SPEEDUPS=1``.
Two runs with different N give the count per request as the slope; no server, socket or
timer takes part, so two runs agree within a few instructions, where a server's count
(``bench/instructions.py``) moves by thousands with how its loop batches connections. The
difference is the plugin's whole share of a WSGI request; gthread's lock (``--threaded``)
is what that worker adds.

Run: ``python bench/wsgi_instructions.py [--requests 1000 6000] [--threaded]
[--compare-to DIR]`` (``DIR``: another source tree's package, built in place, measured in
the same run). Needs valgrind; about two minutes.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, Tuple

from common import PYTHON_PATH_ENV, tree_environments

HERE = Path(__file__).resolve().parent
#: the environ gunicorn builds for ``GET /users/42`` (gunicorn.http.wsgi.create)
ENVIRON = {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": "/users/42",
           "QUERY_STRING": "", "RAW_URI": "/users/42", "SERVER_PROTOCOL": "HTTP/1.1",
           "HTTP_HOST": "bench", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000",
           "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "50000", "wsgi.version": (1, 0),
           "wsgi.url_scheme": "http", "wsgi.multithread": False,
           "wsgi.multiprocess": False, "wsgi.run_once": False, "wsgi.errors": sys.stderr,
           "wsgi.input": None, "wsgi.input_terminated": True, "gunicorn.socket": None,
           "SERVER_SOFTWARE": "gunicorn"}


class _Socket:
    def sendall(self, data: bytes) -> None:
        pass


class _Request:
    """What gunicorn's ``Response`` reads of its request."""

    def __init__(self) -> None:
        self.version = (1, 1)
        self.method = "GET"

    def should_close(self) -> bool:
        return False


def serve(variant: str, requests: int, threaded: bool) -> None:
    """In the counted process: ``requests`` requests through the app of ``variant``."""
    sys.path.insert(0, str(HERE))
    from gunicorn.http.wsgi import Response
    from hot_path import build_instrumentation
    from worker_bench import HELLO_WSGI

    from gunicorn_prometheus_exporter.workers.body import metered

    namespace: dict = {}
    exec(HELLO_WSGI, namespace)
    app = namespace["app"]
    sock = _Socket()
    with tempfile.TemporaryDirectory() as tmp:
        metrics, worker = build_instrumentation(tmp, threaded)
        worker.nr, worker.max_requests = 0, sys.maxsize
        cfg = worker.cfg._c
        pre, post = worker.cfg.hook("pre_request"), worker.cfg.hook("post_request")
        if variant != "bare":
            app = metered(app, None, metrics.native)
        for _ in range(requests):
            req, environ = _Request(), dict(ENVIRON)
            resp = Response(req, sock, cfg)
            if variant != "bare":
                pre(worker, req)
            for chunk in app(environ, resp.start_response):
                resp.write(chunk)
            if variant != "bare":
                post(worker, req, environ, resp)
        if variant != "bare":
            _check_recorded(tmp, requests)


def _check_recorded(directory: str, expected: int) -> None:
    """A count is only worth something if every request was recorded (the hooks log a
    failure, which the benchmark's logger drops)."""
    from gunicorn_prometheus_exporter.collector import DirectoryCollector

    counted = sum(s.value for f in DirectoryCollector(directory).read() for s in f.samples
                  if s.name == "gunicorn_http_requests_total")
    if counted != expected:
        raise RuntimeError(f"the plugin recorded {counted:.0f} requests of {expected}")


def count(variant: str, requests: int, threaded: bool, env: Dict[str, str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                        sys.executable, __file__, "--serve", variant, str(requests)]
                       + (["--threaded"] if threaded else []),
                       env={**os.environ, "PYTHONHASHSEED": "0", **env}, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        text = Path(out).read_text()
    return int(re.search(r"^(?:summary|totals): (\d+)", text, re.M).group(1))


def per_request(variant: str, counts: Tuple[int, int], threaded: bool,
                env: Dict[str, str]) -> float:
    low, high = counts
    return (count(variant, high, threaded, env) - count(variant, low, threaded, env)) \
        / (high - low)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", nargs=2, type=int, default=[1000, 6000])
    parser.add_argument("--threaded", action="store_true",
                        help="as gthread with several threads: the request path's lock")
    parser.add_argument("--compare-to", metavar="DIR",
                        help="also the plugin package found in DIR (first on PYTHONPATH)")
    parser.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]), args.threaded)
        return
    counts = tuple(args.requests)
    bare = per_request("bare", counts, args.threaded, {})
    print(f"hello-world WSGI request, bare: {bare:.0f} instructions per request "
          f"(slope of {counts[0]} and {counts[1]} requests)")
    for name, env in tree_environments(args.compare_to).items():
        compiled = per_request("wrapped", counts, args.threaded, env)
        pure = per_request("wrapped", counts, args.threaded, {**env, **PYTHON_PATH_ENV})
        print(f"{name:10s} compiled {compiled - bare:+7.0f}   "
              f"Python path {pure - bare:+7.0f}", flush=True)


if __name__ == "__main__":
    main()

"""Instructions the plugin's ASGI wrapper adds to a request, counted in process by
callgrind: the hello-world ASGI app called N times in one asyncio loop, bare and through
``workers.asgi_metrics.instrument`` (compiled ``MeteredApp``, and the Python path with
``GUNICORN_PROMETHEUS_NO_SPEEDUPS=1``) recording into a real worker store. Two runs with
different N give the count per request as the slope; no server, no socket and no timer
takes part, so the same code gives the same count however busy the machine is (two runs
agree within a few instructions), unlike a server's count, which picks up its loop's
once-a-second work for as long as the requests take. What the wrapper adds here is the
plugin's whole share of an ASGI request; the server's own share is in
``bench/instructions.py``.

Run: ``python bench/asgi_instructions.py [--requests 1000 6000] [--compare-to DIR]``
(``DIR``: another source tree's package, built in place, measured in the same run). Needs
valgrind; about two minutes.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, Tuple

from common import PYTHON_PATH_ENV, tree_environments

HERE = Path(__file__).resolve().parent
#: a scope as gunicorn's ASGI worker builds it for ``GET /users/42``
SCOPE = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"},
         "http_version": "1.1", "method": "GET", "scheme": "http", "path": "/users/42",
         "raw_path": b"/users/42", "query_string": b"", "root_path": "",
         "headers": [(b"host", b"bench")], "server": ("127.0.0.1", 8000),
         "client": ("127.0.0.1", 50000)}


def serve(variant: str, requests: int) -> None:
    """In the counted process: ``requests`` requests through the app of ``variant``."""
    sys.path.insert(0, str(HERE))
    from hot_path import build_instrumentation
    from worker_bench import HELLO_ASGI

    from gunicorn_prometheus_exporter.workers.asgi_metrics import instrument

    namespace: dict = {}
    exec(HELLO_ASGI, namespace)
    app = namespace["app"]
    with tempfile.TemporaryDirectory() as tmp:
        metrics, _ = build_instrumentation(tmp)
        if variant != "bare":
            app = instrument(app, metrics.labeller, metrics.extras, metrics.native)

        async def receive() -> dict:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict) -> None:
            pass

        async def loop() -> None:
            for _ in range(requests):
                await app(dict(SCOPE, headers=list(SCOPE["headers"])), receive, send)

        asyncio.run(loop())


def count(variant: str, requests: int, env: Dict[str, str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                        sys.executable, __file__, "--serve", variant, str(requests)],
                       env={**os.environ, "PYTHONHASHSEED": "0", **env}, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        text = Path(out).read_text()
    return int(re.search(r"^(?:summary|totals): (\d+)", text, re.M).group(1))


def per_request(variant: str, counts: Tuple[int, int], env: Dict[str, str]) -> float:
    low, high = counts
    return (count(variant, high, env) - count(variant, low, env)) / (high - low)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", nargs=2, type=int, default=[1000, 6000])
    parser.add_argument("--compare-to", metavar="DIR",
                        help="also the plugin package found in DIR (first on PYTHONPATH)")
    parser.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]))
        return
    counts = tuple(args.requests)
    bare = per_request("bare", counts, {})
    print(f"hello-world ASGI app, bare: {bare:.0f} instructions per request "
          f"(slope of {counts[0]} and {counts[1]} requests)")
    for name, env in tree_environments(args.compare_to).items():
        compiled = per_request("wrapped", counts, env)
        pure = per_request("wrapped", counts, {**env, **PYTHON_PATH_ENV})
        print(f"{name:10s} compiled wrapper {compiled - bare:+7.0f}   "
              f"Python path {pure - bare:+7.0f}", flush=True)


if __name__ == "__main__":
    main()

"""Instructions per request of a gunicorn worker, with and without the plugin, counted by
valgrind's callgrind: a figure that does not move with the machine's load, unlike
requests per second on a shared 2-core machine.

For each worker type, gunicorn runs one worker under callgrind (which follows the fork), a
client sends N serial requests (keep-alive where the worker keeps connections alive), and
the worker process is counted until it exits. Two runs with different N give the
count per request as the slope, so start-up and shutdown cancel out. The resource sampler
is set to a one-hour interval: its cost is per second, not per request (docs/benchmarks.md
gives it separately). Reported: instructions per request plain and with the plugin, what
the plugin adds, and the ratio plain/plugin, which is the throughput ratio a CPU-bound
worker would see if every instruction cost the same.

Run: ``python bench/instructions.py [--workers sync gthread gevent asgi asgi-starlette
uvicorn] [--requests 300 1300]``. Needs valgrind; several minutes (callgrind runs Python
about 50 times slower).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Tuple

from common import runnable, start_gunicorn, wait_port
from worker_bench import write_apps

#: name -> (plain worker class, plugin worker class, app, keep-alive, module needed)
WORKERS: Dict[str, Tuple[str, str, str, bool, str]] = {
    "sync": ("sync", "gunicorn_prometheus_exporter.PrometheusWorker", "hello_wsgi:app",
             False, "gunicorn"),
    "gthread": ("gthread", "gunicorn_prometheus_exporter.PrometheusThreadWorker",
                "hello_wsgi:app", True, "gunicorn"),
    "gevent": ("gevent", "gunicorn_prometheus_exporter.PrometheusGeventWorker",
               "hello_wsgi:app", True, "gevent"),
    "asgi": ("asgi", "gunicorn_prometheus_exporter.PrometheusASGIWorker", "hello_asgi:app",
             True, "gunicorn.workers.gasgi"),
    "asgi-starlette": ("asgi", "gunicorn_prometheus_exporter.PrometheusASGIWorker",
                       "hello_starlette:app", True, "starlette"),
    "uvicorn": ("uvicorn_worker.UvicornWorker",
                "gunicorn_prometheus_exporter.PrometheusUvicornWorker", "hello_asgi:app",
                True, "uvicorn_worker"),
}
REQUEST = b"GET /users/42 HTTP/1.1\r\nHost: bench\r\n%s\r\n"


def send_requests(port: int, count: int, keep_alive: bool) -> None:
    """``count`` serial requests, each read to the end of its 12-byte body."""
    sock = None
    for _ in range(count):
        if sock is None:
            sock = socket.create_connection(("127.0.0.1", port), timeout=120)
        sock.sendall(REQUEST % (b"" if keep_alive else b"Connection: close\r\n"))
        buf = b""
        while not buf.endswith(b"Hello world\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError(f"connection closed after {buf!r}")
            buf += chunk
        if not keep_alive:
            sock.close()
            sock = None
    if sock is not None:
        sock.close()


def count_run(worker_class: str, app: str, keep_alive: bool, requests: int,
              tmp: str) -> int:
    """Instructions of the worker process (all its threads: gthread serves requests in a
    pool) over its life with ``requests`` requests."""
    out = Path(tempfile.mkdtemp(prefix="cg-", dir=tmp))
    log = out / "gunicorn.log"
    with open(log, "w") as log_file:
        proc, port = start_gunicorn(
            worker_class, app, tmp, output=log_file,
            prefix=["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/out.%p"],
            args=["--keep-alive", "300", "--timeout", "600", "--graceful-timeout", "120"],
            env={"PROMETHEUS_SAMPLE_INTERVAL": "3600",
                 "PYTHONHASHSEED": "0"})  # the same dict layouts in every run
    try:
        wait_port(port, timeout=300, proc=proc)
        send_requests(port, 1, keep_alive)  # the worker is up and has answered once
        send_requests(port, requests, keep_alive)
    finally:
        proc.terminate()
        proc.wait(300)
    if "prometheus" in worker_class.lower():
        _check_recorded(os.path.join(tmp, f"mp-{port}"), requests + 1)
    pid = re.search(r"Booting worker with pid: (\d+)", log.read_text()).group(1)
    return _total(out / f"out.{pid}")


def _check_recorded(directory: str, expected: int) -> None:
    """A count is only worth something if the plugin recorded every request it served."""
    from gunicorn_prometheus_exporter.collector import DirectoryCollector

    counted = sum(s.value for f in DirectoryCollector(directory).read() for s in f.samples
                  if s.name == "gunicorn_http_requests_total")
    if counted != expected:
        raise RuntimeError(f"the plugin recorded {counted:.0f} requests of {expected}")


def _total(path: Path) -> int:
    for line in path.read_text().splitlines():
        if line.startswith("summary:") or line.startswith("totals:"):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {path}")


def per_request(worker_class: str, app: str, keep_alive: bool, counts: Tuple[int, int],
                tmp: str) -> float:
    low, high = counts
    return (count_run(worker_class, app, keep_alive, high, tmp)
            - count_run(worker_class, app, keep_alive, low, tmp)) / (high - low)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", nargs="+", choices=sorted(WORKERS),
                        default=["sync", "gthread", "gevent", "asgi", "asgi-starlette",
                                 "uvicorn"])
    parser.add_argument("--requests", nargs=2, type=int, default=[300, 1300])
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_apps(tmp)
        for name in runnable({n: WORKERS[n][4] for n in args.workers}):
            plain, plugin, app, keep_alive, _ = WORKERS[name]
            started = time.monotonic()
            base = per_request(plain, app, keep_alive, tuple(args.requests), tmp)
            ours = per_request(plugin, app, keep_alive, tuple(args.requests), tmp)
            rows.append((name, base, ours))
            print(f"{name:15s} plain {base:9.0f}  plugin {ours:9.0f}  added {ours - base:+8.0f}"
                  f"  ratio {base / ours:.3f}  ({time.monotonic() - started:.0f} s)",
                  flush=True)
    print(f"\ninstructions per request (callgrind, worker process, slope of "
          f"{args.requests[0]} and {args.requests[1]} requests):")
    print(f"{'worker':15s} {'plain':>9s} {'plugin':>9s} {'added':>8s} {'plain/plugin':>12s}")
    for name, base, ours in rows:
        print(f"{name:15s} {base:9.0f} {ours:9.0f} {ours - base:+8.0f} {base / ours:12.3f}")


if __name__ == "__main__":
    main()

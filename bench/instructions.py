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

``asgi-shop`` is a realistic Starlette service (middleware, a dozen routes, a JSON POST);
``--python`` adds the plugin with the C speedups switched off, in the same run;
``--headers`` adds the plugin serving requests with a sampled ``traceparent`` (an exemplar
each) and with an ``X-Request-Start`` stamp (a queue time each); ``--compare-to DIR`` adds
the plugin of another source tree (``DIR`` holds its package, built in place: for instance
the previous commit's ``exporter/``), so that a change is measured against it in one run;
``--native-off`` adds the plugin without the native duration histogram (what its store
costs).

Run: ``python bench/instructions.py [--workers sync gthread gevent asgi asgi-starlette
asgi-shop uvicorn] [--requests 300 1300] [--python] [--headers] [--compare-to DIR] [--native-off]``. Needs valgrind; several minutes (callgrind runs Python
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
from typing import Dict, Optional, Tuple

from common import runnable, start_gunicorn, wait_port
from gunicorn_prometheus_exporter import speedups
from worker_bench import write_apps

GET_USER = b"GET /users/42 HTTP/1.1\r\nHost: bench\r\n%s\r\n"
_ORDER = (b'{"lines": [{"sku": "A-1", "qty": 2, "price": 9.5}, '
          b'{"sku": "B-7", "qty": 1, "price": 24.0}], "note": "leave at the door"}')
POST_ORDER = (b"POST /api/v1/users/42/orders HTTP/1.1\r\nHost: bench\r\n"
              b"Origin: https://shop.example\r\nContent-Type: application/json\r\n"
              b"Content-Length: " + str(len(_ORDER)).encode() + b"\r\n%s\r\n" + _ORDER)

#: name -> (plain worker class, plugin worker class, app, keep-alive, module needed, request)
WORKERS: Dict[str, Tuple[str, str, str, bool, str, bytes]] = {
    "sync": ("sync", "gunicorn_prometheus_exporter.PrometheusWorker", "hello_wsgi:app",
             False, "gunicorn", GET_USER),
    "gthread": ("gthread", "gunicorn_prometheus_exporter.PrometheusThreadWorker",
                "hello_wsgi:app", True, "gunicorn", GET_USER),
    "gevent": ("gevent", "gunicorn_prometheus_exporter.PrometheusGeventWorker",
               "hello_wsgi:app", True, "gevent", GET_USER),
    "asgi": ("asgi", "gunicorn_prometheus_exporter.PrometheusASGIWorker", "hello_asgi:app",
             True, "gunicorn.workers.gasgi", GET_USER),
    "asgi-starlette": ("asgi", "gunicorn_prometheus_exporter.PrometheusASGIWorker",
                       "hello_starlette:app", True, "starlette", GET_USER),
    # a realistic service: middleware, a routed JSON POST (worker_bench.SHOP_STARLETTE)
    "asgi-shop": ("asgi", "gunicorn_prometheus_exporter.PrometheusASGIWorker",
                  "shop_starlette:app", True, "starlette", POST_ORDER),
    "uvicorn": ("uvicorn_worker.UvicornWorker",
                "gunicorn_prometheus_exporter.PrometheusUvicornWorker", "hello_asgi:app",
                True, "uvicorn_worker", GET_USER),
}


def send_requests(port: int, count: int, keep_alive: bool, request: bytes) -> None:
    """``count`` serial requests, each read to the end of its body (Content-Length)."""
    sock = None
    for _ in range(count):
        if sock is None:
            sock = socket.create_connection(("127.0.0.1", port), timeout=120)
        sock.sendall(request % (b"" if keep_alive else b"Connection: close\r\n"))
        _read_response(sock)
        if not keep_alive:
            sock.close()
            sock = None
    if sock is not None:
        sock.close()


def _read_response(sock: socket.socket) -> None:
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += _recv(sock, buf)
    head, _, body = buf.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))
    while len(body) < length:
        body += _recv(sock, head + body)


def _recv(sock: socket.socket, so_far: bytes) -> bytes:
    chunk = sock.recv(65536)
    if not chunk:
        raise RuntimeError(f"connection closed after {so_far!r}")
    return chunk


def count_run(worker_class: str, app: str, keep_alive: bool, request: bytes, requests: int,
              tmp: str, env: Dict[str, str]) -> int:
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
                 "PYTHONHASHSEED": "0", **env})  # the same dict layouts in every run
    try:
        wait_port(port, timeout=300, proc=proc)
        send_requests(port, 1, keep_alive, request)  # the worker is up and answered once
        send_requests(port, requests, keep_alive, request)
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


TRACEPARENT = b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n"


def with_header(request: bytes, header: bytes) -> bytes:
    """``request`` with one more header line (before the optional Connection: close)."""
    return request.replace(b"%s", header + b"%s", 1)


def per_request(worker_class: str, case: str, counts: Tuple[int, int], tmp: str,
                env: Optional[Dict[str, str]] = None, header: bytes = b"") -> float:
    _, _, app, keep_alive, _, request = WORKERS[case]
    request = with_header(request, header) if header else request
    low, high = counts
    runs = [count_run(worker_class, app, keep_alive, request, n, tmp, env or {})
            for n in (high, low)]
    return (runs[0] - runs[1]) / (high - low)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", nargs="+", choices=sorted(WORKERS),
                        default=["sync", "gthread", "gevent", "asgi", "asgi-starlette",
                                 "asgi-shop", "uvicorn"])
    parser.add_argument("--requests", nargs=2, type=int, default=[300, 1300])
    parser.add_argument("--python", action="store_true",
                        help=f"also the plugin with the C speedups off ({speedups.SWITCH_ENV})")
    parser.add_argument("--headers", action="store_true",
                        help="also requests with a sampled traceparent, and with X-Request-Start")
    parser.add_argument("--compare-to", metavar="DIR",
                        help="also the plugin package found in DIR (first on PYTHONPATH)")
    parser.add_argument("--native-off", action="store_true",
                        help="also the plugin without native histograms "
                             "(PROMETHEUS_NATIVE_HISTOGRAMS=false)")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    rows = []
    counts = tuple(args.requests)
    with tempfile.TemporaryDirectory() as tmp:
        write_apps(tmp)
        for name in runnable({n: WORKERS[n][4] for n in args.workers}):
            plain, plugin = WORKERS[name][:2]
            started = time.monotonic()
            base = per_request(plain, name, counts, tmp)
            ours = per_request(plugin, name, counts, tmp)
            python = (per_request(plugin, name, counts, tmp, {speedups.SWITCH_ENV: "1"})
                      if args.python else None)
            rows.append((name, base, ours, python))
            print(_row(name, base, ours, python) + f"  ({time.monotonic() - started:.0f} s)",
                  flush=True)
            extra = []
            if args.compare_to:
                extra.append(("compared", per_request(
                    plugin, name, counts, tmp, {"PYTHONPATH": os.path.abspath(args.compare_to)})))
            if args.native_off:
                extra.append(("no native", per_request(
                    plugin, name, counts, tmp, {"PROMETHEUS_NATIVE_HISTOGRAMS": "false"})))
            if args.headers:
                stamp = b"X-Request-Start: t=%.3f\r\n" % time.time()
                extra.append(("traced", per_request(plugin, name, counts, tmp,
                                                    header=TRACEPARENT)))
                extra.append(("stamped", per_request(
                    plugin, name, counts, tmp, {"PROMETHEUS_QUEUE_MAX_SECONDS": "86400"},
                    header=stamp)))
            for label, count in extra:
                print(f"{name:15s} {label:>9s} {count:9.0f} {count - ours:+8.0f} against the "
                      f"plugin, same run", flush=True)
    print(f"\ninstructions per request (callgrind, worker process, slope of "
          f"{args.requests[0]} and {args.requests[1]} requests):")
    print(f"{'worker':15s} {'plain':>9s} {'plugin':>9s} {'added':>8s} {'plain/plugin':>12s}"
          + (f" {'python':>9s} {'added':>8s} {'plain/python':>12s}" if args.python else ""))
    for row in rows:
        print(_row(*row))


def _row(name: str, base: float, ours: float, python: Optional[float]) -> str:
    text = f"{name:15s} {base:9.0f} {ours:9.0f} {ours - base:+8.0f} {base / ours:12.3f}"
    if python is not None:
        text += f" {python:9.0f} {python - base:+8.0f} {base / python:12.3f}"
    return text


if __name__ == "__main__":
    main()

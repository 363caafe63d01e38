"""Per-request cost of the gevent and ASGI Prometheus workers against the same gunicorn
worker without the plugin, interleaved in one run.

For each worker type, wrk drives a hello-world app (WSGI for gevent, raw ASGI for asgi and
uvicorn, a one-route Starlette app for asgi-starlette) on one worker process (``--processes``
for more) over keep-alive connections; plain and plugin variants run interleaved
(A B A B ...) so that a shared machine's drift hits both alike. Reported per variant: median
requests/s and median CPU time per request of all gunicorn processes (from /proc, steadier
than req/s on a busy machine); then the throughput ratio (target >= 0.97) and the CPU the
plugin adds per request.

With several worker processes, each round also reports how wrk's connections were split
between them (counted mid-run): an asyncio worker accepts every connection waiting when it
wakes, so the split is decided in wrk's first milliseconds, differs from round to round,
and moves throughput by far more than the plugin does (docs/benchmarks.md, issue 18). So
with several processes wrk opens its connections one at a time (``--stagger``, 20 ms apart
by default), as clients arriving over time do, and each worker takes its share; the summary
also compares the variants within each split, and gives the ratio of each round's pair.

Run: ``python bench/worker_bench.py [--workers gevent asgi asgi-starlette uvicorn] [--rounds 6]
[--duration 5] [--connections 16] [--processes 1] [--stagger MS]``. Needs ``wrk`` (Debian package) and, per
worker type, gevent / gunicorn >= 24 / uvicorn-worker. Results and how to read them:
docs/workers.md, docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Tuple

import psutil

from common import runnable, start_gunicorn, wait_port, wrk_cpu

HELLO_WSGI = '''
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "12")])
    return [b"Hello world\\n"]
'''
HELLO_ASGI = '''
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"12")]})
    await send({"type": "http.response.body", "body": b"Hello world\\n"})
'''
HELLO_STARLETTE = '''
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route


async def hello(request):
    return PlainTextResponse("Hello world\\n")

app = Starlette(routes=[Route("/", hello), Route("/users/{user_id}", hello)])
'''
#: a Starlette service as applications are written: a pure ASGI middleware and
#: Starlette's CORS middleware in front, a router of a dozen routes with path parameters
#: and a Mount, a JSON request body parsed and a JSON response built per request
SHOP_STARLETTE = '''
import time

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route


class ServerTiming:
    """A pure ASGI middleware as many apps have one: a header on every response."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()

        async def timed_send(message):
            if message["type"] == "http.response.start":
                spent = (time.perf_counter() - started) * 1000
                message["headers"] = list(message.get("headers", [])) + [
                    (b"server-timing", f"app;dur={spent:.2f}".encode())]
            await send(message)

        await self.app(scope, receive, timed_send)


async def listing(request):
    return JSONResponse({"items": [], "page": int(request.query_params.get("page", 1))})


async def user(request):
    return JSONResponse({"id": request.path_params["user_id"], "name": "Ada"})


async def create_order(request):
    order = await request.json()
    total = sum(line["qty"] * line["price"] for line in order["lines"])
    return JSONResponse({"user": request.path_params["user_id"], "lines": len(order["lines"]),
                         "total": round(total, 2), "status": "accepted"}, status_code=201)


api = [
    Route("/users", listing),
    Route("/users/{user_id:int}", user),
    Route("/users/{user_id:int}/orders", create_order, methods=["POST"]),
    Route("/products", listing),
    Route("/products/{sku}", user),
    Route("/carts/{cart_id}", user),
    Route("/carts/{cart_id}/items", listing),
]
app = Starlette(
    routes=[Route("/health", listing), Route("/", listing), Mount("/api/v1", routes=api),
            Route("/static/{path:path}", listing)],
    middleware=[Middleware(CORSMiddleware, allow_origins=["https://shop.example"],
                           allow_methods=["GET", "POST"]),
                Middleware(ServerTiming)])
'''

#: gunicorn's native asyncio worker (gunicorn 24 and later)
GASGI = "gunicorn.workers.gasgi"
#: worker type -> (plain class, plugin class, app module, modules that must be importable)
WORKERS = {
    "gevent": ("gevent", "gunicorn_prometheus_exporter.PrometheusGeventWorker",
               "hello_wsgi:app", ("gevent",)),
    "asgi": ("asgi", "gunicorn_prometheus_exporter.PrometheusASGIWorker", "hello_asgi:app",
             (GASGI,)),
    "asgi-starlette": ("asgi", "gunicorn_prometheus_exporter.PrometheusASGIWorker",
                       "hello_starlette:app", (GASGI, "starlette")),
    "uvicorn": ("uvicorn_worker.UvicornWorker",
                "gunicorn_prometheus_exporter.PrometheusUvicornWorker", "hello_asgi:app",
                ("uvicorn_worker",)),
}


def write_apps(tmp: str) -> None:
    """The benchmark apps as modules in ``tmp``, which gunicorn runs in."""
    for module, text in (("hello_wsgi", HELLO_WSGI), ("hello_asgi", HELLO_ASGI),
                         ("hello_starlette", HELLO_STARLETTE),
                         ("shop_starlette", SHOP_STARLETTE)):
        Path(tmp, f"{module}.py").write_text(text)


def connection_split(pid: int, processes: int) -> Tuple[int, ...]:
    """Established connections of each of the ``processes`` busiest children of ``pid``
    (the workers; the plugin's metrics process has none), most first."""
    counts = []
    for child in psutil.Process(pid).children():
        try:
            counts.append(sum(1 for c in child.net_connections("tcp")
                              if c.status == psutil.CONN_ESTABLISHED))
        except psutil.Error:
            pass
    return tuple(sorted(counts, reverse=True)[:processes])


def run_variant(worker_class: str, app: str, args: argparse.Namespace, tmp: str) -> tuple:
    """(requests/s, µs CPU per request, connections per worker) of one round."""
    proc, port = start_gunicorn(worker_class, app, tmp, workers=args.processes,
                                args=["--keep-alive", "30"])
    try:
        try:
            wait_port(port, proc=proc)
        except RuntimeError:
            raise SystemExit(f"{worker_class} did not start") from None
        split: List[Tuple[int, ...]] = []
        # the warm-up second and half the run: the split of the measured connections
        timer = threading.Timer(1 + args.duration / 2,
                                lambda: split.append(connection_split(proc.pid, args.processes)))
        timer.start()
        rps, cpu = wrk_cpu(proc, port, args.duration, args.connections,
                           stagger_ms=args.stagger)
        timer.join()
        return rps, cpu, split[0] if split else ()
    finally:
        proc.terminate()
        proc.wait(15)


def bench(name: str, args: argparse.Namespace, tmp: str) -> Dict[str, list]:
    plain, plugin, app, _ = WORKERS[name]
    results: Dict[str, list] = {"plain": [], "plugin": []}
    for n in range(args.rounds):
        for variant in (("plain", "plugin") if n % 2 == 0 else ("plugin", "plain")):
            wc = plain if variant == "plain" else plugin
            results[variant].append(run_variant(wc, app, args, tmp))
            rps, cpu, split = results[variant][-1]
            shown = f"  connections {':'.join(map(str, split))}" if args.processes > 1 else ""
            print(f"{name:8s} round {n + 1} {variant:6s} {rps:9.0f} req/s "
                  f"{cpu:7.1f} us CPU/request{shown}", flush=True)
    return results


def medians(rounds: list) -> Tuple[float, float]:
    return (statistics.median(r[0] for r in rounds), statistics.median(r[1] for r in rounds))


def spread(values: List[float]) -> str:
    return f"{min(values):.0f}-{max(values):.0f}"


def by_split(results: Dict[str, list]) -> None:
    """The variants compared within each connection split both of them met."""
    groups: Dict[Tuple[int, ...], Dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for variant, rounds in results.items():
        for r in rounds:
            groups[r[2]][variant].append(r)
    for split, variants in sorted(groups.items(), reverse=True):
        plain, plugin = variants.get("plain", []), variants.get("plugin", [])
        line = (f"  split {':'.join(map(str, split)):7s} rounds plain {len(plain)}, "
                f"plugin {len(plugin)}")
        if plain and plugin:
            (prps, pcpu), (qrps, qcpu) = medians(plain), medians(plugin)
            line += (f": req/s {prps:.0f} / {qrps:.0f} = {qrps / prps:.3f}, CPU/request "
                     f"{pcpu:.1f} / {qcpu:.1f} us ({qcpu - pcpu:+.1f})")
        print(line)


def asgi_micro(requests: int) -> tuple:
    """In-process: µs per request of the hello ASGI app called bare and through the
    plugin's ASGI wrapper (recording into a real worker store in a temporary directory)."""
    import asyncio

    from gunicorn_prometheus_exporter.workers.asgi_metrics import instrument
    from hot_path import build_instrumentation

    namespace: dict = {}
    exec(HELLO_ASGI, namespace)
    app = namespace["app"]
    with tempfile.TemporaryDirectory() as tmp:
        metrics, _ = build_instrumentation(tmp)
        wrapped = instrument(app, metrics.labeller, metrics.extras, metrics.native)
        scope = {"type": "http", "method": "GET", "path": "/users/42", "headers": []}

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            pass

        async def loop(target, n):
            for _ in range(n):
                await target(dict(scope), receive, send)

        def run(target):
            runs = []
            for _ in range(7):
                start = time.perf_counter()
                asyncio.run(loop(target, requests))
                runs.append((time.perf_counter() - start) / requests * 1e6)
            return statistics.median(runs)

        bare, through = run(app), run(wrapped)
    return bare, through


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", nargs="+", choices=sorted(WORKERS),
                        default=["gevent", "asgi"])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--processes", type=int, default=1,
                        help="gunicorn worker processes (-w)")
    parser.add_argument("--stagger", type=int, default=None, metavar="MS",
                        help="open wrk's connections one at a time, MS apart (default: 20 "
                             "with several processes, else 0: all at once)")
    parser.add_argument("--micro-requests", type=int, default=20000,
                        help="requests of the in-process ASGI wrapper measurement (0: skip)")
    args = parser.parse_args()
    if args.stagger is None:
        args.stagger = 20 if args.processes > 1 else 0
    if args.micro_requests:
        bare, through = asgi_micro(args.micro_requests)
        print(f"in-process ASGI hello app: {bare:.2f} us bare, {through:.2f} us through the "
              f"plugin's wrapper: {through - bare:+.2f} us per request", flush=True)
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")
    summary = []
    with tempfile.TemporaryDirectory() as tmp:
        write_apps(tmp)
        for name in runnable({n: WORKERS[n][3] for n in args.workers}):
            summary.append((name, bench(name, args, tmp)))
    opened = (f"-t{args.connections} -c{args.connections}, opened {args.stagger} ms apart"
              if args.stagger else f"-t1 -c{args.connections}, opened at once")
    print(f"\n{args.processes} worker(s), wrk {opened}, keep-alive, "
          f"{args.rounds} rounds x {args.duration}s interleaved, medians (range):")
    print(f"{'worker':8s} {'plain req/s':>22s} {'plugin req/s':>22s} {'ratio':>6s} "
          f"{'plain us/req':>13s} {'plugin us/req':>14s} {'added us':>9s}")
    for name, results in summary:
        (prps, pcpu), (qrps, qcpu) = medians(results["plain"]), medians(results["plugin"])
        print(f"{name:8s} {prps:8.0f} ({spread([r[0] for r in results['plain']]):>11s}) "
              f"{qrps:8.0f} ({spread([r[0] for r in results['plugin']]):>11s}) "
              f"{qrps / prps:6.3f} {pcpu:13.1f} {qcpu:14.1f} {qcpu - pcpu:+9.1f}")
        paired = [q[0] / p[0] for p, q in zip(results["plain"], results["plugin"])]
        print(f"{'':8s} req/s ratio of each round's pair: median {statistics.median(paired):.3f} "
              f"({min(paired):.3f}-{max(paired):.3f})")
        if args.processes > 1:
            by_split(results)


if __name__ == "__main__":
    main()

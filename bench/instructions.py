"""Instructions per request of a gunicorn worker, with and without the plugin, counted by
valgrind's callgrind: a figure that does not move with the machine's load, unlike
requests per second on a shared 2-core machine.

For each worker type, gunicorn runs one worker under callgrind (which follows the fork), a
client sends N requests over ``--clients`` connections in parallel (keep-alive where the
worker keeps connections alive, a connection per request on the sync worker), and the
worker process is counted until it exits. Two runs with different N give the count per
request as the slope, so start-up and shutdown cancel out. Parallel connections keep a
request always waiting for the worker, so it never idles between two (a serial client let
the sync worker of gunicorn 23 wait in ``select`` a varying number of times, which moved
its count by about 12 k between identical runs). Every slope is measured ``--runs`` times
(variants interleaved) and reported as the median and the spread (min-max) of the runs.
The resource sampler is set to a one-hour interval: its cost is per second, not per
request (docs/benchmarks.md gives it separately). Reported: instructions per request plain
and with the plugin, what the plugin adds (median and spread of the per-run differences),
and the ratio plain/plugin of the medians, which is the throughput ratio a CPU-bound
worker would see if every instruction cost the same.

``asgi-shop`` is a realistic Starlette service (middleware, a dozen routes, a JSON POST);
``--python`` adds the plugin with the C speedups switched off, in the same run (with
``--compare-to``, the other tree's too);
``--headers`` adds the plugin serving requests with a sampled ``traceparent`` (an exemplar
each) and with an ``X-Request-Start`` stamp (a queue time each); ``--compare-to DIR`` adds
the plugin of another source tree (``DIR`` holds its package, built in place: for instance
the previous commit's ``exporter/``), so that a change is measured against it in one run;
``--native-off`` adds the plugin without the native duration histogram (what its store
costs). Those last four are reported against the plugin. The runs are independent
processes: ``--jobs`` runs that many at once (instruction counts do not depend on load).

Run: ``python bench/instructions.py [--workers sync gthread gevent asgi asgi-starlette
asgi-shop uvicorn] [--requests 200 800] [--clients 4] [--runs 3] [--jobs 1] [--python]
[--headers] [--compare-to DIR] [--native-off] [--json FILE] [--keep DIR]``; ``--table
FILE...`` prints the table of docs/benchmarks.md from the ``--json`` files of one or more
runs; ``--keep DIR`` keeps the callgrind files for ``bench/function_slopes.py``. Needs
valgrind; one callgrind run takes 5-10 s of a core (about 5 s to start, then 5 ms a
request), a table of six workers, three variants and three runs about 15 minutes.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Tuple

from common import runnable, send_requests, start_gunicorn, wait_port
from gunicorn_prometheus_exporter import speedups
from worker_bench import GASGI, write_apps

GET_USER = b"GET /users/42 HTTP/1.1\r\nHost: bench\r\n%s\r\n"
_ORDER = (b'{"lines": [{"sku": "A-1", "qty": 2, "price": 9.5}, '
          b'{"sku": "B-7", "qty": 1, "price": 24.0}], "note": "leave at the door"}')
POST_ORDER = (b"POST /api/v1/users/42/orders HTTP/1.1\r\nHost: bench\r\n"
              b"Origin: https://shop.example\r\nContent-Type: application/json\r\n"
              b"Content-Length: " + str(len(_ORDER)).encode() + b"\r\n%s\r\n" + _ORDER)
TRACEPARENT = b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n"
PLUGIN = "gunicorn_prometheus_exporter.Prometheus"


class Case(NamedTuple):
    plain: str  #: gunicorn's worker class
    plugin: str  #: the plugin's worker class for it
    app: str
    keep_alive: bool
    modules: Tuple[str, ...]  #: what must be importable to run it
    request: bytes  #: with ``%s`` where a ``Connection: close`` line goes


WORKERS: Dict[str, Case] = {
    "sync": Case("sync", PLUGIN + "Worker", "hello_wsgi:app", False, ("gunicorn",),
                 GET_USER),
    "gthread": Case("gthread", PLUGIN + "ThreadWorker", "hello_wsgi:app", True,
                    ("gunicorn",), GET_USER),
    "gevent": Case("gevent", PLUGIN + "GeventWorker", "hello_wsgi:app", True, ("gevent",),
                   GET_USER),
    "asgi": Case("asgi", PLUGIN + "ASGIWorker", "hello_asgi:app", True, (GASGI,), GET_USER),
    "asgi-starlette": Case("asgi", PLUGIN + "ASGIWorker", "hello_starlette:app", True,
                           (GASGI, "starlette"), GET_USER),
    # a realistic service: middleware, a routed JSON POST (worker_bench.SHOP_STARLETTE)
    "asgi-shop": Case("asgi", PLUGIN + "ASGIWorker", "shop_starlette:app", True,
                      (GASGI, "starlette"), POST_ORDER),
    "uvicorn": Case("uvicorn_worker.UvicornWorker", PLUGIN + "UvicornWorker",
                    "hello_asgi:app", True, ("uvicorn_worker",), GET_USER),
}


class Variant(NamedTuple):
    """One way of running a case: gunicorn's own worker or the plugin's, with settings."""
    label: str
    plugin: bool
    env: Dict[str, str]
    header: bytes = b""
    against: str = "plain"  #: the variant its "added" column is measured against


def variants(args: argparse.Namespace) -> List[Variant]:
    found = [Variant("plain", False, {}), Variant("plugin", True, {})]
    if args.python:
        found.append(Variant("python", True, {speedups.SWITCH_ENV: "1"}))
    if args.compare_to:
        found.append(Variant("compared", True,
                             {"PYTHONPATH": os.path.abspath(args.compare_to)},
                             against="plugin"))
        if args.python:  # the other tree's Python path, against this one's
            found.append(Variant("compared python", True,
                                 {"PYTHONPATH": os.path.abspath(args.compare_to),
                                  speedups.SWITCH_ENV: "1"}, against="python"))
    if args.native_off:
        found.append(Variant("no native", True, {"PROMETHEUS_NATIVE_HISTOGRAMS": "false"},
                             against="plugin"))
    if args.headers:
        found.append(Variant("traced", True, {}, TRACEPARENT, against="plugin"))
        found.append(Variant("stamped", True, {"PROMETHEUS_QUEUE_MAX_SECONDS": "86400"},
                             b"X-Request-Start: t=%.3f\r\n" % time.time(), against="plugin"))
    return found


def count_run(case: Case, variant: Variant, requests: int, clients: int, tmp: str,
              keep: Optional[Path] = None) -> int:
    """Instructions of the worker process (all its threads: gthread serves requests in a
    pool) over its life with ``requests`` requests (after one per client to start); its
    callgrind file is moved to ``keep`` when given (``bench/function_slopes.py``)."""
    out = Path(tempfile.mkdtemp(prefix="cg-", dir=tmp))
    log = out / "gunicorn.log"
    request = (case.request.replace(b"%s", variant.header + b"%s", 1) if variant.header
               else case.request)
    with open(log, "w") as log_file:
        proc, port = start_gunicorn(
            case.plugin if variant.plugin else case.plain, case.app, tmp, output=log_file,
            prefix=["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/out.%p"],
            args=["--keep-alive", "300", "--timeout", "600", "--graceful-timeout", "120"],
            env={"PROMETHEUS_SAMPLE_INTERVAL": "3600",
                 "PYTHONHASHSEED": "0", **variant.env})  # the same dict layouts every run
    try:
        wait_port(port, timeout=600, proc=proc)
        send_requests(port, clients, case.keep_alive, request, clients)  # up and answering
        send_requests(port, requests, case.keep_alive, request, clients)
    finally:
        proc.terminate()
        proc.wait(600)
    if variant.plugin:
        _check_recorded(os.path.join(tmp, f"mp-{port}"), requests + clients)
    pid = re.search(r"Booting worker with pid: (\d+)", log.read_text()).group(1)
    total = _total(out / f"out.{pid}")
    if keep is not None:
        shutil.move(str(out / f"out.{pid}"), str(keep))
    shutil.rmtree(out)
    return total


def _counted(name: str, variant: Variant, requests: int, clients: int, tmp: str,
             keep: Optional[str], run: int) -> int:
    """``count_run`` with a line on stderr when it is done (a table takes a while); the
    callgrind file kept in ``keep`` as ``case.variant.requests.run.out``."""
    kept = (Path(keep, f"{name}.{variant.label.replace(' ', '-')}.{requests}.{run}.out")
            if keep else None)
    total = count_run(WORKERS[name], variant, requests, clients, tmp, kept)
    print(f"  {name} {variant.label}, {requests} requests: {total:,} instructions",
          file=sys.stderr, flush=True)
    return total


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


class Spread(NamedTuple):
    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: List[float]) -> "Spread":
        return cls(statistics.median(values), min(values), max(values))

    def text(self, sign: str = "") -> str:
        return (f"{self.median:{sign},.0f} ({self.low:{sign},.0f}..{self.high:{sign},.0f}, "
                f"{self.high - self.low:,.0f})")


def slopes(futures: Dict[int, Future], counts: Tuple[int, int]) -> float:
    low, high = counts
    return (futures[high].result() - futures[low].result()) / (high - low)


def report(name: str, found: List[Variant], per_run: Dict[str, List[float]]) -> List[str]:
    """Lines for one case: each variant's median (min..max, range) per request and, but
    for the plain one, the median and spread of what it adds run by run."""
    lines = []
    for variant in found:
        runs = per_run[variant.label]
        text = f"{name:15s} {variant.label:15s} {Spread.of(runs).text():>36s}"
        if variant.label != variant.against:
            base = per_run[variant.against]
            added = Spread.of([a - b for a, b in zip(runs, base)])
            ratio = statistics.median(base) / statistics.median(runs)
            text += (f"  {added.text('+'):>34s} against {variant.against}, "
                     f"{variant.against}/{variant.label} {ratio:.3f}")
        lines.append(text)
    return lines


def describe() -> str:
    """What was measured: gunicorn, Python, the plugin's source tree and its commit."""
    source = Path(speedups.__file__).resolve().parents[2]
    commit = subprocess.run(["git", "-C", str(source), "describe", "--always", "--dirty"],
                            capture_output=True, text=True).stdout.strip()
    return (f"gunicorn {metadata.version('gunicorn')}, Python {platform.python_version()}, "
            f"plugin from {source}" + (f" at {commit}" if commit else ""))


def markdown(saved: List[dict]) -> List[str]:
    """docs/benchmarks.md's table from files written by ``--json``: per worker and
    gunicorn, plain, the plugin (C) and what it adds, the Python path's addition; each
    the median (min-max) of the runs."""
    lines = ["| worker | gunicorn | plain | with the plugin (C) | added (C) | "
             "**plain / plugin (C)** | added (Python path) | plain / plugin (Python) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for run in saved:
        version = re.match(r"gunicorn (\S+),", run["about"]).group(1)
        for name, per_run in run["slopes"].items():
            plain, ours = per_run["plain"], per_run["plugin"]
            cells = [name, version, _cell(plain), _cell(ours), _added(ours, plain),
                     f"**{statistics.median(plain) / statistics.median(ours):.3f}**"]
            python = per_run.get("python")
            cells += ([_added(python, plain),
                       f"{statistics.median(plain) / statistics.median(python):.3f}"]
                      if python else ["", ""])
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def _cell(values: List[float], sign: str = "") -> str:
    low, high = min(values), max(values)
    return f"{statistics.median(values):{sign},.0f} ({low:,.0f}–{high:,.0f})"


def _added(ours: List[float], base: List[float]) -> str:
    return _cell([a - b for a, b in zip(ours, base)], "+")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", nargs="+", choices=sorted(WORKERS),
                        default=["sync", "gthread", "gevent", "asgi", "asgi-starlette",
                                 "asgi-shop", "uvicorn"])
    parser.add_argument("--requests", nargs=2, type=int, default=[200, 800])
    parser.add_argument("--clients", type=int, default=4,
                        help="connections sending requests at once (default 4)")
    parser.add_argument("--runs", type=int, default=3,
                        help="slopes measured per variant, for the median and spread")
    parser.add_argument("--jobs", type=int, default=1,
                        help="callgrind runs at once (each takes one core)")
    parser.add_argument("--python", action="store_true",
                        help=f"also the plugin with the C speedups off ({speedups.SWITCH_ENV})")
    parser.add_argument("--headers", action="store_true",
                        help="also requests with a sampled traceparent, and with X-Request-Start")
    parser.add_argument("--compare-to", metavar="DIR",
                        help="also the plugin package found in DIR (first on PYTHONPATH)")
    parser.add_argument("--native-off", action="store_true",
                        help="also the plugin without native histograms "
                             "(PROMETHEUS_NATIVE_HISTOGRAMS=false)")
    parser.add_argument("--json", metavar="FILE", help="also write every run's slope here")
    parser.add_argument("--keep", metavar="DIR",
                        help="keep every worker's callgrind file in DIR, for "
                             "bench/function_slopes.py")
    parser.add_argument("--table", nargs="+", metavar="FILE",
                        help="only print the docs' table from files written by --json")
    args = parser.parse_args()
    if args.table:
        print("\n".join(markdown([json.loads(Path(f).read_text()) for f in args.table])))
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    low, high = counts = tuple(sorted(args.requests))
    found = variants(args)
    about = describe()
    print(about, flush=True)
    results: Dict[str, Dict[str, List[float]]] = {}
    lines: List[str] = []
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(args.jobs) as pool:
        write_apps(tmp)
        cases = runnable({n: WORKERS[n].modules for n in args.workers})
        # every run submitted at once, run by run and variant by variant (interleaved)
        futures = {(name, v.label, run): {n: pool.submit(_counted, name, v, n, args.clients,
                                                          tmp, args.keep, run)
                                          for n in (high, low)}
                   for name in cases for run in range(args.runs) for v in found}
        for name in cases:
            started = time.monotonic()
            per_run = {v.label: [slopes(futures[name, v.label, run], counts)
                                 for run in range(args.runs)] for v in found}
            results[name] = per_run
            case_lines = report(name, found, per_run)
            lines += case_lines
            print("\n".join(case_lines) + f"  (waited {time.monotonic() - started:.0f} s)",
                  flush=True)
    print(f"\ninstructions per request (callgrind, worker process, slope of {low} and {high} "
          f"requests over {args.clients} connections, median (min..max, range) of "
          f"{args.runs} runs; added: median (min..max, range) of the per-run differences); "
          f"{about}:")
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"about": about, "requests": [low, high], "clients": args.clients,
             "runs": args.runs, "slopes": results}, indent=1))


if __name__ == "__main__":
    main()

"""Instructions per ``Recorder.add`` (one request's stores), counted by valgrind's callgrind:
compiled and Python paths, with and without the native duration histogram. A figure that
does not move with the load of a shared machine, for the one step native histograms add
to a request.

Each variant runs a child Python under callgrind that records N and then M requests into a
temporary worker store; the slope (M - N requests) cancels start-up. Durations cycle over
a spread from 50 µs to 20 s, so the bucket search takes every path.

Run: ``python bench/add_instructions.py [--requests 2000 12000] [--variants ...]``. Needs valgrind; about a
minute per variant.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

VARIANTS = {  # name -> (compiled path, native histogram)
    "compiled": (True, False),
    "compiled + native": (True, True),
    "python": (False, False),
    "python + native": (False, True),
}


def child(variant: str, requests: int) -> None:
    """Record ``requests`` requests as a worker does (its recorder on a real store)."""
    compiled, with_native = VARIANTS[variant]
    from gunicorn_prometheus_exporter import speedups
    from gunicorn_prometheus_exporter.config.schema import (DEFAULT_DURATION_BUCKETS,
                                                            DEFAULT_SIZE_BUCKETS)
    from gunicorn_prometheus_exporter.recorder import Recorder
    from gunicorn_prometheus_exporter.storage.native import Layout
    from gunicorn_prometheus_exporter.storage.store import ProcessStore

    native = speedups.load() if compiled else None
    if compiled and native is None:
        sys.exit("the compiled path is not available here")
    layout = Layout.for_range(3, 1e-6, 3600.0) if with_native else None
    with tempfile.TemporaryDirectory() as directory:
        store = ProcessStore(directory, "w0")
        rec = Recorder(store, DEFAULT_DURATION_BUCKETS, DEFAULT_SIZE_BUCKETS, threaded=False,
                       native=native, native_layout=layout)
        series = rec.series("GET", "/users/{id}", "200")
        durations = [5e-5 * 1.37 ** i for i in range(40)]  # 50 µs .. 20 s
        add = rec.add
        for i in range(requests):
            add(series, durations[i % 40], 0, 512)
        store.close()


def count(variant: str, requests: int, tmp: str) -> int:
    out = os.path.join(tmp, f"cg.{variant.replace(' ', '')}.{requests}")
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                    sys.executable, __file__, "--child", variant, str(requests)],
                   check=True, capture_output=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    for line in Path(out).read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", nargs=2, type=int, default=[2000, 12000])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    low, high = args.requests
    print(f"instructions per Recorder.add (callgrind, slope of {low} and {high} requests):")
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants:
            per = (count(variant, high, tmp) - count(variant, low, tmp)) / (high - low)
            print(f"{variant:20s} {per:8.0f}", flush=True)


if __name__ == "__main__":
    main()

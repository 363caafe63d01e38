"""Instructions of a first and a repeat read of a directory whose workers also keep
exemplar and native histogram files, counted by callgrind on the compiled path.

The directory (P workers x R routes, N traced requests per route and worker through the
real recorders, native histograms on: ``scrape_bench.write_requests``) is written once,
outside valgrind; then, as ``cold_instructions.py`` does, callgrind counts a whole process
that builds a collector and reads the directory 0, 1 and 3 times: a first read costs
I(1) - I(0), a repeat read (I(3) - I(1)) / 2. What it was written for: the cost of reading
those files through the guarded C reads (docs/reliability.md) against reading their map
in Python.

Run: ``python bench/extras_instructions.py [--workers 16] [--routes 100] [--requests 10]
[--runs 1]``. Prints Markdown.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cold_instructions import instructions  # noqa: E402
from scrape_bench import write_requests  # noqa: E402

from gunicorn_prometheus_exporter.storage import native  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--routes", type=int, default=100)
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    layout = native.Layout.for_range(3, 1e-6, 3600.0)
    print(f"| {args.workers} workers x {args.routes} routes, exemplars and native, C path "
          "| first read | repeat read |")
    print("|---|---:|---:|")
    with tempfile.TemporaryDirectory() as directory:
        for n in range(args.workers):
            write_requests(directory, f"w{n}", args.routes, layout, args.requests, traced=True)
        out = os.path.join(directory, "callgrind.out")
        for run in range(args.runs):
            counts = {r: instructions(directory, r, False, out) for r in (0, 1, 3)}
            first, repeat = counts[1] - counts[0], (counts[3] - counts[1]) / 2
            print(f"| run {run + 1} | {first / 1e6:,.1f} M | {repeat / 1e6:,.1f} M |",
                  flush=True)


if __name__ == "__main__":
    main()

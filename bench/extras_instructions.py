"""Instructions of a first and a repeat read of a directory of the request families as a
server writes them, counted by callgrind on the compiled path.

The directory (P workers x R routes, N requests per route and worker through the real
recorders: ``scrape_bench.write_request_dir``; ``--files default``, the default
configuration, has native histograms on and a trace, an exemplar, per request; ``native``
no traces; ``classic`` native histograms off too) is written once, outside valgrind; then,
as ``cold_instructions.py`` does (and charging each read with what it does there), callgrind
counts a whole process that builds a collector and reads the directory 0, 1 and 3 times: a
first read costs I(1) - I(0), a repeat read (I(3) - I(1)) / 2. ``--runs``: that many
counts of each, the median and range printed.

Run: ``python bench/extras_instructions.py [--workers 16] [--routes 100] [--requests 10]
[--files default] [--runs 1]`` (64 x 1,000: about 25 minutes a run). Prints Markdown.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cold_instructions import instructions  # noqa: E402
from scrape_bench import REQUEST_FILES, write_request_dir  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--routes", type=int, default=100)
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--files", choices=REQUEST_FILES, default="default")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    print(f"| {args.workers} workers x {args.routes} routes x {args.requests} requests, "
          f"{args.files}, C path | first read | repeat read | first / repeat |")
    print("|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as directory:
        write_request_dir(directory, args.workers, args.routes, args.files, args.requests)
        out = os.path.join(directory, "callgrind.out")
        firsts, repeats = [], []
        for run in range(args.runs):
            counts = {r: instructions(directory, r, False, out) for r in (0, 1, 3)}
            firsts.append(counts[1] - counts[0])
            repeats.append((counts[3] - counts[1]) / 2)
            print(f"| run {run + 1} | {firsts[-1] / 1e6:,.1f} M | {repeats[-1] / 1e6:,.1f} M "
                  f"| {firsts[-1] / repeats[-1]:.2f}x |", flush=True)
        ratios = [f / r for f, r in zip(firsts, repeats)]
        print(f"| median (range) | {statistics.median(firsts) / 1e6:,.1f} M "
              f"({min(firsts) / 1e6:,.1f}-{max(firsts) / 1e6:,.1f}) "
              f"| {statistics.median(repeats) / 1e6:,.1f} M "
              f"({min(repeats) / 1e6:,.1f}-{max(repeats) / 1e6:,.1f}) "
              f"| {statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) |")


if __name__ == "__main__":
    main()

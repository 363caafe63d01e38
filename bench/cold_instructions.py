"""Instructions of a cold scrape against a repeat scrape, counted by callgrind.

The directory (P processes x S label sets, routes in another order in each process, as
``scrape_bench.py --cold`` writes it) is written once, outside valgrind. Then, for each
path (compiled key walk, and Python with ``GUNICORN_PROMETHEUS_NO_SPEEDUPS=1``) and each
run, callgrind counts a whole process that builds a collector and calls
``_read_once()`` 0, 1 and 3 times: the first read costs I(1) - I(0), a repeat read
(I(3) - I(1)) / 2. ``PYTHONHASHSEED=0`` keeps dict and set layouts the same between runs;
what still moves is the cyclic GC's passes over the start-up objects.

What a read is charged with: its own work, and the cyclic GC's passes over what it made
until that reaches the oldest generation (the process runs a pass of each generation
before it ends, so the first read's tables are visited by a young, a middle and a full
pass in every process, as they would be in a metrics process soon after that read; a
repeat read's objects are freed by reference counting). Not the teardown of the tables at
the process's exit, which no read pays (the process ends with ``os._exit``): until 3
December 2026 the whole process was counted, exit included, which charged the first read
with the deallocation of every table it built (about 90 M at 16 workers x 100 routes).

Run: ``python bench/cold_instructions.py [--processes 64] [--label-sets 100] [--runs 3]``
(about a minute per run and path at 64 x 100). Prints Markdown.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scrape_bench import write_process  # noqa: E402

READS = """
import gc, os, sys
from gunicorn_prometheus_exporter import speedups
from gunicorn_prometheus_exporter.collector import DirectoryCollector
collector = DirectoryCollector(sys.argv[1], deadline=600.0, compiled=speedups.load())
for _ in range(int(sys.argv[2])):
    assert collector._read_once()
for generation in range(3):
    gc.collect(generation)
os._exit(0)
"""


def instructions(directory: str, reads: int, python_path: bool, out: str) -> int:
    """Instructions callgrind counts for the whole process."""
    env = dict(os.environ, PYTHONHASHSEED="0")
    if python_path:
        env["GUNICORN_PROMETHEUS_NO_SPEEDUPS"] = "1"
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                    sys.executable, "-c", READS, directory, str(reads)],
                   env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(out) as f:
        found = re.search(r"^(?:summary|totals): (\d+)", f.read(), re.M)
    os.unlink(out)
    assert found, "no totals in the callgrind output"
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=64)
    parser.add_argument("--label-sets", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    values = args.processes * args.label_sets * 17
    print(f"| {args.processes} x {args.label_sets} ({values:,} values), instructions "
          f"| first read | repeat read | first / repeat (median, range over {args.runs} runs) |")
    print("|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as directory:
        for n in range(args.processes):
            write_process(directory, f"w{n}", args.label_sets, shuffle=n + 1)
        out = os.path.join(directory, "callgrind.out")
        for name, python_path in (("C key walk", False), ("Python", True)):
            firsts, repeats, ratios = [], [], []
            for _ in range(args.runs):
                counts = {r: instructions(directory, r, python_path, out) for r in (0, 1, 3)}
                first, repeat = counts[1] - counts[0], (counts[3] - counts[1]) / 2
                firsts.append(first)
                repeats.append(repeat)
                ratios.append(first / repeat)
            print(f"| {name} | {statistics.median(firsts) / 1e6:,.0f} M "
                  f"({min(firsts) / 1e6:,.0f}-{max(firsts) / 1e6:,.0f}) "
                  f"| {statistics.median(repeats) / 1e6:,.0f} M "
                  f"({min(repeats) / 1e6:,.0f}-{max(repeats) / 1e6:,.0f}) "
                  f"| {statistics.median(ratios):.1f}x ({min(ratios):.1f}-{max(ratios):.1f}) |",
                  flush=True)


if __name__ == "__main__":
    main()

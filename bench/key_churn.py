"""Memory of a collector whose directory's keys churn: label values that keep changing,
files replaced by files of other keys.

P processes x S label sets (one counter and one 15-bucket histogram, the files of
``scrape_bench.py``); each round replaces every process's files (removed, then written
again, as a restarted worker's or a re-created file's) with S routes never seen before,
and reads the directory once. The live files hold the same number of keys in every round;
what a collector keeps of the keys of the files gone is what this measures: after each
checkpoint round, the keys in its key table, the series in its registry, the resets
(the times the key table was found smaller than after the read before) and the process's
``RssAnon`` (``/proc/self/status``: its heap; the mapped files are not in it), and the CPU
time of the reads since the last checkpoint.

Run: ``python bench/key_churn.py [--processes 8] [--label-sets 100] [--rounds 200]``; the
Python path with ``GUNICORN_PROMETHEUS_NO_SPEEDUPS=1``. Prints Markdown.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scrape_bench import write_process  # noqa: E402

from gunicorn_prometheus_exporter import speedups  # noqa: E402
from gunicorn_prometheus_exporter.collector import DirectoryCollector  # noqa: E402


def rss_anon() -> float:
    """The process's anonymous resident memory in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


def replace_files(directory: str, processes: int, label_sets: int, round_: int) -> None:
    """Every process's files removed and written again with routes of this round only."""
    for path in glob.glob(os.path.join(directory, "*.db")):
        os.unlink(path)
    for n in range(processes):
        write_process(directory, f"w{n}", label_sets, first=round_ * label_sets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--label-sets", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    compiled = speedups.load()
    path = "C key walk" if compiled is not None else "Python"
    print(f"{path}, {args.processes} processes x {args.label_sets} label sets, "
          f"python {sys.version.split()[0]}\n")
    print("| rounds | keys in the table | series | resets | RssAnon | read CPU time |")
    print("|---:|---:|---:|---:|---:|---:|")
    checkpoints = {1, 10, 50, 100, 200, 500, 1000, args.rounds}
    with tempfile.TemporaryDirectory() as directory:
        collector = DirectoryCollector(directory, deadline=600.0, compiled=compiled)
        resets, last_size, cpu = 0, 0, 0.0
        for round_ in range(1, args.rounds + 1):
            replace_files(directory, args.processes, args.label_sets, round_)
            started = time.process_time()
            assert collector.read()
            cpu += time.process_time() - started
            size = len(collector._key_table)
            resets += size < last_size
            last_size = size
            if round_ in checkpoints:
                print(f"| {round_:,} | {size:,} | {len(collector.merger.registry.keys):,} "
                      f"| {resets} | {rss_anon():.1f} MiB | {cpu:.2f} s |", flush=True)
                cpu = 0.0


if __name__ == "__main__":
    main()

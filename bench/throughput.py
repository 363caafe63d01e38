"""Throughput of gunicorn with the plugin against plain gunicorn, measured in one run.

wrk drives a hello-world app (sync workers, 2 workers) on loopback; the variants run
interleaved (A B A B ...) so that drift in a shared machine's load hits both alike, and the
report gives the median of each and their ratio. Also reports CPU time per request of the
gunicorn processes (user+system of master and workers, from /proc), which is steadier
than requests per second on a busy machine.

Run: ``python bench/throughput.py [--rounds 5] [--duration 5] [--worker-class sync]``.
Needs ``wrk`` (Debian package).
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from common import start_gunicorn, wait_port, wrk_cpu

HERE = Path(__file__).resolve().parent
PLAIN = {"sync": "sync", "gthread": "gthread"}
PLUGIN = {"sync": "gunicorn_prometheus_exporter.PrometheusWorker",
          "gthread": "gunicorn_prometheus_exporter.PrometheusThreadWorker"}


def run_variant(worker_class: str, duration: int, connections: int, tmp: str) -> tuple:
    proc, port = start_gunicorn(worker_class, "hello:app", tmp, workers=2, chdir=str(HERE))
    try:
        wait_port(port, proc=proc)
        return wrk_cpu(proc, port, duration, connections, threads=2)
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--worker-class", choices=sorted(PLAIN), default="sync")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")
    results = {"plain": [], "plugin": []}
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(args.rounds):
            order = ("plain", "plugin") if n % 2 == 0 else ("plugin", "plain")
            for name in order:
                wc = PLAIN[args.worker_class] if name == "plain" else PLUGIN[args.worker_class]
                results[name].append(run_variant(wc, args.duration, args.connections, tmp))
                rps, cpu = results[name][-1]
                print(f"round {n + 1} {name:6s} {rps:9.0f} req/s  {cpu:6.1f} us CPU/request",
                      flush=True)
    plain_rps = statistics.median(r for r, _ in results["plain"])
    plugin_rps = statistics.median(r for r, _ in results["plugin"])
    plain_cpu = statistics.median(c for _, c in results["plain"])
    plugin_cpu = statistics.median(c for _, c in results["plugin"])
    print(f"\n{args.worker_class}, 2 workers, wrk -c{args.connections}, {args.rounds} rounds "
          f"x {args.duration}s, medians:")
    print(f"plain  gunicorn: {plain_rps:9.0f} req/s, {plain_cpu:6.1f} us CPU per request")
    print(f"with the plugin: {plugin_rps:9.0f} req/s, {plugin_cpu:6.1f} us CPU per request")
    print(f"throughput ratio: {plugin_rps / plain_rps:.3f}; "
          f"added CPU per request: {plugin_cpu - plain_cpu:+.1f} us")


if __name__ == "__main__":
    main()

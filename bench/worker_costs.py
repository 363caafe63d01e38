"""Where a worker's time per request goes, per process, with and without the plugin: user
and system CPU, minor page faults and voluntary/involuntary context switches per request
of every gunicorn process (from /proc), for three variants interleaved in one run:

* ``plain``: gunicorn's own worker class;
* ``plugin``: the plugin's worker class, recording every request;
* ``no-wrapper``: the plugin's worker class with its request wrapper taken off again in
  ``post_worker_init`` (the application served bare): everything of the plugin but the
  per-request work (metrics process, sampler, worker class, storage).

If ``no-wrapper`` measures as ``plain``, nothing but the per-request wrapper costs, and its
cost is the instruction count of ``bench/instructions.py``; a system call, page fault or
context switch per request would show here. Built for issue 18's two-worker ASGI question
(docs/benchmarks.md); CPU figures swing by ±5 µs between rounds on a 2-core machine with
sixteen wrk threads, so read several rounds.

Run: ``python bench/worker_costs.py [--workers asgi uvicorn] [--rounds 3] [--duration 5]
[--processes 2]``. Needs wrk.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Dict, List

import psutil

from common import start_gunicorn, wait_port, wrk
from worker_bench import WORKERS, write_apps

TICK = os.sysconf("SC_CLK_TCK")
VARIANTS = ("plain", "plugin", "no-wrapper")
#: a gunicorn config whose post_worker_init serves the application bare again (both ASGI
#: workers keep the application they serve in ``asgi`` / ``wsgi``)
UNWRAP = '''
def post_worker_init(worker):
    bare = worker.app.wsgi()
    for name in ("asgi", "wsgi"):
        if hasattr(worker, name):
            setattr(worker, name, bare)
'''


def counters(pid: int) -> Dict[str, float]:
    """CPU seconds, minor faults and context switches of ``pid`` and its descendants."""
    total = dict.fromkeys(("user", "sys", "minflt", "voluntary", "involuntary"), 0.0)
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            status = Path(f"/proc/{proc.pid}/status").read_text()
        except OSError:
            continue  # a process gone between the listing and the read
        total["user"] += int(fields[11]) / TICK
        total["sys"] += int(fields[12]) / TICK
        total["minflt"] += int(fields[7])
        total["voluntary"] += int(status.split("\nvoluntary_ctxt_switches:")[1].split()[0])
        total["involuntary"] += int(status.split("nonvoluntary_ctxt_switches:")[1].split()[0])
    return total


def measure(worker: str, variant: str, args: argparse.Namespace, tmp: str) -> str:
    plain, plugin, app, _ = WORKERS[worker]
    extra: List[str] = []
    if variant == "no-wrapper":
        config = Path(tmp, "unwrap.py")
        config.write_text(UNWRAP)
        extra = ["-c", str(config)]
    proc, port = start_gunicorn(plain if variant == "plain" else plugin, app, tmp,
                                workers=args.processes, args=["--keep-alive", "30", *extra])
    try:
        wait_port(port, proc=proc)
        wrk(port, 1, 16, stagger_ms=20)  # warm-up, connections as measured
        before = counters(proc.pid)
        run = wrk(port, args.duration, 16, stagger_ms=20)
        after = counters(proc.pid)
    finally:
        proc.terminate()
        proc.wait(15)
    n = run["requests"]
    d = {key: after[key] - before[key] for key in after}
    return (f"{worker:8s} {variant:10s} {run['rps']:8.0f} req/s  per request: user "
            f"{d['user'] / n * 1e6:6.1f} us  sys {d['sys'] / n * 1e6:5.1f} us  minor faults "
            f"{d['minflt'] / n:.4f}  context switches {d['voluntary'] / n:.3f} voluntary, "
            f"{d['involuntary'] / n:.3f} involuntary")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", nargs="+", choices=("asgi", "uvicorn"),
                        default=["asgi", "uvicorn"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        write_apps(tmp)
        for worker in args.workers:
            for round_ in range(args.rounds):
                # the order rotates, so a drift of the machine hits each variant alike
                order = VARIANTS[round_ % 3:] + VARIANTS[:round_ % 3]
                for variant in order:
                    print(measure(worker, variant, args, tmp), flush=True)


if __name__ == "__main__":
    main()

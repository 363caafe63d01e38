"""Memory of gunicorn with the plugin against plain gunicorn: RSS, PSS and USS of every
worker, of the master and of the plugin's metrics process, read from
``/proc/<pid>/smaps_rollup`` after N requests, in one run.

Each round starts two gunicorns side by side serving the same hello-world app with the
same number of workers, plain and with the plugin (its file mode, a metrics process
serving ``/metrics``), sends N requests to each (a few connections at once, so every
worker serves some) and scrapes the plugin's ``/metrics`` a few times, then reads the
memory of every process and stops both. Rounds alternate which instance starts first.
Reported per kind of process: the median over rounds of the mean over its workers, with
the spread of the rounds (min..max); and what the plugin adds per worker.

RSS counts every page a process has mapped; PSS divides each shared page by the number
of processes sharing it (a worker shares its interpreter and what the app imported before
the fork with the master and the other workers, and the plugin's mapped files with the
metrics process), so the PSS of all processes adds up to what the instance really costs;
USS (private pages only) is what stopping the process would free. The interpreter's own
file pages are also shared with every other Python on the machine, so PSS moves slightly
with what else runs; compare the two instances of one round.

Run: ``python bench/memory.py [--worker-class sync] [--workers 2] [--requests 10000]
[--rounds 3] [--scrapes 3]``. Linux only (``smaps_rollup``: kernel 4.14 and later).
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional

import psutil

from common import free_port, send_requests, start_gunicorn, wait_port
from instructions import WORKERS, describe
from worker_bench import write_apps

#: the fields of smaps_rollup reported, in kB there
FIELDS = {"rss": ("Rss",), "pss": ("Pss",), "uss": ("Private_Clean", "Private_Dirty")}


class Memory(NamedTuple):
    rss: float  #: MiB
    pss: float
    uss: float


def read_memory(pid: int) -> Memory:
    """One process's RSS, PSS and USS in MiB."""
    values: Dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        values[key] = int(rest.split()[0])
    return Memory(*(sum(values[k] for k in keys) / 1024 for keys in FIELDS.values()))


def mean(memories: List[Memory]) -> Memory:
    return Memory(*(statistics.mean(column) for column in zip(*memories)))


class Instance:
    """One gunicorn (plain or with the plugin), its log in a file to find its processes."""

    def __init__(self, worker_class: str, app: str, workers: int, tmp: str,
                 env: Dict[str, str]) -> None:
        self.plugin = worker_class.startswith("gunicorn_prometheus_exporter.")
        self.metrics_port = free_port()
        self.log = Path(tempfile.mkstemp(prefix="gunicorn-", suffix=".log", dir=tmp)[1])
        with open(self.log, "w") as out:
            self.proc, self.port = start_gunicorn(
                worker_class, app, tmp, workers=workers, output=out,
                env={"PROMETHEUS_METRICS_PORT": str(self.metrics_port), **env})
        wait_port(self.port, proc=self.proc)
        if self.plugin:
            wait_port(self.metrics_port, proc=self.proc)

    def metrics_pid(self) -> Optional[int]:
        found = re.findall(r"serving metrics at \S+ \(pid (\d+)\)", self.log.read_text())
        return int(found[-1]) if found else None

    def worker_pids(self) -> List[int]:
        monitor = self.metrics_pid()
        return sorted(c.pid for c in psutil.Process(self.proc.pid).children()
                      if c.pid != monitor)

    def scrape(self) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=60) as answer:
            return len(answer.read())

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def one_round(args: argparse.Namespace, tmp: str, order: List[str]) -> Dict[str, Memory]:
    """The instances of ``order`` started in that order; per kind of process (``plain
    worker``, ``plugin master``, ``compared metrics`` ...), the mean over its processes."""
    case = WORKERS[args.worker_class]
    instances: Dict[str, Instance] = {}
    try:
        for label in order:
            env = {"PYTHONPATH": os.path.abspath(args.compare_to)} if label == "compared" else {}
            instances[label] = Instance(case.plain if label == "plain" else case.plugin,
                                        case.app, args.workers, tmp, env)
        for instance in instances.values():
            send_requests(instance.port, args.requests, case.keep_alive, case.request,
                          args.workers * 2)
            if instance.plugin:
                for _ in range(args.scrapes):
                    instance.scrape()
        time.sleep(0.5)  # the metrics processes' answers written, their buffers released
        found = {}
        for label, instance in instances.items():
            workers = instance.worker_pids()
            if len(workers) != args.workers:
                raise RuntimeError(f"{label}: expected {args.workers} workers:\n"
                                   + instance.log.read_text())
            found[f"{label} worker"] = mean([read_memory(pid) for pid in workers])
            found[f"{label} master"] = read_memory(instance.proc.pid)
            if instance.plugin:
                found[f"{label} metrics process"] = read_memory(instance.metrics_pid())
        return found
    finally:
        for instance in instances.values():
            instance.stop()


def spread(values: List[float]) -> str:
    return f"{statistics.median(values):6.1f} ({min(values):.1f}..{max(values):.1f})"


def summary(rounds: List[Dict[str, Memory]]) -> List[str]:
    """Median (min..max) over rounds of each kind of process and of what each plugin
    variant adds to a worker and to the master, round by round."""
    lines = [f"{'MiB, median (min..max)':31s} {'RSS':>20s} {'PSS':>20s} {'USS':>20s}"]

    def row(label: str, memories: List[Memory]) -> None:
        lines.append(f"{label:31s} " + " ".join(
            f"{spread([getattr(m, f) for m in memories]):>20s}" for f in Memory._fields))

    for kind in rounds[0]:
        row(kind, [r[kind] for r in rounds])
        variant, _, process = kind.partition(" ")
        if variant != "plain" and process in ("worker", "master"):
            row(f"  {variant} adds to a {process}",
                [Memory(*(o - p for o, p in zip(r[kind], r[f"plain {process}"])))
                 for r in rounds])
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker-class", choices=sorted(WORKERS), default="sync",
                        help="a case of bench/instructions.py (default sync)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--requests", type=int, default=10000,
                        help="requests sent to each instance before reading its memory")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scrapes", type=int, default=3,
                        help="scrapes of each plugin instance's /metrics before reading")
    parser.add_argument("--compare-to", metavar="DIR",
                        help="also the plugin package found in DIR (first on PYTHONPATH)")
    args = parser.parse_args()
    labels = ["plain", "plugin"] + (["compared"] if args.compare_to else [])
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        write_apps(tmp)
        for n in range(args.rounds):
            turn = n % len(labels)
            rounds.append(one_round(args, tmp, labels[turn:] + labels[:turn]))
            print(f"round {n + 1}: " + "; ".join(
                f"{kind} RSS {m.rss:.1f} PSS {m.pss:.1f}" for kind, m in rounds[-1].items()
                if kind.endswith("worker") or kind.endswith("process")), flush=True)
    print(f"\n{args.worker_class}, {args.workers} workers, {args.requests} requests to each "
          f"instance, {args.scrapes} scrapes, {args.rounds} rounds; {describe()}:")
    print("\n".join(summary(rounds)))


if __name__ == "__main__":
    main()

"""Redis storage against file mode and plain gunicorn, measured in one run.

Three gunicorn instances serve the hello-world app (``bench/hello.py``, sync workers, 2
workers) on loopback: ``plain`` (gunicorn's own sync worker), ``file`` (the plugin, file
mode) and ``redis`` (the plugin with ``REDIS_ENABLED=true``, default 1 s flushes, to a
redis-server this script starts on a free loopback port). wrk drives them interleaved,
the order rotated every round (A B C, B C A, ...), so drift in a shared machine's load
hits all alike; the report gives medians and ratios to plain gunicorn, plus CPU seconds per
request of every gunicorn process (master, workers and the metrics process that runs the
flusher), which is steadier than requests per second on a busy machine.

Also measured:
* Redis commands per request during the ``redis`` runs: ``INFO commandstats`` calls
  (commands inside scripts included) before and after, divided by the requests wrk made;
* exactness: the requests the Redis reader reports against wrk's count;
* a scrape of 10 instances x 1,000 series from Redis: round trips (counted by the reader),
  Redis commands, and the reader's time (median of 20).

Run: ``python bench/redis_bench.py [--rounds 5] [--duration 8] [--json out.json]``.
Needs ``wrk`` and ``redis-server`` (Debian packages) and redis-py.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

from common import cpu_seconds, start_gunicorn, wait_port, wrk
from support.redis import RedisServer

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "exporter"))


class Instance:
    def __init__(self, name: str, tmp: str, env: Dict[str, str]) -> None:
        self.name = name
        worker = "gunicorn_prometheus_exporter.PrometheusWorker" if name != "plain" else "sync"
        self.proc, self.port = start_gunicorn(worker, "hello:app", tmp, workers=2,
                                              chdir=str(HERE), env=env, new_session=True)
        wait_port(self.port)
        time.sleep(1.0)  # workers booted, metrics process and first flush done
        wrk(self.port, 1, 2)  # warm-up

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(5)


def redis_requests(settings) -> float:
    from gunicorn_prometheus_exporter.redis_storage.source import RedisSource

    source = RedisSource(settings, logging.getLogger("bench"))
    try:
        return sum(s.value for f in source.read() if f.name == "gunicorn_http_requests"
                   for s in f.samples)
    finally:
        source.close()


def throughput(args, tmp: str, server: RedisServer) -> Dict[str, object]:
    from gunicorn_prometheus_exporter.config.loader import build

    prefix = "bench"
    redis_env = {"REDIS_ENABLED": "true", "REDIS_PORT": str(server.port),
                 "REDIS_KEY_PREFIX": prefix, "REDIS_INSTANCE_ID": "bench"}
    instances = [Instance("plain", tmp, {}), Instance("file", tmp, {}),
                 Instance("redis", tmp, redis_env)]
    settings = build(None, {**redis_env, "REDIS_SCOPE": "all"})
    results: Dict[str, List[Dict[str, float]]] = {i.name: [] for i in instances}
    commands = requests = 0
    try:
        time.sleep(1.5)  # the redis instance's warm-up requests are flushed
        base = redis_requests(settings)
        for r in range(args.rounds):
            order = instances[r % 3:] + instances[:r % 3]
            for inst in order:
                cpu0 = inst.cpu_seconds()
                c0 = server.commands() if inst.name == "redis" else 0
                run = wrk(inst.port, args.duration, args.connections)
                run["cpu_us_per_request"] = (inst.cpu_seconds() - cpu0) / run["requests"] * 1e6
                if inst.name == "redis":
                    commands += server.commands() - c0 - 1  # less our own INFO
                    requests += run["requests"]
                results[inst.name].append(run)
                print(f"round {r + 1} {inst.name:5s} {run['rps']:8.0f} req/s "
                      f"{run['cpu_us_per_request']:6.0f} us CPU/req "
                      f"errors={run['errors'] or 0} non2xx={run['non2xx']}", flush=True)
        deadline = time.monotonic() + 10
        seen = 0.0
        while time.monotonic() < deadline:
            seen = redis_requests(settings) - base
            if seen >= requests:
                break
            time.sleep(0.2)
    finally:
        for inst in instances:
            inst.stop()
    med = {name: statistics.median(x["rps"] for x in runs) for name, runs in results.items()}
    cpu = {name: statistics.median(x["cpu_us_per_request"] for x in runs)
           for name, runs in results.items()}
    per_round = {name: statistics.median(run["rps"] / plain["rps"]
                                         for run, plain in zip(runs, results["plain"]))
                 for name, runs in results.items()}
    return {"runs": results, "median_rps": med, "median_cpu_us_per_request": cpu,
            "ratio_to_plain": {k: v / med["plain"] for k, v in med.items()},
            "median_round_ratio_to_plain": per_round,
            "redis_commands": commands, "redis_mode_requests": requests,
            "redis_commands_per_request": commands / requests if requests else None,
            "redis_reported_requests": seen}


def scrape(server: RedisServer, tmp: str, instances: int = 10, series: int = 1000) -> Dict:
    """10 instances x 1,000 series flushed by real flushers, read by the reader."""
    from gunicorn_prometheus_exporter import families
    from gunicorn_prometheus_exporter.config.loader import build
    from gunicorn_prometheus_exporter.recorder import Writer
    from gunicorn_prometheus_exporter.redis_storage.flusher import Flusher
    from gunicorn_prometheus_exporter.redis_storage.source import RedisSource
    from gunicorn_prometheus_exporter.storage import directory as storage_dir
    from gunicorn_prometheus_exporter.storage.store import ProcessStore

    log = logging.getLogger("bench")
    env = {"REDIS_ENABLED": "true", "REDIS_PORT": str(server.port),
           "REDIS_KEY_PREFIX": "scrape"}
    flush_times = []
    for i in range(instances):
        directory = os.path.join(tmp, f"scrape-{i}")
        storage_dir.prepare(directory, cleanup=True)
        claim = storage_dir.claim(directory, "w")
        writer = Writer(ProcessStore(directory, claim.identity))
        for s in range(series):
            writer.count(families.HTTP_REQUESTS, ("GET", f"/route/{s}", "200"), s + i)
        flusher = Flusher(build(None, {**env, "REDIS_INSTANCE_ID": f"inst{i}"}), directory, log)
        started = time.perf_counter()
        flusher.run()
        flush_times.append(time.perf_counter() - started)
        assert flusher.last_success is not None, "flush failed"
    source = RedisSource(build(None, env), log)
    source.read()  # the server learns the script
    times, trips = [], []
    c0 = server.commands()
    for _ in range(20):
        started = time.perf_counter()
        families = source.read()
        times.append(time.perf_counter() - started)
        trips.append(source.round_trips)
    commands = (server.commands() - c0 - 1) / 20
    total = sum(s.value for f in families if f.name == "gunicorn_http_requests"
                for s in f.samples)
    expected = sum(s + i for i in range(instances) for s in range(series))
    return {"instances": instances, "series_per_instance": series,
            "values_read": source.state.last_values, "round_trips": max(trips),
            "redis_commands_per_read": commands, "read_ms_median": statistics.median(times) * 1e3,
            "full_flush_ms_median": statistics.median(flush_times) * 1e3,
            "exact": total == expected}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    for tool in ("wrk", "redis-server"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed (apt-get install {tool.split('-')[0]})")
            return 2
    if importlib.util.find_spec("redis.client") is None:  # tests/redis would pass for it
        print("redis-py is not installed (pip install 'gunicorn-prometheus-exporter[redis]')")
        return 2
    tmp = tempfile.mkdtemp(prefix="redis-bench-")
    server = RedisServer(Path(tmp))
    try:
        result = {"throughput": throughput(args, tmp, server), "scrape": scrape(server, tmp),
                  "machine": {"cores": os.cpu_count(), "load_avg": os.getloadavg()}}
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    t, s = result["throughput"], result["scrape"]
    print()
    print("median req/s:      " + "  ".join(f"{k} {v:.0f}" for k, v in t["median_rps"].items()))
    print("ratio to plain:    " + "  ".join(f"{k} {v:.3f}" for k, v in t["ratio_to_plain"].items()))
    print("median of per-round ratios: " + "  ".join(
        f"{k} {v:.3f}" for k, v in t["median_round_ratio_to_plain"].items()))
    print("CPU us/request:    " + "  ".join(f"{k} {v:.0f}" for k, v in
                                            t["median_cpu_us_per_request"].items()))
    print(f"Redis commands per request: {t['redis_commands_per_request']:.5f} "
          f"({t['redis_commands']} commands / {t['redis_mode_requests']} requests)")
    print(f"requests reported from Redis: {t['redis_reported_requests']:.0f} "
          f"(wrk: {t['redis_mode_requests']})")
    print(f"scrape of {s['instances']} x {s['series_per_instance']} series: "
          f"{s['round_trips']} round trip(s), {s['redis_commands_per_read']:.0f} Redis commands, "
          f"{s['read_ms_median']:.1f} ms (median); full flush of 1,000 series "
          f"{s['full_flush_ms_median']:.1f} ms; exact: {s['exact']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Scrape cost: this exporter's collector against prometheus_client's
``MultiProcessCollector`` on the same files, in the same run.

Grid: P processes (8, 64, 256) x S label sets (10, 100, 1,000) of one counter and one
15-bucket histogram, written in prometheus_client's file format by the plugin's writer.
Then the worker-churn case: 10,000 worker restarts through the plugin's real slot and
store code (claim a slot, open its files, record, release), and the scrape time compared
with a fresh directory holding the same live workers.

``--native``: the request families of 64 workers x 200 routes written by the plugin's real
recorder (a spread of latencies per route), with the native duration histogram and without
it: collection and exposition time (protobuf with native, text without), values read and
the size of a native file per series.

``--cold``: the first scrape of a collector that starts beside a busy directory (a metrics
process restarted, or the standalone exporter started) against a repeat scrape, 64
processes x 1,000 label sets (routes in another order in each process), with the C key walk
and without it (``GUNICORN_PROMETHEUS_NO_SPEEDUPS``'s path): CPU time of the scrape in this
process (``time.process_time``, which a loaded machine disturbs far less than wall-clock
time), several runs, median and range.

``--cold --request-files default``: the same of the request families as a server writes
them (``write_request_dir``: 64 workers x 1,000 routes, 10 requests each; ``default`` is
the default configuration, native histograms and a trace per request; ``native``: no
traces; ``classic``: native off), C key walk only.

``--cold --warm-up``: the same with the metrics process's start-up read
(``DirectoryCollector.warm_up``, run before Prometheus's first scrape arrives): CPU time of
that read, and of the first scrape after it against a repeat scrape.

Run: ``python bench/scrape_bench.py [--quick] [--native] [--cold [--warm-up]
[--request-files default|native|classic]]``. Prints Markdown
(medians).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from gunicorn_prometheus_exporter import speedups
from gunicorn_prometheus_exporter.collector import DirectoryCollector
from gunicorn_prometheus_exporter.families import Family
from gunicorn_prometheus_exporter.recorder import (Recorder, histogram_positions,
                                                   scalar_position)
from gunicorn_prometheus_exporter.storage import directory as storage_dir
from gunicorn_prometheus_exporter.storage import native
from gunicorn_prometheus_exporter.storage.store import ProcessStore

COUNTER = Family("bench_requests", "counter", "Requests.", ("route",))
HISTOGRAM = Family("bench_duration_seconds", "histogram", "Duration.", ("route",))
BOUNDS = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10]  # +Inf


def write_process(directory: str, identity: str, label_sets: int, shuffle: int = 0,
                  first: int = 0) -> None:
    """``label_sets`` routes (``/r<first>`` on), first seen in an order of their own when
    ``shuffle`` is set (as the workers of a real server see them)."""
    store = ProcessStore(directory, identity)
    counters, histograms = store.file("counter"), store.file("histogram")
    order = list(range(label_sets))
    if shuffle:
        import random

        random.Random(shuffle).shuffle(order)
    for i in order:
        labels = {"route": f"/r{first + i}"}
        position = scalar_position(counters, COUNTER, labels)  # may grow the file: index first
        counters.values[position] += 1
        buckets, total = histogram_positions(histograms, HISTOGRAM, labels, BOUNDS)
        histograms.values[buckets[i % len(buckets)]] += 1
        histograms.values[total] += 0.1
    store.close()


def timed(fn, repeats: int) -> float:
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def ours(directory: str):
    collector = DirectoryCollector(directory)
    collector.read()  # a long-running server has parsed the keys once already

    def scrape():
        families = collector.read()
        assert families
    return scrape


def theirs(directory: str):
    registry = CollectorRegistry()
    collector = MultiProcessCollector(registry, path=directory)

    def scrape():
        assert list(collector.collect())
    return scrape


def grid(processes, label_sets, repeats) -> None:
    print("| processes | label sets | values | MultiProcessCollector | this collector | speed-up |")
    print("|---:|---:|---:|---:|---:|---:|")
    for p in processes:
        for s in label_sets:
            with tempfile.TemporaryDirectory() as directory:
                for n in range(p):
                    write_process(directory, f"w{n}", s)
                mpc = timed(theirs(directory), max(1, repeats if p * s <= 64_000 else 1))
                own = timed(ours(directory), repeats)
                values = p * s * (1 + len(BOUNDS) + 2)
                print(f"| {p} | {s} | {values:,} | {mpc * 1000:.1f} ms | {own * 1000:.1f} ms "
                      f"| {mpc / own:.1f}x |", flush=True)


def churn(workers: int, label_sets: int, restarts: int, repeats: int) -> None:
    with tempfile.TemporaryDirectory() as fresh, tempfile.TemporaryDirectory() as churned:
        live = [storage_dir.claim(fresh, "w") for _ in range(workers)]
        for claim in live:
            write_process(fresh, claim.identity, label_sets)
        started = time.perf_counter()
        held = [storage_dir.claim(churned, "w") for _ in range(workers)]
        for n in range(restarts):  # replace one worker at a time, as gunicorn does
            i = n % workers
            held[i].release()
            held[i] = storage_dir.claim(churned, "w")
            write_process(churned, held[i].identity, label_sets)
        churn_time = time.perf_counter() - started
        base = timed(ours(fresh), repeats)
        after = timed(ours(churned), repeats)
        files = len([f for f in os.listdir(churned) if f.endswith(".db")])
        print(f"\n{restarts:,} worker restarts ({workers} workers x {label_sets} label sets, "
              f"{churn_time:.1f} s to simulate): scrape {after * 1000:.1f} ms vs "
              f"{base * 1000:.1f} ms fresh = {after / base:.2f}x; files after churn: {files}")


def cold(processes: int, label_sets: int, runs: int, warm_up: bool = False,
         files: str = "") -> None:
    """First scrape against a repeat scrape, CPU time, C key walk and Python; with
    ``warm_up``, after the start-up read (its CPU time in the first column). ``files``: the
    request families as ``write_request_dir`` writes them (10 requests per route and
    worker), instead of the bench family, and the C key walk only (the default
    configuration's path; the Python path's first read takes tens of seconds there)."""
    start_up = "start-up read | " if warm_up else ""
    what = f"routes, request files ({files})" if files else "label sets"
    print(f"| {processes} processes x {label_sets:,} {what} | {start_up}first scrape "
          f"| repeat scrape | first / repeat (median, range over {runs} runs) |")
    print("|---|---:|---:|---:|" + ("---:|" if warm_up else ""))
    with tempfile.TemporaryDirectory() as directory:
        if files:
            write_request_dir(directory, processes, label_sets, files)
        for n in range(0 if files else processes):
            write_process(directory, f"w{n}", label_sets, shuffle=n + 1)
        for name, compiled in (("C key walk", speedups.load()), ("Python", None)):
            if (name == "C key walk" and compiled is None) or (files and compiled is None):
                continue
            firsts, repeats, ratios, warms = [], [], [], []
            for _ in range(runs):
                collector = DirectoryCollector(directory, deadline=600.0, compiled=compiled)
                if warm_up:
                    warms.append(_cpu(lambda: collector.warm_up() or True))
                first = _cpu(collector.read)
                repeat = statistics.median(_cpu(collector.read) for _ in range(3))
                firsts.append(first)
                repeats.append(repeat)
                ratios.append(first / repeat)
            warm = f" {statistics.median(warms) * 1000:.0f} ms |" if warm_up else ""
            print(f"| {name} |{warm} {statistics.median(firsts) * 1000:.0f} ms "
                  f"| {statistics.median(repeats) * 1000:.0f} ms "
                  f"| {statistics.median(ratios):.1f}x ({min(ratios):.1f}-{max(ratios):.1f}) |",
                  flush=True)


def _cpu(fn) -> float:
    start = time.process_time()
    assert fn()
    return time.process_time() - start


def write_requests(directory: str, identity: str, routes: int, layout, requests: int,
                   traced: bool = False) -> None:
    """``requests`` per route through the real recorder, latencies log-normal around 30 ms
    (a 95% range of about 5 ms to 200 ms: some 40 native buckets per route); ``traced``:
    each request also carries a trace (an exemplar, through the real exemplar recorder)."""
    import random

    from gunicorn_prometheus_exporter.exemplars import ExemplarRecorder

    rng = random.Random(identity)
    store = ProcessStore(directory, identity)
    bounds = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
              30.0, 60.0]
    rec = Recorder(store, bounds, [64.0 * 4 ** i for i in range(11)], threaded=False,
                   native_layout=layout)
    traces = ExemplarRecorder(directory, identity, rec, bounds) if traced else None
    for r in range(routes):
        series = rec.series("GET", f"/r{r}", "200")
        for n in range(requests):
            duration = rng.lognormvariate(-3.5, 1.0)
            rec.add(series, duration, 0, 512)
            if traces is not None:
                traces.observe(series, duration, (f"{r + 1:016x}{n + 1:016x}", f"{n + 1:016x}"),
                               time.time())
    store.close()


#: what the workers of ``write_request_dir`` write: the default configuration (native
#: histograms on, every request traced), native histograms without traces, or classic files
#: only (native off, no traces)
REQUEST_FILES = ("default", "native", "classic")


def write_request_dir(directory: str, workers: int, routes: int, files: str,
                      requests: int = 10) -> None:
    """``workers`` workers' files of the request families (``write_requests``), as
    ``files`` (``REQUEST_FILES``) says."""
    layout = None if files == "classic" else native.Layout.for_range(3, 1e-6, 3600.0)
    for n in range(workers):
        write_requests(directory, f"w{n}", routes, layout, requests,
                       traced=files == "default")


def native_compare(workers: int, routes: int, requests: int, repeats: int) -> None:
    from gunicorn_prometheus_exporter.server.http import Exposition

    layout = native.Layout.for_range(3, 1e-6, 3600.0)
    print(f"| {workers} workers x {routes} routes | values read | collect | exposition "
          f"| collect + exposition |")
    print("|---|---:|---:|---:|---:|")
    results = {}
    for name, lay, accept in (("classic (text)", None, "text/plain"),
                              ("classic + native (protobuf)", layout,
                               "application/vnd.google.protobuf; "
                               "proto=io.prometheus.client.MetricFamily; encoding=delimited"),
                              ("classic + native (text)", layout, "text/plain")):
        with tempfile.TemporaryDirectory() as directory:
            for n in range(workers):
                write_requests(directory, f"w{n}", routes, lay, requests)
            collector = DirectoryCollector(directory)
            collector.read()
            families = collector.read()
            exposition = Exposition(lambda: families, "bench")
            collect = timed(collector.read, repeats)
            encode = timed(lambda: exposition.metrics(accept), repeats)
            both = timed(lambda: Exposition(collector.read, "b").metrics(accept), repeats)
            results[name] = both
            size = ""
            if lay is not None:
                path = os.path.join(directory, "histogram_native_w0.nh")
                size = f" (native file of one worker: {os.path.getsize(path):,} bytes)"
            print(f"| {name} | {collector.last_values:,} | {collect * 1000:.0f} ms | "
                  f"{encode * 1000:.0f} ms | {both * 1000:.0f} ms |{size}", flush=True)
    print(f"\nnative (protobuf) / classic (text): "
          f"{results['classic + native (protobuf)'] / results['classic (text)']:.2f}x; "
          f"{layout.doubles * 8} bytes of native buckets per series and worker slot")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small grid (CI smoke)")
    parser.add_argument("--cold", action="store_true",
                        help="first scrape vs repeat scrape, 64 processes x 1,000 label sets")
    parser.add_argument("--warm-up", action="store_true",
                        help="with --cold: the first scrape after the start-up read")
    parser.add_argument("--request-files", choices=REQUEST_FILES, default="",
                        help="with --cold: the request families' files, as configured")
    parser.add_argument("--native", action="store_true",
                        help="native vs classic duration histograms, 64 workers x 200 routes")
    args = parser.parse_args()
    if args.cold:
        cold(8 if args.quick else 64, 100 if args.quick else 1000, 3 if args.quick else 5,
             warm_up=args.warm_up, files=args.request_files)
        return
    if args.native:
        native_compare(8 if args.quick else 64, 20 if args.quick else 200, 50, repeats=5)
        return
    if args.quick:
        grid([8], [10, 100], repeats=3)
        churn(4, 10, 200, repeats=3)
        return
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs\n")
    grid([8, 64, 256], [10, 100, 1000], repeats=5)
    churn(8, 100, 10_000, repeats=7)


if __name__ == "__main__":
    main()

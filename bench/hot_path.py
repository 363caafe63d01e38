"""In-process microbenchmark of the per-request metric path.

Measures, in one run and on the same machine:
* ``plugin``: what a request costs the plugin: the ``pre_request`` and ``post_request``
  hooks (timing, in-flight gauge, route, all request families, per-worker families) on a
  real worker slot in a temporary directory;
* ``stdlib-floor``: one prometheus_client Counter.inc and one Histogram.observe with
  cached label children in multiprocess mode (the "standard-library floor" of issue 2);
* ``prometheus_client-full``: the same set of families as the plugin written through
  prometheus_client with cached children (what a straightforward implementation costs).

Run: ``python bench/hot_path.py [--requests N]``; prints µs per request (median of 7 runs).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time


def _median_us(fn, n: int, repeats: int = 7) -> float:
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(n)
        runs.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(runs)


class _Req:
    def __init__(self) -> None:
        self.method = "GET"
        self.path = "/users/42"


class _Resp:
    status_code = 200
    headers_sent = True
    sent = 512


def build_instrumentation(directory: str, threaded: bool = False):
    """The plugin as a worker process has it (a real slot, store and route table in
    ``directory``), with its sampler stopped; returns (its WorkerMetrics, worker).
    ``threaded``: as gthread with several threads (its request path takes a lock)."""
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    from gunicorn_prometheus_exporter import config, master
    from gunicorn_prometheus_exporter.storage import directory as storage_dir
    from gunicorn_prometheus_exporter.workers.process import WorkerMetrics

    config.reset()

    class _Log:
        def __getattr__(self, name):
            return lambda *a, **k: None

    class _Cfg:
        def __init__(self):
            from gunicorn.config import Config
            self._c = Config()
            self.settings = self._c.settings

        def set(self, name, value):
            self._c.set(name, value)

        def hook(self, name):
            return self.settings[name].get()

    class _Worker:
        capacity = 2 if threaded else 1
        log = _Log()
        nr, max_requests = 0, sys.maxsize  # read by post_request

    _Worker.threaded = threaded

    runtime = master.MasterRuntime(_Log())
    worker = _Worker()
    worker.cfg = _Cfg()
    worker._gunicorn_prometheus_claim = storage_dir.claim(directory, "w")
    metrics = WorkerMetrics(worker, runtime)
    metrics.sampler.stop()
    return metrics, worker


def plugin_case(directory: str):
    _, worker = build_instrumentation(directory)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/users/42", "CONTENT_LENGTH": "",
               "wsgi.input": None}
    req, resp = _Req(), _Resp()
    pre, post = worker.cfg.hook("pre_request"), worker.cfg.hook("post_request")

    def run(n: int) -> None:
        for _ in range(n):
            pre(worker, req)
            post(worker, req, environ, resp)

    return run


def stdlib_floor_case(directory: str):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    from prometheus_client import CollectorRegistry, Counter, Histogram, values

    values.ValueClass = values.MultiProcessValue()
    reg = CollectorRegistry()
    c = Counter("floor_requests", "x", ["method", "route", "status"], registry=reg)
    h = Histogram("floor_duration_seconds", "x", ["method", "route"], registry=reg)
    cc = c.labels("GET", "/users/{id}", "200")
    hc = h.labels("GET", "/users/{id}")

    def run(n: int) -> None:
        for _ in range(n):
            t0 = time.perf_counter()
            cc.inc()
            hc.observe(time.perf_counter() - t0)

    return run


def prometheus_client_full_case(directory: str):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values

    values.ValueClass = values.MultiProcessValue()
    reg = CollectorRegistry()
    labels = ("GET", "/users/{id}")
    req = Counter("full_requests", "x", ["method", "route", "status"], registry=reg
                  ).labels(*labels, "200")
    dur = Histogram("full_duration_seconds", "x", ["method", "route"], registry=reg).labels(*labels)
    rqs = Histogram("full_req_bytes", "x", ["method", "route"], registry=reg).labels(*labels)
    rss = Histogram("full_resp_bytes", "x", ["method", "route"], registry=reg).labels(*labels)
    wreq = Counter("full_worker_requests", "x", ["worker_id"], registry=reg).labels("0")
    wdur = Histogram("full_worker_duration", "x", ["worker_id"], registry=reg).labels("0")
    wrq = Histogram("full_worker_req", "x", ["worker_id"], registry=reg).labels("0")
    wrs = Histogram("full_worker_resp", "x", ["worker_id"], registry=reg).labels("0")
    inflight = Gauge("full_in_flight", "x", ["worker_id"], registry=reg,
                     multiprocess_mode="livesum").labels("0")

    def run(n: int) -> None:
        for _ in range(n):
            t0 = time.perf_counter()
            inflight.inc()
            d = time.perf_counter() - t0
            req.inc()
            dur.observe(d)
            rqs.observe(0)
            rss.observe(512)
            wreq.inc()
            wdur.observe(d)
            wrq.observe(0)
            wrs.observe(512)
            inflight.dec()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--case", choices=("plugin", "stdlib-floor", "prometheus_client-full"))
    args = parser.parse_args()
    cases = {"plugin": plugin_case, "stdlib-floor": stdlib_floor_case,
             "prometheus_client-full": prometheus_client_full_case}
    if args.case:
        with tempfile.TemporaryDirectory() as tmp:
            run = cases[args.case](tmp)
            run(1000)
            print(f"{args.case}: {_median_us(run, args.requests):.2f} us/request")
        return
    # each case in its own interpreter: prometheus_client's value class is process-global
    import subprocess
    for name in cases:
        subprocess.run([sys.executable, __file__, "--case", name,
                        "--requests", str(args.requests)], check=True)


if __name__ == "__main__":
    main()

"""Each framework's example under real gunicorn: the fixed mix recorded exactly, and 10,000
random paths adding a bounded number of series.

Series bound (documented in docs/workers.md): whatever the paths, a framework's route
label takes only its matched templates and ``unmatched``. The random paths below can match
one template (``/users/...``), so they add at most 2 route values and 3 request-counter
series ({GET, template, 200}, {GET, unmatched, 404}, and FastAPI's {GET, template, 422}
for a non-integer id): about 141 exposed samples in all, bounded here at 200."""
import http.client
import random
import string
import threading

import pytest

from frameworks.mix import (DJANGO, FASTAPI, FLASK, PYRAMID, STARLETTE, Example, require,
                            run_mix)
from support.procs import REPO

# framework -> (app, config, packages)
CASES = {
    "flask": (FLASK, "gunicorn_thread_worker.conf.py", ("flask",)),
    "django": (DJANGO, "gunicorn_thread_worker.conf.py", ("django",)),
    "pyramid": (PYRAMID, "gunicorn_simple.conf.py", ("pyramid",)),
    "fastapi": (FASTAPI, "gunicorn_asgi.conf.py", ("fastapi",)),
    "starlette": (STARLETTE, "gunicorn_uvicorn.conf.py", ("starlette", "uvicorn_worker")),
}
#: the keep-alive config for the 10,000 requests of the cardinality test
FAST = {"flask": "gunicorn_thread_worker.conf.py", "django": "gunicorn_thread_worker.conf.py",
        "pyramid": "gunicorn_thread_worker.conf.py", "fastapi": "gunicorn_asgi.conf.py",
        "starlette": "gunicorn_asgi.conf.py"}
RANDOM_PATHS = 10_000
MAX_ROUTES = 2
MAX_COUNTER_SERIES = 3
MAX_ADDED_SAMPLES = 200


@pytest.mark.parametrize("framework", list(CASES))
def test_framework_records_the_mix(tmp_path, framework):
    app, config, packages = CASES[framework]
    require(*packages)
    g = Example(tmp_path, config, app.module, workers=2)
    try:
        g.wait_ready(workers=2)
        run_mix(g, app)
    finally:
        g.stop()


def test_flask_exception_both_signalled_and_propagated_counts_once(tmp_path):
    require("flask")
    g = Example(tmp_path, "gunicorn_simple.conf.py", "frameworks.propagating:app",
                env={"PYTHONPATH": str(REPO / "tests")})
    try:
        g.wait_ready(workers=1)
        assert g.request("/boom")[0] == 500
        s = g.scrape_until(lambda s: s.total("gunicorn_http_requests_total") == 1)
        failed = s.series("gunicorn_worker_failed_requests_total")
        assert list(failed.values()) == [1.0]
        assert dict(next(iter(failed)))["error_type"] == "HandledError"
        assert s.total("gunicorn_worker_error_handling_total") == 0
    finally:
        g.stop()


def _random_paths(count: int, seed: int = 4):
    rng = random.Random(seed)

    def token(n):
        return "".join(rng.choice(string.ascii_lowercase + string.digits) for _ in range(n))

    for i in range(count):
        kind = i % 4
        if kind == 0:
            yield f"/users/{rng.randrange(10 ** 9)}"
        elif kind == 1:
            yield f"/users/{token(10)}x"
        elif kind == 2:
            yield f"/{token(8)}/{token(12)}"
        else:
            yield f"/wp-{token(6)}/{token(5)}.php?q={token(4)}"


def _drive(port: int, paths, connections: int = 2) -> int:
    """Send every path over ``connections`` keep-alive connections; returns the count."""
    paths = list(paths)
    done = [0] * connections
    errors = []

    def worker(n):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            for path in paths[n::connections]:
                for attempt in range(3):
                    try:
                        conn.request("GET", path)
                        resp = conn.getresponse()
                        resp.read()
                        if resp.will_close:
                            conn.close()
                        break
                    except (http.client.HTTPException, ConnectionError):
                        conn.close()  # reconnects on the next request
                        if attempt == 2:
                            raise
                done[n] += 1
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return sum(done)


@pytest.mark.parametrize("framework", list(CASES))
def test_random_paths_add_bounded_series(tmp_path, framework):
    app, _, packages = CASES[framework]
    require(*packages)
    g = Example(tmp_path, FAST[framework], app.module, workers=2,
                extra_args=["--keep-alive", "30"])
    try:
        g.wait_ready(workers=2)
        before = len(g.scrape().samples)
        sent = _drive(g.port, _random_paths(RANDOM_PATHS))
        assert sent == RANDOM_PATHS
        s = g.scrape_until(lambda s: s.total("gunicorn_http_requests_total") == RANDOM_PATHS,
                           timeout=30)
        series = s.series("gunicorn_http_requests_total")
        routes = {dict(ls)["route"] for ls in series}
        assert routes <= {app.routes["user"], "unmatched"}, routes
        assert len(routes) <= MAX_ROUTES and len(series) <= MAX_COUNTER_SERIES, series
        # the histograms are per route: (15 + 1) duration and 2 × (11 + 1) size buckets,
        # plus a _sum and a _count each, 46 samples per route
        histogram_samples = sum(1 for (name, _) in s.samples if name.startswith(
            ("gunicorn_http_request_duration", "gunicorn_http_request_size",
             "gunicorn_http_response_size")))
        assert histogram_samples <= MAX_ROUTES * 46, histogram_samples
        # all families together (per-worker ones included): 141 or 142 measured
        assert len(s.samples) - before <= MAX_ADDED_SAMPLES, len(s.samples) - before
    finally:
        g.stop()

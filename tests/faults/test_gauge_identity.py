"""A re-created storage file is never read through the old file's key map.

The application's own prometheus_client metrics (every gauge mode, a counter, a histogram)
are set to a=1, b=2 and scraped; the worker is SIGKILLed; its replacement (same slot, so
the live-mode files are removed and created again, the others reopened) sets b first and
a second, with no scrape in between. The plugin's metrics server, which keeps a reader
per file, must serve exactly what a fresh reader of the directory serves."""
from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import pytest

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics import Gauge

from gunicorn_prometheus_exporter.collector import DirectoryCollector
from support.scrape import Scrape
from support.wait import until

TESTS = str(Path(__file__).resolve().parents[1])
MODES = sorted(Gauge._MULTIPROC_MODES)
SLOT = "w0.app"  # the application's identity in worker slot 0


def expected(a: float, b: float, a_total: float, b_total: float, observed: dict) -> dict:
    """Every sample of the app's families: gauges set to a and b, counter totals and
    histogram observations (label -> list of values)."""
    want = {}
    for mode in MODES:
        for label, value in (("a", a), ("b", b)):
            labels = {"l": label}
            if mode in ("all", "liveall"):
                labels["pid"] = SLOT
            want[(f"app_gauge_{mode}", frozenset(labels.items()))] = value
    for label, total in (("a", a_total), ("b", b_total)):
        want[("app_events_total", frozenset({("l", label)}))] = total
        values = observed[label]
        for le in ("5.0", "50.0", "+Inf"):
            bound = float(le)
            want[("app_sizes_bucket", frozenset({("l", label), ("le", le)}))] = \
                float(sum(1 for v in values if v <= bound))
        want[("app_sizes_count", frozenset({("l", label)}))] = float(len(values))
        want[("app_sizes_sum", frozenset({("l", label)}))] = float(sum(values))
    return want


def app_samples(s: Scrape) -> dict:
    return {key: value for key, value in s.samples.items() if key[0].startswith("app_")}


def fresh_reader(directory: str) -> Scrape:
    collector = DirectoryCollector(directory)
    registry = CollectorRegistry(auto_describe=False)

    class Adapter:
        collect = staticmethod(collector.read)

    registry.register(Adapter())
    return Scrape(generate_latest(registry).decode())


def test_a_recreated_file_is_read_with_its_own_keys(start_gunicorn):
    g = start_gunicorn(app="apps.gauge_modes:app", workers=1,
                       extra_args=["--chdir", TESTS]).wait_ready(workers=1)
    for query in ("l=a&v=1", "l=b&v=2"):
        assert g.request(f"/set?{query}")[0] == 200
    first = expected(1, 2, 1, 2, {"a": [1], "b": [2]})
    assert app_samples(g.scrape_until(lambda s: app_samples(s) == first)) == first

    (old,) = g.worker_pids()
    os.kill(old, signal.SIGKILL)
    until(lambda: len(g.worker_pids()) == 1 and g.worker_pids()[0] != old,
          timeout=20, message="the replacement worker")
    for query in ("l=b&v=20", "l=a&v=10"):  # the other order, no scrape in between
        assert g.request(f"/set?{query}")[0] == 200

    want = expected(10, 20, 11, 22, {"a": [1, 10], "b": [2, 20]})
    # recorded before each response: the first scrape must already be exact
    assert app_samples(g.scrape()) == want
    assert app_samples(fresh_reader(g.directory)) == want


# -- the same through Redis: the flusher ships a re-created file's keys anew --------------------
@pytest.mark.redis
def test_the_redis_flusher_ships_a_recreated_file_with_its_own_keys(tmp_path):
    """In process, so that no flush can fall between the file's removal and its new
    entries: a worker slot's live gauge file with keys (running, stopping) is replaced by
    one with (stopping, running)."""
    from gunicorn_prometheus_exporter import families
    from gunicorn_prometheus_exporter.config.loader import build
    from gunicorn_prometheus_exporter.writer import Writer
    from gunicorn_prometheus_exporter.redis_storage.flusher import Flusher
    from gunicorn_prometheus_exporter.redis_storage.source import RedisSource
    from gunicorn_prometheus_exporter.storage import directory as storage_dir
    from gunicorn_prometheus_exporter.storage.store import ProcessStore

    from support.redis import RedisServer, redis_server_bin

    redis_server_bin()  # or skip, saying how to install it
    server = RedisServer(tmp_path)
    settings = build(None, {"REDIS_ENABLED": "true", "REDIS_PORT": str(server.port),
                            "REDIS_KEY_PREFIX": "identity", "REDIS_INSTANCE_ID": "solo",
                            "REDIS_SOCKET_TIMEOUT": "1"})
    directory = str(tmp_path / "mp")
    storage_dir.prepare(directory, cleanup=True)
    claim = storage_dir.claim(directory, "w")  # the slot's lock: its live gauges are served
    assert claim.identity == "w0"
    log = logging.getLogger("test-gauge-identity")
    flusher, source = Flusher(settings, directory, log), RedisSource(settings, log)

    def served() -> dict:
        return {s.labels["state"]: s.value for f in source.read()
                if f.name == families.WORKER_STATE.name for s in f.samples}

    def worker(*states) -> ProcessStore:
        """Slot 0's files, its ``(state, value)`` gauges set in this order."""
        store = ProcessStore(directory, "w0")
        writer = Writer(store)
        for state, value in states:
            writer.set_gauge(families.WORKER_STATE, value, (state,))
        return store

    first = worker(("running", 1.0), ("stopping", 2.0))
    flusher.run()
    assert served() == {"running": 1.0, "stopping": 2.0}

    first.close()
    storage_dir.remove_live_gauges(directory, "w0")  # the worker died
    second = worker(("stopping", 20.0), ("running", 10.0))
    flusher.run()
    assert served() == {"running": 10.0, "stopping": 20.0}
    second.close()
    source.close()
    claim.release()
    server.stop()

"""The metrics process reads its storage once as it starts, off the accept loop, so that
Prometheus's first scrape finds the series tables built: ``/-/healthy`` answers at once, a
scrape during that read waits for it and then serves values it read itself, and the first
scrape after it serves exactly what a repeat scrape serves."""
from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

from support.procs import Serve
from support.scrape import Scrape, fetch, scrape
from support.wait import until

from gunicorn_prometheus_exporter.recorder import Recorder
from gunicorn_prometheus_exporter.storage.store import ProcessStore

TESTS = str(Path(__file__).resolve().parent)
STUCK_READER = os.path.join(TESTS, "support", "stuck_reader.py")
LAUNCHER = ("import runpy, sys; runpy.run_path(sys.argv.pop(1)); "
            "from gunicorn_prometheus_exporter.cli import main; sys.exit(main(sys.argv[1:]))")
WARMED = "at start in"  # the log line of the start-up read
REQUESTS = "gunicorn_http_requests_total"
#: health samples that differ between any two scrapes (when, how long)
CLOCKS = {"gunicorn_exporter_scrape_duration_seconds",
          "gunicorn_exporter_last_read_timestamp_seconds"}


def _record(directory: Path, identity: str, routes: int, requests: int) -> None:
    """``requests`` per route on ``routes`` routes, first seen in an order of this
    process's own (as real workers see them)."""
    store = ProcessStore(str(directory), identity)
    rec = Recorder(store, [0.1, 1.0], [100.0], threaded=False)
    order = sorted(range(routes), key=lambda r: hash((identity, r)))
    for r in order:
        series = rec.series("GET", f"/r{r}", "200")
        for _ in range(requests):
            rec.add(series, 0.05, 10, 20)
    store.close()


def _busy(directory: Path, processes: int = 24, routes: int = 150) -> int:
    directory.mkdir(exist_ok=True)
    for n in range(processes):
        _record(directory, f"w{n}", routes, 2)
    return processes * routes * 2


def _served(s: Scrape) -> dict:
    return {k: v for k, v in s.samples.items() if k[0] not in CLOCKS}


def test_first_scrape_after_the_start_up_read_is_a_repeat_read(tmp_path):
    directory = tmp_path / "busy"
    total = _busy(directory)
    s = Serve(tmp_path, directory).wait_listening()
    try:
        until(lambda: WARMED in s.output(), timeout=60, message="the start-up read")
        first = scrape(s.port)
        second = scrape(s.port)
        assert first.total(REQUESTS) == total
        assert first.value("gunicorn_exporter_warm") == 1
        assert first.value("gunicorn_exporter_source_up", source="directory") == 1
        assert _served(first) == _served(second)
        assert f"directory {directory} at start in" in s.output()
        assert s.output().count(WARMED) == 1
    finally:
        assert s.stop() == 0


def test_a_scrape_during_the_start_up_read_waits_and_serves_its_own_values(tmp_path):
    """The start-up read is held on a file; ``/-/healthy`` answers meanwhile, a scrape
    waits for the read, then serves the values written while it was held."""
    directory = tmp_path / "busy"
    total = _busy(directory, processes=4, routes=20)
    stuck = directory / "counter_stuck.db"
    Path(str(stuck) + ".hold").touch()
    stuck.touch()
    started = tmp_path / "scrape-started"
    s = Serve(tmp_path, directory, command=[sys.executable, "-c", LAUNCHER, STUCK_READER],
              STUCK_READER_DEADLINE="60", STUCK_READER_STARTED=str(started)).wait_listening()
    try:
        assert fetch(f"http://127.0.0.1:{s.port}/-/healthy") is not None
        assert WARMED not in s.output()
        _record(directory, "w0", 20, 1)  # written after the start-up read began
        result = []
        scraper = threading.Thread(target=lambda: result.append(scrape(s.port)))
        scraper.start()
        until(started.exists, timeout=20, message="the scrape's read to start")
        assert WARMED not in s.output()  # still held: the scrape waits for it
        os.unlink(str(stuck) + ".hold")
        scraper.join(60)
        assert result, s.output()
        served = result[0]
        assert served.total(REQUESTS) == total + 20
        assert served.value("gunicorn_exporter_source_up", source="directory") == 1
        assert served.value("gunicorn_exporter_warm") == 1
        assert _served(served) == _served(scrape(s.port))
        until(lambda: WARMED in s.output(), message="the start-up read's log line")
        assert "Traceback" not in s.output()
    finally:
        assert s.stop() == 0

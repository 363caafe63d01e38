"""A scrape never blocks on a file, and never waits past its deadline.

Names that look like storage files but hold a FIFO, a socket, a device, a directory or a
link are refused (counted once each in the read-error metric) by the plugin's metrics
server and by the standalone exporter, which keep answering with exact values. A read
that cannot finish makes scrapes answer with the health metrics after the deadline and
``/-/ready`` (and the image's ``healthcheck``) report it until the read finishes."""
from __future__ import annotations

import os
import re
import socket
import stat
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

from support.procs import Serve, base_env, exporter_bin
from support.scrape import Scrape, fetch
from support.wait import until

TESTS = str(Path(__file__).resolve().parents[1])
STUCK_READER = os.path.join(TESTS, "support", "stuck_reader.py")
READ_ERRORS = "gunicorn_exporter_read_errors"
REQUESTS = "gunicorn_http_requests_total"


def _fifo(path: str) -> None:
    os.mkfifo(path)


def _socket(path: str) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(path)  # the socket file stays after close


def _device(path: str) -> None:
    os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # what /dev/null is


def _directory(path: str) -> None:
    os.mkdir(path)


def _link_to_fifo(path: str) -> None:
    target = path + ".target"
    os.mkfifo(target)
    os.symlink(target, path)


KINDS = {"fifo": _fifo, "socket": _socket, "device": _device, "directory": _directory,
         "link": _link_to_fifo}


def _plant(directory: str) -> list:
    """One entry of each kind, named like storage files; the kinds this system allows
    (a device needs root and a file system without ``nodev``)."""
    planted = []
    for n, (kind, make) in enumerate(sorted(KINDS.items())):
        try:
            make(os.path.join(directory, f"counter_x{n}.db"))
        except PermissionError:
            assert kind == "device" and os.geteuid() != 0, kind
            continue
        planted.append(kind)
    os.mkfifo(os.path.join(directory, "w9.lock"))  # a lock name: probed for liveness
    return planted


def _scrape(port: int) -> Scrape:
    return Scrape(fetch(f"http://127.0.0.1:{port}/metrics", timeout=5))


def _status(port: int, path: str) -> int:
    try:
        fetch(f"http://127.0.0.1:{port}{path}", timeout=5)
        return 200
    except urllib.error.HTTPError as exc:
        return exc.code


def _requests(s: Scrape) -> float:
    return s.total(REQUESTS, route="/hello")


def test_names_that_are_not_regular_files_are_refused_without_blocking(
        start_gunicorn, tmp_path):
    g = start_gunicorn(app="apps.routed:app", workers=1,
                       extra_args=["--chdir", TESTS]).wait_ready(workers=1)
    for _ in range(3):
        assert g.request("/hello")[0] == 200
    g.scrape_until(lambda s: _requests(s) == 3)
    planted = _plant(g.directory)
    assert {"fifo", "socket", "directory", "link"} <= set(planted)
    serve = Serve(tmp_path, Path(g.directory)).wait_listening()
    try:
        for port in (g.metrics_port, serve.port):
            for _ in range(3):  # counted once each, however often it is met
                s = _scrape(port)
                assert _requests(s) == 3
                assert s.value(READ_ERRORS + "_total") == len(planted)
                assert s.value("gunicorn_exporter_source_up", source="directory") == 1
            assert _status(port, "/-/ready") == 200
        assert g.proc.poll() is None
    finally:
        serve.stop()


def _healthcheck(port: int) -> int:
    env = base_env(port, Path("/nonexistent"))
    return subprocess.run([exporter_bin(), "healthcheck", "--timeout", "5"], env=env,
                          capture_output=True, timeout=30).returncode


def _assert_stuck_then_recovers(port: int, directory: str, deadline: float) -> None:
    stuck = os.path.join(directory, "counter_stuck.db")
    Path(stuck + ".hold").touch()
    Path(stuck).touch()
    started = time.monotonic()
    s = _scrape(port)
    assert time.monotonic() - started < deadline + 3.0
    assert s.value("gunicorn_exporter_source_up", source="directory") == 0
    assert _requests(s) == 0  # health metrics only: nothing half-read is served
    assert _status(port, "/-/ready") == 503
    assert _status(port, "/-/healthy") == 200
    assert _healthcheck(port) == 1
    started = time.monotonic()
    _scrape(port)  # the overdue read is not started again, nor waited for again
    assert time.monotonic() - started < deadline

    os.unlink(stuck + ".hold")
    until(lambda: _status(port, "/-/ready") == 200, timeout=10, message="ready again")
    s = _scrape(port)
    assert _requests(s) == 3
    assert s.value("gunicorn_exporter_source_up", source="directory") == 1
    assert _healthcheck(port) == 0


def test_a_read_that_cannot_finish_is_bounded_and_reported_by_ready(start_gunicorn,
                                                                     tmp_path):
    # read, not imported: importing it would patch this test process's reader
    DEADLINE = float(re.search(r"^DEADLINE = (\S+)$", Path(STUCK_READER).read_text(),
                               re.M).group(1))
    g = start_gunicorn(app="apps.routed:app", workers=1, config=STUCK_READER,
                       extra_args=["--chdir", TESTS]).wait_ready(workers=1)
    for _ in range(3):
        assert g.request("/hello")[0] == 200
    g.scrape_until(lambda s: _requests(s) == 3)
    _assert_stuck_then_recovers(g.metrics_port, g.directory, DEADLINE)

    launcher = ("import runpy, sys; runpy.run_path(sys.argv.pop(1)); "
                "from gunicorn_prometheus_exporter.cli import main; sys.exit(main(sys.argv[1:]))")
    serve = Serve(tmp_path, Path(g.directory),
                  command=[sys.executable, "-c", launcher, STUCK_READER]).wait_listening()
    try:
        _assert_stuck_then_recovers(serve.port, g.directory, DEADLINE)
        assert serve.output().count("did not finish within") == 1
    finally:
        serve.stop()

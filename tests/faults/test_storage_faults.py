"""Storage faults: a full multiprocess directory, and one the server cannot write.

The directory is a real tmpfs of 1 or 2 MiB; real gunicorn records a few hundred distinct
routes into it (each route is ~20 KiB of histogram entries), far more than fits."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import tmpfs
from support.procs import Gunicorn, gunicorn_bin
from support.scrape import Scrape
from support.wait import until

UNSTORED = "gunicorn_exporter_storage_unstored_total"
REQUESTS = "gunicorn_http_requests_total"
#: distinct routes sent to the full directory (~20 KiB of histogram entries each)
FILL = 1000
TESTS = str(Path(__file__).resolve().parents[1])
FULL_LINE = re.compile(r"prometheus: cannot store metrics in (\S+) .*\(pid (\d+)\)")


def _recorded(s: Scrape, prefix: str) -> float:
    return sum(v for labels, v in s.series(REQUESTS).items()
               if dict(labels)["route"].startswith(prefix))


def _unstored_by_worker(s: Scrape) -> dict:
    return {dict(labels).get("worker_id"): v for labels, v in s.series(UNSTORED).items()}


def _send(g: Gunicorn, paths) -> int:
    """Requests answered 200 (every one must be)."""
    ok = 0
    for path in paths:
        status, body = g.request(path)
        assert (status, body) == (200, b"ok\n"), path
        ok += 1
    return ok


@pytest.mark.slow
@pytest.mark.parametrize("path_kind,recovery", [("compiled", "remount"),
                                                ("python", "delete filler")])
def test_full_directory_serves_every_request_and_records_again_when_space_returns(
        start_gunicorn, path_kind, recovery):
    env = {"PROMETHEUS_ROUTE_CAP": "5000"}
    if path_kind == "python":
        env["GUNICORN_PROMETHEUS_NO_SPEEDUPS"] = "1"
    size = "1m" if recovery == "remount" else "3m"
    with tmpfs.mounted(size) as where:
        directory = os.path.join(where, "mp")
        env["PROMETHEUS_MULTIPROC_DIR"] = directory
        g = start_gunicorn(app="apps.routed:app", workers=2, env=env,
                           extra_args=["--chdir", TESTS]).wait_ready(workers=2)
        filler = os.path.join(where, "filler")
        if recovery == "delete filler":
            assert tmpfs.fill(filler) > 0
        expected_path = ("compiled (C speedups)" if path_kind == "compiled"
                         else "Python (GUNICORN_PROMETHEUS_NO_SPEEDUPS is set)")
        assert f"prometheus: request path {expected_path}" in g.output()
        workers = g.worker_pids()

        sent = _send(g, (f"/fill/p{i}" for i in range(FILL)))
        assert sent == FILL
        assert g.proc.poll() is None, g.output()  # the master lives
        assert g.worker_pids() == workers, g.output()  # and no worker died
        full = g.scrape()
        unstored = _unstored_by_worker(full)
        assert sum(unstored.values()) > 0, "the directory never filled up"
        # every request is either recorded or counted as not stored: exactly FILL
        assert _recorded(full, "/fill/") + sum(unstored.values()) == FILL
        lines = FULL_LINE.findall(g.output())
        assert {pid for _, pid in lines} <= {str(p) for p in workers}
        assert len(lines) == len({pid for _, pid in lines}) >= 1  # one line per process
        assert all(d == directory for d, _ in lines)
        assert "Traceback" not in g.output()

        if recovery == "remount":
            tmpfs.resize(where, "16m")
        else:
            os.unlink(filler)
        # growth is tried again within a second: probe until both workers record again
        probes = iter(range(10_000))
        streak = []

        def recording_again() -> bool:
            k = next(probes)
            _send(g, [f"/probe/p{k}"])
            s = g.scrape_until(lambda s: _recorded(s, "/fill/") + _recorded(s, "/probe/")
                               + sum(_unstored_by_worker(s).values()) == FILL + k + 1)
            streak.append(s.value(REQUESTS, method="GET", route=f"/probe/p{k}",
                                  status="200") == 1.0)
            return len(streak) >= 10 and all(streak[-10:])
        until(recording_again, timeout=20, interval=0.05, message="recording to resume")
        before = sum(_unstored_by_worker(g.scrape()).values())
        _send(g, (f"/resumed/p{i}" for i in range(100)))
        after = g.scrape_until(lambda s: _recorded(s, "/resumed/") == 100)
        assert {dict(ls)["route"] for ls in after.series(REQUESTS)
                if dict(ls)["route"].startswith("/resumed/")} == \
            {f"/resumed/p{i}" for i in range(100)}
        assert sum(_unstored_by_worker(after).values()) == before
        assert g.proc.poll() is None and g.worker_pids() == workers
        assert len(FULL_LINE.findall(g.output())) == len(lines)  # no further line
        g.stop()


UNUSABLE = re.compile(r"prometheus: cannot use the multiprocess directory (\S+) "
                      r"\(PROMETHEUS_MULTIPROC_DIR\): (.+); expected a directory that user "
                      r"(\S+) \(uid \d+\) can create and write files in")


def _start_up_refused(args, env, cwd: str, timeout: float = 30.0) -> str:
    """Run gunicorn until it exits; its output (it must exit 1, quickly, without a
    traceback)."""
    started = time.monotonic()
    done = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert time.monotonic() - started < timeout
    assert "Traceback" not in output and "PermissionError" not in output, output
    return output


def _gunicorn_args(port: int) -> list:
    return [gunicorn_bin(), "--bind", f"127.0.0.1:{port}", "--workers", "1",
            "--no-control-socket", "--worker-class",
            "gunicorn_prometheus_exporter.PrometheusWorker", "apps.routed:app"]


def _env(directory: str) -> dict:
    from support.ports import free_port

    return {**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory,
            "PROMETHEUS_METRICS_PORT": str(free_port()), "PYTHONPATH": TESTS}


def test_a_read_only_directory_stops_start_up_with_one_line():
    from support.ports import free_port

    with tmpfs.mounted("1m", "ro") as where:
        for directory in (where, os.path.join(where, "mp")):  # existing, and to create
            output = _start_up_refused(_gunicorn_args(free_port()), _env(directory),
                                       cwd=TESTS)
            lines = UNUSABLE.findall(output)
            assert len(lines) == 1, output
            assert lines[0][0] == directory and "Read-only file system" in lines[0][1]


def test_a_directory_the_user_cannot_write_stops_start_up_with_one_line(tmp_path):
    """As nobody (root ignores permissions), in a directory only root may write."""
    from support.ports import free_port

    if os.geteuid() != 0:
        pytest.skip("switching to the user nobody needs root (CI runs as root)")
    import tempfile

    base = tempfile.mkdtemp(prefix="gpe-unwritable-")  # 0700 root: made readable below
    try:
        os.chmod(base, 0o755)
        directory = os.path.join(base, "mp")
        os.mkdir(directory, 0o755)
        args = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                *_gunicorn_args(free_port())]
        output = _start_up_refused(args, _env(directory), cwd=TESTS)
        lines = UNUSABLE.findall(output)
        assert len(lines) == 1, output
        assert lines[0][0] == directory and lines[0][2] == "nobody"
        assert "Permission denied" in lines[0][1]
        assert os.listdir(directory) == []
    finally:
        subprocess.run(["rm", "-rf", base], timeout=30)


def test_the_apps_own_metrics_on_a_full_directory_never_kill_a_worker(start_gunicorn):
    """prometheus_client's files too: every request served, every value either stored or
    counted as unstored; a value that could not be stored is kept in memory and stored,
    exactly, by its next update once space returns (one worker: one memory)."""
    n = 1000
    pad = "k" * 1000  # ~1 KiB per series: the directory fills after a few hundred

    def keyed(i: int) -> str:
        return f"/app?k={pad}{i}"

    with tmpfs.mounted("1m") as where:
        g = start_gunicorn(app="apps.app_series:app", workers=1,
                           env={"PROMETHEUS_MULTIPROC_DIR": os.path.join(where, "mp")},
                           extra_args=["--chdir", TESTS]).wait_ready(workers=1)
        workers = g.worker_pids()
        for i in range(n):
            assert g.request(keyed(i)) == (200, b"ok\n")
        assert g.proc.poll() is None and g.worker_pids() == workers, g.output()
        s = g.scrape_until(lambda s: s.total(REQUESTS) == n)
        stored = s.series("app_hits_total")
        assert set(stored.values()) == {1.0}
        unstored = s.total(UNSTORED)
        assert unstored > 0 and len(stored) + unstored == n
        lost = next(i for i in range(n)
                    if frozenset({("key", pad + str(i))}) not in stored)

        tmpfs.resize(where, "16m")
        hits = [1]  # the hit that was not stored

        def stored_again():
            assert g.request(keyed(lost)) == (200, b"ok\n")
            hits[0] += 1
            return g.scrape().value("app_hits_total", key=pad + str(lost)) is not None
        until(stored_again, timeout=10, message="the kept value to be stored")
        assert g.scrape().value("app_hits_total", key=pad + str(lost)) == hits[0]
        assert g.worker_pids() == workers and "Traceback" not in g.output()


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
def test_a_dropped_series_writes_nothing_to_the_storage(compiled):
    """In process, on a full tmpfs: once a new series cannot be stored, ``series`` gives
    the dropped series, counted once per request, and ``add`` (the C ``RequestWriter.add``
    where it is built: this test fails if it is not taken) writes only into its scratch
    doubles, never into a mapped file."""
    from gunicorn_prometheus_exporter import speedups
    from gunicorn_prometheus_exporter import families
    from gunicorn_prometheus_exporter.recorder import Recorder
    from gunicorn_prometheus_exporter.storage.store import ProcessStore

    native = speedups.load({})
    if compiled:
        assert native is not None, "the C speedups are not built"
    with tmpfs.mounted("512k") as where:
        store = ProcessStore(where, "w0")
        recorder = Recorder(store, [0.1, 1.0], [100.0], threaded=False,
                            native=native if compiled else None)
        if compiled:
            assert isinstance(recorder.add.__self__, native.RequestWriter)
        assert tmpfs.fill(os.path.join(where, "filler")) > 0
        drops = 0
        for i in range(10_000):
            series = recorder.series("GET", f"/r{i}", "200")
            if series is recorder.dropped:
                drops += 1
                if drops == 3:
                    break
        assert drops == 3, "the storage never filled up"
        files = sorted(Path(where).glob("*.db"))
        before = [p.read_bytes() for p in files]
        for _ in range(100):
            recorder.add(recorder.dropped, 0.5, 10, 20)
        assert [p.read_bytes() for p in files] == before
        scratch = recorder.dropped[0]
        # per request: count, duration, request and response buckets at 0; sums at 1
        assert (scratch[0], scratch[1]) == (400.0, 100 * (0.5 + 10 + 20))
        assert recorder.counter_value(families.UNSTORED) == 3
        store.close()

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

"""gunicorn 27's dirty-worker pool through real gunicorn with a real dirty app: pool size,
busy/idle dirty workers, tasks, their duration and failures by dirty app, and dirty worker
exits by reason (timeout, killed, crashed, exited)."""
import os
import signal
from pathlib import Path

import pytest

from apps.dirty_app import DIRTY_APP as APP, POOL_ARGS
from support.wait import until

gunicorn_dirty = pytest.importorskip("gunicorn.dirty", reason="gunicorn >= 27 (dirty workers)")

TESTS = ["--chdir", str(Path(__file__).parent)]
POOL = TESTS + POOL_ARGS


def test_dirty_pool_tasks_failures_and_exits(start_gunicorn):
    g = start_gunicorn(app="apps.dirty_app:app", workers=1,
                       extra_args=POOL).wait_ready(workers=1)
    s = g.scrape_until(lambda s: s.value("gunicorn_dirty_workers", state="idle") == 2)
    assert s.value("gunicorn_dirty_workers_desired") == 2
    assert s.value("gunicorn_dirty_workers", state="busy") == 0
    assert s.value("gunicorn_dirty_tasks_total", app=APP) == 0
    for x in (2, 3, 4):
        assert g.request(f"/square?x={x}") == (200, str(x * x).encode())
    assert g.request("/fail") == (500, b"DirtyAppError")
    assert g.request("/slow?ms=300")[0] == 200
    s = g.scrape_until(lambda s: s.value("gunicorn_dirty_tasks_total", app=APP) == 5
                       and s.total("gunicorn_http_requests_total") == 5)
    assert s.value("gunicorn_dirty_task_failures_total", app=APP,
                   error_type="ValueError") == 1
    assert s.value("gunicorn_dirty_task_duration_seconds_count", app=APP) == 5
    # four quick tasks, one of 300 ms: in (0.25, 0.5]
    assert s.value("gunicorn_dirty_task_duration_seconds_bucket", app=APP, le="0.25") == 4
    assert s.value("gunicorn_dirty_task_duration_seconds_bucket", app=APP, le="0.5") == 5
    # a dirty task is not an HTTP request: the five HTTP requests are all there is
    assert s.total("gunicorn_http_requests_total") == 5

    # a dirty worker that stops answering (SIGSTOP: its heartbeat stops) is killed after
    # dirty_timeout; the arbiter starts a replacement
    first, second = g.dirty_pids()
    os.kill(first, signal.SIGSTOP)
    g.scrape_until(lambda s: s.value("gunicorn_dirty_worker_exits_total",
                                     reason="timeout") == 1, timeout=30)
    until(lambda: len(g.dirty_pids()) == 2 and first not in g.dirty_pids(), timeout=30,
          message="a replacement dirty worker")
    g.scrape_until(lambda s: s.value("gunicorn_dirty_workers", state="idle") == 2)
    # a dirty worker told to stop exits on its own
    os.kill(second, signal.SIGTERM)
    s = g.scrape_until(lambda s: s.value("gunicorn_dirty_worker_exits_total",
                                         reason="exited") == 1, timeout=30)
    assert s.value("gunicorn_dirty_worker_exits_total", reason="timeout") == 1
    until(lambda: len(g.dirty_pids()) == 2, timeout=30, message="the pool to be whole again")
    s = g.scrape_until(lambda s: s.value("gunicorn_dirty_workers", state="idle") == 2)
    # the tasks counted by the workers that are gone are kept
    assert s.value("gunicorn_dirty_tasks_total", app=APP) == 5
    # the exit status names the rest: SIGKILL from outside the arbiter (as the OOM killer
    # sends), and a dirty worker that exits with code 1 in the middle of a task
    victim = g.dirty_pids()[0]
    os.kill(victim, signal.SIGKILL)
    g.scrape_until(lambda s: s.value("gunicorn_dirty_worker_exits_total",
                                     reason="killed") == 1, timeout=30)
    until(lambda: len(g.dirty_pids()) == 2 and victim not in g.dirty_pids(), timeout=30,
          message="a replacement for the SIGKILLed dirty worker")
    assert g.request("/crash")[0] == 500
    s = g.scrape_until(lambda s: s.value("gunicorn_dirty_worker_exits_total",
                                         reason="crashed") == 1, timeout=30)
    assert s.series("gunicorn_dirty_worker_exits_total") == {
        frozenset({("reason", r)}): 1.0 for r in ("timeout", "killed", "crashed", "exited")}


@pytest.mark.parametrize("aborted,status,reason", [
    (True, (os.CLD_KILLED, signal.SIGKILL), "timeout"),  # the arbiter's own kill
    (True, None, "timeout"),
    (False, (os.CLD_KILLED, signal.SIGKILL), "killed"),
    (False, (os.CLD_KILLED, signal.SIGSEGV), "crashed"),
    (False, (os.CLD_DUMPED, signal.SIGABRT), "crashed"),
    (False, (os.CLD_EXITED, 1), "crashed"),
    (False, (os.CLD_EXITED, 3), "crashed"),  # gunicorn's boot error
    (False, (os.CLD_EXITED, 0), "exited"),
    (False, None, "exited"),  # status not read
])
def test_exit_reasons(aborted, status, reason):
    from gunicorn_prometheus_exporter.dirty import exit_reason

    assert exit_reason(aborted, status) == reason


def test_no_dirty_families_without_a_pool(start_gunicorn):
    g = start_gunicorn(workers=1).wait_ready(workers=1)
    assert not [n for n in g.scrape().names() if n.startswith("gunicorn_dirty_")]

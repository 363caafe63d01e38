"""Signal handlers only record the signal (issue 13): the metrics process, SIGKILLed, is
started again from the master's loop, never inside a signal handler (forking or logging
there can deadlock on a lock the interrupted code holds), and serves the same exact
values."""
from __future__ import annotations

import json
import os
import signal
import textwrap
from pathlib import Path
from typing import Tuple

from support.procs import Gunicorn
from support.wait import until

#: gunicorn config that records, for every fork of the master, whether a signal handler
#: installed at that moment is on the stack (and the names of the frames)
FORK_WITNESS = textwrap.dedent('''
    import json, os, signal, sys

    _fork = os.fork
    _record = os.environ["FORK_WITNESS_FILE"]


    def _handler_codes():
        codes = set()
        for signum in signal.valid_signals():
            try:
                handler = signal.getsignal(signum)
            except (OSError, ValueError):
                continue
            code = getattr(getattr(handler, "__func__", handler), "__code__", None)
            if code is not None:
                codes.add(code)
        return codes


    def fork():
        handlers = _handler_codes()
        frames = []
        frame = sys._getframe(1)
        while frame is not None:
            frames.append(frame.f_code)
            frame = frame.f_back
        pid = _fork()
        if pid:
            with open(_record, "a") as fh:
                fh.write(json.dumps({
                    "child": pid,
                    "in_handler": [c.co_name for c in frames if c in handlers],
                    "frames": [c.co_name for c in frames]}) + "\\n")
        return pid


    os.fork = fork
''')


def _forks(path: Path) -> dict:
    if not path.exists():
        return {}
    return {r["child"]: r for r in map(json.loads, path.read_text().splitlines())}


def _witnessed(start_gunicorn, tmp_path: Path) -> Tuple[Gunicorn, Path]:
    """One worker under a master whose forks the witness records (in the returned file),
    with the stack each fork came from."""
    conf = tmp_path / "fork_witness.py"
    conf.write_text(FORK_WITNESS)
    record = tmp_path / "forks.jsonl"
    g: Gunicorn = start_gunicorn(workers=1, config=str(conf),
                                 env={"FORK_WITNESS_FILE": str(record)})
    return g.wait_ready(workers=1), record


def test_signal_metrics_process_restarted_from_the_loop_serves_exact_values(
        start_gunicorn, tmp_path):
    g, record = _witnessed(start_gunicorn, tmp_path)
    for _ in range(5):
        assert g.request("/")[0] == 200
    g.scrape_until(lambda s: s.total("gunicorn_http_requests_total") == 5)
    first = g.monitor_pid()
    assert first in _forks(record)  # the witness sees the master's forks

    os.kill(first, signal.SIGKILL)
    second = until(lambda: g.monitor_pid() if g.monitor_pid() != first else None,
                   timeout=10, message="the metrics process to be started again")
    # the same exact values from the new process, and it goes on counting
    assert g.scrape_until(lambda s: s.total("gunicorn_http_requests_total") == 5)
    for _ in range(3):
        assert g.request("/")[0] == 200
    g.scrape_until(lambda s: s.total("gunicorn_http_requests_total") == 8)
    assert g.proc.poll() is None
    assert (f"prometheus: metrics server (pid {first}) ended; starting it again "
            f"(pid {second})") in g.output()

    restart = _forks(record)[second]
    # forked with no signal handler on the stack, from the master's loop
    assert restart["in_handler"] == [], restart
    assert "manage_workers" in restart["frames"] and "run" in restart["frames"], restart


def test_signal_handlers_of_the_master_only_record(start_gunicorn, tmp_path):
    """Every fork of the master (workers, the metrics process, its restart after a
    SIGKILL, workers replaced after TTIN/TTOU and a HUP) happens outside signal handlers,
    while our handlers count each signal."""
    g, record = _witnessed(start_gunicorn, tmp_path)
    g.signal(signal.SIGTTIN)
    g.wait_ready(workers=2)
    os.kill(g.monitor_pid(), signal.SIGKILL)
    g.signal(signal.SIGHUP)

    def forked_by(name):
        return [r for r in _forks(record).values() if name in r["frames"]]

    until(lambda: forked_by("restart_if_gone") and forked_by("handle_hup"), timeout=20,
          message="the metrics process restart and the reload's workers")
    g.scrape_until(lambda s: s.value("gunicorn_master_signals_total", signal="hup") == 1
                   and s.value("gunicorn_master_signals_total", signal="ttin") == 1)
    forks = _forks(record)
    # first worker, metrics process, the TTIN worker, the restart, the reload's worker
    assert len(forks) >= 5, forks
    for name in ("start_metrics_process", "handle_ttin", "restart_if_gone", "handle_hup"):
        assert forked_by(name), name
    assert [r for r in forks.values() if r["in_handler"]] == []

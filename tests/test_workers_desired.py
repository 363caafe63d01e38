"""``gunicorn_workers_desired`` equals the arbiter's worker count after every signal: TTIN
and TTOU change it by one, a HUP re-reads ``workers`` from the config (a HUP once left it
at the TTIN value while fewer workers ran)."""
from __future__ import annotations

import signal
from typing import List, Tuple

from support.procs import Gunicorn
from support.wait import until

#: (signal, workers the arbiter runs afterwards), from 2 configured workers
SEQUENCE: List[Tuple[signal.Signals, int]] = [
    (signal.SIGTTIN, 3),
    (signal.SIGHUP, 2),
    (signal.SIGTTIN, 3),
    (signal.SIGTTIN, 4),
    (signal.SIGTTOU, 3),
    (signal.SIGHUP, 2),
    (signal.SIGTTOU, 1),
    (signal.SIGTTOU, 1),  # gunicorn keeps at least one
    (signal.SIGHUP, 2),
    (signal.SIGTTOU, 1),
    (signal.SIGHUP, 2),
]


def _settled(g: Gunicorn, expected: int) -> bool:
    """The arbiter runs ``expected`` workers, all reporting, and desired says so."""
    s = g.scrape()
    return (len(g.worker_pids()) == expected
            and len(s.series("gunicorn_worker_capacity")) == expected
            and s.value("gunicorn_workers_desired") == expected)


def test_desired_follows_ttin_ttou_and_hup(start_gunicorn):
    g = start_gunicorn(workers=2).wait_ready(workers=2)
    assert g.scrape().value("gunicorn_workers_desired") == 2
    for step, (sig, expected) in enumerate(SEQUENCE):
        g.signal(sig)
        try:
            until(lambda: _settled(g, expected), timeout=30,
                  message=f"step {step}: {sig.name} -> {expected} workers")
        except AssertionError:
            s = g.scrape()
            raise AssertionError(
                f"after {[x.name for x, _ in SEQUENCE[:step + 1]]}: desired "
                f"{s.value('gunicorn_workers_desired')}, running {len(g.worker_pids())}, "
                f"expected {expected}\n{g.output()[-2000:]}") from None
        assert g.request("/")[0] == 200
    s = g.scrape_until(lambda s: s.total("gunicorn_http_requests_total") == len(SEQUENCE))
    assert s.value("gunicorn_workers_desired") == 2

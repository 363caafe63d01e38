"""A stopped gunicorn leaves nothing behind: no worker, no metrics process."""
import signal

import psutil

from support.wait import until


def test_shutdown_leaves_no_process(start_gunicorn):
    g = start_gunicorn(workers=2).wait_ready(workers=2)
    family = [p.pid for p in psutil.Process(g.pid).children(recursive=True)]
    assert len(family) == 3  # two workers and the metrics server
    g.signal(signal.SIGTERM)
    until(lambda: g.proc.poll() is not None, message="gunicorn to exit")
    until(lambda: not any(psutil.pid_exists(pid) and psutil.Process(pid).status()
                          != psutil.STATUS_ZOMBIE for pid in family),
          timeout=10, message="every child gone")
    assert "starting it again" not in g.output()

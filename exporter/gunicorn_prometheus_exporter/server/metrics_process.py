"""The metrics process: one main for the plugin's (forked by its master's
``MetricsSupervisor``) and for the standalone exporter (``gunicorn-prometheus-exporter
serve``). Both serve a source's families on a bound socket from one thread, run the
background tasks from the main thread, and stop on a signal taken by ``sigtimedwait``.

Stop signals are blocked (in every thread started afterwards too) and taken in the loop:
a Python handler that set a ``threading.Event`` could deadlock on the Event's lock if the
signal arrived while this thread held it inside ``Event.wait``."""
from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from typing import Any, Collection, Optional, Sequence

from .. import logcount
from ..config import Settings
from ..master_id import MasterId
from ..sources import DirectorySource, Source, open_source
from ..storage.store import ProcessStore
from ..writer import Writer
from .http import Exposition, MetricsServer
from .sockets import listening_socket
from .tasks import Scheduler, Task, background_tasks
from .webconfig import WebConfig

_PR_SET_PDEATHSIG = 1
#: seconds a stopping metrics process of a master gives scrapes in progress (the master
#: waits longer); the standalone exporter ends within a second of SIGTERM
MASTER_STOP_GRACE = 1.5
STANDALONE_STOP_GRACE = 0.5
_MASTER_IGNORES = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGTTIN,
                   signal.SIGTTOU, signal.SIGWINCH, signal.SIGINT, signal.SIGQUIT)


def for_master(sock: Optional[socket.socket], settings: Settings, web: WebConfig,
               directory: str, log: Any, listeners: Sequence[Any], master: MasterId) -> None:
    """The metrics process of gunicorn master ``master``, forked with the bound ``sock``
    (None: no server, background tasks only). It ends with the master
    (``PR_SET_PDEATHSIG`` where Linux offers it, and a parent check every second)."""
    _die_with_parent()
    for sig in _MASTER_IGNORES:
        signal.signal(sig, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    stop_signals = block_stop_signals(signal.SIGTERM)
    # its own files, under the master's identity plus ``.monitor``: alive exactly as long
    # as the master's lock is held
    writer = Writer(ProcessStore(directory, f"{master.identity or 'x'}.monitor"),
                    threaded=True, log=log)
    logcount.counter().use(writer)
    tasks = background_tasks(settings, directory, log, listeners, writer, master)
    serve(sock, DirectorySource(directory, log), web, log, stop_signals, tasks=tasks,
          parent=master.pid, grace=MASTER_STOP_GRACE, poll_interval=0.2)


def standalone(settings: Settings, web: WebConfig, log: Any,
               stop_signals: Collection[int]) -> int:
    """``gunicorn-prometheus-exporter serve``: the source the settings name (a directory,
    or Redis) on its own socket, until one of ``stop_signals`` (blocked by the caller
    first thing); the exit status."""
    source = open_source(settings, log)
    p = settings.prometheus
    try:
        sock = listening_socket(p.bind_address, p.metrics_port)
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", p.bind_address, p.metrics_port,
                  exc.strerror or exc)
        return 1
    scheme = "https" if web.cert_file else "http"
    log.info("serving %s at %s://%s:%s/metrics", source.description, scheme,
             p.bind_address, p.metrics_port)
    received = serve(sock, source, web, log, stop_signals, grace=STANDALONE_STOP_GRACE,
                     poll_interval=0.1)
    if received is not None:
        log.info("stopping (%s)", signal.Signals(received).name)
    sock.close()
    source.close()
    return 0


def block_stop_signals(*signals: signal.Signals) -> Collection[int]:
    """Block ``signals`` in this thread and every thread it starts from now on (threads
    inherit the mask, so this comes before any); ``serve`` takes them."""
    stop_signals = set(signals)
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    return stop_signals


def serve(sock: Optional[socket.socket], source: Source, web: WebConfig, log: Any,
          stop_signals: Collection[int], *, tasks: Sequence[Task] = (),
          parent: Optional[int] = None, grace: float, poll_interval: float) -> Optional[int]:
    """Serve ``source`` on ``sock`` and run ``tasks`` until a stop signal (returned) or
    until process ``parent`` is gone (None returned); then let the scrapes in progress
    finish (at most ``grace`` seconds) and close the tasks."""
    server = None
    if sock is not None:
        exposition = Exposition(source.collect, source.description, source.ready)
        server = MetricsServer(sock, exposition, web, log)
        threading.Thread(target=server.serve_forever,
                         kwargs={"poll_interval": poll_interval},
                         name="metrics-server", daemon=True).start()
        # the first read off the accept loop: /-/healthy answers at once, and Prometheus's
        # first scrape finds the series tables built (or waits for them, within its deadline)
        threading.Thread(target=source.warm_up, name="warm-up", daemon=True).start()
    scheduler = Scheduler(list(tasks), log)
    received = None
    while parent is None or os.getppid() == parent:
        got = signal.sigtimedwait(stop_signals, min(1.0, scheduler.tick()))
        # a stop/continue (SIGSTOP, a debugger) interrupts the wait with no signal: go on
        if got is not None and got.si_signo in stop_signals:
            received = got.si_signo
            break
    if server is not None:
        server.stop(grace=grace)
    scheduler.close()
    return received


def _die_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass

"""The metrics server process of a gunicorn master (and home of its background tasks).

The master binds the metrics socket itself (so a port conflict is one clear log line at
start-up and never delays a worker), then forks a small process that serves it. Scrapes
never run in the master, which stays single-threaded as gunicorn expects before each fork,
and a slow or abusive scraper cannot disturb worker management. The process ends with the
master (``PR_SET_PDEATHSIG`` where Linux offers it, and a parent check every second)."""
from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from typing import Any, Optional, Sequence

from ..config import Settings
from . import webconfig
from .http import Exposition, MetricsServer, listening_socket

_PR_SET_PDEATHSIG = 1
#: seconds a stopping metrics process gives scrapes in progress; the master waits longer
STOP_GRACE = 1.5


class Monitor:
    def __init__(self, settings: Settings, directory: str, log: Any,
                 listeners: Sequence[Any] = ()) -> None:
        self.settings = settings
        self.listeners = listeners
        self.directory = directory
        self.log = log
        self.pid: Optional[int] = None
        self.sock: Optional[socket.socket] = None
        self.stopping = False
        self.web = webconfig.from_settings(settings)
        self.web.tls_context()  # fail now, in the master, on a bad certificate or key

    @property
    def address(self) -> str:
        p = self.settings.prometheus
        return f"{p.bind_address}:{p.metrics_port}"

    @property
    def needed(self) -> bool:
        return bool(self.settings.prometheus.server or self.settings.redis.enabled
                    or self.listeners)

    def start(self) -> None:
        p = self.settings.prometheus
        if p.server:
            try:
                self.sock = listening_socket(p.bind_address, p.metrics_port,
                                             [lnr.fileno() for lnr in self.listeners])
            except OSError as exc:
                self.log.error("prometheus: cannot serve metrics on %s: %s; requests are "
                               "still recorded in %s (set PROMETHEUS_METRICS_PORT to a free "
                               "port)", self.address, exc.strerror or exc, self.directory)
        self._fork()
        if self.sock is not None:
            scheme = "https" if self.web.cert_file else "http"
            self.log.info("prometheus: serving metrics at %s://%s/metrics (pid %s)",
                          scheme, self.address, self.pid)

    def _fork(self) -> None:
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                _serve(self.sock, self.settings, self.web, self.directory, self.log,
                       self.listeners)
            except BaseException:  # the child must never return into gunicorn's code
                self.log.exception("prometheus: metrics server failed")
                code = 1
            finally:
                os._exit(code)
        self.pid = pid

    def restart_if_gone(self) -> None:
        """If our process ended, reap it and start another (unless the master is stopping
        it). Called from the master's SIGCHLD handler and at each worker spawn; a process
        gunicorn's own reaper got first counts as ended."""
        if self.pid is None or self.stopping:
            return
        try:
            done, _ = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            done = self.pid
        if done:
            old = self.pid
            self._fork()
            self.log.warning("prometheus: metrics server (pid %s) ended; starting it again "
                             "(pid %s)", old, self.pid)

    def stop(self) -> None:
        self.stopping = True
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGTERM)
                _reap(self.pid, timeout=STOP_GRACE + 1.5)
            except ProcessLookupError:
                pass
            self.pid = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def forget(self) -> None:
        """In a worker: close the inherited socket, leave the process alone."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.pid = None


def _reap(pid: int, timeout: float) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return  # gunicorn's own reaper got it first
        if done:
            return
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)


def _serve(sock: Optional[socket.socket], settings: Settings, web: webconfig.WebConfig,
           directory: str, log: Any, listeners: Sequence[Any]) -> None:
    from ..sources import DirectorySource
    from .tasks import Scheduler, background_tasks

    master = os.getppid()
    _die_with_parent()
    for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGTTIN,
                signal.SIGTTOU, signal.SIGWINCH, signal.SIGINT, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    # SIGTERM is blocked (in every thread started below too) and taken by sigtimedwait in
    # the loop: a Python handler that set a threading.Event could deadlock on the Event's
    # lock if the signal arrived while this thread held it inside Event.wait
    stop_signals = {signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    server = None
    if sock is not None:
        source = DirectorySource(directory, log)
        exposition = Exposition(source.collect, source.description, ready=source.ready)
        server = MetricsServer(sock, exposition, web, log)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                         name="metrics-server", daemon=True).start()
    from .. import logcount
    from ..recorder import Writer
    from ..storage.store import ProcessStore

    writer = Writer(ProcessStore(directory, _identity(directory)), threaded=True, log=log)
    logcount.counter().use(writer)
    scheduler = Scheduler(background_tasks(settings, directory, log, listeners, writer), log)
    while os.getppid() == master:
        received = signal.sigtimedwait(stop_signals, min(1.0, scheduler.tick()))
        # a stop/continue (SIGSTOP, a debugger) interrupts the wait with no signal: go on
        if received is not None and received.si_signo in stop_signals:
            break
    if server is not None:
        server.stop(grace=STOP_GRACE)
    scheduler.close()


def _identity(directory: str) -> str:
    """The metrics process writes under its master's identity plus ``.monitor``: its own
    files, alive exactly as long as the master's lock is held."""
    from .. import master

    runtime = master.current()
    return (runtime.claim.identity if runtime is not None else "x") + ".monitor"


def _die_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass



"""The master's side of its metrics process: bind the metrics socket, fork the process
that serves it, start it again when it dies, stop it with the master.

The master binds the socket itself (so a port conflict is one clear log line at start-up
and never delays a worker), then forks a small process that serves it
(``metrics_process.for_master``). Scrapes never run in the master, which stays
single-threaded as gunicorn expects before each fork, and a slow or abusive scraper cannot
disturb worker management."""
from __future__ import annotations

import os
import signal
import socket
import time
from typing import Any, Callable, Optional, Sequence

from ..config import Settings
from ..master_id import MasterId
from . import metrics_process, webconfig
from .sockets import listening_socket


class MetricsSupervisor:
    def __init__(self, settings: Settings, directory: str, log: Any, master: MasterId,
                 listeners: Sequence[Any] = (),
                 in_child: Optional[Callable[[], None]] = None) -> None:
        self.settings = settings
        #: run first in each forked metrics process: drops what it inherited from the master
        #: but must not hold (the workers' slot locks, which would keep their slots taken)
        self.in_child = in_child
        self.listeners = listeners
        self.directory = directory
        self.log = log
        self.master = master
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
                if self.in_child is not None:
                    self.in_child()
                metrics_process.for_master(self.sock, self.settings, self.web, self.directory,
                                           self.log, self.listeners, self.master)
            except BaseException:  # the child must never return into gunicorn's code
                self.log.exception("prometheus: metrics server failed")
                code = 1
            finally:
                os._exit(code)
        self.pid = pid

    def restart_if_gone(self) -> None:
        """If our process ended, reap it and start another (unless the master is stopping
        it). Called from the master's loop, never from a signal handler; a process
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
                _reap(self.pid, timeout=metrics_process.MASTER_STOP_GRACE + 1.5)
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

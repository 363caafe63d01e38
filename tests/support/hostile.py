"""Hostile clients of a metrics port, for fault tests: a flood of connections that are held
open doing nothing useful (idle, slowloris, slow readers) and reopened as soon as the server
cuts them. One thread drives them all with poll(), in bounded loops."""
from __future__ import annotations

import select
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

#: what a slowloris client trickles, one byte at a time, never ending its headers
_TRICKLE = b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 4000
#: what a slow reader sends at once: many pipelined scrapes whose answers it hardly reads
_PIPELINED = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 200


@dataclass
class _Conn:
    kind: str
    sock: socket.socket
    sent: int = 0


@dataclass
class FloodReport:
    opened: int = 0       # connections opened, first ones included
    reopened: int = 0     # connections the server ended, opened again
    most_open: int = 0    # most connections open at once
    connect_failures: int = 0
    errors: List[str] = field(default_factory=list)


class Flood:
    """``count`` hostile connections to ``port``, a third of each kind, until ``stop()``
    (or ``max_seconds``)."""

    KINDS = ("idle", "slowloris", "slow_reader")

    def __init__(self, port: int, count: int = 200, max_seconds: float = 180.0) -> None:
        self.port = port
        self.count = count
        self.max_seconds = max_seconds
        self.report = FloodReport()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flood", daemon=True)
        self._conns: Dict[int, _Conn] = {}
        self._poll = select.poll()

    def __enter__(self) -> "Flood":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> FloodReport:
        self._stop.set()
        self._thread.join(30)
        return self.report

    @property
    def open_now(self) -> int:
        return len(self._conns)

    def _open(self, kind: str) -> Optional[_Conn]:
        sock = socket.socket()
        if kind == "slow_reader":  # a small window: the server's writes block soon
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(1.0)
        try:
            sock.connect(("127.0.0.1", self.port))
        except OSError:
            sock.close()
            self.report.connect_failures += 1
            return None
        sock.setblocking(False)
        conn = _Conn(kind, sock)
        if kind == "slow_reader":
            try:
                conn.sent = sock.send(_PIPELINED)
            except OSError:
                pass
        self._conns[sock.fileno()] = conn
        events = select.POLLRDHUP | select.POLLERR | select.POLLHUP
        if kind != "slow_reader":
            events |= select.POLLIN  # the others drain what they get (an error page)
        self._poll.register(sock, events)
        self.report.opened += 1
        self.report.most_open = max(self.report.most_open, len(self._conns))
        return conn

    def _close(self, fd: int) -> None:
        conn = self._conns.pop(fd)
        self._poll.unregister(fd)
        conn.sock.close()

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        kinds = [self.KINDS[i % len(self.KINDS)] for i in range(self.count)]
        wanted = {kind: kinds.count(kind) for kind in self.KINDS}
        next_trickle = time.monotonic()
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                have = {kind: 0 for kind in self.KINDS}
                for conn in self._conns.values():
                    have[conn.kind] += 1
                for kind in self.KINDS:  # hold ``count`` open: reopen what the server ended
                    for _ in range(wanted[kind] - have[kind]):
                        if self._stop.is_set():
                            break
                        if self._open(kind) is not None and self.report.opened > self.count:
                            self.report.reopened += 1
                for fd, event in self._poll.poll(50):
                    conn = self._conns.get(fd)
                    if conn is None:
                        continue
                    if event & (select.POLLRDHUP | select.POLLERR | select.POLLHUP):
                        self._close(fd)
                    elif event & select.POLLIN:
                        try:
                            if conn.sock.recv(65536) == b"":
                                self._close(fd)
                        except OSError:
                            self._close(fd)
                if time.monotonic() >= next_trickle:  # a byte every 0.5 s per slowloris
                    next_trickle = time.monotonic() + 0.5
                    self._trickle()
        except Exception as exc:  # noqa: BLE001 - reported to the test
            self.report.errors.append(repr(exc))
        finally:
            for fd in list(self._conns):
                self._close(fd)

    def _trickle(self) -> None:
        for fd, conn in list(self._conns.items()):
            if conn.kind == "slowloris":
                try:
                    conn.sock.send(_TRICKLE[conn.sent % len(_TRICKLE):][:1])
                    conn.sent += 1
                except BlockingIOError:
                    pass
                except OSError:
                    self._close(fd)
            elif conn.kind == "slow_reader":  # reads a little, never enough
                try:
                    if conn.sock.recv(64) == b"":
                        self._close(fd)
                except BlockingIOError:
                    pass
                except OSError:
                    self._close(fd)

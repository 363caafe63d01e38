"""The metrics server's waiting room: connections accepted whose request has not arrived yet.

A connection costs a thread only once it has something to serve, as gunicorn's gthread
worker keeps idle keep-alive connections in a selector and hands only readable ones to its
thread pool. Here the accept loop reads each new connection without blocking until its
request head is in (the request line and headers), so a client that idles or trickles its
headers (slowloris) holds a file descriptor and a small buffer, never a thread. With TLS the
bytes are encrypted: a connection is ready as soon as its client has sent anything (the
handshake then runs in the connection's thread, under the header deadline).

The room is bounded: a newcomer beyond its capacity closes the connection that has waited
longest (unless what it has sent completes its request), and every connection that has not
sent its head by the header deadline is closed. A connection in the room costs a file
descriptor and at most HEAD_LIMIT bytes, so the room holds many more connections than there
are threads: a flood of idle clients is held, not churned."""
from __future__ import annotations

import selectors
import socket
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Deque, Optional, Tuple

_WAITING, _READY, _GONE = "waiting", "ready", "gone"

#: A request head is handed on once this long even if unfinished: the connection's thread
#: reads the rest and answers 414/431 as http.server does for a line or header too long.
HEAD_LIMIT = 64 * 1024


@dataclass
class Arrival:
    """A connection, what it has sent so far and its deadline to send its request head."""
    sock: socket.socket
    address: Any
    deadline: float
    head: bytearray = field(default_factory=bytearray)


def head_complete(head: bytearray) -> bool:
    """The request line and headers are all in (or enough to hand on): an empty line ends
    the headers; a request line that is not ``METHOD TARGET HTTP/x.y`` has none to wait for
    (http.server answers it, or takes it as HTTP/0.9, at once)."""
    if len(head) >= HEAD_LIMIT or b"\n\r\n" in head or b"\n\n" in head:
        return True
    line, newline, _ = head.lstrip(b"\r\n").partition(b"\n")
    return bool(newline) and len(line.split()) != 3


class WaitingRoom:
    """Connections waiting for their request head (``waiting``, oldest first) and those
    whose head is in, waiting for a thread (``ready``, first come first served), at most
    ``capacity`` in all. Not thread-safe: the accept loop alone uses it."""

    def __init__(self, selector: selectors.BaseSelector, capacity: int,
                 header_timeout: float, tls: bool) -> None:
        self._selector = selector
        self._capacity = capacity
        self._header_timeout = header_timeout
        self._tls = tls
        self._waiting: "OrderedDict[int, Arrival]" = OrderedDict()
        self._ready: Deque[Arrival] = deque()

    def admit(self, sock: socket.socket, address: Any, now: float) -> Tuple[int, int]:
        """Take a new connection; how many connections were closed to make room for it:
        waiting ones (the longest waiting first), and ready ones (refused: the room holds
        nothing but connections waiting for a thread)."""
        sock.setblocking(False)
        arrival = Arrival(sock, address, now + self._header_timeout)
        state = self._receive(arrival)
        if state is _GONE:
            self._close(arrival)
            return 0, 0
        if state is _READY:
            self._make_ready(arrival)
        else:
            self._waiting[sock.fileno()] = arrival
            self._selector.register(sock, selectors.EVENT_READ, arrival)
        return self._make_room()

    def readable(self, arrival: Arrival) -> None:
        """The selector reports bytes (or an end) on a waiting connection."""
        if self._waiting.get(arrival.sock.fileno()) is not arrival:
            return  # closed earlier in this turn of the loop (its event was stale)
        state = self._receive(arrival)
        if state is _GONE:
            self._drop(arrival)
        elif state is _READY:
            self._drop(arrival, close=False)
            self._make_ready(arrival)

    def next_ready(self) -> Optional[Arrival]:
        return self._ready.popleft() if self._ready else None

    def ready_count(self) -> int:
        return len(self._ready)

    def expire(self, now: float) -> int:
        """Close the waiting connections past their header deadline; how many."""
        late = [a for a in self._waiting.values() if a.deadline <= now]
        for arrival in late:
            self._drop(arrival)
        return len(late)

    def next_deadline(self) -> Optional[float]:
        """The earliest header deadline (the oldest connection's: all have the same
        timeout)."""
        for arrival in self._waiting.values():
            return arrival.deadline
        return None

    def close(self) -> None:
        for arrival in list(self._waiting.values()):
            self._drop(arrival)
        while self._ready:
            self._close(self._ready.popleft())

    # -- internals ---------------------------------------------------------------------------
    def _receive(self, arrival: Arrival) -> str:
        """Read what the client has sent, without blocking: _READY when its request head
        is in (with TLS: when it has sent anything), _GONE when it has closed (or reset)
        its connection before, else _WAITING."""
        try:
            if self._tls:  # encrypted bytes stay in the socket for the handshake
                return _READY if arrival.sock.recv(1, socket.MSG_PEEK) else _GONE
            data = arrival.sock.recv(HEAD_LIMIT - len(arrival.head))
        except BlockingIOError:
            return _WAITING
        except OSError:
            return _GONE
        if not data:
            return _GONE
        arrival.head += data
        return _READY if head_complete(arrival.head) else _WAITING

    def _make_ready(self, arrival: Arrival) -> None:
        arrival.sock.setblocking(True)
        self._ready.append(arrival)

    def _make_room(self) -> Tuple[int, int]:
        """Close connections beyond capacity: the longest waiting first, else (all have
        their request in) the longest ready; how many of each."""
        closed = refused = 0
        while len(self._waiting) + len(self._ready) > self._capacity:
            if self._waiting:
                closed += self._close_oldest_waiting()
            else:
                self._close(self._ready.popleft())
                refused += 1
        return closed, refused

    def _close_oldest_waiting(self) -> int:
        """Close the connection that has waited longest, unless what it has sent meanwhile
        completes its request (then it is ready, and the next oldest is considered): a
        scraper that sent its request at once is never the one closed. 1 when it was
        closed, else 0."""
        arrival = next(iter(self._waiting.values()))
        if self._receive(arrival) is _READY:
            self._drop(arrival, close=False)
            self._make_ready(arrival)
            return 0
        self._drop(arrival)
        return 1

    def _drop(self, arrival: Arrival, close: bool = True) -> None:
        del self._waiting[arrival.sock.fileno()]
        self._selector.unregister(arrival.sock)
        if close:
            self._close(arrival)

    @staticmethod
    def _close(arrival: Arrival) -> None:
        try:
            arrival.sock.close()
        except OSError:
            pass

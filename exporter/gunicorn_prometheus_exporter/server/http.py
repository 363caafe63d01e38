"""The HTTP side of the metrics server: ``/metrics`` (Prometheus protobuf, OpenMetrics or
text by ``Accept``, gzip by ``Accept-Encoding``), a landing page at ``/``, ``/-/healthy``
and ``/-/ready``, with
optional TLS and basic auth.

It is hardened for being exposed. The accept loop holds each new connection in a waiting
room (waiting.py) until its request head is in, so idle and trickling clients cost no
thread; connections with a request to serve get one of a bounded pool of threads, and when
all are taken one that waits on its client (pipelining requests without reading the
answers, or idle between keep-alive requests) is closed for the next, as mature servers
do, so hostile clients cannot keep a scraper out. A socket timeout, a header deadline and a send
deadline; TLS handshakes in the connection's thread rather than the accept loop; and every
failure of one connection logged and contained."""
from __future__ import annotations

import fcntl
import gzip
import io
import os
import queue
import resource
import selectors
import socket
import ssl
import struct
import termios
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from dataclasses import dataclass
from importlib import resources
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from ..version import __version__
from . import protobuf
from .waiting import Arrival, WaitingRoom
from .webconfig import BasicAuth, WebConfig

#: Connections served at once (one thread each): when all are taken and more have their
#: request in, the one that has waited longest on its client is closed.
MAX_CONNECTIONS = 32
#: Connections held waiting for their request head or for a thread (no thread each, a file
#: descriptor and a small buffer): beyond it, a newcomer closes the one that has waited
#: longest. At most half the process's file descriptor limit.
MAX_WAITING = 512
#: New connections accepted per turn of the accept loop, so that the connections already
#: held are read between bursts of a flood.
ACCEPT_BATCH = 16
SOCKET_TIMEOUT = 30.0
#: The longest one write of an answer may take (Python bounds a whole sendall by the
#: socket's timeout): a client that reads too slowly is cut after it.
SEND_TIMEOUT = 10.0
#: From accepting a connection (or finishing a request on it) to the end of the next request's
#: headers, TLS handshake included: a client that trickles bytes or idles holds a slot no
#: longer than this, whatever SOCKET_TIMEOUT allows for each single read.
HEADER_TIMEOUT = 15.0
#: Bytes of answers a connection may leave waiting for its client's window (Linux
#: TCP_NOTSENT_LOWAT) before its writes block.
NOT_SENT_LIMIT = 16 * 1024
TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)  # Linux's number
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets
#: Refused and closed connections are logged at most once per this many seconds (a flood is
#: one line).
REFUSED_LOG_INTERVAL = 10.0


class Exposition:
    """Renders the families of a collect function in the format a scraper asks for."""

    def __init__(self, collect: Callable[[], Iterable[Any]], source: str,
                 ready: Callable[[], bool] = lambda: True) -> None:
        self.source = source
        #: False while the source cannot finish a read (``/-/ready`` answers 503)
        self.ready = ready
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Adapter(collect))
        self._landing = resources.files(__package__).joinpath("landing.html").read_text()

    def metrics(self, accept: Optional[str]) -> Tuple[bytes, str]:
        """As Prometheus negotiates: the protobuf format whenever it is offered (the only
        one that carries native histograms), else OpenMetrics when offered, else text."""
        if protobuf.accepts(accept or ""):
            return protobuf.encode(self.registry.collect()), protobuf.CONTENT_TYPE
        encoder, content_type = negotiate(accept)
        return encoder(self.registry), content_type

    def landing(self) -> bytes:
        return self._landing.format(version=__version__, source=self.source).encode()


def negotiate(accept: Optional[str]) -> Tuple[Callable[[Any], bytes], str]:
    """The encoder for an ``Accept`` header. One prometheus_client cannot parse (a
    ``version=abc`` parameter) gets the text format, as a header that names no format does:
    a client's bad header is not a server error."""
    try:
        return choose_encoder(accept or "")
    except (TypeError, ValueError):
        return choose_encoder("")


class _Adapter:
    def __init__(self, collect: Callable[[], Iterable[Any]]) -> None:
        self.collect = collect


class MetricsServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, sock: socket.socket, exposition: Exposition, web: WebConfig,
                 log: Any) -> None:
        self.exposition = exposition
        self.log = log
        self.auth = BasicAuth(web.users)
        self.headers = web.headers
        self.tls = web.tls_context()
        self._open = 0  # connections handed to a thread and not yet closed
        self._slots = threading.Condition()  # notified whenever a connection closes
        #: file descriptor -> the current request of each connection in a thread: since
        #: when, its header deadline (until the headers are in), whether its thread waits
        #: on the client
        self._waits: Dict[int, _Wait] = {}
        self._waits_lock = threading.Lock()
        self._cutting: Set[int] = set()  # connections cut whose thread has not ended yet
        self._heads: Dict[int, bytes] = {}  # what the accept loop read of each request
        #: threads serving connections, at most MAX_CONNECTIONS, started as needed
        self._pool: List[threading.Thread] = []
        self._handoff: "queue.SimpleQueue[Optional[Tuple[socket.socket, Any]]]" = \
            queue.SimpleQueue()
        self._turned_away = {"refused": 0, "closed": 0}
        self._turned_away_logged = -REFUSED_LOG_INTERVAL
        self._last_client: Any = ("",)
        self._capacity = waiting_capacity()
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()
        self._wake_loop, self._waker = socket.socketpair()
        for end in (self._wake_loop, self._waker):
            end.setblocking(False)
        super().__init__(sock.getsockname()[:2], MetricsHandler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.address_family = sock.family
        self.server_address = sock.getsockname()[:2]
        self.server_name, self.server_port = self.server_address

    # -- the accept loop ---------------------------------------------------------------------
    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Accept connections into the waiting room, hand those whose request is in to a
        thread each (closing one that waits on its client when all are taken), and end
        connections past their header deadline, until ``shutdown``. The listening socket is
        non-blocking: a process sharing it (across a USR2 upgrade) may take a connection
        first."""
        self._stopped.clear()
        self.socket.setblocking(False)
        with selectors.DefaultSelector() as selector:
            room = WaitingRoom(selector, self._capacity, HEADER_TIMEOUT,
                               self.tls is not None)
            selector.register(self.socket, selectors.EVENT_READ)
            selector.register(self._wake_loop, selectors.EVENT_READ)
            try:
                while not self._stopping.is_set():
                    self._turn(selector, room, poll_interval)
            finally:
                room.close()
                self._stopped.set()

    def _turn(self, selector: selectors.BaseSelector, room: WaitingRoom,
              poll_interval: float) -> None:
        now = time.monotonic()
        deadline = room.next_deadline()
        timeout = poll_interval if deadline is None else max(0.0, min(poll_interval,
                                                                     deadline - now))
        for key, _ in selector.select(timeout):
            if key.fileobj is self.socket:
                self._accept(room)
            elif key.fileobj is self._wake_loop:
                _drain(self._wake_loop)
            else:
                room.readable(key.data)
        self._dispatch(room)
        room.expire(time.monotonic())
        self.service_actions()

    def _accept(self, room: WaitingRoom) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, address = self.socket.accept()
            except OSError:  # none left (or taken by a process sharing the socket)
                return
            self._last_client = address
            self._turn_away(*room.admit(sock, address, time.monotonic()))

    def _dispatch(self, room: WaitingRoom) -> None:
        """Hand each connection whose request is in to a pool thread while fewer than
        MAX_CONNECTIONS are taken; when all are, close connections waiting on their
        client (one for each connection waiting for a thread, counting those already
        closing), and leave the rest for when a thread ends."""
        while room.ready_count():
            with self._slots:
                full = self._open >= MAX_CONNECTIONS
                if not full:
                    self._open += 1
            if not full:
                self._start(room.next_ready())
                continue
            with self._waits_lock:
                wanted = room.ready_count() - len(self._cutting)
            while wanted > 0 and self._close_longest_waiting():
                wanted -= 1
            return

    def _start(self, arrival: Arrival) -> None:
        if arrival.head:
            self._heads[arrival.sock.fileno()] = bytes(arrival.head)
        try:
            if len(self._pool) < self._open:  # every thread is busy: one more
                thread = threading.Thread(target=self._serve_handoffs,
                                          name="metrics-connection", daemon=True)
                thread.start()
                self._pool.append(thread)
            self._handoff.put((arrival.sock, arrival.address))
        except Exception:  # no thread could start: the connection is closed, not leaked
            self._heads.pop(arrival.sock.fileno(), None)
            self._closed()
            self.shutdown_request(arrival.sock)
            self.log.exception("metrics server: serving %s failed", arrival.address[0])

    def _serve_handoffs(self) -> None:
        """A thread of the pool: serves the connections handed to it, one at a time, until
        the server is closed. Threads are kept, never ended and started again, so there are
        never more than MAX_CONNECTIONS of them, even for an instant."""
        while True:
            handoff = self._handoff.get()
            if handoff is None:
                return
            self.process_request_thread(*handoff)

    def shutdown(self) -> None:
        """Stop the accept loop (the connections it holds are closed) and wait for it."""
        self._stopping.set()
        self._wake()
        self._stopped.wait()

    def server_close(self) -> None:
        for _ in self._pool:
            self._handoff.put(None)
        super().server_close()
        self._wake_loop.close()
        self._waker.close()

    def stop(self, grace: float) -> None:
        """Stop accepting, then let the connections already accepted finish (at most
        ``grace`` seconds): a scrape in progress when the process is told to stop (a USR2
        upgrade's old master leaving, a pod being replaced) still gets its answer. An idle
        keep-alive connection may hold the stop for the whole grace."""
        self.shutdown()
        with self._slots:
            self._slots.wait_for(lambda: self._open == 0, timeout=grace)

    def _wake(self) -> None:
        try:
            self._waker.send(b"\0")
        except OSError:  # already awake (the pipe is full), or closed
            pass

    def _closed(self) -> None:
        with self._slots:
            self._open -= 1
            self._slots.notify_all()
        self._wake()  # a thread is free for a connection waiting for one

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._closed()

    def _turn_away(self, closed: int, refused: int) -> None:
        """Count connections closed to make room (the longest waiting) and refused (their
        request was in, but no thread freed before the waiting room overflowed)."""
        if not closed and not refused:
            return
        self._turned_away["closed"] += closed
        self._turned_away["refused"] += refused
        now = time.monotonic()
        if now - self._turned_away_logged >= REFUSED_LOG_INTERVAL:
            self.log.warning("metrics server: %d connections waiting; closed %d that waited "
                             "longest on their client and refused %d connection(s), the "
                             "last from %s", self._capacity, self._turned_away["closed"],
                             self._turned_away["refused"], self._last_client[0])
            self._turned_away = {"refused": 0, "closed": 0}
            self._turned_away_logged = now

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(SOCKET_TIMEOUT)
        _limit_unsent(request)
        fd = request.fileno()
        self.arm(fd, blocked=self.tls is not None)  # a TLS handshake waits on the client
        try:
            if self.tls is None:
                super().finish_request(request, client_address)
                return
            # wrap_socket detaches ``request``: the TLS socket is the only handle left, so it
            # is closed here (the caller's shutdown_request sees a detached socket)
            tls = self.tls.wrap_socket(request, server_side=True)
            try:
                super().finish_request(tls, client_address)
            finally:
                self.forget(fd)
                self.shutdown_request(tls)
        finally:
            self.forget(fd)  # before the socket is closed: its number may be reused

    def take_head(self, fd: int) -> bytes:
        """What the accept loop read of the connection's first request."""
        return self._heads.pop(fd, b"")

    # -- connections waiting on their client -------------------------------------------------------
    def arm(self, fd: int, blocked: bool = False) -> None:
        """The connection waits for a request's headers (TLS handshake included), by a
        deadline. Its entry stays until the connection ends (``forget``)."""
        now = time.monotonic()
        with self._waits_lock:
            self._waits[fd] = _Wait(now, now + HEADER_TIMEOUT, blocked, False)

    def headers_in(self, fd: int) -> None:
        """The request's headers are in: the deadline is met. If the client has not taken
        the answers sent before (it pipelines requests it does not read), it lags."""
        wait = self._waits.get(fd)
        if wait is not None:
            wait.deadline = None
            wait.lagging = _unsent(fd) > 0

    def blocked(self, fd: int, blocked: bool) -> None:
        """The connection's thread enters (True) or leaves (False) a read of its socket:
        only a thread blocked on its client is worth closing for a newcomer, not one about
        to parse a request that has arrived or waiting for the interpreter."""
        wait = self._waits.get(fd)
        if wait is not None:
            wait.blocked = blocked

    def forget(self, fd: int) -> None:
        with self._waits_lock:
            self._waits.pop(fd, None)
            self._cutting.discard(fd)

    def service_actions(self) -> None:
        """Called by serve_forever every poll interval: end connections past their header
        deadline."""
        now = time.monotonic()
        with self._waits_lock:
            late = [fd for fd, wait in self._waits.items()
                    if wait.deadline is not None and wait.deadline < now]
            for fd in late:
                self._cut(fd)

    def _close_longest_waiting(self) -> bool:
        """Close a connection whose client holds it without use: first one whose client
        sent a request before taking the answers to its earlier ones (pipelining scrapes it
        does not read), else the one that has waited longest on its client of those whose
        thread is blocked on it, passing over those waiting for headers that have already
        arrived (a scraper's request, about to be read). False if there is none."""
        with self._waits_lock:
            candidates = []
            for fd, wait in self._waits.items():
                if wait.lagging:
                    candidates.append((0, wait.since, fd))
                elif wait.blocked and not (wait.deadline is not None and _unread(fd)):
                    candidates.append((1, wait.since, fd))
            if not candidates:
                return False
            self._cut(min(candidates)[2])
            return True

    def _cut(self, fd: int) -> None:
        """End a waiting connection (the caller holds the lock). shutdown() wakes the thread
        blocked on it (it reads EOF, or its write fails); the socket stays open until that
        thread closes it, and the lock keeps it from being closed (and its number reused)
        while we act on it. A connection whose client does not take its answers is reset
        when closed (as nginx's reset_timedout_connection): its unsent bytes are dropped at
        once rather than kept by the kernel, and the client learns it was closed."""
        wait = self._waits.pop(fd)
        self._cutting.add(fd)
        try:
            with socket.socket(fileno=os.dup(fd)) as conn:
                if wait.lagging:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
                conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, (ssl.SSLError, ConnectionError, socket.timeout)):
            self.log.debug("metrics server: connection from %s failed: %s",
                           client_address[0], exc)
        else:
            self.log.exception("metrics server: error serving %s", client_address[0])


@dataclass
class _Wait:
    since: float  # monotonic time the request began (the connection, for its first)
    deadline: Optional[float]  # for the request's headers; None once they are in
    blocked: bool  # the connection's thread is in a read of its socket (or TLS handshake)
    lagging: bool  # the request came before the client took the answers sent before it


class _WatchedReads(socket.SocketIO):
    """A connection's raw reads, reported to the server as blocking on the client; first
    what the accept loop already read (``head``)."""

    def __init__(self, sock: socket.socket, server: "MetricsServer", head: bytes) -> None:
        super().__init__(sock, "rb")
        self._fd = sock.fileno()
        self._server = server
        self._head = memoryview(head)

    def readinto(self, b: Any) -> Optional[int]:
        if self._head:
            n = min(len(b), len(self._head))
            b[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        self._server.blocked(self._fd, True)
        try:
            return super().readinto(b)
        finally:
            self._server.blocked(self._fd, False)


class _DeadlineWriter(io.BufferedIOBase):
    """A connection's writes (unbuffered, like http.server's own), each bounded by
    SEND_TIMEOUT. A thread writing is never closed for a newcomer (its answer would be
    lost) unless its client lags (see MetricsServer.headers_in)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self._sock.settimeout(SEND_TIMEOUT)
        try:
            self._sock.sendall(b)
        finally:
            self._sock.settimeout(SOCKET_TIMEOUT)
        with memoryview(b) as view:
            return view.nbytes


def _limit_unsent(sock: socket.socket) -> None:
    """Writes block once NOT_SENT_LIMIT bytes wait for the client's window (bytes in flight
    do not count, so a client that reads gets the same throughput): a client that does not
    read its answers blocks its thread at once, which makes it the one to close, instead of
    having the kernel take dozens of pipelined answers, each rendered at a CPU cost."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, NOT_SENT_LIMIT)
    except OSError:  # not TCP, or a kernel without it: the kernel's own buffer limits
        pass


def waiting_capacity() -> int:
    """MAX_WAITING, or half the file descriptors this process may open if that is less
    (accepting must never fail for want of one)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return MAX_WAITING if soft == resource.RLIM_INFINITY else min(MAX_WAITING, soft // 2)


def _drain(sock: socket.socket) -> None:
    """Empty a non-blocking socket of what has been sent to it."""
    try:
        while sock.recv(4096):
            pass
    except OSError:
        pass


def _unread(fd: int) -> int:
    """Bytes received on a socket and not yet read."""
    return _queued(fd, termios.FIONREAD)


def _unsent(fd: int) -> int:
    """Bytes written to a socket that its peer has not yet taken."""
    return _queued(fd, termios.TIOCOUTQ)


def _queued(fd: int, request: int) -> int:
    try:
        return struct.unpack("i", fcntl.ioctl(fd, request, b"\0\0\0\0"))[0]
    except OSError:
        return 0


class MetricsHandler(BaseHTTPRequestHandler):
    server: MetricsServer
    server_version = f"gunicorn-prometheus-exporter/{__version__}"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    # a request line that is not HTTP/1.x still gets a status line, not an HTTP/0.9 page
    default_request_version = "HTTP/1.0"
    error_content_type = "text/plain; charset=utf-8"
    error_message_format = "%(code)d %(message)s\n"

    def version_string(self) -> str:
        return self.server_version

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # replaced by buffered reads the server can watch
        head = self.server.take_head(self.connection.fileno())
        self.rfile = io.BufferedReader(_WatchedReads(self.connection, self.server, head))
        self.wfile = _DeadlineWriter(self.connection)

    def handle_one_request(self) -> None:
        self.server.arm(self.connection.fileno())  # waiting for (the rest of) a request
        super().handle_one_request()

    def parse_request(self) -> bool:
        ok = super().parse_request()  # reads the headers
        self.server.headers_in(self.connection.fileno())
        return ok

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if not self.server.auth.check(self.headers.get("Authorization")):
            self._send(401, b"Unauthorized\n", "text/plain; charset=utf-8",
                       {"WWW-Authenticate": 'Basic realm="metrics"'})
            return
        path = request_path(self.path)
        if path == "/metrics":
            self._metrics()
        elif path == "/":
            self._send(200, self.server.exposition.landing(), "text/html; charset=utf-8")
        elif path == "/-/healthy":
            self._send(200, b"OK\n", "text/plain; charset=utf-8")
        elif path == "/-/ready":
            if self.server.exposition.ready():
                self._send(200, b"OK\n", "text/plain; charset=utf-8")
            else:
                self._send(503, f"reading {self.server.exposition.source} does not finish\n"
                           .encode(), "text/plain; charset=utf-8")
        else:
            self._send(404, b"Not Found\n", "text/plain; charset=utf-8")

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET()

    def _metrics(self) -> None:
        try:
            body, content_type = self.server.exposition.metrics(self.headers.get("Accept"))
        except Exception:  # a scraper gets a status it can report, not a closed connection
            self.server.log.exception("metrics server: collecting metrics failed")
            self._send(500, b"collecting metrics failed\n", "text/plain; charset=utf-8")
            return
        extra = {}
        if "gzip" in (self.headers.get("Accept-Encoding") or ""):
            body = gzip.compress(body, compresslevel=6)
            extra["Content-Encoding"] = "gzip"
        self._send(200, body, content_type, extra)

    def _send(self, status: int, body: bytes, content_type: str,
              extra: Optional[dict] = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in {**self.server.headers, **(extra or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        self.server.log.debug("metrics server: %s %s", self.client_address[0],
                              _printable(format % args))

    def log_error(self, format: str, *args: Any) -> None:  # noqa: A002
        self.server.log.info("metrics server: %s %s", self.client_address[0],
                             _printable(format % args))


def request_path(target: str) -> str:
    """The path of a request target, query dropped: origin-form (``/metrics``) or the
    absolute-form a server must accept too (RFC 9112 3.2.2: ``http://host:port/metrics``;
    its host, like the Host header, does not matter to us)."""
    if target.startswith("/"):
        return target.split("?", 1)[0]
    scheme, sep, rest = target.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        return target
    slash = rest.find("/")
    return rest[slash:].split("?", 1)[0] if slash >= 0 else "/"


_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7f)}


def _printable(text: str) -> str:
    """A client's bytes as one log line: control characters escaped."""
    return text.translate(_CONTROL)

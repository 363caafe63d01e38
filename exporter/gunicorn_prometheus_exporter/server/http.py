"""The HTTP side of the metrics server: ``/metrics`` (Prometheus protobuf, OpenMetrics or
text by ``Accept``, gzip by ``Accept-Encoding``), a landing page at ``/``, ``/-/healthy``
and ``/-/ready``, with
optional TLS and basic auth.

It is hardened for being exposed: a bounded number of connections (and so of threads) at
once; when all are taken, a new connection closes the one that has waited longest on its
client (idle, trickling its headers or not reading its answer), as mature servers do, so
hostile clients cannot keep a scraper out; a socket timeout and a header deadline; TLS
handshakes in the connection's thread rather than the accept loop; and every failure of one
connection logged and contained."""
from __future__ import annotations

import fcntl
import gzip
import io
import os
import socket
import ssl
import struct
import termios
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from dataclasses import dataclass
from importlib import resources
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from ..version import __version__
from . import protobuf
from .webconfig import BasicAuth, WebConfig

#: Connections served at once (one thread each). A connection beyond it closes the one that
#: has waited longest on its client, or is refused when every connection is being answered.
MAX_CONNECTIONS = 32
#: How long the accept loop waits for a slot for a new connection (for a connection it
#: closed to end, or for one that can be closed) before refusing it.
EVICT_WAIT = 1.0
#: A connection whose client leaves this many bytes of answers unread (it pipelines
#: scrapes and does not read them) is the first closed when a newcomer needs its slot.
UNREAD_ANSWERS = 256 * 1024
SOCKET_TIMEOUT = 30.0
#: From accepting a connection (or finishing a request on it) to the end of the next request's
#: headers, TLS handshake included: a client that trickles bytes or idles holds a slot no
#: longer than this, whatever SOCKET_TIMEOUT allows for each single read.
HEADER_TIMEOUT = 15.0
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
        self._open = 0  # connections accepted and not yet closed (each holds a thread)
        self._slots = threading.Condition()  # notified whenever a connection closes
        #: file descriptor -> the current request of each connection: since when, its
        #: header deadline (until the headers are in), whether its thread waits on the client
        self._waits: Dict[int, _Wait] = {}
        self._waits_lock = threading.Lock()
        self._turned_away = {"refused": 0, "closed": 0}
        self._turned_away_logged = -REFUSED_LOG_INTERVAL
        super().__init__(sock.getsockname()[:2], MetricsHandler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.address_family = sock.family
        self.server_address = sock.getsockname()[:2]
        self.server_name, self.server_port = self.server_address

    def stop(self, grace: float) -> None:
        """Stop accepting, then let the connections already accepted finish (at most
        ``grace`` seconds): a scrape in progress when the process is told to stop (a USR2
        upgrade's old master leaving, a pod being replaced) still gets its answer. An idle
        keep-alive connection may hold the stop for the whole grace."""
        self.shutdown()
        with self._slots:
            self._slots.wait_for(lambda: self._open == 0, timeout=grace)

    def _closed(self) -> None:
        with self._slots:
            self._open -= 1
            self._slots.notify_all()

    # -- connection slots ------------------------------------------------------------------------
    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._take_slot(client_address):
            self.shutdown_request(request)
            self._turn_away("refused", client_address)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._closed()
            raise

    def _take_slot(self, client_address: Any) -> bool:
        """A slot for a new connection: a free one, or the one of a connection closed for
        it (see _close_longest_waiting). False when none frees within EVICT_WAIT (every
        connection is being answered)."""
        deadline = time.monotonic() + EVICT_WAIT
        closed = False
        with self._slots:
            while self._open >= MAX_CONNECTIONS:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                if not closed:
                    closed = self._close_longest_waiting()
                self._slots.wait(min(remaining, 0.05))
            self._open += 1
        if closed:
            self._turn_away("closed", client_address)
        return True

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._closed()

    def _turn_away(self, how: str, client_address: Any) -> None:
        self._turned_away[how] += 1
        now = time.monotonic()
        if now - self._turned_away_logged >= REFUSED_LOG_INTERVAL:
            self.log.warning("metrics server: %d connections open; closed %d that waited "
                             "longest on their client and refused %d connection(s), the "
                             "last from %s", MAX_CONNECTIONS, self._turned_away["closed"],
                             self._turned_away["refused"], client_address[0])
            self._turned_away = {"refused": 0, "closed": 0}
            self._turned_away_logged = now

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(SOCKET_TIMEOUT)
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

    # -- connections waiting on their client -------------------------------------------------------
    def arm(self, fd: int, blocked: bool = False) -> None:
        """The connection waits for a request's headers (TLS handshake included), by a
        deadline. Its entry stays until the connection ends (``forget``)."""
        now = time.monotonic()
        with self._waits_lock:
            self._waits[fd] = _Wait(now, now + HEADER_TIMEOUT, blocked)

    def headers_in(self, fd: int) -> None:
        """The request's headers are in: the deadline is met."""
        wait = self._waits.get(fd)
        if wait is not None:
            wait.deadline = None

    def blocked(self, fd: int, blocked: bool) -> None:
        """The connection's thread enters (True) or leaves (False) a read or write of its
        socket: only a thread blocked on its client is worth closing for a newcomer, not
        one about to parse a request that has arrived or waiting for the interpreter."""
        wait = self._waits.get(fd)
        if wait is not None:
            wait.blocked = blocked

    def forget(self, fd: int) -> None:
        with self._waits_lock:
            self._waits.pop(fd, None)

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
        """Close a connection whose client holds it without use: first one that leaves
        UNREAD_ANSWERS of answers unread (pipelining scrapes it does not read), else the one
        that has waited longest on its client of those whose thread is blocked on it,
        passing over those waiting for headers that have already arrived (a scraper's
        request, about to be read). False if there is none."""
        with self._waits_lock:
            candidates = []
            for fd, wait in self._waits.items():
                if _unsent(fd) >= UNREAD_ANSWERS:
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
        while we act on it."""
        del self._waits[fd]
        try:
            with socket.socket(fileno=os.dup(fd)) as conn:
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
    blocked: bool  # the connection's thread is in a read or write of its socket


class _WatchedReads(socket.SocketIO):
    """A connection's raw reads, reported to the server as blocking on the client."""

    def __init__(self, sock: socket.socket, server: "MetricsServer") -> None:
        super().__init__(sock, "rb")
        self._fd = sock.fileno()
        self._server = server

    def readinto(self, b: Any) -> Optional[int]:
        self._server.blocked(self._fd, True)
        try:
            return super().readinto(b)
        finally:
            self._server.blocked(self._fd, False)


class _WatchedWriter(io.BufferedIOBase):
    """A connection's writes (unbuffered, like http.server's own), reported likewise."""

    def __init__(self, sock: socket.socket, server: "MetricsServer") -> None:
        self._sock = sock
        self._fd = sock.fileno()
        self._server = server

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self._server.blocked(self._fd, True)
        try:
            self._sock.sendall(b)
        finally:
            self._server.blocked(self._fd, False)
        with memoryview(b) as view:
            return view.nbytes


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
        self.rfile = io.BufferedReader(_WatchedReads(self.connection, self.server))
        self.wfile = _WatchedWriter(self.connection, self.server)

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

"""The HTTP side of the metrics server: ``/metrics`` (Prometheus protobuf, OpenMetrics or
text by ``Accept``, gzip by ``Accept-Encoding``), a landing page at ``/``, ``/-/healthy`` and ``/-/ready``, with
optional TLS and basic auth.

It is hardened for being exposed: a bounded number of connections at once, a socket
timeout (a slow or silent client costs one thread for at most that long), TLS handshakes in
the connection's thread rather than the accept loop, and every failure of one connection
logged and contained."""
from __future__ import annotations

import gzip
import os
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Callable, Iterable, Optional, Tuple

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from ..version import __version__
from . import protobuf
from .webconfig import BasicAuth, WebConfig

MAX_CONNECTIONS = 32
SOCKET_TIMEOUT = 30.0
#: From accepting a connection (or finishing a request on it) to the end of the next request's
#: headers, TLS handshake included: a client that trickles bytes or idles holds a slot no
#: longer than this, whatever SOCKET_TIMEOUT allows for each single read.
HEADER_TIMEOUT = 15.0
#: Refused connections are logged at most once per this many seconds (a flood is one line).
REFUSED_LOG_INTERVAL = 10.0


class Exposition:
    """Renders the families of a collect function in the format a scraper asks for."""

    def __init__(self, collect: Callable[[], Iterable[Any]], source: str) -> None:
        self.source = source
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Adapter(collect))
        self._landing = resources.files(__package__).joinpath("landing.html").read_text()

    def metrics(self, accept: Optional[str]) -> Tuple[bytes, str]:
        """As Prometheus negotiates: the protobuf format whenever it is offered (the only
        one that carries native histograms), else OpenMetrics when offered, else text."""
        if protobuf.accepts(accept or ""):
            return protobuf.encode(self.registry.collect()), protobuf.CONTENT_TYPE
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    def landing(self) -> bytes:
        return self._landing.format(version=__version__, source=self.source).encode()


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
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._open = 0  # connections accepted and not yet closed
        self._idle = threading.Condition()
        self._deadlines: dict = {}  # file descriptor -> monotonic deadline of its headers
        self._deadlines_lock = threading.Lock()
        self._refused = 0
        self._refused_logged = -REFUSED_LOG_INTERVAL
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
        with self._idle:
            self._idle.wait_for(lambda: self._open == 0, timeout=grace)

    def _opened(self, delta: int) -> None:
        with self._idle:
            self._open += delta
            if not self._open:
                self._idle.notify_all()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            self._refused += 1
            now = time.monotonic()
            if now - self._refused_logged >= REFUSED_LOG_INTERVAL:
                self.log.warning("metrics server: %d connections open, refused %d "
                                 "connection(s), the last from %s", MAX_CONNECTIONS,
                                 self._refused, client_address[0])
                self._refused, self._refused_logged = 0, now
            return
        self._opened(+1)
        try:
            super().process_request(request, client_address)
        except Exception:
            self._slots.release()
            self._opened(-1)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()
            self._opened(-1)

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(SOCKET_TIMEOUT)
        fd = request.fileno()
        self.arm(fd)
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
                self.disarm(fd)
                self.shutdown_request(tls)
        finally:
            self.disarm(fd)  # before the socket is closed: its number may be reused

    # -- the header deadline ---------------------------------------------------------------------
    def arm(self, fd: int) -> None:
        with self._deadlines_lock:
            self._deadlines[fd] = time.monotonic() + HEADER_TIMEOUT

    def disarm(self, fd: int) -> None:
        with self._deadlines_lock:
            self._deadlines.pop(fd, None)

    def service_actions(self) -> None:
        """Called by serve_forever every poll interval: end connections past their header
        deadline. shutdown() wakes the thread blocked reading them (it sees EOF); the socket
        stays open until that thread closes it, and the lock keeps it from being closed (and
        its number reused) while we act on it."""
        now = time.monotonic()
        with self._deadlines_lock:
            late = [fd for fd, deadline in self._deadlines.items() if deadline < now]
            for fd in late:
                del self._deadlines[fd]
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

    def handle_one_request(self) -> None:
        self.server.arm(self.connection.fileno())  # waiting for (the rest of) a request
        super().handle_one_request()

    def parse_request(self) -> bool:
        ok = super().parse_request()  # reads the headers
        self.server.disarm(self.connection.fileno())  # they are in: the deadline is met
        return ok

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if not self.server.auth.check(self.headers.get("Authorization")):
            self._send(401, b"Unauthorized\n", "text/plain; charset=utf-8",
                       {"WWW-Authenticate": 'Basic realm="metrics"'})
            return
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._metrics()
        elif path == "/":
            self._send(200, self.server.exposition.landing(), "text/html; charset=utf-8")
        elif path in ("/-/healthy", "/-/ready"):
            self._send(200, b"OK\n", "text/plain; charset=utf-8")
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


_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7f)}


def _printable(text: str) -> str:
    """A client's bytes as one log line: control characters escaped."""
    return text.translate(_CONTROL)

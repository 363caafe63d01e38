"""The request metrics of an ASGI application, recorded around it by the ASGI workers.

Per HTTP request: the status from ``http.response.start``, the response size from the
``http.response.body`` messages (or the file of ``http.response.pathsend``), the request
size from the ``http.request`` messages the application received, the duration from the
call to the last body message, and an exception that escaped the application as one failed
request with its class name (the duration ends when the application hands over its last
body message). The route is the template a framework left in the scope
(Starlette and FastAPI: the matched route; anything else: ``ROUTE_ENVIRON_KEY``), else the
path normalised like the WSGI workers do. Lifespan scopes pass through; WebSocket scopes are
measured as connections (``websocket_metrics``), never as requests.

A request carrying a proxy's queue stamp or a trace context (``RequestExtras.wanted``), or
not over HTTP/1.1, is recorded here in Python by the compiled wrapper too; so is every
request when the OpenTelemetry span is read (at ``http.response.start``, inside the
application's span)."""
from __future__ import annotations

import asyncio
import os
from time import perf_counter
from typing import Any, Awaitable, Callable, Optional

from types import ModuleType

from .. import protocols, tracing
from ..frameworks import ERROR_ENVIRON_KEY, ROUTE_ENVIRON_KEY, starlette
from ..frameworks.starlette import route_template
from ..websocket_metrics import WebSocketMetrics, other_scope
from .extras import RequestExtras
from .labelling import KEY_BY_PATH, KEY_BY_TEMPLATE, RequestLabeller

#: what a client that went away raises in the application: counted as a 499
GONE = (asyncio.CancelledError, ConnectionError)
#: the scope keys of a Starlette router: only a request that has one pays for
#: ``route_template``
_ROUTE, _ROUTER = starlette.ROUTE, starlette.ROUTER
_VERSION, _USUAL_VERSION = protocols.ASGI_USUAL
#: what the compiled wrapper needs to record a request whose series is known exactly as
#: ``ASGIMetrics.record`` would, handed to it rather than re-derived in C: the scope keys
#: that leave a request to ``record`` (our route and error keys, a Starlette mount to
#: resolve), the key of a router that matched nothing, where the matched route and its
#: template are, and the two key layouts of ``RequestLabeller.resolved``
KNOWN_REQUEST = ((ROUTE_ENVIRON_KEY, ERROR_ENVIRON_KEY, starlette.MOUNT_ROOT),
                 starlette.ROUTER, starlette.ROUTE, starlette.TEMPLATE_ATTR,
                 KEY_BY_PATH, KEY_BY_TEMPLATE)


class ASGIMetrics:
    """Wraps the worker's ASGI application; ``labeller`` is the worker's
    ``RequestLabeller`` (its ``recorder`` and ``record()``), ``extras`` its
    ``RequestExtras``. ``instrument()`` gives the compiled equivalent where it is built;
    ``record`` serves both."""

    def __init__(self, app: Callable, labeller: RequestLabeller,
                 extras: RequestExtras) -> None:
        self.app = app
        self._record = labeller.record
        #: a request like an earlier one (no framework route, no error) is looked up and
        #: added here, as the compiled wrapper does: one Python frame fewer
        self._resolved = labeller.resolved
        self._add = labeller.recorder.add
        self._extras = extras
        #: the extras read every request's headers when one is on; else only a request
        #: over another protocol has one (``RequestExtras.asgi``)
        self._extras_on = bool(extras.wanted)
        self.gauges, self.in_flight = labeller.recorder.in_flight_cell()
        self._log = labeller.log
        self._failed_once = False
        self._span = extras.span
        #: serves the scopes that are not HTTP requests (WebSockets measured)
        self.other_scope = other_scope(app, WebSocketMetrics(labeller.recorder,
                                                             extras.websocket_buckets))

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.other_scope(scope, receive, send)
            return
        started = perf_counter()
        status: Any = 0
        sent = 0
        received = 0
        ended = 0.0

        async def counting_receive() -> dict:
            nonlocal received
            message = await receive()
            body = message.get("body")
            if body:
                received += len(body)
            return message

        def counting_send(message: dict) -> Awaitable[None]:
            # a plain function returning the server's awaitable: no coroutine of our own
            # per message
            nonlocal status, sent, ended
            kind = message["type"]
            if kind == "http.response.body":
                body = message.get("body")
                if body:
                    sent += len(body)
                if not message.get("more_body"):
                    ended = perf_counter()
            elif kind == "http.response.start":
                status = message["status"]
                if self._span is not None:
                    trace = self._span()
                    if trace is not None:
                        scope[tracing.SPAN_KEY] = trace
            elif kind == "http.response.pathsend":
                sent += _file_size(message.get("path"))
                ended = perf_counter()
            return send(message)

        gauges, in_flight = self.gauges, self.in_flight
        gauges[in_flight] += 1.0  # an event loop is one thread: the gauge is added to directly
        error_type = None
        try:
            await self.app(scope, counting_receive, counting_send)
        except BaseException as exc:
            if isinstance(exc, GONE):
                status = status or 499  # the client went away
            else:
                status = status or 500  # the server answers 500 when nothing started
                error_type = type(exc).__name__
            raise
        finally:
            gauges[in_flight] -= 1.0
            ended = ended or perf_counter()
            self.record(scope, status, ended - started, received, sent, error_type, ended)

    def record(self, scope: dict, status: Any, duration: float, received: int, sent: int,
               error_type: Optional[str], ended: float) -> None:
        """One finished request, labelled from its scope, that ended at ``ended``
        (``perf_counter``); never raises (a failure to record is logged once, and the
        request goes on)."""
        try:
            template = scope.get(ROUTE_ENVIRON_KEY)
            if not template and (_ROUTE in scope or _ROUTER in scope):  # Starlette routed it
                template = route_template(scope)
            error_type = scope.get(ERROR_ENVIRON_KEY) or error_type
            method, path = scope["method"], scope["path"]
            # its key as ``RequestLabeller.record`` builds it (KEY_BY_PATH)
            series = None if template or error_type else self._resolved.get(
                (method, path, status))
            if series is None:
                series = self._record(method, path, status, duration, received, sent,
                                      template, error_type)
            else:
                self._add(series, duration, received, sent)
            version = scope.get(_VERSION)
            if self._extras_on or version != _USUAL_VERSION and version is not None:
                self._extras.asgi(scope, series, duration, ended)
        except Exception:
            if not self._failed_once:
                self._failed_once = True
                self._log.exception("prometheus: could not record a request")


def instrument(app: Callable, labeller: RequestLabeller, extras: RequestExtras,
               native: Optional[ModuleType] = None) -> Callable:
    """``app`` with its requests recorded: the compiled wrapper (``_speedups.MeteredApp``)
    where ``native`` (``speedups.load()``) is given, else an ``ASGIMetrics``' bound
    ``__call__``. Both are ASGI 3 only. Reading the OpenTelemetry span needs the send
    messages in Python: ``ASGIMetrics``."""
    metrics = ASGIMetrics(app, labeller, extras)
    if native is None or extras.span is not None:
        # the bound method: a server calling it skips the instance call's slot lookup and
        # argument tuple (about 850 instructions a request)
        return metrics.__call__
    return native.MeteredApp(app, metrics.record, labeller.resolved, labeller.recorder.add,
                             GONE, metrics.gauges, metrics.in_flight, KNOWN_REQUEST,
                             extras.wanted, protocols.ASGI_USUAL, metrics.other_scope)


def _file_size(path: Optional[str]) -> int:
    try:
        return os.path.getsize(path) if path else 0
    except OSError:
        return 0

"""WebSocket connections of the ASGI workers: open now, and how long they lasted once
closed. A WebSocket is a connection that may live for hours, so it is kept out of the
request families (it would be an hours-long "request") and measured here instead; its
upgrade is counted in ``gunicorn_http_protocol_requests_total{protocol="websocket"}``.

An event loop is one thread: the stores need no lock."""
from __future__ import annotations

from bisect import bisect_left
from time import perf_counter
from typing import Any, Awaitable, Callable, Sequence

from . import families, protocols
from .recorder import histogram_positions
from .writer import Writer, scalar_position


class WebSocketMetrics:
    def __init__(self, writer: Writer, bounds: Sequence[float]) -> None:
        self._writer = writer
        self._bounds = list(bounds)
        gauges = writer.store.file("gauge", families.WEBSOCKET_OPEN.mode)
        self._open = scalar_position(gauges, families.WEBSOCKET_OPEN, {})
        self._gauges = gauges.values
        self._gauges[self._open] = 0.0
        histograms = writer.store.file("histogram")
        self._buckets, self._sum = histogram_positions(
            histograms, families.WEBSOCKET_DURATION, {}, self._bounds)
        self._histograms = histograms.values
        writer.prepare(families.HTTP_PROTOCOL, (protocols.WEBSOCKET,))

    async def serve(self, app: Callable, scope: dict, receive: Callable,
                    send: Callable) -> None:
        """Run the application on one WebSocket scope, measuring the connection from the
        application's ``websocket.accept`` to its return."""
        self._writer.count(families.HTTP_PROTOCOL, (protocols.WEBSOCKET,))
        opened = 0.0

        def watching_send(message: dict) -> Awaitable[None]:
            nonlocal opened
            if not opened and message.get("type") == "websocket.accept":
                opened = perf_counter()
                self._gauges[self._open] += 1.0
            return send(message)

        try:
            await app(scope, receive, watching_send)
        finally:
            if opened:
                self._closed(perf_counter() - opened)

    def _closed(self, lasted: float) -> None:
        self._gauges[self._open] -= 1.0
        h = self._histograms
        h[self._buckets[bisect_left(self._bounds, lasted)]] += 1.0
        h[self._sum] += lasted


def other_scope(app: Callable, websockets: Any) -> Callable:
    """What serves the scopes that are not HTTP requests: WebSockets measured by
    ``websockets`` (a ``WebSocketMetrics``), the rest (lifespan) by ``app`` itself."""
    def serve(scope: dict, receive: Callable, send: Callable) -> Awaitable[None]:
        if scope.get("type") == "websocket":
            return websockets.serve(app, scope, receive, send)
        return app(scope, receive, send)

    return serve

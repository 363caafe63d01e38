"""Tiny WSGI and ASGI applications for the queue-time and exemplar tests.

``app`` / ``asgi_app``: 200 with the worker's pid (``asgi_app`` also echoes WebSockets); ``/sleep?ms=N`` waits N ms first (a chosen
duration bucket). ``held_asgi_app``: a request recorded after a later one. ``otel_app`` / ``otel_asgi_app``: the same inside an OpenTelemetry span
of the SDK (always sampled), answering with that span's trace id."""
import asyncio
import os
import time
from urllib.parse import parse_qs


def _ms(query: str) -> float:
    return float(parse_qs(query).get("ms", ["0"])[0]) / 1000.0


def app(environ, start_response):
    time.sleep(_ms(environ.get("QUERY_STRING", "")))
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]


async def asgi_app(scope, receive, send):
    if scope["type"] == "websocket":
        await _echo(scope, receive, send)
        return
    if scope["type"] != "http":
        return
    await asyncio.sleep(_ms(scope.get("query_string", b"").decode()))
    body = str(os.getpid()).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


#: set by ``/?release=1`` of ``held_asgi_app`` (made in the worker's event loop)
_RELEASED = None


async def held_asgi_app(scope, receive, send):
    """``/?hold=1`` answers, then returns only once ``/?release=1`` has answered and
    returned (or after 10 s), as an application running a background task after its
    response does: it is recorded after the request that released it."""
    global _RELEASED
    if scope["type"] != "http":
        return
    if _RELEASED is None:
        _RELEASED = asyncio.Event()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})
    query = scope.get("query_string", b"")
    if query == b"hold=1":
        try:
            await asyncio.wait_for(_RELEASED.wait(), 10)
        except asyncio.TimeoutError:
            pass
    elif query == b"release=1":
        _RELEASED.set()  # no await after: this request is recorded before the held one


async def _echo(scope, receive, send):
    """``/echo``: accepts and echoes text until the client closes; ``/refuse``: closes
    before accepting (the server answers the upgrade with 403)."""
    await receive()  # websocket.connect
    if scope["path"] == "/refuse":
        await send({"type": "websocket.close", "code": 1008})
        return
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] != "websocket.receive":
            return
        await send({"type": "websocket.send", "text": message.get("text")})


def _tracer():
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    trace.set_tracer_provider(TracerProvider())
    return trace.get_tracer("tests.apps.traced")


def _trace_id(span) -> bytes:
    return f"{span.get_span_context().trace_id:032x}".encode()


def otel_app(environ, start_response):
    with TRACER.start_as_current_span("request") as span:
        body = _trace_id(span)
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(body)))])
        return [body]


async def otel_asgi_app(scope, receive, send):
    if scope["type"] != "http":
        return
    with TRACER.start_as_current_span("request") as span:
        body = _trace_id(span)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


try:
    TRACER = _tracer()
except ImportError:  # the OpenTelemetry tests skip where the SDK is not installed
    TRACER = None

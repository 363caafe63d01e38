"""One WSGI app (``app``) and one ASGI app (``asgi``) with the same three routes: ``/``
answers 200, ``/error`` raises before answering, ``/late`` raises after its first body
chunk (the status line is sent): the requests whose application raised are known."""
from __future__ import annotations


class AppError(RuntimeError):
    """Raised by ``/error`` and ``/late``."""


def app(environ, start_response):
    path = environ.get("PATH_INFO")
    if path == "/error":
        raise AppError("before the response")
    if path == "/late":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _late()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
    return [b"ok\n"]


def _late():
    yield b"first\n"
    raise AppError("after the status line")


async def asgi(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    if path == "/error":
        raise AppError("before the response")
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    if path == "/late":
        await send({"type": "http.response.body", "body": b"first\n", "more_body": True})
        raise AppError("after the status line")
    await send({"type": "http.response.body", "body": b"ok\n"})

"""Pyramid example: the same routes as ``app.py``.

Run: ``gunicorn -c gunicorn_thread_worker.conf.py pyramid_app:app`` from this directory."""
import os

from pyramid.config import Configurator
from pyramid.response import FileResponse, Response

SAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static", "sample.txt")


class HandledError(RuntimeError):
    """Raised by /boom; the exception view below renders the 500."""


class RawError(RuntimeError):
    """Raised by /raw's body; gunicorn answers the 500."""


def index(request):
    return Response("hello\n", content_type="text/plain")


def user(request):
    return Response(f"user {request.matchdict['user_id']}\n", content_type="text/plain")


def boom(request):
    raise HandledError("handled by an exception view")


def handled(exc, request):
    return Response("internal error\n", status=500, content_type="text/plain")


def raw(request):
    def body():
        raise RawError("raised while gunicorn reads the body")
        yield b""  # pragma: no cover

    return Response(app_iter=body(), content_type="text/plain")


def upload(request):
    return Response(f"{len(request.body)}\n", content_type="text/plain")


def stream(request):
    n = min(int(request.params.get("n", "10")), 10_000)
    return Response(app_iter=(b"x" * 100 for _ in range(n)),
                    content_type="application/octet-stream")


def file(request):
    return FileResponse(SAMPLE, request=request, content_type="text/plain")


def make_app():
    with Configurator() as config:
        config.include("gunicorn_prometheus_exporter.frameworks.pyramid")  # the one line
        for name, pattern, view, method in [
            ("index", "/", index, "GET"), ("user", "/users/{user_id:\\d+}", user, "GET"),
            ("boom", "/boom", boom, "GET"), ("raw", "/raw", raw, "GET"),
            ("upload", "/upload", upload, "POST"), ("stream", "/stream", stream, "GET"),
            ("file", "/file", file, "GET"),
        ]:
            config.add_route(name, pattern, request_method=method)
            config.add_view(view, route_name=name)
        config.add_exception_view(handled, context=HandledError)
        return config.make_wsgi_app()


app = make_app()

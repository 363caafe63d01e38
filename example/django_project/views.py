"""The same routes as ``app.py``, as Django views."""
import os

from django.http import FileResponse, HttpResponse, StreamingHttpResponse

SAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "static",
                      "sample.txt")


class HandledError(RuntimeError):
    """Raised by /boom; Django renders the 500."""


class RawError(RuntimeError):
    """Raised by /raw's body; gunicorn answers the 500."""


def index(request):
    return HttpResponse("hello\n", content_type="text/plain")


def user(request, user_id):
    return HttpResponse(f"user {user_id}\n", content_type="text/plain")


def boom(request):
    raise HandledError("handled by Django")


def raw(request):
    def body():
        raise RawError("raised while gunicorn reads the body")
        yield b""  # pragma: no cover

    return StreamingHttpResponse(body(), content_type="text/plain")


def upload(request):
    # Django reads a chunked body (no Content-Length) only from the WSGI input itself
    if request.META.get("CONTENT_LENGTH"):
        data = request.body
    else:
        data = request.META["wsgi.input"].read()
    return HttpResponse(f"{len(data)}\n", content_type="text/plain")


def stream(request):
    n = min(int(request.GET.get("n", "10")), 10_000)
    return StreamingHttpResponse((b"x" * 100 for _ in range(n)),
                                 content_type="application/octet-stream")


def file(request):
    return FileResponse(open(SAMPLE, "rb"), content_type="text/plain")

"""Demo WSGI application: a handful of routes that exercise every request metric.

``/``, ``/users/<id>``, ``/slow?ms=N``, ``/status/<code>``, ``/error`` (raises),
``/upload`` (POST; reads the whole body, chunked or not) and ``/stream?chunks=N&size=B``."""
from __future__ import annotations

import time
from typing import Callable, Iterable, List, Tuple
from urllib.parse import parse_qs

StartResponse = Callable[[str, List[Tuple[str, str]]], object]


class DemoError(RuntimeError):
    """Raised by ``/error`` so the failure has a recognisable type."""


def _text(start_response: StartResponse, status: str, body: bytes) -> List[bytes]:
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(body)))])
    return [body]


def _int(query: dict, name: str, default: int, high: int) -> int:
    try:
        return max(0, min(high, int(query.get(name, [default])[0])))
    except ValueError:
        return default


def app(environ: dict, start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO") or "/"
    query = parse_qs(environ.get("QUERY_STRING", ""))
    parts = [p for p in path.split("/") if p]
    if path == "/":
        return _text(start_response, "200 OK", b"gunicorn-prometheus-exporter demo\n")
    if len(parts) == 2 and parts[0] == "users" and parts[1].isdigit():
        return _text(start_response, "200 OK", f"user {parts[1]}\n".encode())
    if path == "/slow":
        time.sleep(_int(query, "ms", 200, 600_000) / 1000.0)
        return _text(start_response, "200 OK", b"slow\n")
    if len(parts) == 2 and parts[0] == "status" and parts[1].isdigit():
        code = max(200, min(599, int(parts[1])))
        return _text(start_response, f"{code} STATUS", b"status\n")
    if path == "/error":
        raise DemoError("the demo failed on purpose")
    if path == "/upload":
        data = environ["wsgi.input"].read()
        return _text(start_response, "200 OK", f"{len(data)}\n".encode())
    if path == "/stream":
        chunks = _int(query, "chunks", 10, 10_000)
        size = _int(query, "size", 1024, 1 << 20)
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return (b"x" * size for _ in range(chunks))
    return _text(start_response, "404 Not Found", b"not found\n")

"""Body metering of the WSGI workers: the bytes of a request body whose size no header
declares (chunked), and of a ``wsgi.file_wrapper`` response, which gunicorn's sendfile path
sends without counting them in ``Response.sent``. Both are left in the request's environ
for ``wsgi_hooks`` to read when the request ends."""
from __future__ import annotations

import os
from types import ModuleType
from typing import Any, Callable, Iterable, Optional

from ..tracing import SPAN_KEY, Trace

BODY_METER_KEY = "gunicorn_prometheus_exporter.body_meter"
#: body bytes of a ``wsgi.file_wrapper`` response, which gunicorn's sendfile path sends
#: without counting them in ``Response.sent``
FILE_BYTES_KEY = "gunicorn_prometheus_exporter.file_bytes"


class BodyMeter:
    """Counts the bytes an application reads from a chunked request body (whose size no
    header declares)."""

    __slots__ = ("_body", "bytes")

    def __init__(self, body: Any) -> None:
        self._body = body
        self.bytes = 0

    def read(self, size: Optional[int] = None) -> bytes:
        data = self._body.read() if size is None else self._body.read(size)
        self.bytes += len(data)
        return data

    def readline(self, size: Optional[int] = None) -> bytes:
        data = self._body.readline() if size is None else self._body.readline(size)
        self.bytes += len(data)
        return data

    def readlines(self, hint: Optional[int] = None) -> list:
        lines = self._body.readlines() if hint is None else self._body.readlines(hint)
        self.bytes += sum(len(line) for line in lines)
        return lines

    def __iter__(self) -> Iterable[bytes]:
        for line in self._body:
            self.bytes += len(line)
            yield line


def metered(app: Any, span: Optional[Callable[[], Optional[Trace]]] = None,
            native: Optional[ModuleType] = None) -> Any:
    """``app`` with chunked request bodies counted, and, given ``span`` (the OpenTelemetry
    reader of ``tracing``), the span current when the application starts its response
    left in the environ for the exemplar. Given ``native`` (``speedups.load()``), the
    common request passes the compiled wrapper, which hands the others to the Python one."""
    def app_with_body_meter(environ: dict, start_response: Any) -> Any:
        if "CONTENT_LENGTH" not in environ and "HTTP_TRANSFER_ENCODING" in environ:
            environ["wsgi.input"] = environ[BODY_METER_KEY] = BodyMeter(environ["wsgi.input"])
        result = app(environ, start_response)
        wrapper = environ.get("wsgi.file_wrapper")
        if wrapper is not None and isinstance(result, wrapper):
            environ[FILE_BYTES_KEY] = _file_bytes(result)
        return result

    body = app_with_body_meter if native is None else native.MeteredWSGI(
        app, app_with_body_meter, FILE_BYTES_KEY, _file_bytes)
    if span is None:
        return body

    def app_with_span(environ: dict, start_response: Any) -> Any:
        def start_response_in_span(*args: Any) -> Any:
            trace = span()
            if trace is not None:
                environ[SPAN_KEY] = trace
            return start_response(*args)

        return body(environ, start_response_in_span)

    return app_with_span


def _file_bytes(wrapped: Any) -> Optional[int]:
    """What gunicorn's sendfile would send of a wrapped file: from its position to its end."""
    try:
        fileno = wrapped.filelike.fileno()
        return os.fstat(fileno).st_size - os.lseek(fileno, 0, os.SEEK_CUR)
    except (AttributeError, OSError, ValueError):
        return None

"""What a request records beyond the request families, and only when it carries it: the
proxy's queue stamp (``queue_time``), a trace for the exemplars (``exemplars``), a protocol
other than HTTP/1.1 (``protocols``). A request with none of them pays a few dict lookups
(WSGI) or nothing in Python (ASGI, where the compiled wrapper hands only such requests
to Python)."""
from __future__ import annotations

from time import perf_counter, time
from typing import Any, Callable, Optional

from .. import families, protocols, tracing
from ..exemplars import ExemplarRecorder
from ..queue_time import ENVIRON_KEYS
from ..queue_time import HEADER_NAMES as QUEUE_HEADERS
from ..queue_time import QueueTime
from ..recorder import Recorder, Series


class RequestExtras:
    """The extras of one worker process, from the settings."""

    def __init__(self, settings: Any, recorder: Recorder, directory: str,
                 identity: str) -> None:
        metrics = settings.metrics
        self.recorder = recorder
        #: set when queue time is on: observed for requests a proxy stamped
        self.queue: Optional[QueueTime] = None
        if metrics.queue_time:
            self.queue = QueueTime(recorder, metrics.queue_buckets, metrics.queue_max_seconds)
        #: set when exemplars are on: the trace of a request is kept on its samples
        self.exemplars: Optional[ExemplarRecorder] = None
        if metrics.exemplars:
            self.exemplars = ExemplarRecorder(directory, identity, recorder,
                                              metrics.duration_buckets)
        #: the OpenTelemetry span reader, set by ``application_loaded`` (None: none)
        self.span: Optional[Callable[[], Optional[tracing.Trace]]] = None
        self._opentelemetry = metrics.opentelemetry
        self._trace_key = tracing.environ_key(metrics.trace_header)
        self._trace_name = metrics.trace_header.encode()
        #: the WSGI environ keys of the requests that have extras (besides the protocol)
        self.wsgi_keys: tuple = ((ENVIRON_KEYS if self.queue is not None else ())
                                 + ((self._trace_key, tracing.SPAN_KEY)
                                    if self.exemplars is not None else ()))
        #: the ASGI header names (lower-case bytes) of the requests that have extras
        self.wanted: tuple = ((QUEUE_HEADERS if self.queue is not None else ())
                              + ((self._trace_name,) if self.exemplars is not None else ()))
        #: for the ASGI workers' WebSocket connections (websocket_metrics)
        self.websocket_buckets = metrics.websocket_buckets
        for protocol in protocols.PREPARED:  # every series exists from the start
            recorder.prepare(families.HTTP_PROTOCOL, (protocol,))

    def application_loaded(self) -> None:
        """Called once the worker has loaded the application: whether it uses
        OpenTelemetry is known only now."""
        if self.exemplars is not None:
            self.span = tracing.opentelemetry_span(self._opentelemetry)

    def wsgi(self, environ: dict, series: Series, duration: float, ended: float) -> None:
        """The extras of a finished WSGI request recorded under ``series``, which ended at
        ``ended`` (``perf_counter``)."""
        protocol = environ.get("SERVER_PROTOCOL")
        if protocol != protocols.USUAL and protocol is not None:
            self.count_protocol(protocol)
        if self.queue is not None:
            stamp = environ.get("HTTP_X_REQUEST_START") or environ.get("HTTP_X_QUEUE_START")
            if stamp is not None:
                self.observe_queue(stamp, wall_clock(ended) - duration)
        if self.exemplars is not None:
            header = environ.get(self._trace_key)
            trace = tracing.from_traceparent(header) if header is not None else None
            if trace is not None or tracing.SPAN_KEY in environ:
                self.exemplars.observe(series, duration, trace or environ[tracing.SPAN_KEY],
                                       wall_clock(ended))

    def asgi(self, scope: dict, series: Series, duration: float, ended: float) -> None:
        """The extras of a finished ASGI request, which ended at ``ended``
        (``perf_counter``): its headers are scanned only when some extra is on."""
        key, usual = protocols.ASGI_USUAL
        version = scope.get(key)
        if version != usual and version is not None:
            self.count_protocol(version)
        trace = None
        if self.wanted:
            for name, value in scope.get("headers") or ():
                if name in QUEUE_HEADERS and self.queue is not None:
                    self.observe_queue(value.decode("latin-1"), wall_clock(ended) - duration)
                elif name == self._trace_name and self.exemplars is not None:
                    trace = tracing.from_traceparent(value.decode("latin-1"))
        trace = trace or scope.get(tracing.SPAN_KEY)
        if trace is not None and self.exemplars is not None:
            self.exemplars.observe(series, duration, trace, wall_clock(ended))

    def count_protocol(self, version: str) -> None:
        """A request not over HTTP/1.1 (``version``: SERVER_PROTOCOL or http_version)."""
        self.recorder.count(families.HTTP_PROTOCOL, (protocols.label(version),))

    def observe_queue(self, stamp: str, started: float) -> None:
        """A stamped request that started at Unix time ``started``: no clock is read per
        request unless a proxy stamped it."""
        self.queue.observe(stamp, started)  # type: ignore[union-attr]


def wall_clock(ended: float) -> float:
    """The Unix time of the instant ``perf_counter()`` read ``ended``. A request is recorded
    after it ended, later by its labelling, storing and, for a worker's first traced
    request, creating the exemplar file, and by however long the worker waits for a CPU
    meanwhile: the wall clock read at recording would date the request that much later
    (an exemplar answered before another request was sent could pass for the newer one; a
    queue time would grow by the delay). The wall clock is read before the performance
    counter, so a pause between the two reads can only date the end earlier."""
    return time() - (perf_counter() - ended)

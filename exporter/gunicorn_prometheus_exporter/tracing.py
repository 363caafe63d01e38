"""Where an exemplar's trace comes from: the W3C ``traceparent`` request header (only when
its sampled flag is set), else the OpenTelemetry span that was current while the
application ran, when opentelemetry-api is installed (nothing of it is imported
otherwise)."""
from __future__ import annotations

import importlib.util
import sys
from typing import Any, Callable, Optional, Tuple

#: (trace id, span id) as lower-case hex: 32 and 16 digits, never all zeros
Trace = Tuple[str, str]
#: environ / scope key under which the WSGI and ASGI wrappers leave the span they saw
SPAN_KEY = "gunicorn_prometheus_exporter.trace"

_HEX = frozenset("0123456789abcdef")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


def environ_key(header: str) -> str:
    """The WSGI environ key of a request header (``traceparent`` -> ``HTTP_TRACEPARENT``)."""
    return "HTTP_" + header.upper().replace("-", "_")


def from_traceparent(value: str) -> Optional[Trace]:
    """The trace of a ``traceparent`` value ``00-<trace id>-<parent id>-<flags>`` whose
    sampled flag (bit 0 of flags) is set; None for anything else (unsampled, malformed,
    the invalid all-zero ids). Later versions may add fields after the flags."""
    value = value.strip().lower()
    if len(value) < 55 or value[2] != "-" or value[35] != "-" or value[52] != "-":
        return None
    if value[:2] == "ff" or (len(value) > 55 and value[55] != "-"):
        return None
    trace_id, span_id, flags = value[3:35], value[36:52], value[53:55]
    if not _HEX.issuperset(value[:2] + trace_id + span_id + flags):
        return None
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN or not int(flags, 16) & 1:
        return None
    return trace_id, span_id


def opentelemetry_span(mode: str) -> Optional[Callable[[], Optional[Trace]]]:
    """A function giving the current OpenTelemetry span's trace (None without a sampled
    span), or None when there is none to read. ``mode`` (setting
    ``metrics.opentelemetry``): ``off``; ``on`` whenever opentelemetry-api is installed;
    ``auto`` only when the loaded application has imported it and set a tracer provider
    (opentelemetry-api comes with FastAPI: installed is not the same as used). Nothing is
    imported when it is not used."""
    if mode == "off":
        return None
    if mode == "auto":
        otel = sys.modules.get("opentelemetry.trace")
        if otel is None or type(otel.get_tracer_provider()).__name__ in (
                "ProxyTracerProvider", "NoOpTracerProvider"):
            return None
    elif importlib.util.find_spec("opentelemetry") is None:
        return None
    from opentelemetry import trace as otel

    get_current_span = otel.get_current_span

    def current() -> Optional[Trace]:
        context: Any = get_current_span().get_span_context()
        if not (context.is_valid and context.trace_flags.sampled):
            return None
        return f"{context.trace_id:032x}", f"{context.span_id:016x}"

    return current

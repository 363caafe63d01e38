"""Django: add ``"gunicorn_prometheus_exporter.frameworks.django.PrometheusMiddleware"`` to
``MIDDLEWARE`` (first, so that it sees every response), the one line.

The route is the matched URL pattern (``resolver_match.route``, with the prefixes of
``include()`` joined by Django, and a leading ``/``); a request no pattern matched is
recorded as ``unmatched``. An exception Django turns into a 500 itself
(``got_request_exception``) is counted once as the request's failure, with its class name.
``Http404``, ``PermissionDenied`` and the like are responses for Django and not counted.

Django reads no chunked request body through ``request.body`` under WSGI (it trusts
``CONTENT_LENGTH``); a view that accepts chunked uploads reads
``request.META["wsgi.input"]``, and those bytes are counted too."""
from __future__ import annotations

import sys
from typing import Any, Callable

from . import ERROR_ENVIRON_KEY, ROUTE_ENVIRON_KEY, UNMATCHED

_UID = "gunicorn_prometheus_exporter.frameworks.django"


def _failed(sender: Any, request: Any = None, **kwargs: Any) -> None:
    exc = sys.exc_info()[1]  # Django sends the signal from inside its except block
    if request is not None and exc is not None:
        request.META[ERROR_ENVIRON_KEY] = type(exc).__name__


class PrometheusMiddleware:
    def __init__(self, get_response: Callable) -> None:
        from django.core.signals import got_request_exception

        self.get_response = get_response
        got_request_exception.connect(_failed, dispatch_uid=_UID)

    def __call__(self, request: Any) -> Any:
        try:
            return self.get_response(request)
        finally:
            match = getattr(request, "resolver_match", None)
            request.META[ROUTE_ENVIRON_KEY] = (
                "/" + (match.route or "").lstrip("/") if match is not None else UNMATCHED)

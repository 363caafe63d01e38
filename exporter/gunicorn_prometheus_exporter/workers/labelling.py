"""Request labelling: a finished request's method, route and status become the series it
is recorded under, found once per distinct request and kept, so a request like an earlier
one costs one dict lookup before the recorder's stores. Every worker type ends here: the
WSGI hooks (``wsgi_hooks``), the ASGI wrapper (``asgi_metrics``, whose compiled twin reads
``resolved`` itself) and gunicorn's own error path."""
from __future__ import annotations

from typing import Any, Dict, Optional

from .. import families
from ..recorder import Recorder, Series
from ..routes import UNMATCHED, RouteTable, method_label, status_label
from ..storage.mmap_file import StorageFull

#: set on an exception a request already counted as failed, so that gunicorn's error path,
#: which it reaches next, does not count it again
COUNTED = "_gunicorn_prometheus_counted"
#: requests remembered by (method, path or template, status) before starting afresh
_RESOLVED_LIMIT = 8192
#: the two layouts of a request key in ``resolved``, as positions in (method, path,
#: status, template): without a framework's template, and with one. ``record`` builds its
#: keys so; the compiled ASGI wrapper is handed these and builds the same keys.
KEY_BY_PATH = (0, 1, 2)
KEY_BY_TEMPLATE = (0, 2, 3)


class RequestLabeller:
    """Labels finished requests of one worker process and records them."""

    def __init__(self, recorder: Recorder, routes: RouteTable, log: Any) -> None:
        self.recorder = recorder
        self.routes = routes
        self.log = log
        #: request key -> series, for answers that cannot change (``record``); the
        #: compiled ASGI wrapper reads it too
        self.resolved: Dict[tuple, Series] = {}

    def record(self, method: Optional[str], path: Optional[str], code: Optional[int],
               duration: float, received: int, sent: int, template: Optional[str] = None,
               error_type: Optional[str] = None) -> Series:
        """One finished request, whatever server loop handled it (the ASGI workers call
        this directly): ``code`` the status sent (None: 500), ``template`` a framework's
        matched route, else ``path`` is normalised; ``error_type`` counts one failed
        request. A request like an earlier one is one dict lookup and the stores.
        Returns the series recorded (for the extras: the exemplar)."""
        if not template:
            key = (method, path, code)  # KEY_BY_PATH
        else:
            if template.__class__ is not str:  # an app's own object: its text (hashable)
                template = str(template)
            key = (method, code, template)  # KEY_BY_TEMPLATE
        series = self.resolved.get(key)
        if series is None or error_type is not None:
            series = self._resolve(key, method, path, code, template, error_type)
        self.recorder.add(series, duration, received, sent)
        return series

    def _resolve(self, key: tuple, method: Optional[str], path: Optional[str],
                 code: Optional[int], template: Optional[str],
                 error_type: Optional[str]) -> Series:
        """Labels of a request not seen in this form before (or a failed one). Only
        answers that cannot change are kept: a 404 on an unknown path is ``unmatched``
        until another response makes its route known."""
        method = method_label(method)
        status = status_label(code)
        try:
            if template:
                route = self.routes.template(template)  # record() made it a str
            else:
                route = self.routes.route(path or "/", status)
        except StorageFull as fault:  # the shared route table could not grow
            self.recorder.unstored(fault)
            return self.recorder.dropped
        series = self.recorder.series(method, route, status)
        if route != UNMATCHED and series is not self.recorder.dropped:
            if len(self.resolved) >= _RESOLVED_LIMIT:
                self.resolved.clear()
            self.resolved[key] = series
        if error_type is not None:
            self.recorder.count(families.FAILED_REQUESTS, (method, route, error_type))
        return series

    def gunicorn_error(self, req: Any, exc: BaseException) -> None:
        """Malformed HTTP, limits, TLS failures: errors no application code saw. An
        application's exception also passes here after ``post_request`` counted it."""
        if getattr(exc, COUNTED, False):
            return
        try:
            method = method_label(getattr(req, "method", None)) if req is not None else "unknown"
            path = getattr(req, "path", None) if req is not None else None
            endpoint = self.routes.route(path, "404") if path else "unmatched"
            self.recorder.count(families.ERROR_HANDLING, (method, endpoint, type(exc).__name__))
        except Exception:
            self.log.exception("prometheus: could not record a gunicorn error")



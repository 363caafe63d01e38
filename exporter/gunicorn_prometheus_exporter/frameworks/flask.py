"""Flask: ``instrument(app)``, the one line.

The route is the URL rule Flask matched (``/users/<int:user_id>``, blueprint prefixes
included), put in the WSGI environ when Flask sends ``request_started``; a request no rule
matched (404, 405) is recorded as ``unmatched``. An exception Flask turns into a 500
itself (``got_request_exception``) is counted once as the request's failure, with its
class name, even when ``PROPAGATE_EXCEPTIONS`` also lets it reach gunicorn. Exceptions the
application's own ``errorhandler`` handles are responses, as for Flask, and not counted."""
from __future__ import annotations

from typing import Any

from . import ERROR_ENVIRON_KEY, ROUTE_ENVIRON_KEY, UNMATCHED


def instrument(app: Any) -> Any:
    """Report ``app``'s matched routes and unhandled exceptions; returns ``app``."""
    from flask import got_request_exception, request, request_started

    def started(sender: Any, **extra: Any) -> None:
        rule = request.url_rule
        request.environ[ROUTE_ENVIRON_KEY] = rule.rule if rule is not None else UNMATCHED

    def failed(sender: Any, exception: BaseException, **extra: Any) -> None:
        request.environ[ERROR_ENVIRON_KEY] = type(exception).__name__

    request_started.connect(started, app, weak=False)
    got_request_exception.connect(failed, app, weak=False)
    return app

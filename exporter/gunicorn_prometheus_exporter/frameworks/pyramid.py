"""Pyramid: ``config.include("gunicorn_prometheus_exporter.frameworks.pyramid")``, the one
line.

It adds a tween under Pyramid's exception view tween, so it sees what the view raised
before an exception view renders it. The route is the matched route's pattern
(``/users/{user_id}``, route prefixes included); a request no route matched is recorded as
``unmatched``. An exception other than Pyramid's HTTP exceptions (which are responses) is
counted once as the request's failure, with its class name, whether an exception view
turns it into a response or it goes on to gunicorn."""
from __future__ import annotations

from typing import Any, Callable

from . import ERROR_ENVIRON_KEY, ROUTE_ENVIRON_KEY, UNMATCHED


def includeme(config: Any) -> None:
    from pyramid.tweens import EXCVIEW

    config.add_tween(__name__ + ".tween_factory", under=EXCVIEW)


def tween_factory(handler: Callable, registry: Any) -> Callable:
    from pyramid.httpexceptions import HTTPException

    def prometheus_tween(request: Any) -> Any:
        try:
            return handler(request)
        except HTTPException:
            raise
        except Exception as exc:
            request.environ[ERROR_ENVIRON_KEY] = type(exc).__name__
            raise
        finally:
            route = getattr(request, "matched_route", None)
            pattern = getattr(route, "pattern", None) if route is not None else None
            request.environ[ROUTE_ENVIRON_KEY] = (
                "/" + pattern.lstrip("/")) if pattern else UNMATCHED

    return prometheus_tween

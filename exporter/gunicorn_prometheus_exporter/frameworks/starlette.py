"""Starlette and FastAPI: the matched route's path template, with no line in the app.

Starlette's router leaves the route it matched in the scope (``scope["route"]``, FastAPI
too); the ASGI workers read it after the application returned. A request no route matched
is recorded as ``unmatched`` (Starlette answered 404). Routes below a ``Mount`` get the
mount's path in front (``/api/items/{item_id}``). Unhandled exceptions need no hook:
Starlette's ``ServerErrorMiddleware`` sends the 500 and re-raises, so the worker sees
the exception and counts it once.

Nothing here imports Starlette unless a mounted route has to be resolved."""
from __future__ import annotations

from typing import Any, Optional, Sequence

from . import UNMATCHED

#: what Starlette leaves in the scope: the route it matched, its router (there even when
#: no route matched), and the root path of a ``Mount`` the request went through; a
#: route's template is its ``path``
ROUTE, ROUTER, MOUNT_ROOT, TEMPLATE_ATTR = "route", "router", "app_root_path", "path"


def route_template(scope: dict) -> Optional[str]:
    """The matched route template, ``unmatched``, or None when no Starlette router ran."""
    route = scope.get(ROUTE)
    if route is None:
        return UNMATCHED if ROUTER in scope else None
    if MOUNT_ROOT in scope:  # below a Mount: resolve the whole path
        router = scope.get(ROUTER)
        found = _resolve(getattr(router, "routes", ()), {
            "type": scope["type"], "path": scope.get("path", "/"),
            "root_path": scope[MOUNT_ROOT], "method": scope.get("method", "GET")}, "")
        if found:
            return found
    return getattr(route, TEMPLATE_ATTR, None) or None


def _resolve(routes: Sequence[Any], scope: dict, prefix: str) -> Optional[str]:
    from starlette.routing import Match

    partial = None
    for route in routes:
        match, child = route.matches(scope)
        if match is Match.NONE:
            continue
        inner = getattr(route, "routes", None)
        if inner is not None and "root_path" in child:  # a Mount
            nested = dict(scope)
            nested.update(child)
            found = _resolve(inner, nested, prefix + route.path)
            if found and match is Match.FULL:
                return found
            continue
        if match is Match.FULL:
            return prefix + route.path
        if partial is None:
            partial = prefix + route.path
    return partial

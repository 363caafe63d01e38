"""Starlette and FastAPI: the matched route's path template, with no line in the app.

Starlette's router leaves the route it matched in the scope (``scope["route"]``, FastAPI
too); the ASGI workers read it after the application returned. A request no route matched
is recorded as ``unmatched`` (Starlette answered 404), also when the routes below a
``Mount`` or a ``Host`` matched nothing. Routes below a ``Mount`` get the mount's path in
front (``/api/items/{item_id}``); a ``Host`` adds nothing (the host is not a path: its
requests are recorded under the template of the route below it). Unhandled exceptions need no hook:
Starlette's ``ServerErrorMiddleware`` sends the 500 and re-raises, so the worker sees
the exception and counts it once.

Nothing here imports Starlette unless a mounted route has to be resolved."""
from __future__ import annotations

import sys
from typing import Any, Optional, Sequence

from . import UNMATCHED

#: what Starlette leaves in the scope: the route it matched, its router (there even when
#: no route matched), and the root path of a ``Mount`` the request went through; a
#: route's template is its ``path``; a ``Mount``'s or ``Host``'s routes below it are its
#: ``routes``
ROUTE, ROUTER, MOUNT_ROOT, TEMPLATE_ATTR = "route", "router", "app_root_path", "path"
BELOW = "routes"


def route_template(scope: dict) -> Optional[str]:
    """The matched route template, ``unmatched``, or None when no Starlette router ran."""
    route = scope.get(ROUTE)
    if route is None:
        return UNMATCHED if ROUTER in scope else None
    if getattr(route, BELOW, None):
        # a Mount or Host with routes below it stays in the scope only when none of them
        # matched (the router below would have put its route there): its 404
        return UNMATCHED
    if MOUNT_ROOT in scope:  # below a Mount: the mounts' paths in front of the route's
        routes = getattr(scope.get(ROUTER), "routes", ())
        found = only_path_to(route, routes) or resolve_mounted(scope, routes)
        if found:
            return found
    return getattr(route, TEMPLATE_ATTR, None) or None


def only_path_to(route: Any, routes: Sequence[Any]) -> Optional[str]:
    """The template of ``route``, which Starlette's router chose, when the router's tree
    holds it exactly once and only below Mounts and Hosts: the Mounts' paths in front of
    its own, found by identity, with no pattern matched again (a tenth of a request's
    instructions saved on a mounted route). None when it is held more than once (the same
    routes mounted twice) or a route of another kind (an application's own) has routes
    below it: which one served the request depends on the request, and
    ``resolve_mounted`` decides by matching it again."""
    routing = sys.modules.get("starlette.routing")  # there: its router chose ``route``
    if routing is None:
        return None
    mount, host = routing.Mount, routing.Host
    leaves = (routing.Route, routing.WebSocketRoute)
    found = None
    levels = [(routes, "")]
    while levels:
        level, prefix = levels.pop()
        for candidate in level:
            if candidate is route:
                if found is not None:
                    return None
                found = prefix + candidate.path
            elif isinstance(candidate, leaves):
                continue
            elif isinstance(candidate, mount):
                levels.append((candidate.routes, prefix + candidate.path))
            elif isinstance(candidate, host):  # the host is no part of the template
                levels.append((candidate.routes, prefix))
            else:
                return None
    return found


def resolve_mounted(scope: dict, routes: Sequence[Any]) -> Optional[str]:
    """The template of a request below a Mount found by matching its whole path against
    the router's routes again, as the router did (with its headers: a ``Host`` reads
    them)."""
    return _resolve(routes, {
        "type": scope["type"], "path": scope.get("path", "/"),
        "root_path": scope[MOUNT_ROOT], "method": scope.get("method", "GET"),
        "headers": scope.get("headers", [])}, "")


def _resolve(routes: Sequence[Any], scope: dict, prefix: str) -> Optional[str]:
    from starlette.routing import Match

    partial = None
    for route in routes:
        match, child = route.matches(scope)
        if match is Match.NONE:
            continue
        inner = getattr(route, BELOW, None)
        if inner is not None:  # a Mount (it sets a root path; its path in front) or a Host
            nested = dict(scope)
            nested.update(child)
            found = _resolve(inner, nested,
                             prefix + route.path if "root_path" in child else prefix)
            if found and match is Match.FULL:
                return found
            continue
        if match is Match.FULL:
            return prefix + route.path
        if partial is None:
            partial = prefix + route.path
    return partial

"""The route template of requests below Starlette Mounts: found by identity in the
router's tree (``only_path_to``) where the route is there once, by matching the request
again (``resolve_mounted``) where not; both give what matching gives. Real Starlette
routing decides each request here (its scope, as the application leaves it)."""
from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("starlette", reason="starlette is not installed "
                    "(tests/requirements-frameworks.txt; make venv installs it)")

from starlette.applications import Starlette  # noqa: E402
from starlette.responses import PlainTextResponse  # noqa: E402
from starlette.routing import Host, Mount, Route  # noqa: E402

from gunicorn_prometheus_exporter.frameworks import starlette  # noqa: E402


async def _ok(request):
    return PlainTextResponse("ok")


def _routed(app, method: str, path: str, host: str = "shop.example") -> dict:
    """The scope ``app`` leaves after serving ``method path``."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "server": ("127.0.0.1", 80),
             "client": ("127.0.0.1", 5000), "headers": [(b"host", host.encode())]}

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        pass

    asyncio.run(app(scope, receive, send))
    return scope


_API = [Route("/users", _ok), Route("/users/{user_id:int}", _ok),
        Route("/users/{user_id:int}/orders", _ok, methods=["POST"])]
_SHOP = Starlette(routes=[
    Route("/health", _ok),
    Mount("/api/v1", routes=_API),
    Mount("/org/{org}", routes=[Route("/items/{item}", _ok),
                                Mount("/teams/{team}", routes=[Route("/", _ok)])]),
    Mount("/sub", app=Starlette(routes=[Route("/deep/{n}", _ok)])),
])
#: the same route objects below two mounts: which one served depends on the path
_TWICE = Starlette(routes=[Mount("/v1", routes=_API), Mount("/v2", routes=_API)])
#: a Host in front: the request's host header decides
_HOSTED = Starlette(routes=[Host("api.example", app=Starlette(routes=[Mount("/a", routes=_API)])),
                            Mount("/a", routes=_API)])

CASES = [
    (_SHOP, "GET", "/api/v1/users", "/api/v1/users", True),
    (_SHOP, "GET", "/api/v1/users/42", "/api/v1/users/{user_id:int}", True),
    (_SHOP, "POST", "/api/v1/users/42/orders", "/api/v1/users/{user_id:int}/orders", True),
    # a method the route does not take: Starlette's partial match (405)
    (_SHOP, "GET", "/api/v1/users/42/orders", "/api/v1/users/{user_id:int}/orders", True),
    (_SHOP, "GET", "/org/acme/items/7", "/org/{org}/items/{item}", True),
    (_SHOP, "GET", "/org/acme/teams/red/", "/org/{org}/teams/{team}/", True),
    (_SHOP, "GET", "/sub/deep/3", "/sub/deep/{n}", True),
    (_TWICE, "GET", "/v1/users/1", "/v1/users/{user_id:int}", False),
    (_TWICE, "GET", "/v2/users/1", "/v2/users/{user_id:int}", False),
    (_HOSTED, "GET", "/a/users", "/a/users", False),
]


@pytest.mark.parametrize("app,method,path,template,by_identity", CASES)
def test_a_mounted_route_gets_the_template_matching_gives(app, method, path, template,
                                                          by_identity):
    scope = _routed(app, method, path)
    assert starlette.MOUNT_ROOT in scope
    routes = scope[starlette.ROUTER].routes
    assert starlette.route_template(scope) == template
    assert starlette.resolve_mounted(scope, routes) == template
    found = starlette.only_path_to(scope[starlette.ROUTE], routes)
    assert found == (template if by_identity else None)


def test_a_route_outside_any_mount_and_no_route_at_all():
    assert starlette.route_template(_routed(_SHOP, "GET", "/health")) == "/health"
    assert starlette.route_template(_routed(_SHOP, "GET", "/nowhere")) == starlette.UNMATCHED

"""The route template of requests below Starlette Mounts and Hosts: found by identity in
the router's tree (``only_path_to``) where the route is there once, by matching the
request again (``resolve_mounted``) where not; both give what matching gives. Real
Starlette routing decides each request here (its scope, as the application leaves it),
and every request served is recorded, on the compiled wrapper and the Python one."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gunicorn_prometheus_exporter import families as catalogue
from gunicorn_prometheus_exporter import speedups
from gunicorn_prometheus_exporter.collector import DirectoryCollector
from gunicorn_prometheus_exporter.workers import asgi_metrics as asgi
from support import asgi_recording

pytest.importorskip("starlette", reason="starlette is not installed "
                    "(tests/requirements-frameworks.txt; make venv installs it)")

from starlette.applications import Starlette  # noqa: E402
from starlette.responses import PlainTextResponse  # noqa: E402
from starlette.routing import Host, Mount, Route  # noqa: E402

from gunicorn_prometheus_exporter.frameworks import starlette  # noqa: E402


async def _ok(request):
    return PlainTextResponse("ok")


def _scope(method: str, path: str, host: str) -> dict:
    """An HTTP/1.1 request's scope as a server hands it over."""
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
            "query_string": b"", "root_path": "", "server": ("127.0.0.1", 80),
            "client": ("127.0.0.1", 5000), "headers": [(b"host", host.encode())]}


async def _serve(app, scope: dict) -> None:
    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        pass

    await app(scope, receive, send)


def _routed(app, method: str, path: str, host: str = "shop.example") -> dict:
    """The scope ``app`` leaves after serving ``method path``."""
    scope = _scope(method, path, host)
    asyncio.run(_serve(app, scope))
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
#: the same, the Host matching ``shop.example``: the template is the one below the Host
_HOSTED_TOO = Starlette(routes=[
    Host("{shop}.example", app=Starlette(routes=[Mount("/a", routes=_API)])),
    Mount("/a", routes=_API)])
#: routes below a Host once: found by identity
_BEHIND_HOST = Starlette(routes=[
    Host("{shop}.example", app=Starlette(routes=[Mount("/b", routes=[Route("/{n:int}", _ok)])]))])

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
    (_HOSTED_TOO, "GET", "/a/users/5", "/a/users/{user_id:int}", False),
    (_BEHIND_HOST, "GET", "/b/5", "/b/{n:int}", True),
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


def _plain(scope, receive, send):
    """An ASGI application with no routes of its own, mounted."""
    return PlainTextResponse("plain")(scope, receive, send)


#: Hosts with routes and mounts below them, the host header deciding; a Mount of an
#: application with no routes of its own
_SITES = Starlette(routes=[
    Host("api.example", app=Starlette(routes=[
        Route("/ping", _ok), Mount("/v1", routes=[Route("/users/{user_id:int}", _ok)])])),
    Host("{tenant}.example", app=Starlette(routes=[Route("/t/{x}", _ok)])),
    Mount("/m", routes=[Route("/users", _ok)]),
    Mount("/files", app=_plain),
])
#: (host, path, the route recorded, status): each request sent twice
SITE_REQUESTS = [
    ("api.example", "/ping", "/ping", "200"),
    ("api.example", "/v1/users/3", "/v1/users/{user_id:int}", "200"),
    ("acme.example", "/t/1", "/t/{x}", "200"),
    ("other", "/m/users", "/m/users", "200"),
    ("other", "/files/a.txt", "/files", "200"),
    # no route below the Host (or the Mount, or at all) matched: Starlette's 404
    ("api.example", "/nope", "unmatched", "404"),
    ("api.example", "/v1/nope", "unmatched", "404"),
    ("acme.example", "/zz", "unmatched", "404"),
    ("other", "/m/nope", "unmatched", "404"),
    ("other", "/zz", "unmatched", "404"),
]
native = speedups.load({})


@pytest.mark.parametrize("compiled", [
    False, pytest.param(True, marks=pytest.mark.skipif(
        native is None, reason="the C speedups are not built here"))], ids=["python", "c"])
def test_every_request_through_a_host_is_recorded_under_its_template(tmp_path: Path,
                                                                      compiled):
    labeller = asgi_recording.labeller(tmp_path, native if compiled else None, [100.0])
    wrapped = asgi.instrument(_SITES, labeller,
                              asgi_recording.request_extras(labeller, tmp_path),
                              native if compiled else None)
    assert (type(wrapped).__name__ == "MeteredApp") is compiled  # the path taken

    async def mix():
        for host, path, _, _ in SITE_REQUESTS * 2:
            await _serve(wrapped, _scope("GET", path, host))

    asyncio.run(mix())
    labeller.recorder.store.close()
    counted = {}
    for family in DirectoryCollector(str(tmp_path)).read():
        for sample in family.samples:
            if sample.name == catalogue.HTTP_REQUESTS.name + "_total":
                key = (sample.labels["route"], sample.labels["status"])
                counted[key] = counted.get(key, 0) + sample.value
    assert counted == {("/ping", "200"): 2, ("/v1/users/{user_id:int}", "200"): 2,
                       ("/t/{x}", "200"): 2, ("/m/users", "200"): 2, ("/files", "200"): 2,
                       ("unmatched", "404"): 10}, counted
    assert sum(counted.values()) == 2 * len(SITE_REQUESTS)  # every request sent

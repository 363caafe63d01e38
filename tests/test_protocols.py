"""The protocol of requests (HTTP/1.0, HTTP/2 over gunicorn's own HTTP/2, in cleartext and
over TLS with ALPN, WebSocket upgrades) and the WebSocket connections of the ASGI workers
(native and uvicorn), through real gunicorn: the request
families keep their series, only requests not over HTTP/1.1 are counted by protocol, and a
WebSocket is a connection measured by itself, never an hours-long request."""
import http.client
from pathlib import Path

import pytest

from gunicorn_prometheus_exporter import protocols

ASGI = "gunicorn_prometheus_exporter.PrometheusASGIWorker"
UVICORN = "gunicorn_prometheus_exporter.PrometheusUvicornWorker"
TESTS = ["--chdir", str(Path(__file__).parent)]
PROTOCOL = "gunicorn_http_protocol_requests_total"
H2C = ["--http-protocols", "h2,h1", "--http2-cleartext", "both"]  # h2c and HTTP/1 alike


@pytest.mark.parametrize("version,expected", [
    ("HTTP/1.0", "HTTP/1.0"), ("HTTP/2.0", "HTTP/2"), ("2", "HTTP/2"), ("1.0", "HTTP/1.0"),
    ("3", "HTTP/3"), ("HTTP/9.9", "other"), ("", "other"), (None, "other")])
def test_protocol_labels_are_bounded(version, expected):
    assert protocols.label(version) == expected


def _http10(g) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", g.port, timeout=10)
    conn._http_vsn, conn._http_vsn_str = 10, "HTTP/1.0"
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def _get(g, count: int, version: str, tls=None) -> None:
    """``count`` GET / over one connection in ``version`` (HTTP/2: prior knowledge in
    cleartext, ALPN over TLS; ``tls``: the client's ssl context)."""
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("h2", reason="HTTP/2 needs h2 (tests/requirements-frameworks.txt)")
    h2 = version == "HTTP/2"
    base = f"{'https' if tls else 'http'}://127.0.0.1:{g.port}"
    with httpx.Client(http1=not h2, http2=h2, verify=tls or True, base_url=base) as c:
        for _ in range(count):
            resp = c.get("/")
            assert resp.status_code == 200 and resp.http_version == version


def _http2(g, count: int) -> None:
    _get(g, count, "HTTP/2")


@pytest.mark.parametrize("worker_class,app,extra,h2", [
    ("sync", "apps.traced:app", [], 0),  # gunicorn's sync worker speaks HTTP/1 only
    ("gthread", "apps.traced:app", ["--threads", "2"] + H2C, 4),
    (ASGI, "apps.traced:asgi_app", H2C, 4),
], ids=["sync", "gthread", "asgi"])
@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
def test_requests_by_protocol(start_gunicorn, worker_class, app, extra, h2, compiled):
    env = {} if compiled else {"GUNICORN_PROMETHEUS_NO_SPEEDUPS": "1"}
    g = start_gunicorn(app=app, worker_class=worker_class, workers=2, env=env,
                       extra_args=extra + TESTS).wait_ready(workers=2)
    # every worker has the series from the start, at zero (websocket: the ASGI workers)
    start = {frozenset({("protocol", p)}): 0.0
             for p in ("HTTP/1.0", "HTTP/2") + (("websocket",) if worker_class == ASGI else ())}
    g.scrape_until(lambda s: s.series(PROTOCOL) == start)
    for _ in range(3):
        assert g.request("/")[0] == 200  # HTTP/1.1: not counted by protocol
    for _ in range(2):
        assert _http10(g) == 200
    if h2:
        _http2(g, h2)
    s = g.scrape_until(lambda s: s.total("gunicorn_http_requests_total") == 5 + h2)
    assert s.value(PROTOCOL, protocol="HTTP/1.0") == 2
    assert s.value(PROTOCOL, protocol="HTTP/2") == h2
    # the request families did not change: no protocol label anywhere
    assert s.value("gunicorn_http_requests_total", method="GET", route="/",
                   status="200") == 5 + h2


@pytest.mark.parametrize("worker_class,app,extra", [
    ("gthread", "apps.traced:app", ["--threads", "2"]),
    ("gunicorn_prometheus_exporter.PrometheusGeventWorker", "apps.traced:app", []),
    (ASGI, "apps.traced:asgi_app", []),
], ids=["gthread", "gevent", "asgi"])
def test_http2_over_tls_is_counted_as_http2(start_gunicorn, tmp_path, worker_class, app, extra):
    """gunicorn 27 serves HTTP/2 over TLS when the client selects ``h2`` by ALPN: it needs
    only ``--certfile``/``--keyfile`` and ``--http-protocols h2,h1`` (h2c settings play no
    part). HTTP/1.1 over the same TLS port stays uncounted by protocol."""
    if "Gevent" in worker_class:
        pytest.importorskip("gevent", reason="tests/requirements-frameworks.txt")
    from support.tls import make_certs

    certs = make_certs(tmp_path / "tls")
    tls_args = ["--certfile", str(certs.server_cert), "--keyfile", str(certs.server_key),
                "--http-protocols", "h2,h1"]
    g = start_gunicorn(app=app, worker_class=worker_class, workers=2,
                       extra_args=extra + tls_args + TESTS).wait_ready(workers=2)
    g.scrape_until(lambda s: s.value(PROTOCOL, protocol="HTTP/2") == 0)
    _get(g, 3, "HTTP/1.1", tls=certs.client_context())  # ALPN http/1.1
    _get(g, 4, "HTTP/2", tls=certs.client_context())    # ALPN h2
    s = g.scrape_until(lambda s: s.total("gunicorn_http_requests_total") == 7)
    assert s.value(PROTOCOL, protocol="HTTP/2") == 4
    assert s.value(PROTOCOL, protocol="HTTP/1.0") == 0
    assert s.value("gunicorn_http_requests_total", method="GET", route="/",
                   status="200") == 7


@pytest.mark.parametrize("worker_class", [ASGI, UVICORN], ids=["asgi", "uvicorn"])
@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
def test_websocket_connections_are_not_requests(start_gunicorn, worker_class, compiled):
    pytest.importorskip("websockets", reason="tests/requirements-frameworks.txt")
    if worker_class == UVICORN:
        pytest.importorskip("uvicorn_worker", reason="tests/requirements-frameworks.txt")
    from websockets.sync.client import connect

    env = {} if compiled else {"GUNICORN_PROMETHEUS_NO_SPEEDUPS": "1"}
    g = start_gunicorn(app="apps.traced:asgi_app", worker_class=worker_class, workers=1,
                       env=env, extra_args=TESTS).wait_ready(workers=1)
    # the series exist at zero once the worker has loaded the application
    g.scrape_until(lambda s: s.value("gunicorn_websocket_connections", worker_id="0") == 0
                   and s.value(PROTOCOL, protocol="websocket") == 0
                   and s.value("gunicorn_websocket_connection_duration_seconds_count") == 0)
    url = f"ws://127.0.0.1:{g.port}/echo"
    with connect(url) as first, connect(url) as second:
        first.send("a")
        assert first.recv(10) == "a"
        second.send("b")
        assert second.recv(10) == "b"
        s = g.scrape_until(lambda s: s.value("gunicorn_websocket_connections",
                                             worker_id="0") == 2)
        assert s.total("gunicorn_worker_in_flight_requests") == 0
    with connect(url) as third:
        third.send("c")
        assert third.recv(10) == "c"
    s = g.scrape_until(lambda s: s.value(
        "gunicorn_websocket_connection_duration_seconds_count") == 3)
    assert s.value("gunicorn_websocket_connections", worker_id="0") == 0
    assert s.value(PROTOCOL, protocol="websocket") == 3
    assert s.value("gunicorn_websocket_connection_duration_seconds_bucket", le="1.0") == 3
    # never a request: no request series, no duration of hours
    assert s.total("gunicorn_http_requests_total") == 0
    # a refused upgrade is an upgrade, but no connection
    from websockets.exceptions import InvalidStatus
    with pytest.raises(InvalidStatus):
        connect(f"ws://127.0.0.1:{g.port}/refuse").close()
    s = g.scrape_until(lambda s: s.value(PROTOCOL, protocol="websocket") == 4)
    assert s.value("gunicorn_websocket_connection_duration_seconds_count") == 3

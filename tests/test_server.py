"""The metrics server, as a scraper, a browser and an attacker see it: content negotiation,
gzip, the landing and health pages, TLS, client certificates, basic auth, malformed and
hostile clients, a port that is taken, and secrets kept out of the logs.

Most tests share one gunicorn (module scope) and check afterwards that its metrics server
is still the same process, answering."""
from __future__ import annotations

import base64
import gzip
import http.client
import os
import socket
import ssl
import time
import warnings
from pathlib import Path
from typing import Dict, Optional, Tuple

import pytest

from support.procs import Gunicorn, Process, free_port
from support.scrape import Scrape
from support.tls import Certs, make_certs
from support.wait import until

TEXT = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
MAX_CONNECTIONS = 32  # server.http.MAX_CONNECTIONS, the documented limit


def get(port: int, path: str = "/metrics", headers: Optional[dict] = None,
        context: Optional[ssl.SSLContext] = None, method: str = "GET",
        timeout: float = 10.0) -> Tuple[int, Dict[str, str], bytes]:
    if context is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout,
                                           context=context)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def basic(user: str, password: str) -> dict:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def bcrypt_hash(password: str) -> str:
    bcrypt = pytest.importorskip("bcrypt")
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Gunicorn:
    g = Gunicorn(tmp_path_factory.mktemp("plain"), workers=1)
    try:
        g.wait_ready(workers=1)
        yield g
    finally:
        g.stop()


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def serve(tmp: Path, env: Optional[dict] = None, args: Optional[list] = None) -> Process:
    """``gunicorn-prometheus-exporter serve`` on a free port over an empty directory."""
    import sys

    port = free_port()
    directory = tmp / f"mp-{port}"
    directory.mkdir()
    exe = str(Path(sys.executable).with_name("gunicorn-prometheus-exporter"))
    full = {**os.environ, "PROMETHEUS_METRICS_PORT": str(port),
            "PROMETHEUS_BIND_ADDRESS": "127.0.0.1", "PROMETHEUS_MULTIPROC_DIR": str(directory),
            "PYTHONUNBUFFERED": "1", **(env or {})}
    p = Process([exe, "serve", *(args or [])], full, cwd=str(tmp))
    p.port = port  # type: ignore[attr-defined]
    return p


def wait_listening(p: Process, port: int) -> None:
    def up():
        if p.proc.poll() is not None:
            return "exited"
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return "up"
    if until(up, timeout=20, message=f"port {port} to listen") == "exited":
        raise AssertionError(f"exited {p.proc.returncode}: {p.output()}")


# -- what a scraper sees ----------------------------------------------------------------------

@pytest.mark.parametrize("accept, content_type", [
    (None, TEXT),
    ("text/plain", TEXT),
    ("*/*", TEXT),
    ("application/openmetrics-text", OPENMETRICS),
    ("text/html, application/openmetrics-text;q=0.9", OPENMETRICS),
])
def test_content_type_follows_accept(plain, accept, content_type):
    status, headers, body = get(plain.metrics_port,
                                headers={"Accept": accept} if accept else {})
    assert status == 200
    assert headers["content-type"] == content_type
    assert int(headers["content-length"]) == len(body)
    assert "content-encoding" not in headers
    text = body.decode()
    if content_type == OPENMETRICS:
        assert text.endswith("# EOF\n")
        assert "# TYPE gunicorn_worker_capacity gauge" in text
    else:
        assert "# EOF" not in text
        Scrape(text)  # parses as the text format


def test_prometheus_accept_header_gets_openmetrics(plain):
    """What Prometheus 2.x sends by default."""
    accept = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
              "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
    status, headers, body = get(plain.metrics_port, headers={"Accept": accept})
    assert status == 200
    assert headers["content-type"] in (OPENMETRICS, OPENMETRICS + "; escaping=underscores")
    assert body.decode().endswith("# EOF\n")


def test_gzip_when_asked(plain):
    status, headers, body = get(plain.metrics_port, headers={"Accept-Encoding": "gzip"})
    assert status == 200
    assert headers["content-encoding"] == "gzip"
    assert headers["content-type"] == TEXT
    assert int(headers["content-length"]) == len(body)
    text = gzip.decompress(body).decode()
    assert len(body) < len(text)
    s = Scrape(text)
    assert len(s.series("gunicorn_worker_capacity")) == 1
    assert s.value("gunicorn_exporter_source_up", source="directory") == 1


def test_landing_page(plain):
    status, headers, body = get(plain.metrics_port, "/")
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    page = body.decode()
    assert '<a href="metrics">' in page
    assert '<a href="-/healthy">' in page
    from gunicorn_prometheus_exporter import __version__
    assert f"Version {__version__}." in page


@pytest.mark.parametrize("path", ["/-/healthy", "/-/ready"])
def test_health_endpoints(plain, path):
    status, headers, body = get(plain.metrics_port, path)
    assert (status, body) == (200, b"OK\n")
    assert headers["content-type"] == "text/plain; charset=utf-8"


@pytest.mark.parametrize("path", ["/nope", "/metrics/extra", "/-/unhealthy", "/metricsx"])
def test_unknown_paths_are_404(plain, path):
    status, headers, body = get(plain.metrics_port, path)
    assert (status, body) == (404, b"Not Found\n")


def test_query_string_is_ignored_and_head_has_no_body(plain):
    assert get(plain.metrics_port, "/metrics?x=1")[0] == 200
    status, headers, body = get(plain.metrics_port, "/metrics", method="HEAD")
    assert (status, body) == (200, b"")
    assert int(headers["content-length"]) > 100


def test_other_methods_are_refused(plain):
    status, headers, _ = get(plain.metrics_port, "/metrics", method="POST")
    assert status == 501


def test_server_header_has_no_stray_space(plain):
    from gunicorn_prometheus_exporter import __version__
    _, headers, _ = get(plain.metrics_port, "/-/healthy")
    assert headers["server"] == f"gunicorn-prometheus-exporter/{__version__}"


def test_keep_alive_serves_several_requests_on_one_connection(plain):
    conn = http.client.HTTPConnection("127.0.0.1", plain.metrics_port, timeout=5)
    try:
        for path in ("/metrics", "/-/healthy", "/", "/-/healthy"):
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200
    finally:
        conn.close()


# -- hostile and broken clients ---------------------------------------------------------------

def _raw(port: int, data: bytes, read: int = 4096, timeout: float = 10.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as c:
        c.sendall(data)
        chunks = []
        while True:
            try:
                chunk = c.recv(read)
            except ConnectionResetError:  # the server closed with our bytes unread
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def _still_serving(g: Gunicorn, pid: int) -> None:
    assert alive(pid), "the metrics server process died"
    assert g.monitor_pid() == pid, "the metrics server was restarted"
    status, _, body = get(g.metrics_port, "/-/healthy", timeout=5)
    assert (status, body) == (200, b"OK\n")
    assert get(g.metrics_port, timeout=5)[0] == 200


@pytest.mark.parametrize("junk, expected_status", [
    (b"GARBAGE\r\n\r\n", b"HTTP/1.1 400 "),
    (b"GET\r\n\r\n", b"HTTP/1.1 400 "),
    (b"BREW /coffee HTTP/1.1\r\n\r\n", b"HTTP/1.1 501 "),
    (b"GET /metrics HTTP/9.9\r\n\r\n", b"HTTP/1.1 505 "),
    (b"\x00\x01\x02\xff\xfe\r\n\r\n", b"HTTP/1.1 400 "),
    (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", b"HTTP/1.1 414 "),
    (b"GET /metrics HTTP/1.1\r\nX-Big: " + b"b" * 70000 + b"\r\n\r\n", b"HTTP/1.1 431 "),
    (b"GET /metrics HTTP/1.1\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(200))
     + b"\r\n", b"HTTP/1.1 431 "),
])
def test_malformed_requests_get_an_error_and_the_server_goes_on(plain, junk, expected_status):
    pid = plain.monitor_pid()
    reply = _raw(plain.metrics_port, junk)
    assert reply.startswith(expected_status), reply[:200]
    _still_serving(plain, pid)


def test_silent_client_does_not_block_others(plain):
    pid = plain.monitor_pid()
    with socket.create_connection(("127.0.0.1", plain.metrics_port), timeout=5) as silent, \
            socket.create_connection(("127.0.0.1", plain.metrics_port), timeout=5) as half:
        half.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never finishes its headers
        started = time.monotonic()
        _still_serving(plain, pid)
        assert time.monotonic() - started < 3.0
        silent.setblocking(False)
        with pytest.raises(BlockingIOError):
            silent.recv(1)  # still open: nothing was sent to it, it was not dropped


def test_client_that_disconnects_mid_request(plain):
    pid = plain.monitor_pid()
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", plain.metrics_port), timeout=5) as c:
            c.sendall(b"GET /metrics HTTP/1.1\r\nHo")
        with socket.create_connection(("127.0.0.1", plain.metrics_port), timeout=5) as c:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            c.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")  # reset before the reply
    _still_serving(plain, pid)


def test_tls_client_hello_to_plain_server(plain):
    pid = plain.monitor_pid()
    context = ssl.create_default_context()
    with socket.create_connection(("127.0.0.1", plain.metrics_port), timeout=5) as raw:
        with pytest.raises((ssl.SSLError, ConnectionError, socket.timeout, OSError)):
            context.wrap_socket(raw, server_hostname="127.0.0.1")
    _still_serving(plain, pid)


def test_more_connections_than_the_limit_close_the_longest_waiting(plain):
    """Beyond MAX_CONNECTIONS, each newcomer takes the slot of the connection that has
    waited longest on its client: the first ``extra`` idle ones are closed, the newest
    MAX_CONNECTIONS are held, and a scrape still gets in at once."""
    pid = plain.monitor_pid()
    extra = 8
    socks = []
    for _ in range(MAX_CONNECTIONS + extra):
        socks.append(socket.create_connection(("127.0.0.1", plain.metrics_port), timeout=5))
        time.sleep(0.01)  # the clients' own pace: a distinct age for each connection

    def closed_by_server():
        closed = []
        for i, s in enumerate(socks):
            s.setblocking(False)
            try:
                if s.recv(1) == b"":
                    closed.append(i)
            except BlockingIOError:
                pass
            except ConnectionError:
                closed.append(i)
        return closed

    try:
        until(lambda: len(closed_by_server()) == extra, timeout=10,
              message=f"{extra} connections over the limit to be closed")
        assert closed_by_server() == list(range(extra))  # the oldest, in order
        started = time.monotonic()
        assert get(plain.metrics_port, "/-/healthy", timeout=2)[0] == 200  # while full
        assert time.monotonic() - started < 2.0
        assert closed_by_server() == list(range(extra + 1))  # it took the next oldest
    finally:
        for s in socks:
            s.close()
    _still_serving(plain, pid)
    # a flood is one log line, not one per connection
    lines = [line for line in plain.output().splitlines() if "connections open" in line]
    assert len(lines) == 1, lines
    assert lines[0].endswith(f"[WARNING] metrics server: {MAX_CONNECTIONS} connections open; "
                             "closed 1 that waited longest on their client and refused 0 "
                             "connection(s), the last from 127.0.0.1")


def test_many_scrapes_in_parallel(plain):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(lambda _: get(plain.metrics_port, timeout=10)[0], range(48)))
    assert statuses == [200] * 48


# -- TLS ---------------------------------------------------------------------------------------

def test_tls_from_cert_and_key(start_gunicorn, certs):
    g = start_gunicorn(workers=1, env={"PROMETHEUS_SSL_CERTFILE": str(certs.server_cert),
                                       "PROMETHEUS_SSL_KEYFILE": str(certs.server_key)})
    g.wait_ready()
    until(lambda: get(g.metrics_port, "/-/healthy", context=certs.client_context())[0] == 200,
          message="TLS metrics server")
    status, headers, body = get(g.metrics_port, context=certs.client_context())
    assert status == 200
    assert headers["content-type"] == TEXT
    assert Scrape(body.decode()).value("gunicorn_exporter_source_up", source="directory") == 1
    assert f"serving metrics at https://127.0.0.1:{g.metrics_port}/metrics" in g.output()
    # a client that does not trust the CA refuses the server
    with pytest.raises(ssl.SSLCertVerificationError):
        get(g.metrics_port, context=ssl.create_default_context())
    # a plain HTTP request to the TLS port is refused and changes nothing
    pid = g.monitor_pid()
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        get(g.metrics_port)
    reply = _raw(g.metrics_port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert not reply.startswith(b"HTTP/1.1 200")
    assert alive(pid)
    assert get(g.metrics_port, "/-/healthy", context=certs.client_context())[0] == 200
    # a client that connects and never says hello does not hold up the others
    with socket.create_connection(("127.0.0.1", g.metrics_port), timeout=5):
        status, _, _ = get(g.metrics_port, "/-/healthy", context=certs.client_context(),
                           timeout=3)
        assert status == 200
    # a TLS 1.1 client is refused: TLS 1.2 is the least
    old = certs.client_context()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            old.minimum_version = ssl.TLSVersion.TLSv1
            old.maximum_version = ssl.TLSVersion.TLSv1_1
    except (ValueError, ssl.SSLError):
        pass
    else:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            get(g.metrics_port, context=old)
    assert get(g.metrics_port, "/-/healthy", context=certs.client_context())[0] == 200
    assert g.monitor_pid() == pid and alive(pid)


def _handshake_refused(port: int, context: ssl.SSLContext) -> None:
    """A refused client certificate shows up either in the handshake (TLS 1.2) or at the
    first read (TLS 1.3 sends the server's verdict after the client thinks it is done)."""
    with pytest.raises((ssl.SSLError, ConnectionError)):
        status, _, _ = get(port, "/-/healthy", context=context, timeout=5)
        raise AssertionError(f"answered {status} without a valid client certificate")


def test_client_certificates_required_when_a_ca_is_configured(start_gunicorn, certs):
    g = start_gunicorn(workers=1, env={"PROMETHEUS_SSL_CERTFILE": str(certs.server_cert),
                                       "PROMETHEUS_SSL_KEYFILE": str(certs.server_key),
                                       "PROMETHEUS_SSL_CLIENT_CAFILE": str(certs.ca)})
    g.wait_ready()
    good = certs.client_context(certs.client)
    until(lambda: get(g.metrics_port, "/-/healthy", context=good)[0] == 200,
          message="mTLS metrics server")
    pid = g.monitor_pid()
    _handshake_refused(g.metrics_port, certs.client_context())
    _handshake_refused(g.metrics_port, certs.client_context(certs.stranger))
    status, _, body = get(g.metrics_port, context=good)
    assert status == 200
    assert b"gunicorn_worker_capacity" in body
    assert g.monitor_pid() == pid and alive(pid)


def test_client_certificate_optional_when_not_required(start_gunicorn, certs):
    g = start_gunicorn(workers=1, env={"PROMETHEUS_SSL_CERTFILE": str(certs.server_cert),
                                       "PROMETHEUS_SSL_KEYFILE": str(certs.server_key),
                                       "PROMETHEUS_SSL_CLIENT_CAFILE": str(certs.ca),
                                       "PROMETHEUS_SSL_CLIENT_AUTH_REQUIRED": "false"})
    g.wait_ready()
    until(lambda: get(g.metrics_port, "/-/healthy", context=certs.client_context())[0] == 200,
          message="TLS metrics server")
    assert get(g.metrics_port, context=certs.client_context(certs.client))[0] == 200
    _handshake_refused(g.metrics_port, certs.client_context(certs.stranger))  # given: checked


def test_web_config_tls_with_client_auth(tmp_path, certs):
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {certs.server_cert}\n"
                   f"  key_file: {certs.server_key}\n"
                   "  client_auth_type: RequireAndVerifyClientCert\n"
                   f"  client_ca_file: {certs.ca}\n")
    p = serve(tmp_path, args=["--web-config-file", str(web)])
    try:
        wait_listening(p, p.port)
        good = certs.client_context(certs.client)
        assert get(p.port, "/-/healthy", context=good)[:1] == (200,)
        _handshake_refused(p.port, certs.client_context())
        _handshake_refused(p.port, certs.client_context(certs.stranger))
        assert get(p.port, context=good)[0] == 200
        assert p.proc.poll() is None
    finally:
        assert p.stop() == 0


@pytest.mark.parametrize("auth_type, none, stranger", [
    ("NoClientCert", 200, 200),
    ("VerifyClientCertIfGiven", 200, "refused"),
    # Python's ssl cannot take a certificate without checking it: "any" certificate is
    # taken to mean one from the CA, which is stricter, never weaker
    ("RequireAnyClientCert", "refused", "refused"),
    ("RequireAndVerifyClientCert", "refused", "refused"),
])
def test_web_config_client_auth_types(tmp_path, certs, auth_type, none, stranger):
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {certs.server_cert}\n"
                   f"  key_file: {certs.server_key}\n  client_auth_type: {auth_type}\n"
                   f"  client_ca_file: {certs.ca}\n")
    p = serve(tmp_path, args=["--web-config-file", str(web)])
    try:
        wait_listening(p, p.port)
        assert get(p.port, "/-/healthy", context=certs.client_context(certs.client))[0] == 200
        for cert, expected in ((None, none), (certs.stranger, stranger)):
            if expected == "refused":
                _handshake_refused(p.port, certs.client_context(cert))
            else:
                assert get(p.port, "/-/healthy", context=certs.client_context(cert))[0] == 200
        assert p.proc.poll() is None
    finally:
        output = p.output()
        assert p.stop() == 0, output


def test_web_config_relative_paths_are_relative_to_the_file(tmp_path, certs):
    """As in the exporter-toolkit: a web config's file names are relative to its folder."""
    folder = tmp_path / "conf"
    folder.mkdir()
    for name in ("server.pem", "server.key"):
        (folder / name).write_bytes((certs.server_cert.parent / name).read_bytes())
    (folder / "web.yml").write_text("tls_server_config:\n  cert_file: server.pem\n"
                                    "  key_file: server.key\n")
    p = serve(tmp_path, args=["--web-config-file", str(folder / "web.yml")])
    try:
        wait_listening(p, p.port)
        assert get(p.port, "/-/healthy", context=certs.client_context())[0] == 200
    finally:
        output = p.output()
        assert p.stop() == 0, output


# -- basic auth ----------------------------------------------------------------------------------

def test_basic_auth_with_bcrypt_hashes(start_gunicorn, tmp_path):
    password = "correct horse battery staple"
    hashed = bcrypt_hash(password)
    other_hash = bcrypt_hash("another secret")
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  prometheus: '{hashed}'\n  other: '{other_hash}'\n"
                   "http_server_config:\n  headers:\n    X-Frame-Options: deny\n")
    redis_password = "Redis-Pw-0451"  # set but unused (Redis is off): still never logged
    g = start_gunicorn(workers=1, env={"PROMETHEUS_WEB_CONFIG_FILE": str(web),
                                       "REDIS_PASSWORD": redis_password},
                       extra_args=["--log-level", "debug",
                                   "-e", f"REDIS_PASSWORD={redis_password}"])
    g.wait_ready()
    until(lambda: get(g.metrics_port, "/-/healthy")[0] == 401, message="metrics server")
    for headers in ({}, basic("prometheus", "wrong"), basic("nobody", password),
                    basic("other", password), {"Authorization": "Basic !!notbase64"},
                    {"Authorization": "Bearer " + password}, basic("prometheus", "")):
        for path in ("/metrics", "/", "/-/healthy"):
            status, got, body = get(g.metrics_port, path, headers=headers)
            assert (status, body) == (401, b"Unauthorized\n"), (headers, path)
            assert got["www-authenticate"] == 'Basic realm="metrics"'
            assert got["x-frame-options"] == "deny"
    for _ in range(2):  # the second one is answered from the cache of good credentials
        status, got, body = get(g.metrics_port, headers=basic("prometheus", password))
        assert status == 200
        assert got["x-frame-options"] == "deny"
        assert "www-authenticate" not in got
        assert Scrape(body.decode()).value("gunicorn_exporter_source_up",
                                           source="directory") == 1
    assert get(g.metrics_port, headers=basic("other", "another secret"))[0] == 200
    # the app's own requests carry credentials too, just to see they end nowhere in the log
    assert g.request("/", headers=basic("prometheus", password))[0] == 200
    log = g.output()
    assert "raw_env" in log  # gunicorn's debug dump of its settings is there, masked
    for secret in (password, hashed, other_hash, hashed[7:29], "another secret", redis_password,
                   base64.b64encode(f"prometheus:{password}".encode()).decode()):
        assert secret not in log
    assert "401" in log  # the debug log did record the refused requests


@pytest.mark.parametrize("content, expected", [
    ("basic_auth_users:\n  prometheus: plaintext-password-here\n",
     "basic_auth_users.prometheus: expected a bcrypt hash ($2a$, $2b$ or $2y$)"),
    ("basic_auth_users:\n  prometheus: $2b$10$plaintext-password-here\n",
     "basic_auth_users.prometheus: expected a bcrypt hash ($2a$, $2b$ or $2y$)"),
    ("basic_auth_users: [prometheus]\n",
     "basic_auth_users: expected a mapping of user to bcrypt hash"),
    ("tls_server_config:\n  cert_file: c.pem\n",
     "tls_server_config needs cert_file and key_file"),
    ("tls_server_config:\n  cert_file: c.pem\n  key_file: k.pem\n"
     "  client_auth_type: RequireAndVerifyClientCert\n",
     "tls_server_config.client_auth_type RequireAndVerifyClientCert needs client_ca_file"),
    ("tls_server_config:\n  cert_file: c.pem\n  key_file: k.pem\n  client_auth_type: Maybe\n",
     "tls_server_config.client_auth_type: expected one of NoClientCert, RequestClientCert, "
     "RequireAnyClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert, got 'Maybe'"),
    ("tls_server_config:\n  cert_file: c.pem\n  key_file: k.pem\n  min_version: TLS9\n",
     "tls_server_config.min_version: expected one of TLS10, TLS11, TLS12, TLS13, got 'TLS9'"),
    ("tls_server_config:\n  cert_file: c.pem\n  key_file: k.pem\n  certfile: x\n",
     "tls_server_config.certfile: unknown key; expected one of: cert_file, cipher_suites, "
     "client_auth_type, client_ca_file, curve_preferences, key_file, max_version, "
     "min_version, prefer_server_cipher_suites"),
    ("http_server_config:\n  headers: [a]\n",
     "http_server_config.headers: expected a mapping"),
    ("basic_auth_users:\n  a: [\n", ":3: invalid YAML: expected the node content, but found "
     "'<stream end>'"),
])
def test_bad_web_config_is_one_line(tmp_path, content, expected):
    import subprocess
    import sys

    web = tmp_path / "web.yml"
    web.write_text(content)
    exe = str(Path(sys.executable).with_name("gunicorn-prometheus-exporter"))
    result = subprocess.run([exe, "check-config"], capture_output=True, text=True, timeout=30,
                            env={**os.environ, "PROMETHEUS_WEB_CONFIG_FILE": str(web)})
    assert result.returncode == 1
    sep = "" if expected.startswith(":") else ": "
    assert result.stderr.splitlines() == [
        f"gunicorn-prometheus-exporter: config error: {web}{sep}{expected}"]
    assert "plaintext-password-here" not in result.stdout + result.stderr


# -- a port that is taken --------------------------------------------------------------------

def test_port_in_use_is_one_clear_error_and_workers_serve(start_gunicorn, tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        started = time.monotonic()
        g = start_gunicorn(workers=2, env={"PROMETHEUS_METRICS_PORT": str(port)})
        g.metrics_port = port
        until(lambda: g.request("/", timeout=2)[0] == 200, timeout=20,
              message="the app to answer")
        assert time.monotonic() - started < 10.0
        for _ in range(10):
            assert g.request("/")[0] == 200
        until(lambda: g.output().count("Booting worker") == 2, message="both workers")
        log = g.output()
        errors = [line for line in log.splitlines() if "[ERROR]" in line
                  or "Traceback" in line or "Error" in line]
        assert errors == [line for line in log.splitlines()
                          if f"cannot serve metrics on 127.0.0.1:{port}" in line]
        assert len(errors) == 1
        assert "Address already in use" in errors[0]
        assert "serving metrics at" not in log
        # the requests were recorded all the same, for a sidecar to serve
        assert any(f.endswith(".db") for f in os.listdir(g.directory))
    finally:
        taken.close()


# -- in-process: a collect function that fails ------------------------------------------------------

def test_failing_collection_is_a_500_and_the_server_goes_on():
    import logging
    import threading

    from gunicorn_prometheus_exporter.server.http import Exposition, MetricsServer
    from gunicorn_prometheus_exporter.server.sockets import listening_socket
    from gunicorn_prometheus_exporter.server.webconfig import WebConfig

    calls = []

    def collect():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("storage exploded")
        return []

    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    log = logging.getLogger("test-failing-collection")
    log.addHandler(Keep())
    log.propagate = False
    server = MetricsServer(listening_socket("127.0.0.1", 0), Exposition(collect, "test"),
                           WebConfig(), log)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        status, headers, body = get(port)
        assert (status, body) == (500, b"collecting metrics failed\n")
        assert headers["content-type"] == "text/plain; charset=utf-8"
        assert [r.getMessage() for r in records if r.levelno >= logging.ERROR] == [
            "metrics server: collecting metrics failed"]
        assert "storage exploded" in str(records[-1].exc_info[1])
        assert get(port)[0] == 200  # the next scrape works
        assert get(port, "/-/healthy")[0] == 200
    finally:
        server.shutdown()
        server.server_close()


def test_trickling_and_idle_clients_are_cut_at_the_header_deadline(monkeypatch):
    """SOCKET_TIMEOUT bounds each read; HEADER_TIMEOUT bounds the whole request head, so a
    client that sends a byte now and then cannot hold a connection slot for ever."""
    import logging
    import threading

    from gunicorn_prometheus_exporter.server import http as server_http
    from gunicorn_prometheus_exporter.server.sockets import listening_socket
    from gunicorn_prometheus_exporter.server.webconfig import WebConfig

    monkeypatch.setattr(server_http, "HEADER_TIMEOUT", 0.5)
    server = server_http.MetricsServer(
        listening_socket("127.0.0.1", 0),
        server_http.Exposition(lambda: [], "test"), WebConfig(),
        logging.getLogger("test-header-deadline"))
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    port = server.server_address[1]
    try:
        trickle = socket.create_connection(("127.0.0.1", port), timeout=5)
        idle = socket.create_connection(("127.0.0.1", port), timeout=5)
        keep_alive = socket.create_connection(("127.0.0.1", port), timeout=5)
        keep_alive.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while not answer.endswith(b"\r\n\r\nOK\n"):
            answer += keep_alive.recv(1000)
        assert answer.startswith(b"HTTP/1.1 200 OK")
        started = time.monotonic()
        head = b"GET /metrics HTTP/1.1\r\nHost: x\r\n"
        cut_after = None
        for i in range(40):  # one byte every 0.1 s: 4 s if never cut
            try:
                trickle.sendall(head[i:i + 1] or b"X")
            except (BrokenPipeError, ConnectionResetError):
                cut_after = time.monotonic() - started
                break
            trickle.setblocking(False)
            try:
                if trickle.recv(1) == b"":
                    cut_after = time.monotonic() - started
                    break
            except BlockingIOError:
                pass
            except ConnectionResetError:
                cut_after = time.monotonic() - started
                break
            trickle.setblocking(True)
            time.sleep(0.1)  # the client's own pace, not synchronisation
        assert cut_after is not None and 0.4 < cut_after < 2.0, cut_after
        for conn in (idle, keep_alive):  # idle since connecting, or since the last answer
            conn.settimeout(3)
            assert conn.recv(1) == b""
        assert time.monotonic() - started < 3.0
        # a request whose headers come in time is not affected, nor is a slow body reader
        status, _, body = get(port)
        assert status == 200
        status, _, body = get(port, "/-/healthy")
        assert (status, body) == (200, b"OK\n")
        # every connection's thread has ended (it forgets its entry before it counts itself
        # closed), and none left one behind that could cut a later socket with the same number
        until(lambda: server._open == 0, timeout=5, message="the server's connections to end")
        with server._waits_lock:
            assert server._waits == {}
    finally:
        for conn in (trickle, idle, keep_alive):
            conn.close()
        server.shutdown()
        server.server_close()

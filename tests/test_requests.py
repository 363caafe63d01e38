"""Request metrics through real gunicorn processes, exact to the request and the byte."""
import os
import signal
import socket
import subprocess

import pytest

from support.tools import require_tool
from support.wait import until

WORKER_CLASSES = ["sync", "gthread"]

# (method, path, body, headers) -> expected (route, status, response body bytes)
MIX = [
    *[("GET", "/", None, {}, "/", "200", 34)] * 5,
    *[("GET", f"/users/{i}", None, {}, "/users/{id}", "200", 7) for i in (1, 2, 3)],
    *[("GET", "/error", None, {}, "/error", "500", 0)] * 2,
    ("GET", "/nope/123", None, {}, "unmatched", "404", 10),
    ("GET", "/status/503", None, {}, "/status/{id}", "503", 7),
    *[("POST", "/upload", b"x" * 1000, {}, "/upload", "200", 5)] * 2,
    ("POST", "/upload", (b"y" * 700, b"z" * 77), {"Transfer-Encoding": "chunked"},
     "/upload", "200", 4),
    ("GET", "/stream?chunks=4&size=100", None, {}, "/stream", "200", 400),
]


def _send_mix(g):
    for method, path, body, headers, _, status, _ in MIX:
        if isinstance(body, tuple):
            body = iter(body)  # a fresh chunked body for every run
        code, _ = g.request(path, method=method, body=body, headers=headers)
        assert str(code) == status, path


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_every_request_counted_exactly(start_gunicorn, worker_class):
    extra = ["--threads", "4"] if worker_class == "gthread" else []
    g = start_gunicorn(worker_class=worker_class, extra_args=extra).wait_ready(workers=2)
    _send_mix(g)
    s = g.scrape_until(lambda s: s.total("gunicorn_http_requests_total") == len(MIX))
    expected = {}
    for method, _, _, _, route, status, _ in MIX:
        expected[(method, route, status)] = expected.get((method, route, status), 0) + 1
    got = {(dict(ls)["method"], dict(ls)["route"], dict(ls)["status"]): v
           for ls, v in s.series("gunicorn_http_requests_total").items()}
    assert got == expected
    total = len(MIX)
    assert s.total("gunicorn_worker_requests_total") == total
    assert s.total("gunicorn_http_request_duration_seconds_count") == total
    assert s.total("gunicorn_worker_request_duration_seconds_count") == total
    assert s.total("gunicorn_http_request_size_bytes_sum") == 2000 + 777
    assert s.total("gunicorn_http_request_size_bytes_sum", route="/upload") == 2777
    sent = sum(m[6] for m in MIX)
    assert s.total("gunicorn_http_response_size_bytes_sum") == sent
    assert s.total("gunicorn_worker_response_size_bytes_sum") == sent
    assert s.value("gunicorn_http_response_size_bytes_sum", method="GET",
                   route="/stream") == 400


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_raising_app_gives_500_and_one_failed_request(start_gunicorn, worker_class):
    g = start_gunicorn(worker_class=worker_class, workers=1).wait_ready(workers=1)
    assert g.request("/error")[0] == 500
    s = g.scrape()
    failed = s.series("gunicorn_worker_failed_requests_total")
    assert list(failed.values()) == [1.0]
    assert dict(next(iter(failed))) == {"worker_id": "0", "method": "GET",
                                        "endpoint": "/error", "error_type": "DemoError"}
    assert s.value("gunicorn_http_requests_total", method="GET", route="/error",
                   status="500") == 1
    assert s.total("gunicorn_worker_error_handling_total") == 0  # not counted twice


def test_malformed_http_is_counted_as_gunicorn_error(start_gunicorn):
    import socket
    g = start_gunicorn(workers=1).wait_ready(workers=1)
    with socket.create_connection(("127.0.0.1", g.port)) as c:
        c.sendall(b"NOT A REQUEST\r\n\r\n")
        assert c.recv(100).startswith(b"HTTP/1.1 400")
    s = until(lambda: (lambda s: s if s.total("gunicorn_worker_error_handling_total") else
                       None)(g.scrape()), message="error_handling counted")
    assert s.total("gunicorn_worker_error_handling_total") == 1
    assert s.total("gunicorn_http_requests_total") == 0
    assert s.total("gunicorn_worker_failed_requests_total") == 0


def test_sigkilled_worker_counts_survive_and_slot_is_reused(start_gunicorn):
    g = start_gunicorn(workers=2).wait_ready(workers=2)
    for _ in range(20):
        assert g.request("/")[0] == 200
    before = g.scrape_until(lambda s: s.total("gunicorn_http_requests_total") == 20)
    victim = g.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    until(lambda: victim not in g.worker_pids() and len(g.worker_pids()) == 2,
          message="worker replaced")
    g.wait_ready(workers=2)
    for _ in range(5):
        assert g.request("/")[0] == 200
    after = g.scrape_until(lambda s: s.total("gunicorn_http_requests_total") == 25)
    assert before.total("gunicorn_http_requests_total", route="/") == 20
    assert after.total("gunicorn_http_requests_total", route="/") == 25
    assert after.total("gunicorn_http_requests_total") == 25
    assert sorted(dict(ls)["worker_id"] for ls in after.series("gunicorn_worker_capacity")) \
        == ["0", "1"]
    files = sorted(f for f in os.listdir(g.directory) if f.endswith("_w0.db")
                   or f.endswith("_w1.db") or f.endswith("_w2.db"))
    assert files == ["counter_w0.db", "counter_w1.db", "gauge_livesum_w0.db",
                     "gauge_livesum_w1.db", "histogram_w0.db", "histogram_w1.db"]


def test_user_metrics_follow_slots_whatever_the_import_order(start_gunicorn):
    g = start_gunicorn(app="apps.user_metrics:app", workers=2,
                       extra_args=["--preload", "--chdir", os.path.dirname(__file__)])
    g.wait_ready(workers=2)
    for _ in range(7):
        assert g.request("/")[0] == 200
    s = g.scrape()
    assert s.value("shop_orders_total", kind="book") == 7
    assert all(not f.split("_")[-1][:-3].isdigit() for f in os.listdir(g.directory)
               if f.endswith(".db")), os.listdir(g.directory)


def test_exposition_passes_promtool(start_gunicorn):
    promtool = require_tool("promtool")
    g = start_gunicorn(workers=2).wait_ready(workers=2)
    _send_mix(g)
    text = g.scrape().text
    result = subprocess.run([promtool, "check", "metrics"], input=text, text=True,
                            capture_output=True)
    assert result.returncode == 0, result.stdout + result.stderr
    families = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(families) == len(set(families))


def test_user_request_hooks_still_run(start_gunicorn, tmp_path):
    marks = tmp_path / "marks"
    conf = tmp_path / "hooks.conf.py"
    conf.write_text(
        f"def pre_request(worker, req):\n    open({str(marks)!r}, 'a').write('<')\n"
        f"def post_request(worker, req, environ, resp):\n"
        f"    open({str(marks)!r}, 'a').write('>')\n")
    g = start_gunicorn(workers=1, config=str(conf)).wait_ready(workers=1)
    for _ in range(3):
        assert g.request("/")[0] == 200
    g.scrape_until(lambda s: s.total("gunicorn_http_requests_total") == 3)
    assert marks.read_text() == "<><><>"


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
def test_a_content_length_no_request_can_have_is_counted_as_unknown(start_gunicorn,
                                                                    worker_class, compiled):
    """A client declaring more body bytes than a float holds (10**309) had its request go
    unrecorded (the size overflowed the store): it is counted like a Content-Length that
    is no number, as a request of unknown size (0), and the other requests are unchanged."""
    env = {} if compiled else {"GUNICORN_PROMETHEUS_NO_SPEEDUPS": "1"}
    g = start_gunicorn(worker_class=worker_class, workers=1, env=env).wait_ready(workers=1)
    for length in ("1" + "0" * 309, str(2 ** 64)):
        with socket.create_connection(("127.0.0.1", g.port), timeout=10) as sock:
            sock.sendall(f"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: {length}\r\n"
                         f"Connection: close\r\n\r\n".encode())
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer[:80]
    assert g.request("/", method="POST", body=b"x" * 10)[0] == 200
    s = g.scrape_until(lambda s: s.total("gunicorn_http_requests_total") == 3)
    assert s.value("gunicorn_http_requests_total", method="GET", route="/", status="200") == 2
    assert s.total("gunicorn_http_request_size_bytes_sum") == 10
    # both in the first bucket (64 bytes), where a request without a body is
    assert s.value("gunicorn_http_request_size_bytes_bucket", method="GET", route="/",
                   le="64.0") == 2
    assert "could not record" not in g.output()

"""Request queue time from a proxy's X-Request-Start / X-Queue-Start, through real gunicorn:
every header form real proxies send, exact bucket counts, bad stamps counted."""
import time
from pathlib import Path

import pytest

from gunicorn_prometheus_exporter.queue_time import stamp_seconds

QUEUE = "gunicorn_http_request_queue_duration_seconds"
INVALID = "gunicorn_http_request_queue_invalid_total"
ASGI = "gunicorn_prometheus_exporter.PrometheusASGIWorker"
TESTS = ["--chdir", str(Path(__file__).parent)]  # where apps.traced is imported from


@pytest.mark.parametrize("value,expected", [
    ("t=1700000000.123", 1700000000.123),  # nginx t=${msec}
    ("1700000000.123", 1700000000.123),
    ("1700000000123", 1700000000.123),  # Heroku, HAProxy date(0,ms): milliseconds
    ("t=1700000000123", 1700000000.123),
    ("t=1700000000123456", 1700000000.123456),  # Apache %t: microseconds
    ("1700000000123456", 1700000000.123456),
    ("1700000000123456789", 1700000000.123456789),  # nanoseconds
    ("t=1700000000123456 D=1234", 1700000000.123456),  # Apache "%t %D"
    (" t=1700000000 ", 1700000000.0),  # whole seconds
])
def test_every_proxy_form_reads_as_unix_seconds(value, expected):
    assert stamp_seconds(value) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("value", ["", "t=", "abc", "t=-5", "0", "nan", "inf", "t=1e400"])
def test_what_is_no_stamp_reads_as_none(value):
    assert stamp_seconds(value) is None


# buckets of the tests: waits lie seconds from every bound, so a loaded machine, which
# adds tenths, never moves one
BUCKETS = {"PROMETHEUS_QUEUE_BUCKETS": "1,2,4,8,16,32"}
FORMS = [  # (header, format of the stamp taken ``offset`` seconds ago, offset)
    ("X-Request-Start", lambda t: f"t={t:.3f}", 1.4),  # nginx t=${msec}
    ("X-Request-Start", lambda t: f"{int(t * 1e3)}", 2.8),  # Heroku: ms
    ("X-Request-Start", lambda t: f"t={int(t * 1e6)}", 5.5),  # Apache %t: µs
    ("X-Queue-Start", lambda t: f"t={int(t * 1e3)}", 11.0),  # HAProxy t=%[date(0,ms)]
    ("X-Queue-Start", lambda t: f"{int(t * 1e6)}", 22.0),  # µs without t=
    ("X-Request-Start", lambda t: f"t={t:.6f} D=12", 0.4),  # Apache "%t %D"
]


def _check(g):
    for name, form, offset in FORMS:
        assert g.request("/", headers={name: form(time.time() - offset)})[0] == 200
    # clock skew: stamped 5 s after the worker started it, observed as 0
    assert g.request("/", headers={"X-Request-Start": f"t={time.time() + 5:.3f}"})[0] == 200
    # absurd: an hour ago (over queue_max_seconds, 600 by default): dropped
    assert g.request("/", headers={"X-Request-Start": f"{int((time.time() - 3600) * 1e3)}"}
                     )[0] == 200
    assert g.request("/", headers={"X-Queue-Start": "t=soon"})[0] == 200
    assert g.request("/")[0] == 200  # no stamp: nothing observed
    s = g.scrape_until(lambda s: s.total("gunicorn_http_requests_total") == 10)
    buckets = {dict(ls)["le"]: v for ls, v in s.series(QUEUE + "_bucket").items()}
    assert buckets == {"1.0": 2.0, "2.0": 3.0, "4.0": 4.0, "8.0": 5.0, "16.0": 6.0,
                       "32.0": 7.0, "+Inf": 7.0}
    assert s.value(QUEUE + "_count") == 7
    assert s.value(QUEUE + "_sum") == pytest.approx(sum(f[2] for f in FORMS), abs=1.0)
    assert s.value(INVALID, reason="negative") == 1
    assert s.value(INVALID, reason="too_large") == 1
    assert s.value(INVALID, reason="malformed") == 1


@pytest.mark.parametrize("worker_class,app,extra", [
    ("sync", "apps.traced:app", []),
    ("gthread", "apps.traced:app", ["--threads", "4"]),
    (ASGI, "apps.traced:asgi_app", []),
], ids=["sync", "gthread", "asgi"])
@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
def test_queue_time_of_every_header_form(start_gunicorn, worker_class, app, extra, compiled):
    env = dict(BUCKETS, **({} if compiled else {"GUNICORN_PROMETHEUS_NO_SPEEDUPS": "1"}))
    g = start_gunicorn(app=app, worker_class=worker_class, workers=2, extra_args=extra + TESTS,
                       env=env).wait_ready(workers=2)
    _check(g)


def test_switched_off_nothing_is_observed_and_the_family_is_absent(start_gunicorn):
    g = start_gunicorn(app="apps.traced:app", workers=1, extra_args=TESTS,
                       env={"PROMETHEUS_QUEUE_TIME": "false"}).wait_ready(workers=1)
    assert g.request("/", headers={"X-Request-Start": f"t={time.time():.3f}"})[0] == 200
    s = g.scrape_until(lambda s: s.total("gunicorn_http_requests_total") == 1)
    assert QUEUE not in s.types and INVALID not in s.names()


def test_queue_max_seconds_is_a_setting(start_gunicorn):
    g = start_gunicorn(app="apps.traced:app", workers=1, extra_args=TESTS,
                       env={"PROMETHEUS_QUEUE_MAX_SECONDS": "10"}).wait_ready(workers=1)
    g.request("/", headers={"X-Request-Start": f"t={time.time() - 1:.3f}"})
    g.request("/", headers={"X-Request-Start": f"t={time.time() - 100:.3f}"})
    s = g.scrape_until(lambda s: s.total("gunicorn_http_requests_total") == 2)
    assert s.value(QUEUE + "_count") == 1
    assert s.value(INVALID, reason="too_large") == 1

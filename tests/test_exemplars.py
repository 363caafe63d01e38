"""Exemplars across workers through real gunicorn: the trace of a sampled ``traceparent``
(or of the application's OpenTelemetry span) on the duration bucket its request landed in
and on its request counter, the most recent across workers, in OpenMetrics only."""
import threading
import time
from pathlib import Path

import pytest

from gunicorn_prometheus_exporter.tracing import from_traceparent
from support.scrape import exemplars, fetch

ASGI = "gunicorn_prometheus_exporter.PrometheusASGIWorker"
TESTS = ["--chdir", str(Path(__file__).parent)]
BUCKET = "gunicorn_http_request_duration_seconds_bucket"
REQUESTS = "gunicorn_http_requests_total"
TRACE_A, TRACE_B, TRACE_C = "a" * 31 + "1", "b" * 31 + "2", "c" * 31 + "3"


def traceparent(trace_id: str, span_id: str = "00f067aa0ba902b7", flags: str = "01") -> str:
    return f"00-{trace_id}-{span_id}-{flags}"


@pytest.mark.parametrize("value,expected", [
    (traceparent(TRACE_A), (TRACE_A, "00f067aa0ba902b7")),
    (traceparent(TRACE_A, flags="03"), (TRACE_A, "00f067aa0ba902b7")),  # other flags too
    (traceparent(TRACE_A.upper()), (TRACE_A, "00f067aa0ba902b7")),
    (traceparent(TRACE_A) + "-later-version-fields", (TRACE_A, "00f067aa0ba902b7")),
    (traceparent(TRACE_A, flags="00"), None),  # not sampled
    (traceparent("0" * 32), None),  # invalid all-zero ids
    (traceparent(TRACE_A, span_id="0" * 16), None),
    ("ff-" + traceparent(TRACE_A)[3:], None),  # version ff is invalid
    (traceparent(TRACE_A)[:-1], None),
    (traceparent("g" * 32), None),
    ("", None),
])
def test_traceparent_gives_the_trace_only_when_sampled(value, expected):
    assert from_traceparent(value) == expected


def test_a_slot_keeps_the_request_that_ended_last_unless_the_clock_went_back(tmp_path):
    """Threads and coroutines of a worker record in another order than their requests
    ended: an older request leaves the slot alone. A slot newer than the wall clock dates
    from before the clock was set back: replaced, else it stayed the newest until then."""
    from gunicorn_prometheus_exporter.storage import exemplars as files

    path = files.path_of(str(tmp_path), "w0")
    f = files.ExemplarFile(path)
    slot = f.slot("k")
    reader = files.ExemplarReader(path)
    for ended, now, kept in ((100.0, 200.0, 100.0), (90.0, 200.0, 100.0),
                             (110.0, 200.0, 110.0), (50.0, 105.0, 50.0)):
        f.put(slot, 1.0, ended, bytes([int(ended)]) * 24, now)
        assert [(t, trace) for _, t, _, trace, _ in reader.read()] \
            == [(kept, bytes([int(kept)]).hex() * 16)]


def _bucket_labels(le: str, route: str = "/") -> frozenset:
    return frozenset({"method": "GET", "route": route, "le": le}.items())


def _counter_labels(route: str = "/") -> frozenset:
    return frozenset({"method": "GET", "route": route, "status": "200"}.items())


def _send(g, trace_id: str, ms: int, out: dict) -> None:
    """The answer and the time it arrived, by trace id."""
    answer = g.request(f"/?ms={ms}", headers={"traceparent": traceparent(trace_id)})
    out[trace_id] = answer + (time.monotonic(),)


@pytest.mark.parametrize("worker_class,app,extra", [
    ("sync", "apps.traced:app", []),
    ("gthread", "apps.traced:app", ["--threads", "1"]),
    (ASGI, "apps.traced:asgi_app", ["--worker-connections", "1"]),
], ids=["sync", "gthread", "asgi"])
@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
def test_newest_exemplar_across_workers_on_its_bucket(start_gunicorn, worker_class, app,
                                                      extra, compiled):
    env = {} if compiled else {"GUNICORN_PROMETHEUS_NO_SPEEDUPS": "1"}
    g = start_gunicorn(app=app, worker_class=worker_class, workers=2, env=env,
                       extra_args=extra + TESTS).wait_ready(workers=2)
    # A (2 s) starts first, B (1.1 s) once A is in flight, so on the other worker where a
    # busy worker accepts nothing (sync); both land in le=2.5. The newest is the one
    # answered last, seconds apart: A from one worker while the other holds B (sync), or
    # B after A where one worker took both.
    answers: dict = {}
    first = threading.Thread(target=_send, args=(g, TRACE_A, 2000, answers))
    first.start()
    g.scrape_until(lambda s: s.total("gunicorn_worker_in_flight_requests") == 1)
    _send(g, TRACE_B, 1100, answers)
    first.join(10)
    assert answers[TRACE_A][0] == answers[TRACE_B][0] == 200
    if worker_class == "sync":
        assert answers[TRACE_A][1] != answers[TRACE_B][1], "served by two workers"
    newest = max((TRACE_A, TRACE_B), key=lambda t: answers[t][2])
    g.request("/?ms=0", headers={"traceparent": traceparent(TRACE_C, flags="00")})
    g.request("/?ms=0")  # no trace: no exemplar
    g.scrape_until(lambda s: s.total(REQUESTS) == 4)
    found = exemplars(g.metrics_port)
    labels, value, _ = found[(BUCKET, _bucket_labels("2.5"))]
    assert labels == {"trace_id": newest, "span_id": "00f067aa0ba902b7"}
    assert (2.0 if newest == TRACE_A else 1.1) <= value <= 2.5
    assert found[(REQUESTS, _counter_labels())][0]["trace_id"] == newest
    # nothing else carries one: the unsampled and the untraced requests left none
    assert sorted(found) == sorted([(BUCKET, _bucket_labels("2.5")),
                                    (REQUESTS, _counter_labels())])
    # a later request to the same bucket replaces it, whichever worker takes it
    _send(g, TRACE_C, 1200, answers)
    g.scrape_until(lambda s: s.total(REQUESTS) == 5)
    assert exemplars(g.metrics_port)[(BUCKET, _bucket_labels("2.5"))][0]["trace_id"] == TRACE_C
    # the text format is what it was: no exemplar
    assert "trace_id" not in fetch(f"http://127.0.0.1:{g.metrics_port}/metrics")


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
def test_the_request_that_ended_last_wins_in_whatever_order_recorded(start_gunicorn,
                                                                      compiled):
    """A request is recorded after it ended: an ASGI application that goes on after its
    response (a background task) is recorded after a request sent once its answer had
    arrived. Its exemplar carries the time its response ended, not the time it was
    recorded, and does not replace the later request's. (Dated at recording, the held
    request won as the newest; through Redis, the exemplar of a request answered before
    another was sent won over that one's when its worker was slower to record it.)"""
    env = {} if compiled else {"GUNICORN_PROMETHEUS_NO_SPEEDUPS": "1"}
    g = start_gunicorn(app="apps.traced:held_asgi_app", worker_class=ASGI, workers=1,
                       env=env, extra_args=TESTS).wait_ready(workers=1)
    assert g.request("/?hold=1", headers={"traceparent": traceparent(TRACE_A)})[0] == 200
    assert g.scrape().total(REQUESTS) == 0  # answered, not recorded: held until released
    sent = time.time()
    assert g.request("/?release=1", headers={"traceparent": traceparent(TRACE_B)})[0] == 200
    answered = time.time()
    g.scrape_until(lambda s: s.total(REQUESTS) == 2)
    labels, value, stamp = exemplars(g.metrics_port)[(REQUESTS, _counter_labels())]
    assert (labels, value) == ({"trace_id": TRACE_B, "span_id": "00f067aa0ba902b7"}, 1.0)
    assert sent <= float(stamp) <= answered  # when its response ended


def test_switched_off_or_another_header(start_gunicorn):
    g = start_gunicorn(app="apps.traced:app", workers=1, extra_args=TESTS,
                       env={"PROMETHEUS_TRACE_HEADER": "X-Trace"}).wait_ready(workers=1)
    g.request("/", headers={"traceparent": traceparent(TRACE_A)})
    g.request("/", headers={"X-Trace": traceparent(TRACE_B)})
    g.scrape_until(lambda s: s.total(REQUESTS) == 2)
    assert exemplars(g.metrics_port)[(REQUESTS, _counter_labels())][0]["trace_id"] == TRACE_B
    off = start_gunicorn(app="apps.traced:app", workers=1, extra_args=TESTS,
                         env={"PROMETHEUS_EXEMPLARS": "false"}).wait_ready(workers=1)
    off.request("/", headers={"traceparent": traceparent(TRACE_A)})
    off.scrape_until(lambda s: s.total(REQUESTS) == 1)
    assert exemplars(off.metrics_port) == {}
    assert not (Path(off.directory) / "exemplars").exists()


@pytest.mark.parametrize("worker_class,app", [
    ("sync", "apps.traced:otel_app"),
    (ASGI, "apps.traced:otel_asgi_app"),
], ids=["sync", "asgi"])
def test_opentelemetry_span_of_the_application(start_gunicorn, worker_class, app):
    pytest.importorskip("opentelemetry.sdk.trace",
                        reason="opentelemetry-sdk (tests/requirements.txt)")
    g = start_gunicorn(app=app, worker_class=worker_class, workers=1,
                       extra_args=TESTS).wait_ready(workers=1)
    code, body = g.request("/")
    assert code == 200
    g.scrape_until(lambda s: s.total(REQUESTS) == 1)
    found = exemplars(g.metrics_port)
    assert found[(REQUESTS, _counter_labels())][0]["trace_id"] == body.decode()
    # a sampled traceparent wins over the span
    g.request("/", headers={"traceparent": traceparent(TRACE_A)})
    g.scrape_until(lambda s: s.total(REQUESTS) == 2)
    assert exemplars(g.metrics_port)[(REQUESTS, _counter_labels())][0]["trace_id"] == TRACE_A

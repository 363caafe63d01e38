"""Exemplars end to end: a real Prometheus (``--enable-feature=exemplar-storage``) scrapes
the plugin in OpenMetrics, and ``/api/v1/query_exemplars`` returns the trace ids the test
sent in ``traceparent``, on the bucket each request landed in."""
import time

from promapi import JOB
from support.wait import until

TRACE_FAST = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACE_SLOW = "0af7651916cd43dd8448eb211c80319c"
SPAN = "00f067aa0ba902b7"


def _exemplars(prometheus, query: str, since: float):
    """{(le or None, trace_id)} of every exemplar Prometheus holds for ``query``."""
    data = prometheus.api("query_exemplars", query=query, start=f"{since:.3f}",
                          end=f"{time.time() + 60:.3f}")
    return {(series["seriesLabels"].get("le"), e["labels"]["trace_id"])
            for series in data for e in series["exemplars"]}


def test_prometheus_stores_the_traces_sent_on_their_buckets(scenario, prometheus):
    since = time.time() - 5
    g = scenario(workers=2)
    sel = f'job="{JOB}",scenario="{scenario.name}",route="/slow"'
    for trace_id, ms in ((TRACE_FAST, 35), (TRACE_SLOW, 300)):
        code, _ = g.request(f"/slow?ms={ms}",
                            headers={"traceparent": f"00-{trace_id}-{SPAN}-01"})
        assert code == 200
    untraced = g.request("/slow?ms=1")  # no header: no exemplar
    assert untraced[0] == 200
    prometheus.wait_for(f"sum(gunicorn_http_request_duration_seconds_count{{{sel}}})", 3.0)

    def stored():
        found = _exemplars(prometheus, f"gunicorn_http_request_duration_seconds_bucket{{{sel}}}",
                           since)
        return found if {("0.05", TRACE_FAST), ("0.5", TRACE_SLOW)} <= found else None

    found = until(stored, timeout=20, message="the exemplars in Prometheus")
    assert found == {("0.05", TRACE_FAST), ("0.5", TRACE_SLOW)}
    # the counter's exemplar is the newest at each scrape: the slow request's in the end
    counters = _exemplars(prometheus, f"gunicorn_http_requests_total{{{sel}}}", since)
    assert (None, TRACE_SLOW) in counters
    assert {trace for _, trace in counters} <= {TRACE_FAST, TRACE_SLOW}

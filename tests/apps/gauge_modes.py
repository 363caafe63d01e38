"""The application's own prometheus_client metrics, one gauge per multiprocess mode that
the installed prometheus_client supports, a counter and a histogram, all labelled ``l``:
``/set?l=a&v=1`` sets every gauge of label a to 1, adds 1 to the counter and observes 1."""
from urllib.parse import parse_qs

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import Gauge as _Gauge

MODES = sorted(_Gauge._MULTIPROC_MODES)
GAUGES = {mode: Gauge(f"app_gauge_{mode}", f"A gauge in mode {mode}.", ["l"],
                      multiprocess_mode=mode) for mode in MODES}
COUNTER = Counter("app_events", "Events.", ["l"])
HISTOGRAM = Histogram("app_sizes", "Sizes.", ["l"], buckets=(5, 50))


def app(environ, start_response):
    query = parse_qs(environ.get("QUERY_STRING", ""))
    label, value = query["l"][0], float(query["v"][0])
    for gauge in GAUGES.values():
        gauge.labels(label).set(value)
    COUNTER.labels(label).inc(value)
    HISTOGRAM.labels(label).observe(value)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
    return [b"ok\n"]

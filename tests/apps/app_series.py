"""Every request adds a new series to the application's own prometheus_client counter:
``/app?k=<key>`` counts 1 for label ``key`` (a long key fills the storage fast), on one
route for the plugin."""
from urllib.parse import parse_qs

from prometheus_client import Counter

HITS = Counter("app_hits", "Hits by key.", ["key"])


def app(environ, start_response):
    key = parse_qs(environ.get("QUERY_STRING", ""))["k"][0]
    HITS.labels(key).inc()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
    return [b"ok\n"]

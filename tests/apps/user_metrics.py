"""An app with its own prometheus_client metric, created at import time (the import order
that broke the original project's YAML set-up)."""
import os

from prometheus_client import Counter

ORDERS = Counter("shop_orders", "Orders placed.", ["kind"])


def app(environ, start_response):
    ORDERS.labels("book").inc()
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]

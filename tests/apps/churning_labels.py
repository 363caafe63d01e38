"""The application's own live gauge under label values that never come back:
``/batch?r=<round>&n=<count>`` sets ``app_batch{item="<round>-<j>"}`` to j for every
j < count (mode livesum: the files of a worker that exits are removed with it) and counts
the request in ``app_batches_total``."""
from urllib.parse import parse_qs

from prometheus_client import Counter, Gauge

BATCH = Gauge("app_batch", "Items of the current batch.", ["item"],
              multiprocess_mode="livesum")
BATCHES = Counter("app_batches", "Batch requests.")


def app(environ, start_response):
    query = parse_qs(environ.get("QUERY_STRING", ""))
    round_, count = query["r"][0], int(query["n"][0])
    for j in range(count):
        BATCH.labels(f"{round_}-{j}").set(j)
    BATCHES.inc()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
    return [b"ok\n"]

"""A dirty app (gunicorn >= 27) and the WSGI app that calls it: ``/square?x=N`` (N*N),
``/fail`` (the dirty app raises ValueError), ``/slow?ms=N`` (the task sleeps N ms),
``/crash`` (the dirty worker exits with code 1 mid-task)."""
import os
import time
from urllib.parse import parse_qs

DIRTY_APP = "apps.dirty_app:Compute"
#: gunicorn's arguments for a pool of two dirty workers running it (gunicorn run with
#: ``--chdir tests``), killed after 2 s without a heartbeat
POOL_ARGS = ["--dirty-app", DIRTY_APP, "--dirty-workers", "2", "--dirty-timeout", "2"]

try:
    from gunicorn.dirty import DirtyApp, get_dirty_client
except ImportError:  # gunicorn < 27: the tests skip
    DirtyApp = object


class Compute(DirtyApp):
    def square(self, x):
        return x * x

    def fail(self):
        raise ValueError("the dirty app failed on purpose")

    def slow(self, ms):
        time.sleep(ms / 1000.0)
        return ms

    def crash(self):
        os._exit(1)


def app(environ, start_response):
    query = {k: int(v[0]) for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    action = environ["PATH_INFO"].strip("/")
    try:
        result = get_dirty_client().execute(DIRTY_APP, action, *query.values())
        status, body = "200 OK", str(result).encode()
    except Exception as exc:  # the dirty app's failure comes back as an error
        status, body = "500 Internal Server Error", type(exc).__name__.encode()
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]

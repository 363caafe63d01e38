"""App for lifecycle tests: slow requests, and a worker that exits with a chosen code."""
import os
import time


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path.startswith("/exit/"):
        os._exit(int(path.rsplit("/", 1)[1]))
    if path.startswith("/sleep/"):
        time.sleep(float(path.rsplit("/", 1)[1]))
    body = b"ok\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
    return [body]

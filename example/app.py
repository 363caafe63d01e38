"""Flask example: every kind of request the metrics distinguish.

``/`` and ``/users/<id>`` (route templates), ``/boom`` (an exception Flask turns into a 500),
``/raw`` (an exception that reaches gunicorn: a streamed body failing before its first
chunk), ``/upload`` (POST, plain or chunked), ``/stream?n=N`` (a streamed download of N
chunks of 100 bytes) and ``/file`` (a file sent with ``wsgi.file_wrapper``/sendfile).

Run: ``gunicorn -c gunicorn_simple.conf.py app:app`` from this directory."""
import os

from flask import Flask, Response, request, send_file

from gunicorn_prometheus_exporter.frameworks.flask import instrument

SAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static", "sample.txt")


class HandledError(RuntimeError):
    """Raised by /boom; Flask renders the 500."""


class RawError(RuntimeError):
    """Raised by /raw's body; gunicorn answers the 500."""


app = Flask(__name__)
instrument(app)  # the one line: route templates and Flask's own 500s


@app.get("/")
def index():
    return Response("hello\n", mimetype="text/plain")


@app.get("/users/<int:user_id>")
def user(user_id):
    return Response(f"user {user_id}\n", mimetype="text/plain")


@app.get("/boom")
def boom():
    raise HandledError("handled by Flask")


@app.get("/raw")
def raw():
    def body():
        raise RawError("raised while gunicorn reads the body")
        yield b""  # pragma: no cover

    return Response(body(), mimetype="text/plain")


@app.post("/upload")
def upload():
    data = request.get_data()
    return Response(f"{len(data)}\n", mimetype="text/plain")


@app.get("/stream")
def stream():
    n = min(int(request.args.get("n", "10")), 10_000)
    return Response((b"x" * 100 for _ in range(n)), mimetype="application/octet-stream")


@app.get("/file")
def file():
    return send_file(SAMPLE, mimetype="text/plain")

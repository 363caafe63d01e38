"""FastAPI example for the ASGI workers (``PrometheusASGIWorker``, ``PrometheusUvicornWorker``).

The same routes as ``app.py``: ``/`` and ``/users/{user_id}`` (route templates), ``/boom``
(an exception Starlette turns into a 500, and re-raises to the worker), ``/raw`` (a
streamed body failing after its first chunk), ``/upload`` (POST, plain or chunked),
``/stream?n=N`` and ``/file``. No line of set-up: the worker reads the matched route.

Run: ``gunicorn -c gunicorn_asgi.conf.py async_app:app`` from this directory."""
import os

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, PlainTextResponse, StreamingResponse

SAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static", "sample.txt")


class HandledError(RuntimeError):
    """Raised by /boom; Starlette renders the 500."""


class RawError(RuntimeError):
    """Raised by /raw's body after its first chunk went out."""


app = FastAPI()


@app.get("/", response_class=PlainTextResponse)
async def index():
    return "hello\n"


@app.get("/users/{user_id}", response_class=PlainTextResponse)
async def user(user_id: int):
    return f"user {user_id}\n"


@app.get("/boom")
async def boom():
    raise HandledError("handled by Starlette")


@app.get("/raw")
async def raw():
    async def body():
        yield b"x" * 10
        raise RawError("raised in the middle of the body")

    return StreamingResponse(body(), media_type="text/plain")


@app.post("/upload", response_class=PlainTextResponse)
async def upload(request: Request):
    data = await request.body()
    return f"{len(data)}\n"


@app.get("/stream")
async def stream(n: int = 10):
    async def body():
        for _ in range(min(n, 10_000)):
            yield b"x" * 100

    return StreamingResponse(body(), media_type="application/octet-stream")


@app.get("/file")
async def file():
    return FileResponse(SAMPLE, media_type="text/plain")

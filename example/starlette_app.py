"""Starlette example, with a mounted sub-application (``/api/items/{item_id}``): the same
routes as ``app.py`` otherwise. No line of set-up: the worker reads the matched route.

Run: ``gunicorn -c gunicorn_uvicorn.conf.py starlette_app:app`` from this directory."""
import os

from starlette.applications import Starlette
from starlette.responses import FileResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Mount, Route

SAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static", "sample.txt")


class HandledError(RuntimeError):
    """Raised by /boom; Starlette renders the 500."""


class RawError(RuntimeError):
    """Raised by /raw's body after its first chunk went out."""


async def index(request):
    return PlainTextResponse("hello\n")


async def user(request):
    return PlainTextResponse(f"user {request.path_params['user_id']}\n")


async def item(request):
    return PlainTextResponse(f"item {request.path_params['item_id']}\n")


async def boom(request):
    raise HandledError("handled by Starlette")


async def raw(request):
    async def body():
        yield b"x" * 10
        raise RawError("raised in the middle of the body")

    return StreamingResponse(body(), media_type="text/plain")


async def upload(request):
    data = await request.body()
    return PlainTextResponse(f"{len(data)}\n")


async def stream(request):
    n = min(int(request.query_params.get("n", "10")), 10_000)

    async def body():
        for _ in range(n):
            yield b"x" * 100

    return StreamingResponse(body(), media_type="application/octet-stream")


async def file(request):
    return FileResponse(SAMPLE, media_type="text/plain")


app = Starlette(routes=[
    Route("/", index),
    Route("/users/{user_id:int}", user),
    Route("/boom", boom),
    Route("/raw", raw),
    Route("/upload", upload, methods=["POST"]),
    Route("/stream", stream),
    Route("/file", file),
    Mount("/api", routes=[Route("/items/{item_id}", item)]),
])

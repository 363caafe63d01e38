"""``PrometheusUvicornWorker``: uvicorn's gunicorn worker (the ``uvicorn-worker``
package), for FastAPI, Starlette and any ASGI application.

Requests are recorded by the same ASGI wrapper as the native ASGI worker
(``frameworks.asgi``); uvicorn runs neither gunicorn's request hooks nor its error
handling, so everything comes from the ASGI messages. Capacity is reported as
``worker_connections``; uvicorn itself does not enforce it."""
from __future__ import annotations

from uvicorn_worker import UvicornWorker

from ..frameworks.asgi import instrument
from .base import ConnectionsMixin


class PrometheusUvicornWorker(ConnectionsMixin, UvicornWorker):
    threaded = False
    request_hooks = False

    def load_wsgi(self) -> None:
        UvicornWorker.load_wsgi(self)
        if self._prometheus is not None:
            self.wsgi = instrument(self.wsgi, self._prometheus)
            # the wrapper is ASGI 3; uvicorn would guess ASGI 2 for the compiled one (its
            # __call__ is not a coroutine function)
            self.config.interface = "asgi3"

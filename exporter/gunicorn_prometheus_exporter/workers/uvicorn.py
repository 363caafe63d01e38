"""``PrometheusUvicornWorker``: uvicorn's gunicorn worker (the ``uvicorn-worker``
package), for FastAPI, Starlette and any ASGI application.

Requests are recorded by the same ASGI wrapper as the native ASGI worker
(``workers.asgi_metrics``); uvicorn runs neither gunicorn's request hooks nor its error
handling, so everything comes from the ASGI messages. Capacity is reported as
``worker_connections``; uvicorn itself does not enforce it. Without uvicorn and
uvicorn-worker, selecting this class stops start-up with one line naming the extra."""
from __future__ import annotations

import asyncio
import functools
import signal
from typing import Any, Callable

from .unavailable import install_hint, unavailable

try:
    from uvicorn_worker import UvicornWorker
except ImportError as exc:
    PrometheusUvicornWorker = unavailable(
        "PrometheusUvicornWorker",
        f"PrometheusUvicornWorker needs uvicorn-worker ({exc}): {install_hint('asgi')}")
else:
    from .. import exits
    from .asgi_metrics import instrument
    from .mixin import ConnectionsMixin

    #: the signals uvicorn's own server takes over while it serves (gunicorn's graceful stop)
    _SERVER_SIGNALS = (signal.SIGTERM, signal.SIGINT)

    class PrometheusUvicornWorker(ConnectionsMixin, UvicornWorker):
        threaded = False
        request_hooks = False
        samples_on_loop = True

        def load_wsgi(self) -> None:
            UvicornWorker.load_wsgi(self)
            if self._prometheus is not None:
                self._prometheus.extras.application_loaded()
                self.wsgi = instrument(self.wsgi, self._prometheus.labeller,
                                       self._prometheus.extras, self._prometheus.native)
                # the wrapper is ASGI 3; uvicorn would guess ASGI 2 for the compiled one (its
                # __call__ is not a coroutine function)
                self.config.interface = "asgi3"

        def _install_sigquit_handler(self) -> None:
            # Called by uvicorn-worker's _serve just before uvicorn's Server.serve(), which
            # installs its own TERM/INT handlers synchronously on entry: a callback scheduled
            # now runs after that, and puts ours in front so a draining worker is `stopping`.
            UvicornWorker._install_sigquit_handler(self)
            loop = asyncio.get_running_loop()
            loop.call_soon(self._chain_server_signals)
            if self._prometheus is not None:
                self._prometheus.sampler.run_on(loop)

        def _chain_server_signals(self) -> None:
            for sig in _SERVER_SIGNALS:
                theirs = signal.getsignal(sig)
                if callable(theirs):
                    signal.signal(sig, functools.partial(self._server_signal, theirs))

        def _server_signal(self, theirs: Callable[[int, Any], Any], sig: int, frame: Any) -> None:
            self._stopping(exits.TERMINATED)
            theirs(sig, frame)

"""``PrometheusASGIWorker``: gunicorn's native ``asgi`` worker (gunicorn >= 24), for
FastAPI, Starlette and any ASGI application; up to ``worker_connections`` connections at
once on one asyncio loop.

Requests are recorded by an ASGI wrapper around the application (``workers.asgi_metrics``):
status, sizes and duration from the ASGI messages themselves, so gunicorn's
``pre_request``/``post_request`` hooks are left to the user. On a gunicorn without the
native worker, selecting this class stops start-up with one line."""
from __future__ import annotations

SUPPORTED = "gunicorn 24.0 or later (the native asgi worker appeared in 24.0)"

try:
    from gunicorn.workers.gasgi import ASGIWorker
except ImportError as exc:  # gunicorn 23
    _MISSING = str(exc)
    ASGIWorker = None  # type: ignore[assignment,misc]

if ASGIWorker is not None:
    from .. import exits
    from .asgi_metrics import instrument
    from .mixin import ConnectionsMixin

    class PrometheusASGIWorker(ConnectionsMixin, ASGIWorker):  # type: ignore
        threaded = False
        request_hooks = False
        samples_on_loop = True

        def load_wsgi(self) -> None:
            ASGIWorker.load_wsgi(self)
            if self._prometheus is not None:
                self._prometheus.extras.application_loaded()
                self.asgi = instrument(self.asgi, self._prometheus.labeller,
                                       self._prometheus.extras, self._prometheus.native)
                # set up by ASGIWorker.init_process before this; its timers run once it runs
                self._prometheus.sampler.run_on(self.loop)

        # the asyncio worker takes its signals through the event loop, not through
        # handle_exit/handle_quit/handle_abort as the other workers do
        def handle_exit_signal(self) -> None:
            self._stopping(exits.TERMINATED)
            ASGIWorker.handle_exit_signal(self)

        def handle_quit_signal(self) -> None:
            self._stopping(exits.TERMINATED)
            ASGIWorker.handle_quit_signal(self)

        def handle_abort_signal(self) -> None:
            self._stopping(exits.TIMEOUT)
            ASGIWorker.handle_abort_signal(self)

else:
    import gunicorn

    from .unavailable import unavailable

    PrometheusASGIWorker = unavailable(  # type: ignore[misc]
        "PrometheusASGIWorker",
        f"PrometheusASGIWorker needs {SUPPORTED}; this is gunicorn {gunicorn.__version__}: "
        "upgrade gunicorn, or use PrometheusUvicornWorker")

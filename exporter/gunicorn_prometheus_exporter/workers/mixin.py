"""The mixin every Prometheus worker class puts in front of its gunicorn worker class:
the master's set-up from ``check_config`` (and ``__init__``, which runs in the master), the
worker's own set-up in ``init_process``, the body meter around the WSGI application,
gunicorn's own error path and the worker's stop signals.

Importing this module prepares the process (``prepare``): gunicorn imports the worker
class before it loads (or preloads) the application, so the application's own metrics
follow the plugin's directory and worker identities."""
from __future__ import annotations

from typing import Any, Optional

from .. import exits, master
from . import prepare
from .body import metered
from .process import WorkerMetrics

prepare.process()


class PrometheusWorkerMixin:
    """Mixed in front of a gunicorn worker class."""

    #: whether several threads of one process record at once
    threaded = False
    #: whether requests are timed by gunicorn's pre_request/post_request hooks (WSGI
    #: workers); an ASGI worker records each request itself through ``record()``
    request_hooks = True
    #: whether the worker runs the resource sampler on its event loop (``run_on``, called
    #: by the worker class) rather than in a thread of its own
    samples_on_loop = False
    _prometheus: Optional[WorkerMetrics] = None

    @property
    def capacity(self) -> int:
        """Requests one worker process handles at once."""
        return 1

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        master.ensure(cfg, log)
        parent = getattr(super(), "check_config", None)
        if parent is not None:
            parent(cfg, log)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # runs in the master: covers a HUP-reloaded cfg, and the forked worker keeps it
        self._prometheus_master = master.ensure(self.cfg, self.log, self.app)

    def init_process(self) -> None:
        runtime = getattr(self, "_prometheus_master", None)
        if runtime is not None and hasattr(self, "_gunicorn_prometheus_claim"):
            try:
                self._prometheus = WorkerMetrics(self, runtime)
            except Exception:
                self.log.exception("prometheus: metrics disabled in worker %s", self.pid)
        super().init_process()

    def load_wsgi(self) -> None:
        super().load_wsgi()
        if self._prometheus is not None:
            self._prometheus.extras.application_loaded()
            self.wsgi = metered(self.wsgi, self._prometheus.extras.span,
                                self._prometheus.native)

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        if self._prometheus is not None:
            self._prometheus.labeller.gunicorn_error(req, exc)
        super().handle_error(req, client, addr, exc)

    def _stopping(self, intent: int) -> None:
        if self._prometheus is not None:
            self._prometheus.intent.set(intent)
            self._prometheus.set_state("stopping")

    def handle_exit(self, sig: int, frame: Any) -> None:
        self._stopping(exits.TERMINATED)
        super().handle_exit(sig, frame)

    def handle_quit(self, sig: int, frame: Any) -> None:
        self._stopping(exits.TERMINATED)
        super().handle_quit(sig, frame)

    def handle_abort(self, sig: int, frame: Any) -> None:
        self._stopping(exits.TIMEOUT)
        super().handle_abort(sig, frame)


class ConnectionsMixin(PrometheusWorkerMixin):
    """For the asynchronous workers (gevent, eventlet, ASGI): one process handles up to
    ``worker_connections`` requests at once."""

    @property
    def capacity(self) -> int:
        return max(1, int(self.cfg.worker_connections))

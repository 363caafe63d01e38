"""``PrometheusEventletWorker``: gunicorn's eventlet worker, where the installed gunicorn
still has one (up to 25.x; gunicorn 26.0 removed it with eventlet's end of maintenance).

gunicorn's module monkey-patches the process with eventlet when it is imported, which is
before the plugin sets itself up, so the resource sampler is a green thread and recording
(which does no I/O) never interleaves between requests. On a gunicorn without the eventlet
worker, selecting this class stops start-up with one line that says what to install."""
from __future__ import annotations

from typing import Any

SUPPORTED = "gunicorn 23.0 to 25.3 (the eventlet worker was removed in gunicorn 26.0)"

try:
    from gunicorn.workers.geventlet import EventletWorker
except ImportError as exc:  # gunicorn >= 26, or eventlet missing
    _MISSING = str(exc)
    EventletWorker = None  # type: ignore[assignment,misc]

if EventletWorker is not None:
    from .base import PrometheusWorkerMixin

    class PrometheusEventletWorker(PrometheusWorkerMixin, EventletWorker):  # type: ignore
        threaded = False

        @property
        def capacity(self) -> int:
            return max(1, int(self.cfg.worker_connections))

else:
    class PrometheusEventletWorker:  # type: ignore[no-redef]
        """Stands in for the worker on a gunicorn without eventlet support: gunicorn calls
        ``check_config`` in the master before forking, and start-up ends there."""

        @classmethod
        def check_config(cls, cfg: Any, log: Any) -> None:
            import gunicorn

            if "geventlet" in _MISSING or int(gunicorn.__version__.split(".")[0]) >= 26:
                reason = (f"PrometheusEventletWorker needs {SUPPORTED}; this is gunicorn "
                          f"{gunicorn.__version__}: use PrometheusGeventWorker, or install "
                          f"gunicorn-prometheus-exporter[eventlet]")
            else:
                reason = (f"PrometheusEventletWorker needs eventlet ({_MISSING}): install "
                          f"gunicorn-prometheus-exporter[eventlet]")
            raise SystemExit(reason)

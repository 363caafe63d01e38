"""``PrometheusEventletWorker``: gunicorn's eventlet worker, where the installed gunicorn
still has one (up to 25.x; gunicorn 26.0 removed it with eventlet's end of maintenance).

gunicorn 25 monkey-patches the whole process with eventlet as soon as its worker module is
imported, that is in the master; a master patched that way breaks what it forks besides
workers (the metrics server, whose green threads would run on a hub inherited through
fork). So the master imports gunicorn's worker module with patching held back, and each
worker patches itself right after the fork, before the application is loaded (as gunicorn
did up to 24.x) and before the plugin sets up: the resource sampler is then a green
thread on the worker's own hub, and recording (which does no I/O) never interleaves
between requests. With ``--preload`` the application is imported in the master
unpatched, as with gunicorn 24.

On a gunicorn without the eventlet worker, selecting this class stops start-up with one
line that says which gunicorn versions support it."""
from __future__ import annotations

from typing import Any

SUPPORTED = "gunicorn 23.0 to 25.3 (the eventlet worker was removed in gunicorn 26.0)"


def _import_worker() -> Any:
    import eventlet

    patch = eventlet.monkey_patch
    eventlet.monkey_patch = lambda *args, **kwargs: None  # type: ignore[assignment]
    try:
        from gunicorn.workers.geventlet import EventletWorker
    finally:
        eventlet.monkey_patch = patch  # type: ignore[assignment]
    return EventletWorker


try:
    EventletWorker = _import_worker()
except (ImportError, RuntimeError) as exc:  # gunicorn >= 26, or eventlet missing
    _MISSING = str(exc)
    EventletWorker = None  # type: ignore[assignment,misc]

if EventletWorker is not None:
    from .mixin import ConnectionsMixin

    class PrometheusEventletWorker(ConnectionsMixin, EventletWorker):  # type: ignore
        threaded = False

        _hub_ready = False

        def init_process(self) -> None:
            import eventlet

            eventlet.monkey_patch()
            # the worker's hub next (gunicorn creates it after the fork), so that the
            # plugin's sampler green thread is scheduled on the hub that runs
            self.patch()
            self._hub_ready = True
            super().init_process()

        def patch(self) -> None:
            if not self._hub_ready:  # a second hub would orphan the sampler
                super().patch()

else:
    import gunicorn

    from .unavailable import install_hint, unavailable

    if "geventlet" in _MISSING or int(gunicorn.__version__.split(".")[0]) >= 26:
        _REASON = (f"PrometheusEventletWorker needs {SUPPORTED}; this is gunicorn "
                   f"{gunicorn.__version__}: use PrometheusGeventWorker, or "
                   f"{install_hint('eventlet')}")
    else:
        _REASON = (f"PrometheusEventletWorker needs eventlet ({_MISSING}): "
                   f"{install_hint('eventlet')}")
    PrometheusEventletWorker = unavailable("PrometheusEventletWorker", _REASON)

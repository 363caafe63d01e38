"""``PrometheusGeventWorker``: gunicorn's gevent worker; up to ``worker_connections``
requests at once, one greenlet each.

The process is monkey-patched before the plugin sets itself up in the worker, so the
resource sampler runs as a greenlet on the hub (its ``Event.wait`` yields) instead of an
OS thread racing the greenlets, and any lock is a gevent lock. Recording needs no lock:
a greenlet only switches on I/O, and the recording path does none, so concurrent requests
never interleave inside it. In-flight counts requests between gunicorn's
``pre_request`` and ``post_request`` hooks, so it sums the requests of all greenlets.

Without gevent (or what gunicorn's gevent worker needs besides, such as ``packaging`` on
gunicorn 27), selecting this class stops start-up with one line naming the extra."""
from __future__ import annotations

from .unavailable import install_hint, unavailable

try:
    from gevent import monkey
    from gunicorn.workers.ggevent import GeventWorker
except (ImportError, RuntimeError) as exc:  # gunicorn's module raises RuntimeError too
    PrometheusGeventWorker = unavailable(
        "PrometheusGeventWorker",
        f"PrometheusGeventWorker needs gevent ({exc}): {install_hint('gevent')}")
else:
    from .mixin import ConnectionsMixin

    class PrometheusGeventWorker(ConnectionsMixin, GeventWorker):  # type: ignore[no-redef]
        threaded = False

        def init_process(self) -> None:
            # gunicorn's GeventWorker.init_process patches again (a no-op for what is
            # patched already) and then moves its listening sockets to gevent
            monkey.patch_all()
            super().init_process()

"""The documented gunicorn hooks of the original project.

They keep working in existing config files, but none is needed any more: the worker class
installs what it needs. Each is idempotent, so listing them next to the worker class never
starts a second metrics server, and ``default_when_ready`` alone gives a plain gunicorn
worker class a metrics server for the application's own prometheus_client metrics."""
from __future__ import annotations

from typing import Any

from . import master


def default_on_starting(server: Any) -> None:
    """Set up the multiprocess directory early (before the first fork)."""
    master.ensure(server.cfg, server.log, server.app)


def default_when_ready(server: Any) -> None:
    """Start the metrics server (once)."""
    master.ensure(server.cfg, server.log, server.app).when_ready(server)


def default_post_fork(server: Any, worker: Any) -> None:
    """Nothing left to do: the worker sets itself up in ``init_process``."""


def default_worker_int(worker: Any) -> None:
    """Nothing left to do: the worker records its state when it stops."""


def default_on_exit(server: Any) -> None:
    """Stop the metrics server (once)."""
    runtime = master.of(server)
    if runtime is not None:
        runtime.on_exit(server)


def redis_when_ready(server: Any) -> None:
    """The original's Redis variant of ``default_when_ready``: with ``REDIS_ENABLED=true``
    (or ``exporter.redis.enabled``) the same set-up also ships metrics to Redis, from the
    metrics server process (never from a worker, never on the request path); Redis being
    down at start-up delays nothing. See docs/redis.md."""
    runtime = master.ensure(server.cfg, server.log, server.app)
    if not runtime.settings.redis.enabled:
        server.log.warning("prometheus: redis_when_ready is set but Redis storage is off; "
                           "set REDIS_ENABLED=true (or exporter.redis.enabled) to use it")
    runtime.when_ready(server)


__all__ = ["default_on_starting", "default_when_ready", "default_post_fork",
           "default_worker_int", "default_on_exit", "redis_when_ready"]

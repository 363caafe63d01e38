"""Prometheus metrics for Gunicorn.

``worker_class = "gunicorn_prometheus_exporter.PrometheusWorker"`` is a complete set-up.
Worker classes are imported on first use, so importing the package pulls in neither gevent
nor eventlet (nor uvicorn): ``PrometheusWorker`` (sync), ``PrometheusThreadWorker``
(gthread), ``PrometheusGeventWorker``, ``PrometheusEventletWorker`` (gunicorn <= 25.3),
``PrometheusASGIWorker`` (gunicorn's native asgi worker, gunicorn >= 24) and
``PrometheusUvicornWorker`` (uvicorn-worker)."""
from __future__ import annotations

import importlib
from typing import Any

from .config import ConfigError, load_yaml_config
from .version import __version__

_WORKERS = {
    "PrometheusWorker": ".workers.sync",
    "PrometheusThreadWorker": ".workers.gthread",
    "PrometheusGeventWorker": ".workers.ggevent",
    "PrometheusEventletWorker": ".workers.geventlet",
    "PrometheusASGIWorker": ".workers.asgi",
    "PrometheusUvicornWorker": ".workers.uvicorn",
}

__all__ = ["ConfigError", "load_yaml_config", "__version__", *_WORKERS]


def __getattr__(name: str) -> Any:
    module = _WORKERS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)

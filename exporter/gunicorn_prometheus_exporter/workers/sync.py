"""``PrometheusWorker``: gunicorn's sync worker, one request at a time."""
from gunicorn.workers.sync import SyncWorker

from .mixin import PrometheusWorkerMixin


class PrometheusWorker(PrometheusWorkerMixin, SyncWorker):
    pass

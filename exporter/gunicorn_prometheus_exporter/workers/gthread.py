"""``PrometheusThreadWorker``: gunicorn's threaded worker; ``threads`` requests at once."""
from gunicorn.workers.gthread import ThreadWorker

from .mixin import PrometheusWorkerMixin


class PrometheusThreadWorker(PrometheusWorkerMixin, ThreadWorker):
    threaded = True

    @property
    def capacity(self) -> int:
        return max(1, int(self.cfg.threads))

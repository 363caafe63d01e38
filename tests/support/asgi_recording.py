"""The ASGI workers' request recording over real files, driven in-process: the labeller
and extras a worker builds, for a wrapper ``asgi_metrics.instrument`` makes on the C path
(``native`` given) or the Python one. Shared by tests/test_speedups.py and
tests/test_starlette_routes.py."""
from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType
from typing import Optional, Sequence

from gunicorn_prometheus_exporter.recorder import Recorder
from gunicorn_prometheus_exporter.routes import RouteTable
from gunicorn_prometheus_exporter.storage.store import ProcessStore
from gunicorn_prometheus_exporter.workers.labelling import RequestLabeller


def labeller(directory: Path, native: Optional[ModuleType],
             sizes: Sequence[float]) -> RequestLabeller:
    """The worker's request labeller and recorder (worker ``w0``) over real files."""
    store = ProcessStore(str(directory), "w0")
    recorder = Recorder(store, [60.0], sizes, threaded=False, native=native)
    return RequestLabeller(recorder, RouteTable(str(directory), 100),
                           logging.getLogger("test-asgi-recording"))


def request_extras(labelled: RequestLabeller, directory: Path, on: bool = False):
    """The worker's request extras, queue time and exemplars off unless ``on`` (tests/
    test_queue_time.py and test_exemplars.py cover them through real gunicorn)."""
    from gunicorn_prometheus_exporter.config.loader import build
    from gunicorn_prometheus_exporter.workers.extras import RequestExtras

    off = {} if on else {"PROMETHEUS_QUEUE_TIME": "false", "PROMETHEUS_EXEMPLARS": "false"}
    return RequestExtras(build(None, off), labelled.recorder, str(directory), "w0")

"""The plugin inside one worker process, set up after fork (``init_process``): the slot the
master claimed for it, its store, recorder, route table and request labeller, its state and
capacity gauges, its exit intent and resource sampler, and the WSGI request hooks."""
from __future__ import annotations

from typing import Any

from .. import exits, families, identity, logcount, speedups
from ..master import MasterRuntime
from ..recorder import Recorder
from ..routes import RouteTable
from ..sampler import ResourceSampler
from ..storage import native as native_histograms
from ..storage.store import ProcessStore
from .extras import RequestExtras
from .labelling import RequestLabeller
from .wsgi_hooks import WSGIRequestHooks


class WorkerMetrics:
    def __init__(self, worker: Any, runtime: MasterRuntime) -> None:
        claim = worker._gunicorn_prometheus_claim
        runtime.enter_worker(claim)
        identity.adopt(claim.identity)
        settings = runtime.settings
        #: the compiled request path, or None: loaded once here, handed to what records
        self.native = speedups.load()
        self.log = worker.log
        self.worker_id = claim.identity
        self.store = ProcessStore(runtime.directory, claim.identity)
        self.recorder = Recorder(self.store, settings.metrics.duration_buckets,
                                 settings.metrics.size_buckets, threaded=worker.threaded,
                                 native=self.native,
                                 native_layout=native_histograms.layout_of(settings.metrics),
                                 log=worker.log, serial_requests=worker.capacity == 1)
        identity.report_unstored(self.recorder.unstored)  # the app's own metrics
        self.routes = RouteTable(runtime.directory, settings.metrics.route_cap,
                                 settings.metrics.route_rules)
        self.labeller = RequestLabeller(self.recorder, self.routes, self.log)
        self.extras = RequestExtras(settings, self.recorder, runtime.directory, claim.identity)
        self.recorder.set_gauge(families.WORKER_CAPACITY, float(worker.capacity))
        self.intent = exits.Intent(runtime.directory, claim.identity)
        logcount.counter().use(self.recorder)
        self.set_state("running")
        self.sampler = ResourceSampler(self.recorder, settings.metrics.sample_interval)
        if getattr(worker, "samples_on_loop", False):
            self.sampler.sample()  # the later samples on the worker's loop (``run_on``)
        else:
            self.sampler.start()
        if getattr(worker, "request_hooks", True):  # else it records through the labeller
            WSGIRequestHooks(self.labeller, self.recorder, self.intent,
                             self.recorder.parallel_requests,
                             self.extras, self.native).install(worker.cfg)

    def set_state(self, state: str) -> None:
        for name in ("running", "stopping"):
            self.recorder.set_gauge(families.WORKER_STATE, float(name == state), (name,))

"""What every Prometheus worker class adds to its gunicorn worker: a claimed storage slot,
the per-request recording, gunicorn's own error path, and the resource sampler.

Requests are timed between gunicorn's ``pre_request`` and ``post_request`` hooks: the
latter runs after the last body byte was written (``sendfile`` included) and inside the
``finally`` of an exception, so status, sent bytes and any escaping exception are all
known there. The hooks are chained in front of the user's on the worker's own copy of the
config; nothing of gunicorn's request handling is copied or replaced.

Importing this module routes prometheus_client's multiprocess values to the plugin's
directory and worker identities; gunicorn imports the worker class before it loads (or
preloads) the application, so the application's own metrics follow."""
from __future__ import annotations

import errno
import os
import sys
from time import perf_counter
from typing import Any, Dict, Iterable, Optional, Tuple

from .. import config, exits, identity, logcount, master, redact
from .. import metrics as catalogue
from ..frameworks import ERROR_ENVIRON_KEY
from ..recorder import Recorder, Series
from ..routes import (ROUTE_ENVIRON_KEY, UNMATCHED, RouteTable, method_label,
                      status_label)
from ..sampler import ResourceSampler
from ..storage.mmap_file import StorageFull
from ..storage.store import ProcessStore

BODY_METER_KEY = "gunicorn_prometheus_exporter.body_meter"
#: body bytes of a ``wsgi.file_wrapper`` response, which gunicorn's sendfile path sends
#: without counting them in ``Response.sent``
FILE_BYTES_KEY = "gunicorn_prometheus_exporter.file_bytes"
_COUNTED = "_gunicorn_prometheus_counted"
#: requests remembered by (method, path or template, status) before starting afresh
_RESOLVED_LIMIT = 8192
_GONE = (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN)


class BodyMeter:
    """Counts the bytes an application reads from a chunked request body (whose size no
    header declares)."""

    __slots__ = ("_body", "bytes")

    def __init__(self, body: Any) -> None:
        self._body = body
        self.bytes = 0

    def read(self, size: Optional[int] = None) -> bytes:
        data = self._body.read() if size is None else self._body.read(size)
        self.bytes += len(data)
        return data

    def readline(self, size: Optional[int] = None) -> bytes:
        data = self._body.readline() if size is None else self._body.readline(size)
        self.bytes += len(data)
        return data

    def readlines(self, hint: Optional[int] = None) -> list:
        lines = self._body.readlines() if hint is None else self._body.readlines(hint)
        self.bytes += sum(len(line) for line in lines)
        return lines

    def __iter__(self) -> Iterable[bytes]:
        for line in self._body:
            self.bytes += len(line)
            yield line


def metered(app: Any) -> Any:
    def app_with_body_meter(environ: dict, start_response: Any) -> Any:
        if "CONTENT_LENGTH" not in environ and "HTTP_TRANSFER_ENCODING" in environ:
            environ["wsgi.input"] = environ[BODY_METER_KEY] = BodyMeter(environ["wsgi.input"])
        result = app(environ, start_response)
        wrapper = environ.get("wsgi.file_wrapper")
        if wrapper is not None and isinstance(result, wrapper):
            environ[FILE_BYTES_KEY] = _file_bytes(result)
        return result

    return app_with_body_meter


def _file_bytes(wrapped: Any) -> Optional[int]:
    """What gunicorn's sendfile would send of a wrapped file: from its position to its end."""
    try:
        fileno = wrapped.filelike.fileno()
        return os.fstat(fileno).st_size - os.lseek(fileno, 0, os.SEEK_CUR)
    except (AttributeError, OSError, ValueError):
        return None


def _escaped(exc: BaseException, resp: Any, code: Optional[int]
             ) -> Tuple[Optional[int], Optional[str]]:
    """Status and error type of a request an exception left: a client that went away is
    499 and no error; anything else is a failed request (500 unless the status was sent),
    marked so that gunicorn's error path does not count it again."""
    if isinstance(exc, OSError) and exc.errno in _GONE:
        return code or 499, None
    if resp is None or not resp.headers_sent:
        code = 500
    try:
        setattr(exc, _COUNTED, True)
    except AttributeError:
        pass
    return code, type(exc).__name__


def _current_exception() -> Optional[BaseException]:
    return sys.exc_info()[1]


#: the exception being handled (``sys.exception`` is the cheaper call, Python >= 3.11)
current_exception = getattr(sys, "exception", _current_exception)


class Instrumentation:
    """The plugin inside one worker process."""

    def __init__(self, worker: Any, runtime: master.MasterRuntime) -> None:
        claim = worker._gunicorn_prometheus_claim
        runtime.enter_worker(claim)
        identity.adopt(claim.identity)
        settings = runtime.settings
        self.log = worker.log
        self.worker_id = claim.identity
        self.store = ProcessStore(runtime.directory, claim.identity)
        self.recorder = Recorder(self.store, settings.metrics.duration_buckets,
                                 settings.metrics.size_buckets, threaded=worker.threaded,
                                 log=worker.log)
        identity.report_unstored(self.recorder.unstored)  # the app's own metrics
        # one request at a time per thread (sync; gevent and eventlet, whose recording
        # never switches): the hooks add to the in-flight gauge directly, no call
        self._gauges: Optional[memoryview] = None
        if not worker.threaded:
            self._gauges, self._in_flight = self.recorder.in_flight_cell()
        self.routes = RouteTable(runtime.directory, settings.metrics.route_cap,
                                 settings.metrics.route_rules)
        self.recorder.set_gauge(catalogue.WORKER_CAPACITY, float(worker.capacity))
        self.intent = exits.Intent(runtime.directory, claim.identity)
        logcount.counter().use(self.recorder)
        self.set_state("running")
        self.sampler = ResourceSampler(self.recorder, settings.metrics.sample_interval)
        self.sampler.start()
        #: request key -> series, for answers that cannot change (``record``); the
        #: compiled ASGI wrapper reads it too
        self.resolved: Dict[tuple, Series] = {}
        self._failed_once = False
        if not getattr(worker, "request_hooks", True):
            return  # the worker records its requests itself through record()
        for name, ours in (("pre_request", self.pre_request),
                           ("post_request", self.post_request)):
            theirs = master.user_hook(worker.cfg, name)
            # no wrapper frame on the request path unless there is a user hook to call too
            worker.cfg.set(name, ours if theirs is None else master.chained(ours, theirs))

    def set_state(self, state: str) -> None:
        for name in ("running", "stopping"):
            self.recorder.set_gauge(catalogue.WORKER_STATE, float(name == state), (name,))

    # -- the request path ---------------------------------------------------------------------
    # gunicorn makes a new request object per request: the start time rides on it
    def pre_request(self, worker: Any, req: Any) -> None:
        req._gunicorn_prometheus_started = perf_counter()
        if self._gauges is None:
            self.recorder.in_flight(1.0)
        else:
            self._gauges[self._in_flight] += 1.0

    def post_request(self, worker: Any, req: Any, environ: dict, resp: Any) -> None:
        ended = perf_counter()
        try:
            started = req._gunicorn_prometheus_started
        except AttributeError:
            return  # pre_request did not run for this request
        try:
            if self._gauges is None:
                self.recorder.in_flight(-1.0)
            else:
                self._gauges[self._in_flight] -= 1.0
            if environ:  # else gunicorn refused the request itself: see gunicorn_error
                self._record(environ, resp, ended - started)
            if worker.nr >= worker.max_requests:
                self.intent.set(exits.MAX_REQUESTS)
        except Exception:  # recording must never break a request
            if not self._failed_once:
                self._failed_once = True
                self.log.exception("prometheus: could not record a request")

    def _record(self, environ: dict, resp: Any, duration: float) -> None:
        try:
            code = resp.status_code  # absent until start_response ran
        except AttributeError:
            code = None
        error_type = environ.get(ERROR_ENVIRON_KEY)  # a framework rendered it: counted once
        exc = current_exception()  # post_request runs in the finally of an escaping one
        if exc is not None:
            code, escaped = _escaped(exc, resp, code)
            error_type = error_type or escaped
        length = environ.get("CONTENT_LENGTH")
        if length:
            try:
                received = int(length)
            except ValueError:
                received = 0
        else:
            meter = environ.get(BODY_METER_KEY)
            received = meter.bytes if meter is not None else 0
        sent = resp.sent if resp is not None else 0
        if not sent and resp is not None and FILE_BYTES_KEY in environ \
                and not getattr(resp, "_omits_body", False):
            sent = environ[FILE_BYTES_KEY] or 0  # sent by sendfile
            if resp.response_length is not None:
                sent = min(sent, resp.response_length)
        self.record(environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"), code, duration,
                    received, sent, environ.get(ROUTE_ENVIRON_KEY),
                    str(error_type) if error_type else None)

    def record(self, method: Optional[str], path: Optional[str], code: Optional[int],
               duration: float, received: int, sent: int, template: Optional[str] = None,
               error_type: Optional[str] = None) -> None:
        """One finished request, whatever server loop handled it (the ASGI workers call
        this directly): ``code`` the status sent (None: 500), ``template`` a framework's
        matched route, else ``path`` is normalised; ``error_type`` counts one failed
        request. A request like an earlier one is one dict lookup and the stores."""
        if not template:
            key = (method, path, code)
        else:
            if template.__class__ is not str:  # an app's own object: its text (hashable)
                template = str(template)
            key = (method, code, template)
        series = self.resolved.get(key)
        if series is None or error_type is not None:
            series = self._resolve(key, method, path, code, template, error_type)
        self.recorder.add(series, duration, received, sent)

    def _resolve(self, key: tuple, method: Optional[str], path: Optional[str],
                 code: Optional[int], template: Optional[str],
                 error_type: Optional[str]) -> Series:
        """Labels of a request not seen in this form before (or a failed one). Only
        answers that cannot change are kept: a 404 on an unknown path is ``unmatched``
        until another response makes its route known."""
        method = method_label(method)
        status = status_label(code)
        try:
            if template:
                route = self.routes.template(template)  # record() made it a str
            else:
                route = self.routes.route(path or "/", status)
        except StorageFull as fault:  # the shared route table could not grow
            self.recorder.unstored(fault)
            return self.recorder.dropped
        series = self.recorder.series(method, route, status)
        if route != UNMATCHED and series is not self.recorder.dropped:
            if len(self.resolved) >= _RESOLVED_LIMIT:
                self.resolved.clear()
            self.resolved[key] = series
        if error_type is not None:
            self.recorder.count(catalogue.FAILED_REQUESTS, (method, route, error_type))
        return series

    # -- gunicorn's own error path ---------------------------------------------------------
    def gunicorn_error(self, req: Any, exc: BaseException) -> None:
        """Malformed HTTP, limits, TLS failures: errors no application code saw. An
        application's exception also passes here after ``post_request`` counted it."""
        if getattr(exc, _COUNTED, False):
            return
        try:
            method = method_label(getattr(req, "method", None)) if req is not None else "unknown"
            path = getattr(req, "path", None) if req is not None else None
            endpoint = self.routes.route(path, "404") if path else "unmatched"
            self.recorder.count(catalogue.ERROR_HANDLING, (method, endpoint, type(exc).__name__))
        except Exception:
            self.log.exception("prometheus: could not record a gunicorn error")


class PrometheusWorkerMixin:
    """Mixed in front of a gunicorn worker class."""

    #: whether several threads of one process record at once
    threaded = False
    #: whether requests are timed by gunicorn's pre_request/post_request hooks (WSGI
    #: workers); an ASGI worker records each request itself through ``record()``
    request_hooks = True
    _prometheus: Optional[Instrumentation] = None

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
        master.ensure(self.cfg, self.log)  # runs in the master: covers a HUP-reloaded cfg

    def init_process(self) -> None:
        runtime = master.current()
        if runtime is not None and hasattr(self, "_gunicorn_prometheus_claim"):
            try:
                self._prometheus = Instrumentation(self, runtime)
            except Exception:
                self.log.exception("prometheus: metrics disabled in worker %s", self.pid)
        super().init_process()

    def load_wsgi(self) -> None:
        super().load_wsgi()
        if self._prometheus is not None:
            self.wsgi = metered(self.wsgi)

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        if self._prometheus is not None:
            self._prometheus.gunicorn_error(req, exc)
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


def _prepare_process() -> None:
    identity.route_prometheus_client(config.settings().multiproc_dir)
    logcount.counter()
    redact.install()


_prepare_process()

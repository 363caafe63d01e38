"""The WSGI workers' request path: gunicorn's ``pre_request`` and ``post_request`` hooks.

Requests are timed between the two: ``post_request`` runs after the last body byte was
written (``sendfile`` included) and inside the ``finally`` of an exception, so status, sent
bytes and any escaping exception are all known there. The hooks are set on the worker's own
copy of the config, in front of the user's; nothing of gunicorn's request handling is
copied or replaced. Where the C speedups are loaded, the hooks are their ``WSGIHooks``,
which records the common request (a known series, nothing else to record) itself and
hands every other to ``finish`` here: this module stays the policy and the reference."""
from __future__ import annotations

import errno
import sys
from time import perf_counter
from types import ModuleType
from typing import Any, Optional, Tuple

from .. import exits, hookchain, protocols
from ..frameworks import ERROR_ENVIRON_KEY
from ..recorder import Recorder
from ..routes import ROUTE_ENVIRON_KEY
from .body import BODY_METER_KEY, FILE_BYTES_KEY
from .extras import RequestExtras
from .labelling import COUNTED, KEY_BY_PATH, KEY_BY_TEMPLATE, RequestLabeller

_GONE = (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN)
#: the request attribute holding its start time
STARTED = "_gunicorn_prometheus_started"
#: the largest request body a Content-Length may declare and be counted by (a file offset's
#: largest, ``off_t``): a larger one is no request's size and would outweigh every real one
#: in the sum (10**309 overflowed the store and left its request unrecorded), so it is
#: counted as a size unknown, 0, as a length that is no number; the compiled hooks use the
#: same bound (``LLONG_MAX``)
LARGEST_BODY = 2 ** 63 - 1
#: environ keys of the plugin's own that the compiled hooks leave to ``finish``
OWN_KEYS = (ERROR_ENVIRON_KEY, BODY_METER_KEY, FILE_BYTES_KEY)


class WSGIRequestHooks:
    """``pre_request``/``post_request`` of one worker process."""

    def __init__(self, labeller: RequestLabeller, recorder: Recorder, intent: exits.Intent,
                 threaded: bool, extras: RequestExtras,
                 native: Optional[ModuleType] = None) -> None:
        self.record = labeller.record  # bound once: no attribute lookup per request
        #: the common request (no framework route, no error) is looked up here and added
        #: directly, as the compiled hooks do: one Python frame fewer
        self._resolved = labeller.resolved
        self._add = recorder.add
        self.extras = extras.wsgi
        self._extra_keys = extras.wsgi_keys
        self.recorder = recorder
        self.intent = intent
        self.log = labeller.log
        self._failed_once = False
        # one request at a time per thread (sync; gevent and eventlet, whose recording
        # never switches): the hooks add to the in-flight gauge directly, no call
        self._gauges: Optional[memoryview] = None
        if not threaded:
            self._gauges, self._in_flight = recorder.in_flight_cell()
        #: the compiled hooks (``native``: ``speedups.load()``), holding the GIL throughout
        #: (gthread needs no lock); None: these methods are the hooks
        self.compiled = None if native is None else native.WSGIHooks(
            STARTED, *recorder.in_flight_cell(), labeller.resolved, recorder.add,
            (OWN_KEYS, ROUTE_ENVIRON_KEY, KEY_BY_PATH, KEY_BY_TEMPLATE),
            (self.extras, extras.wsgi_keys), protocols.USUAL, self.finish, self.failed,
            self.max_reached)

    def install(self, cfg: Any) -> None:
        hooks = self if self.compiled is None else self.compiled
        for name, ours in (("pre_request", hooks.pre_request),
                           ("post_request", hooks.post_request)):
            theirs = hookchain.user_hook(cfg, name)
            # no wrapper frame on the request path unless there is a user hook to call too
            hookchain.set_hook(cfg, name,
                               ours if theirs is None else hookchain.chained(ours, theirs))

    # gunicorn makes a new request object per request: the start time rides on it
    def pre_request(self, worker: Any, req: Any) -> None:
        req._gunicorn_prometheus_started = perf_counter()  # STARTED
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
                self._record(environ, resp, ended - started, ended)
            if worker.nr >= worker.max_requests:
                self.max_reached()
        except Exception as exc:  # recording must never break a request
            self.failed(exc)

    def finish(self, environ: dict, resp: Any, duration: float, ended: float) -> None:
        """A finished request the compiled hooks leave to Python: any but a known series
        with nothing more to record (``_speedups.WSGIHooks``); ``ended``: its end
        (``perf_counter``)."""
        try:
            self._record(environ, resp, duration, ended)
        except Exception as exc:  # recording must never break a request
            self.failed(exc)

    def failed(self, exc: BaseException) -> None:
        """A request could not be recorded: the first failure is logged."""
        if not self._failed_once:
            self._failed_once = True
            self.log.error("prometheus: could not record a request", exc_info=exc)

    def max_reached(self) -> None:
        self.intent.set(exits.MAX_REQUESTS)

    def _record(self, environ: dict, resp: Any, duration: float, ended: float) -> None:
        try:
            code = resp.status_code  # absent until start_response ran
        except AttributeError:
            code = None
        error_type = environ.get(ERROR_ENVIRON_KEY)  # a framework rendered it: counted once
        exc = current_exception()  # post_request runs in the finally of an escaping one
        if exc is not None:
            if exc.__class__ is StopIteration:
                # gunicorn's "close this connection", raised after the response (async
                # workers) or, after the status line was sent, while handling the
                # application's exception (every worker): that exception is its context
                exc = exc.__context__
            if exc is not None:
                code, escaped = _escaped(exc, resp, code)
                error_type = error_type or escaped
        length = environ.get("CONTENT_LENGTH")
        if length:
            try:
                received = int(length)
            except ValueError:
                received = 0
            if received > LARGEST_BODY:
                received = 0  # no request has it: a size unknown, as a length no number
        else:
            meter = environ.get(BODY_METER_KEY)
            received = meter.bytes if meter is not None else 0
        sent = resp.sent if resp is not None else 0
        if not sent and resp is not None and FILE_BYTES_KEY in environ \
                and not getattr(resp, "_omits_body", False):
            sent = environ[FILE_BYTES_KEY] or 0  # sent by sendfile
            if resp.response_length is not None:
                sent = min(sent, resp.response_length)
        method, path = environ.get("REQUEST_METHOD"), environ.get("PATH_INFO")
        template = environ.get(ROUTE_ENVIRON_KEY)
        # a request like an earlier one: its key as ``record`` builds it (KEY_BY_PATH)
        series = None if template or error_type else self._resolved.get((method, path, code))
        if series is None:
            series = self.record(method, path, code, duration, received, sent, template,
                                 str(error_type) if error_type else None)
        else:
            self._add(series, duration, received, sent)
        # the extras only for a request that has one (the compiled hooks ask the same):
        # another protocol, or a key they read; a call less per request
        protocol = environ.get("SERVER_PROTOCOL")
        if protocol != protocols.USUAL and protocol is not None \
                or self._extra_keys and not environ.keys().isdisjoint(self._extra_keys):
            self.extras(environ, series, duration, ended)


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
        setattr(exc, COUNTED, True)
    except AttributeError:
        pass
    return code, type(exc).__name__


def _current_exception() -> Optional[BaseException]:
    return sys.exc_info()[1]


#: the exception being handled (``sys.exception`` is the cheaper call, Python >= 3.11)
current_exception = getattr(sys, "exception", _current_exception)



"""The compiled request path (``_speedups.c``) against its Python reference: the same inputs
write the same bytes and report the same values, and bad inputs fail the same way. The
whole suite runs on the compiled path where it is built (CI builds it); the real-gunicorn
runs of the Python path are in tests/workers/test_worker_types.py."""
from __future__ import annotations

import asyncio
import logging
import math
import os
import shutil
import time
import types
from pathlib import Path

import pytest

from gunicorn_prometheus_exporter import exits
from gunicorn_prometheus_exporter import families as catalogue
from gunicorn_prometheus_exporter import speedups
from gunicorn_prometheus_exporter.collector import DirectoryCollector
from gunicorn_prometheus_exporter.frameworks import ERROR_ENVIRON_KEY, ROUTE_ENVIRON_KEY
from gunicorn_prometheus_exporter.recorder import Recorder
from gunicorn_prometheus_exporter.storage.native import Layout
from gunicorn_prometheus_exporter.storage.store import ProcessStore
from gunicorn_prometheus_exporter.workers import asgi_metrics as asgi
from gunicorn_prometheus_exporter.workers import labelling
from gunicorn_prometheus_exporter.workers.labelling import RequestLabeller
from support import asgi_recording

native = speedups.load({})
needs_native = pytest.mark.skipif(native is None, reason="the C speedups are not built here")

DURATIONS = [0.005, 0.1, 1.0, 2.5]
SIZES = [0.5, 100.0, 100.5, 1000.0]
#: a native layout whose range the durations below overflow (1e9) and underflow (0, 1e-7)
LAYOUT = Layout.for_range(3, 1e-6, 3600.0)
#: (duration, request bytes, response bytes): on, just below and just above every bound,
#: empty bodies, beyond the last bound, NaN, an exact int duration, a huge size, None
REQUESTS = [(d, r, s) for d in (0.0, 0.004, 0.005, 0.0051, 0.1, 2.5, 2.6, 1e9, math.nan, 1,
                                1e-7, 2.0 ** -20, 0.5, 3600.0, math.inf, -1.0)
            for r, s in ((0, 0), (1, 0), (100, 101), (1000, 1001), (2 ** 60, 7), (None, 0))]


def test_the_speedups_are_built_where_a_compiler_is():
    """CI installs with a compiler: a missing module there is a packaging bug."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler here: the Python path is the one installed")
    assert native is not None, "setup.py did not build gunicorn_prometheus_exporter._speedups"
    assert speedups.load({speedups.SWITCH_ENV: "1"}) is None
    assert speedups.load({speedups.SWITCH_ENV: "0"}) is native


def test_a_build_from_another_source_is_not_loaded(tmp_path):
    """An editable install whose ``_speedups.c`` changed without a rebuild: the old module
    would fail every worker on a missing name, so the Python path runs instead; a module
    without its source beside it (a wheel) is its source's."""
    source = tmp_path / "_speedups.c"
    source.write_text("/* one source */\n")

    def built(digest):
        module = types.ModuleType("gunicorn_prometheus_exporter._speedups")
        module.__file__ = str(tmp_path / "_speedups.so")
        if digest is not None:
            module.SOURCE_DIGEST = digest
        return module

    assert not speedups.is_stale(built(speedups.source_digest(str(source))))
    assert speedups.is_stale(built("0" * 16))
    assert speedups.is_stale(built(None))
    wheel = built(None)
    wheel.__file__ = str(tmp_path / "elsewhere" / "_speedups.so")
    assert not speedups.is_stale(wheel)
    if native is not None:  # this checkout's own build is its source's
        assert not speedups.is_stale(native)


def _write(directory: Path, compiled: bool, threaded: bool, layout=None) -> bytes:
    directory.mkdir()
    store = ProcessStore(str(directory), "w0")
    rec = Recorder(store, DURATIONS, SIZES, threaded=threaded,
                   native=native if compiled else None, native_layout=layout)
    # the pin: the compiled path is the one taken, native store included
    assert (type(getattr(rec.add, "__self__", None)).__name__ == "RequestWriter") == compiled
    routes = [rec.series("GET", "/a", "200"), rec.series("POST", "/b/{id}", "500")]
    for i, (duration, received, sent) in enumerate(REQUESTS):
        rec.add(routes[i % 2], duration, received, sent)
    store.close()
    return b"".join(p.read_bytes() for p in sorted(directory.iterdir()))


@needs_native
@pytest.mark.parametrize("layout", [None, LAYOUT], ids=["classic", "native"])
@pytest.mark.parametrize("threaded", [False, True], ids=["one-thread", "threaded"])
def test_compiled_add_writes_the_bytes_python_writes(tmp_path, threaded, layout):
    python = _write(tmp_path / "python", False, threaded, layout)
    compiled = _write(tmp_path / "c", True, threaded, layout)
    assert len(python) > 0 and compiled == python
    assert (tmp_path / "c" / "histogram_native_w0.nh").exists() == (layout is not None)


@needs_native
def test_compiled_add_refuses_what_python_refuses(tmp_path):
    store = ProcessStore(str(tmp_path), "w0")
    writer = native.RequestWriter(DURATIONS, SIZES)
    rec = Recorder(store, DURATIONS, SIZES, threaded=False)
    series = rec.series("GET", "/a", "200")
    with pytest.raises(TypeError):
        writer.add(series[:8], 0.1, 0, 0)
    with pytest.raises(TypeError):
        writer.add(series, "slow", 0, 0)
    with pytest.raises(IndexError):  # a position outside the file
        writer.add((series[0], 10 ** 9) + series[2:], 0.1, 0, 0)
    with pytest.raises(TypeError, match="format 'd'"):
        writer.add((memoryview(bytearray(64)),) + series[1:], 0.1, 0, 0)
    released = memoryview(bytearray(800)).cast("d")
    released.release()
    for add in (writer.add, rec.add):  # a released view is never written
        with pytest.raises(ValueError, match="released"):
            add((released,) + series[1:], 0.1, 0, 0)
    store.close()
    with pytest.raises(TypeError):
        native.RequestWriter([0.1, "x"], SIZES)
    with pytest.raises(TypeError):  # a native layout is (zero threshold, top, bounds, lo, hi)
        native.RequestWriter(DURATIONS, SIZES, (1e-6, 3600.0, LAYOUT.bounds))
    with pytest.raises(ValueError, match="no native layout"):  # a native series, no layout
        writer.add(series[:9] + (series[2], 0), 0.1, 0, 0)


# -- the ASGI wrapper ------------------------------------------------------------------------
class _Route:
    """What Starlette leaves in ``scope["route"]``."""

    def __init__(self, path: str) -> None:
        self.path = path


async def _app(scope: dict, receive, send):
    """One behaviour per path: the cases both wrappers must record alike."""
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/upload":
        while True:
            message = await receive()
            if not message.get("more_body"):
                break
    elif path == "/tasks":  # receive() driven as a Task of its own
        await asyncio.create_task(receive())
    elif path == "/boom":
        raise ValueError("before the response started")
    elif path == "/gone":
        raise ConnectionResetError()
    elif path == "/wait":
        await asyncio.sleep(0)  # the wrapper hands a real suspension on
    elif path == "/items/7":
        scope["route"] = _Route("/items/{id}")
    elif path == "/nowhere":
        scope["router"] = object()  # Starlette ran and matched no route
    elif path == "/handled":
        scope[ERROR_ENVIRON_KEY] = "HandledError"
    elif path == "/custom/9":
        scope[ROUTE_ENVIRON_KEY] = "/custom/{n}"
    elif path == "/mounted/1":
        scope["route"], scope["app_root_path"] = _Route("/{n}"), "/mounted"
    if path == "/pathsend":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.pathsend", "path": __file__})
        return 42  # an ASGI app returns None; the wrapper does, whatever the app does
    await send({"type": "http.response.start", "status": 404 if path == "/nowhere" else 200,
                "headers": []})
    await send({"type": "http.response.body", "body": b"abc", "more_body": True})
    if path == "/late-boom":
        raise KeyError("after the response started")
    await send({"type": "http.response.body", "body": b"de"})


PATHS = ["/ok", "/upload", "/tasks", "/boom", "/gone", "/wait", "/items/7", "/nowhere", "/handled",
         "/custom/9", "/mounted/1", "/pathsend", "/late-boom"]


_extras = asgi_recording.request_extras


def _instrumentation(directory: Path, compiled: bool = False) -> RequestLabeller:
    """The worker's request labeller and recorder over real files."""
    return asgi_recording.labeller(directory, native if compiled else None, SIZES)


async def _serve(wrapped, path: str) -> None:
    chunks = [{"type": "http.request", "body": b"12345", "more_body": True},
              {"type": "http.request", "body": b"678", "more_body": False}]

    async def receive():
        return chunks.pop(0)

    async def send(message):
        pass

    scope = {"type": "http", "method": "POST" if path == "/upload" else "GET", "path": path}
    call = wrapped(scope, receive, send)
    result = await (asyncio.ensure_future(call) if path == "/tasks" else call)  # or a Task
    assert result is None


def _samples(directory: Path, compiled: bool) -> dict:
    """Every sample the mix leaves (twice: the second time from known series), plus what
    interrupted requests leave; duration sums aside (the clock differs)."""
    directory.mkdir()
    inst = _instrumentation(directory, compiled)
    wrapped = asgi.instrument(_app, inst, _extras(inst, directory), native if compiled else None)
    assert (type(wrapped).__name__ == "MeteredApp") is compiled

    async def mix():
        for path in PATHS * 2:
            try:
                await _serve(wrapped, path)
            except (ValueError, KeyError, ConnectionResetError):
                pass
        await wrapped({"type": "lifespan"}, None, None)  # not recorded
        waiting = asyncio.ensure_future(_serve(wrapped, "/wait"))
        await asyncio.sleep(0)
        waiting.cancel()  # the client went away while the application waited: a 499
        with pytest.raises(asyncio.CancelledError):
            await waiting

    asyncio.run(mix())
    for finish in ("close", "drop"):  # closed, or dropped, where the application waits
        call = wrapped({"type": "http", "method": "GET", "path": f"/{finish}"},
                       None, _never)
        call.send(None)
        call.close() if finish == "close" else None
        del call
    gauges, index = inst.recorder.in_flight_cell()
    assert gauges[index] == 0.0
    inst.recorder.store.close()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in DirectoryCollector(str(directory)).read() for s in f.samples
            if not s.name.endswith("_duration_seconds_sum")}


def _never(message):
    """A send that never completes: the application waits in it."""
    return asyncio.Future(loop=asyncio.new_event_loop())


@needs_native
def test_compiled_wrapper_records_what_python_records(tmp_path):
    # the /mounted/1 case resolves a Mount through starlette.routing
    pytest.importorskip("starlette", reason="starlette is not installed "
                        "(tests/requirements-frameworks.txt; make venv installs it)")
    python = _samples(tmp_path / "python", False)
    compiled = _samples(tmp_path / "c", True)
    requests = {labels: v for (name, labels), v in python.items()
                if name == "gunicorn_http_requests_total"}
    failed = {labels: v for (name, labels), v in python.items()
              if name == "gunicorn_worker_failed_requests_total"}
    assert requests == {
        (("method", "GET"), ("route", "/ok"), ("status", "200")): 2,
        (("method", "POST"), ("route", "/upload"), ("status", "200")): 2,
        (("method", "GET"), ("route", "/tasks"), ("status", "200")): 2,
        (("method", "GET"), ("route", "/boom"), ("status", "500")): 2,
        (("method", "GET"), ("route", "/gone"), ("status", "499")): 2,
        (("method", "GET"), ("route", "/wait"), ("status", "200")): 2,
        (("method", "GET"), ("route", "/wait"), ("status", "499")): 1,
        (("method", "GET"), ("route", "/items/{id}"), ("status", "200")): 2,
        (("method", "GET"), ("route", "unmatched"), ("status", "404")): 2,
        (("method", "GET"), ("route", "/handled"), ("status", "200")): 2,
        (("method", "GET"), ("route", "/custom/{n}"), ("status", "200")): 2,
        (("method", "GET"), ("route", "/{n}"), ("status", "200")): 2,  # no router to resolve
        (("method", "GET"), ("route", "/pathsend"), ("status", "200")): 2,
        (("method", "GET"), ("route", "/late-boom"), ("status", "200")): 2,
        (("method", "GET"), ("route", "/close"), ("status", "200")): 1,
        (("method", "GET"), ("route", "/drop"), ("status", "200")): 1,
    }, requests
    assert failed == {
        (("endpoint", "/boom"), ("error_type", "ValueError"), ("method", "GET"),
         ("worker_id", "0")): 2,
        (("endpoint", "/handled"), ("error_type", "HandledError"), ("method", "GET"),
         ("worker_id", "0")): 2,
        (("endpoint", "/late-boom"), ("error_type", "KeyError"), ("method", "GET"),
         ("worker_id", "0")): 2,
        (("endpoint", "/close"), ("error_type", "GeneratorExit"), ("method", "GET"),
         ("worker_id", "0")): 1,
        (("endpoint", "/drop"), ("error_type", "GeneratorExit"), ("method", "GET"),
         ("worker_id", "0")): 1,
    }, failed
    sent = {labels: v for (name, labels), v in python.items()
            if name == "gunicorn_http_response_size_bytes_sum"}
    received = {labels: v for (name, labels), v in python.items()
                if name == "gunicorn_http_request_size_bytes_sum"}
    assert (received[(("method", "POST"), ("route", "/upload"))],
            received[(("method", "GET"), ("route", "/tasks"))]) == (2 * 8, 2 * 5)
    file_size = Path(__file__).stat().st_size
    assert sent[(("method", "GET"), ("route", "/pathsend"))] == 2 * file_size
    assert compiled == python


@needs_native
@pytest.mark.parametrize("message,error", [
    ({"status": 200}, KeyError),                                   # no type
    ({"type": "http.response.start"}, KeyError),                   # no status
    ({"type": "http.response.body", "body": 5}, TypeError),        # a body with no len()
    ("not a message", TypeError),
], ids=["no-type", "no-status", "body-without-len", "not-a-mapping"])
def test_compiled_send_fails_like_python(tmp_path, message, error):
    """A bad message raises in the application, as the server would, and the request is
    still recorded (a 500, the error's class) and leaves the in-flight gauge."""
    results = []
    for compiled in (False, True):
        (tmp_path / str(compiled)).mkdir()
        inst = _instrumentation(tmp_path / str(compiled), compiled)

        async def app(scope, receive, send):
            await send(message)

        async def send(message):
            pass

        wrapped = asgi.instrument(app, inst, _extras(inst, tmp_path), native if compiled else None)
        with pytest.raises(error):
            asyncio.run(wrapped({"type": "http", "method": "GET", "path": "/"}, None, send))
        gauges, index = inst.recorder.in_flight_cell()
        results.append((gauges[index], inst.recorder.counter_value(
            catalogue.FAILED_REQUESTS, ("GET", "/", error.__name__))))
    assert results == [(0.0, 1.0), (0.0, 1.0)]


@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=needs_native)],
                         ids=["python", "compiled"])
def test_a_released_in_flight_gauge_is_never_written(tmp_path, compiled):
    """The compiled wrapper writes the in-flight gauge through the memoryview's own buffer;
    a released view still raises, as it does in Python, and nothing is written."""
    inst = _instrumentation(tmp_path, compiled)
    wrapped = asgi.instrument(_app, inst, _extras(inst, tmp_path), native if compiled else None)
    gauges, _ = inst.recorder.in_flight_cell()
    gauges.release()

    async def send(message):
        pass

    with pytest.raises(ValueError, match="released"):
        asyncio.run(wrapped({"type": "http", "method": "GET", "path": "/"}, None, send))


@needs_native
def test_compiled_wrapper_refuses_bad_calls(tmp_path):
    inst = _instrumentation(tmp_path)
    wrapped = native.MeteredApp(_app, print, {}, inst.recorder.add, asgi.GONE,
                                *inst.recorder.in_flight_cell(), asgi.KNOWN_REQUEST)
    with pytest.raises(TypeError):
        wrapped({"type": "http"}, None)
    with pytest.raises(KeyError):
        wrapped({}, None, None)
    call = wrapped({"type": "http", "method": "GET", "path": "/"}, None, None)
    with pytest.raises(TypeError, match="just-started"):
        call.send(1)
    with pytest.raises(TypeError):
        native.MeteredApp(_app, print, [], inst.recorder.add, asgi.GONE,
                          *inst.recorder.in_flight_cell(), asgi.KNOWN_REQUEST)
    with pytest.raises(TypeError, match="format 'd'"):
        native.MeteredApp(_app, print, {}, inst.recorder.add, asgi.GONE,
                          memoryview(bytearray(8)), 0, asgi.KNOWN_REQUEST)


# -- the fast path is taken ------------------------------------------------------------------
@needs_native
def test_a_worker_with_the_speedups_records_through_the_compiled_writer(tmp_path):
    """Recorder and ASGI wrapper built with the module take the compiled path: their add is
    a RequestWriter's, the wrapper a MeteredApp (the Python twins run where it is None)."""
    labeller = _instrumentation(tmp_path, compiled=True)
    assert type(labeller.recorder.add.__self__) is native.RequestWriter
    assert type(asgi.instrument(_app, labeller, _extras(labeller, tmp_path),
                                native)) is native.MeteredApp
    (tmp_path / "python").mkdir()
    python = _instrumentation(tmp_path / "python", compiled=False)
    assert python.recorder.add.__func__ is Recorder._add
    assert type(asgi.instrument(_app, python, _extras(python, tmp_path),
                                None).__self__) is asgi.ASGIMetrics


def test_record_builds_the_key_layouts_it_hands_to_the_compiled_wrapper(tmp_path):
    """The keys of ``resolved`` follow KEY_BY_PATH and KEY_BY_TEMPLATE, the layouts the
    compiled wrapper is handed: positions in (method, path, status, template)."""
    labeller = _instrumentation(tmp_path)
    labeller.record("GET", "/ok", 200, 0.1, 0, 3)
    labeller.record("GET", "/items/7", 200, 0.1, 0, 3, "/items/{id}")
    fields = {"by_path": ("GET", "/ok", 200, None), "by_template": ("GET", None, 200,
                                                                   "/items/{id}")}
    assert set(labeller.resolved) == {
        tuple(fields["by_path"][i] for i in labelling.KEY_BY_PATH),
        tuple(fields["by_template"][i] for i in labelling.KEY_BY_TEMPLATE)}
    labeller.recorder.store.close()


@needs_native
def test_a_known_request_is_recorded_in_c_without_calling_python(tmp_path):
    """The compiled wrapper records a request whose series is known without calling back
    into Python: a second request of each kind never reaches ``record``. Fails when the
    compiled wrapper's keys stop matching the ones Python stores (every request would
    then fall back to Python, with the same numbers)."""
    labeller = _instrumentation(tmp_path, compiled=True)
    labelled = []
    record = labeller.record
    labeller.record = lambda *args: (labelled.append(args[1]), record(*args))
    wrapped = asgi.instrument(_app, labeller, _extras(labeller, tmp_path), native)

    async def mix():
        for path in ["/ok", "/items/7", "/custom/9"] * 3:
            await _serve(wrapped, path)

    asyncio.run(mix())
    # /custom/9 carries our own route key in the scope: labelled in Python every time
    assert labelled == ["/ok", "/items/7", "/custom/9", "/custom/9", "/custom/9"]
    assert labeller.recorder.counter_value(
        catalogue.HTTP_REQUESTS, ("GET", "/items/{id}", "200")) == 3
    labeller.recorder.store.close()


@needs_native
def test_requests_with_extras_reach_python_and_only_they(tmp_path, monkeypatch):
    """The compiled wrapper hands Python a request that carries a queue stamp or a trace
    header, or is not over HTTP/1.1, every time (their extras are recorded there), and
    records the others itself. Fails when the header scan or the version check is not
    taken (the extras would silently never be recorded on the compiled path)."""
    labeller = _instrumentation(tmp_path, compiled=True)
    labelled = []
    record = asgi.ASGIMetrics.record  # where the compiled wrapper hands a request over

    def counted(self, scope, *args):
        labelled.append(scope["path"])
        return record(self, scope, *args)

    monkeypatch.setattr(asgi.ASGIMetrics, "record", counted)
    wrapped = asgi.instrument(_app, labeller, _extras(labeller, tmp_path, on=True), native)
    stamp = [(b"x-request-start", b"t=1700000000.000")]
    trace = [(b"traceparent", b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01")]

    async def serve(path, headers=(), version="1.1"):
        scope = {"type": "http", "method": "GET", "path": path, "http_version": version,
                 "headers": [(b"host", b"x"), *headers]}

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            pass

        await wrapped(scope, receive, send)

    async def mix():
        for _ in range(3):
            await serve("/ok")
            await serve("/ok", stamp)
            await serve("/ok", trace)
            await serve("/ok", version="2")

    asyncio.run(mix())
    # the first plain request is labelled in Python, the two later ones in C; the nine
    # with a stamp, a trace or HTTP/2 all in Python
    assert labelled == ["/ok"] * (1 + 9)
    assert labeller.recorder.counter_value(catalogue.HTTP_PROTOCOL, ("HTTP/2",)) == 3
    labeller.recorder.store.close()


def _copy(text: str) -> str:
    """An equal str that is not the same object, nor interned: a scope key a server or a
    middleware built at run time."""
    copy = "".join(list(text))
    assert copy == text and copy is not text
    return copy


#: scope keys that reach the compiled wrapper as equal strs built at run time (one case
#: each), and how many of three such requests it hands to ``record()``: it finds each key
#: as the dict does, whatever object spells it
SCOPE_CASES = {
    "copied-keys": ({}, 1),
    "route-key": ({ROUTE_ENVIRON_KEY: "/custom/{n}"}, 3),
    "error-key": ({ERROR_ENVIRON_KEY: "HandledError"}, 3),
    "route": ({"route": _Route("/items/{id}")}, 1),
    "router": ({"router": object()}, 3),
    "mount": ({"route": _Route("/{n}"), "app_root_path": "/mounted"}, 3),
    "version": ({"http_version": "2"}, 3),
    "stamp": ({"headers": [(b"x-request-start", b"t=1700000000.000")]}, 3),
    "not-a-str-key": ({b"path": "/elsewhere"}, 1),
}


@needs_native
@pytest.mark.parametrize("case", SCOPE_CASES)
def test_compiled_wrapper_reads_the_scope_keys_python_reads(tmp_path, monkeypatch, case):
    """Scope keys equal to the compiled wrapper's own but other objects (our route and error
    keys set by a middleware, Starlette's, the version, the headers) are found as the dict
    finds them, and the request is recorded as the Python wrapper records it; a key that
    is not a str changes nothing."""
    pytest.importorskip("starlette", reason="the mount case resolves through starlette")
    added, in_python = SCOPE_CASES[case]
    handed = []
    record = asgi.ASGIMetrics.record

    def counted(self, scope, *args):
        handed.append(scope)
        return record(self, scope, *args)

    monkeypatch.setattr(asgi.ASGIMetrics, "record", counted)

    async def middleware(scope, receive, send):  # adds its keys on the way to the app
        scope.update({_copy(k) if isinstance(k, str) else k: v for k, v in added.items()})
        await _app(scope, receive, send)

    samples = []
    for compiled in (False, True):
        directory = tmp_path / str(compiled)
        directory.mkdir()
        inst = _instrumentation(directory, compiled)
        wrapped = asgi.instrument(middleware, inst, _extras(inst, directory, on=True),
                                  native if compiled else None)

        async def serve():
            for _ in range(3):
                scope = {"type": "http", _copy("method"): "GET", _copy("path"): "/ok",
                         _copy("http_version"): "1.1", _copy("headers"): [(b"host", b"x")]}
                await wrapped(scope, None, _discard)

        handed.clear()
        asyncio.run(serve())
        inst.recorder.store.close()
        samples.append({(s.name, tuple(sorted(s.labels.items()))): s.value
                        for f in DirectoryCollector(str(directory)).read() for s in f.samples
                        if not s.name.endswith("_sum")})
    assert len(handed) == in_python
    assert samples[1] == samples[0]


async def _discard(message):
    pass


# -- the scrape: a file's key table walked in C (storage/reader.py FileReader) ------------

def _reader_state(reader) -> tuple:
    values = reader.read()
    return (list(reader.keys), list(reader.key_ids), list(reader.offsets), reader.sizes,
            reader._parsed_to, reader.torn, values)


def _grow_and_tear(path: str, reader_pairs) -> None:
    """Entries appended in two rounds (the readers read between), then a torn entry."""
    from gunicorn_prometheus_exporter.storage.mmap_file import MmapFile, sample_key

    f = MmapFile(path)
    for n in range(3):
        f.values[f.index(sample_key("c", "c_total", {"route": f"/é{n}" * n}, "h"))] = n + 0.5
    for python, compiled in reader_pairs:
        assert _reader_state(compiled) == _reader_state(python)
    for n in range(3, 40):  # grows the file: a new map
        f.values[f.index(sample_key("c", "c_total", {"route": f"/r{n}"}, "h"))] = float(n)
    used = int.from_bytes(f._m[:4], "little")
    f._m[used:used + 4] = (999).to_bytes(4, "little")  # a writer died while appending
    f._m[:4] = (used + 8).to_bytes(4, "little")
    f.close()


@needs_native
@pytest.mark.parametrize("with_timestamps", [False, True], ids=["values", "timestamps"])
def test_compiled_key_walk_reads_what_python_reads(tmp_path, with_timestamps):
    """The pin of ``key_table`` and ``values``: a reader given the module walks in C (the
    Python ``_parse`` is never called) and reads its values in C, and ends in exactly the
    Python reader's state and values, torn entry included."""
    from gunicorn_prometheus_exporter.storage.reader import FileReader

    path = str(tmp_path / "counter_w0.db")
    python = FileReader(path, with_timestamps=with_timestamps)
    compiled = FileReader(path, with_timestamps=with_timestamps, native=native)
    compiled._format = None  # the Python walk's format builder: calling it would fail
    compiled._struct = None  # and the values are read in C (``values``), not by a struct
    assert isinstance(compiled._table, native.KeyTable) and compiled._walk is native.key_table
    _grow_and_tear(path, [(python, compiled)])
    state = _reader_state(python)
    assert _reader_state(compiled) == state
    assert state[5] is True and len(state[0]) == 40 and state[6][-1 if not with_timestamps
                                                                   else -2] == 39.0
    assert list(state[1]) == list(range(40)) and compiled._table.texts == state[0]


@needs_native
def test_compiled_key_walk_shares_key_texts_and_follows_a_recreated_file(tmp_path):
    """Two files with the same keys share one string and number per key (decoded once); a
    file deleted and created again with other keys at the same positions is read through
    its own keys."""
    from gunicorn_prometheus_exporter.storage.mmap_file import MmapFile, sample_key
    from gunicorn_prometheus_exporter.storage.reader import FileReader

    table = native.KeyTable()
    readers = []
    for identity in ("w0", "w1"):
        path = str(tmp_path / f"counter_{identity}.db")
        f = MmapFile(path)
        for route in ("/a", "/b"):
            f.values[f.index(sample_key("c", "c_total", {"route": route}, "h"))] = 1.0
        f.close()
        readers.append(FileReader(path, native=native, table=table))
        assert readers[-1].read() == (1.0, 1.0)
    assert len(table.texts) == 2 and all(a is b for a, b in zip(readers[0].keys,
                                                                readers[1].keys))
    assert list(readers[0].key_ids) == list(readers[1].key_ids) == [0, 1]
    os.unlink(readers[0].path)
    f = MmapFile(readers[0].path)  # same key lengths, same positions, other keys
    for route in ("/x", "/y"):
        f.values[f.index(sample_key("c", "c_total", {"route": route}, "h"))] = 7.0
    f.close()
    assert readers[0].read(os.stat(readers[0].path).st_ino) == (7.0, 7.0)
    assert list(readers[0].keys) == [sample_key("c", "c_total", {"route": r}, "h")
                                     for r in ("/x", "/y")]
    assert list(readers[0].key_ids) == [2, 3] and table.texts[2:] == list(readers[0].keys)


def _worker_files(directory: Path, workers: int) -> None:
    """Request, per-worker and app families of ``workers`` worker slots, written by the
    real recorder (derived per-worker families included), with routes in another order in
    each worker."""
    from gunicorn_prometheus_exporter.storage.mmap_file import sample_key

    for w in range(workers):
        store = ProcessStore(str(directory), f"w{w}")
        rec = Recorder(store, DURATIONS, SIZES, threaded=False, native=None,
                       native_layout=LAYOUT)
        for r in sorted(range(5), key=lambda r: (r * (w + 3)) % 5):
            rec.add(rec.series("GET", f"/r{r}", "200"), 0.01 * (r + 1), r, 10 * w)
        counters = store.file("counter")
        counters.values[counters.index(sample_key("app_jobs", "app_jobs_total",
                                                  {"queue": "q"}, "Jobs."))] += w + 1
        store.close()


@needs_native
def test_a_cold_scrape_numbers_each_shared_key_once(tmp_path):
    """The same families, compiled key walk or not; and counted, not timed: the first scrape
    of many workers decodes each distinct key once and numbers each shared key once (the
    per-worker ones once per worker)."""
    from gunicorn_prometheus_exporter import collector as collection
    from gunicorn_prometheus_exporter.storage.reader import FileReader

    _worker_files(tmp_path, 6)
    python = DirectoryCollector(str(tmp_path))
    compiled = DirectoryCollector(str(tmp_path), compiled=native)
    numbered = []
    original = collection.Merger._index_one

    def counting(self, shard, key, *rest):
        numbered.append((shard.worker_id, key))
        return original(self, shard, key, *rest)

    collection.Merger._index_one = counting
    try:
        served = compiled.read()
    finally:
        collection.Merger._index_one = original

    def view(found):
        return [(m.name, m.type, m.samples, getattr(m, "native", None)) for m in found]

    assert view(served) == view(python.read()) and view(compiled.read()) == view(served)
    files = [r for _, r in compiled._files.values() if isinstance(r, FileReader)]
    assert len(files) == 18  # counters, gauges and histograms of 6 workers
    # and the virtual keys of the native files (one per bucket in use, numbered alike)
    readers = [r for _, r in compiled._files.values()]
    assert len(readers) == 24
    assert len(compiled._key_table.texts) == len(set().union(*(r.keys for r in readers)))
    shared = [k for w, k in numbered if '"app_jobs"' in k]
    assert len(shared) == 1  # one worker numbers it; five look it up
    jobs = next(m for m in served if m.name == "app_jobs")
    assert [s.value for s in jobs.samples] == [21.0]


@needs_native
def test_a_key_table_numbers_as_python_does_and_takes_cpythons_hash_on_long_probes():
    """The C KeyTable numbers keys as the Python one does; one that meets a long probe
    sequence (crafted collisions: here any collision, ``long_probe=1``) hashes every key
    again with CPython's hash for bytes and still finds each key under its number."""
    from gunicorn_prometheus_exporter.storage.reader import KeyTable

    keys = [f'["c", "c_total", {{"route": "/r{n}"}}, "h"]'.encode() for n in range(500)]
    keys += [b"\xff\xfe not utf-8", b"x" * 8, b"x" * 7, b"x" * 9]
    python = KeyTable()
    expected = [python[k] for k in keys + keys[::-1]]
    for long_probe, sip in ((256, 0), (1, 1)):
        table = native.KeyTable(long_probe=long_probe)
        assert [table[k] for k in keys + keys[::-1]] == expected
        assert table.sip == sip and table.texts == python.texts
        assert len(table) == len(python) == len(keys)


@needs_native
def test_compiled_key_numbers_pick_and_key_sets():
    """``pick`` is collector.pick in C; ``key_set`` tells two files of the same keys in any
    order from any other."""
    import array

    from gunicorn_prometheus_exporter.collector import pick

    for ids, start in (([3, 0, 2], 0), ([3, 0, 2], 1), ([], 0), ([7], 0), ([1, 1], 1)):
        python_column, compiled_column = [10, None, 12], [10, None, 12]
        keys = array.array("i", ids)
        assert native.pick(compiled_column, keys, start) == pick(python_column, keys, start)
        assert compiled_column == python_column
    same = [native.key_set(array.array("i", ids)) for ids in ([5, 0, 9], [9, 5, 0], [0, 9, 5])]
    assert same[0] == same[1] == same[2] == bytes([0b100001, 0b10])
    others = [native.key_set(array.array("i", ids)) for ids in ([5, 0], [5, 0, 9, 16], [5, 1, 9])]
    assert len(set(others) | {same[0]}) == 4
    with pytest.raises(TypeError):
        native.key_set(array.array("q", [1]))
    with pytest.raises(ValueError):
        native.pick([], array.array("i", [-1]), 0)


@needs_native
def test_compiled_key_parts_are_the_python_parts():
    """``parse_key`` gives exactly what the Python parse gives (labels sorted by name, the
    same strings) for a key of plain strings, whatever its spacing, and None for every
    other key, which the Python parse then answers: escapes, non-ASCII, numbers, a label
    named twice, another shape, text around it. Its tuples are untracked by the GC."""
    import gc
    import json

    from gunicorn_prometheus_exporter.collector import Merger, _parse_key

    plain = [json.dumps(["f", "f_bucket", {"route": "/r", "le": "0.5"}, "Help."],
                        sort_keys=True),
             json.dumps(["f", "f_total", {"b": "2", "a": "1", "c": ""}, ""]),
             '["f","f",{},"h"]', ' \t["f" ,"f", { "z" :"1","y":"2" } ,"h"]\n ',
             json.dumps(["f", "f", {"a": "x y: {z}, [w]"}, "h ]"])]
    other = [json.dumps(["f", "f", {"route": "/é"}, "h"]),
             json.dumps(["f", "f", {"route": "/é"}, "h"], ensure_ascii=False),
             '["f\\n","f",{},"h"]', '["f","f",{"le":0.5},"h"]', '["f","f",{"a":null},"h"]',
             '["f","f",{"a":"1","a":"2"},"h"]', '["f","f",{},"h",1]', '["f","f",{}]',
             '["f","f",{},"h"]x', '["f","f",{},"h"', '["f","f",{"a":"1",},"h"]',
             '["f","f",{"a":"\x01"},"h"]', '{"f": 1}', "", "not json", '["f",1,{},"h"]']
    for key in plain:
        parts = native.parse_key(key)
        assert parts == _parse_key(key) and parts[2] == tuple(sorted(parts[2]))
        assert not gc.is_tracked(parts) and not gc.is_tracked(parts[2])
    assert [native.parse_key(key) for key in other] == [None] * len(other)
    # the strings keys repeat are made once (kept by parse_key), not once per key
    one, two = (native.parse_key(plain[0].replace("/r", route)) for route in ("/x", "/y"))
    assert one[0] is two[0] and one[1] is two[1] and one[2][0][0] is two[2][0][0]
    compiled, python = Merger(native), Merger()
    for key in plain + other:
        assert compiled._parse_key(key) == python._parse_key(key) == _parse_key(key)
    with pytest.raises(TypeError):
        native.parse_key(b'["f","f",{},"h"]')


@needs_native
def test_compiled_series_numbering_is_the_registrys():
    """``register`` leaves the series registry exactly as ``SeriesRegistry.add`` does
    (numbers, keys, label dicts, families, histogram groups with their buckets, bounds,
    sums and native buckets, parsed by ``native.parse_bucket``: a label that names no
    bucket is numbered and left out of the group), and hands every other histogram sample
    (_count) to ``add``."""
    import gc

    from gunicorn_prometheus_exporter.collector import Merger

    native_label = {"__native__": "3/1"}
    made = tuple(native_label.items()) + (("route", "/a"),)  # a tuple the GC tracks
    series = [("c", "counter", "C.", "c_total", (("route", "/a"),)),
              ("g", "gauge", "G.", "g", ()),
              ("h", "histogram", "H.", "h_bucket", (("le", "0.5"), ("route", "/a"))),
              ("h", "histogram", "H.", "h_bucket", (("le", "+Inf"), ("route", "/a"))),
              ("h", "histogram", "H.", "h_bucket", (("le", "abc"), ("route", "/a"))),
              ("h", "histogram", "H.", "h_bucket", (("route", "/b"),)),
              ("h", "histogram", "H.", "h_sum", (("route", "/a"),)),
              ("h", "histogram", "H2.", "h_count", (("route", "/a"),)),
              ("h", "histogram", "H.", "h_native", made),
              ("h", "histogram", "H.", "h_native", (("__native__", "3/z/0.5"),
                                                   ("route", "/a"))),
              ("h", "histogram", "H.", "h_native", (("__native__", "x/1"), ("route", "/a"))),
              ("h", "histogram", "H.", "h_native", (("route", "/c"),)),
              ("h", "histogram", "H.", "h_bucket", (("le", "1"), ("route", "/a"),
                                                   ("worker_id", "0"))),
              ("c", "counter", "other help", "c_total", (("route", "/a"),))]
    compiled, python = Merger(native), Merger()
    for merger in (compiled, python):
        numbers = [merger._add(*one) for one in series + series[::-1]]
        assert numbers == list(range(13)) + [0] + [0] + list(range(12, 0, -1)) + [0]
    for name in ("ids", "keys", "label_dicts", "histogram_ids", "family_of", "histograms"):
        assert getattr(compiled.registry, name) == getattr(python.registry, name), name
    # tuples of strings and numbers only: untracked, as the GC's first pass would make them
    # (but the keys ``add`` numbered, and the one that holds a tuple the GC tracks)
    keys = compiled.registry.keys
    assert [k for k in keys if gc.is_tracked(k)] == [k for k in keys
                                                     if k[1] == "h_count" or k[2] is made]
    natives = compiled.registry.histograms[("h", (("route", "/a"),))]["native"]
    assert natives == [((3, 1, 0.0), 8), ((3, None, 0.5), 9)]  # "x/1" names no bucket
    assert not any(gc.is_tracked(entry) for group in compiled.registry.histograms.values()
                   for entry in group["buckets"])
    assert compiled._add.func is native.register


def _more_files(directory: Path, workers: int, rounds: int) -> int:
    """Appends to the files ``_worker_files`` wrote (more routes, in each worker's own
    order) and writes gauges of every kind of file (``max``, ``all`` labelled by pid,
    ``mostrecent`` with timestamps) in worker and non-worker processes. The requests
    recorded, so that a test can check what it is served."""
    from gunicorn_prometheus_exporter.storage.mmap_file import sample_key

    requests = 0
    for w in range(workers):
        store = ProcessStore(str(directory), f"w{w}")
        rec = Recorder(store, DURATIONS, SIZES, threaded=False, native=None,
                       native_layout=LAYOUT)
        for r in sorted(range(5, 5 + 3 * rounds), key=lambda r: (r * (w + 5)) % 7):
            rec.add(rec.series("GET", f"/r{r}", "200"), 0.02 * r, r, 3 * w)
            requests += 1
        for mode, value in (("max", w * 1.5), ("all", w + 0.25), ("mostrecent", -w)):
            gauges = store.file("gauge", mode)
            queues = ("a", "b", f"q{rounds}") + (("odd",) if w % 2 else ())
            for queue in sorted(queues, key=lambda q: hash((q, w))):
                at = gauges.index(sample_key(f"app_{mode}", f"app_{mode}", {"queue": queue},
                                             "Depth."))
                gauges.values[at] = value + rounds
                gauges.set_timestamp(at, 1000.0 * w + rounds)
        store.close()
    store = ProcessStore(str(directory), "4242")  # an app process that is no worker
    counters = store.file("counter")
    counters.values[counters.index(sample_key("app_jobs", "app_jobs_total", {"queue": "q"},
                                              "Jobs."))] += 100
    store.close()
    return requests


def _served(found) -> list:
    """What a scrape serves, sample by sample (native histograms included); samples in a
    family in one order (the order of series first seen, which depends on when the
    collector first read each file, is not part of what is served)."""
    return [(m.name, m.type, m.documentation,
             sorted(m.samples, key=lambda s: (s.name, sorted(s.labels.items()))),
             getattr(m, "native", None)) for m in found]


@pytest.mark.parametrize("compiled", [pytest.param(native, marks=needs_native), None],
                         ids=["C", "Python"])
def test_a_cold_scrape_serves_what_a_warm_one_does(tmp_path, compiled):
    """A collector that starts beside a busy directory (a restarted metrics process, or
    ``serve`` started late) serves, sample by sample, what one that read the directory as
    it filled serves: keys numbered by a fresh key table, series sets shared between files
    of the same keys, against keys numbered as they were appended. On both paths, and the
    two paths alike."""
    _worker_files(tmp_path, 6)
    warm = DirectoryCollector(str(tmp_path), compiled=compiled)
    assert warm.read()
    requests = 5 * 6
    for rounds in (1, 2):
        requests += _more_files(tmp_path, 6, rounds)
        served = warm.read()
        cold = DirectoryCollector(str(tmp_path), compiled=compiled)
        assert _served(cold.read()) == _served(served)
        assert _served(cold.read()) == _served(served)  # and its own repeat
        for collector in (warm, cold):  # a shared set of series is exactly each one's
            for shard, _ in collector._files.values():
                assert shard.series == set(shard.targets)
                assert shard.derived_series == {sid for sid, _ in shard.derived}
    python = DirectoryCollector(str(tmp_path))
    assert _served(python.read()) == _served(served)
    for family in (catalogue.HTTP_REQUESTS, catalogue.WORKER_REQUESTS):  # derived per worker
        totals = next(m for m in served if m.name == family.name)
        assert sum(s.value for s in totals.samples) == requests
    depth = {(s.name, tuple(sorted(s.labels.items()))): s.value
             for m in served if m.name.startswith("app_") for s in m.samples}
    assert len(depth) == 6 * 4 + 3 * 1 + 5 + 5 + 1  # "all": per pid; a, b, q1, q2, odd; jobs
    assert depth["app_max", (("queue", "a"),)] == 5 * 1.5 + 2
    assert depth["app_max", (("queue", "q1"),)] == 5 * 1.5 + 1
    assert depth["app_mostrecent", (("queue", "b"),)] == -5 + 2
    assert depth["app_all", (("pid", "w1"), ("queue", "q2"))] == 1.25 + 2
    assert depth["app_max", (("queue", "odd"),)] == 5 * 1.5 + 2
    # the files that hold "odd" go: no file feeds its series any more, whatever files of
    # the same keys shared, and a collector that read them serves what a fresh one does
    for w in (1, 3, 5):
        for mode in ("max", "all", "mostrecent"):
            os.unlink(tmp_path / f"gauge_{mode}_w{w}.db")
    after = _served(DirectoryCollector(str(tmp_path), compiled=compiled).read())
    assert _served(cold.read()) == after and _served(warm.read()) == after
    assert not any(s.labels.get("queue") == "odd" for m in after for s in m[3])
    jobs = next(m for m in served if m.name == "app_jobs")
    assert [s.value for s in jobs.samples] == [sum(range(1, 7)) + 200.0]


def _replace_churned(directory: Path, round_: int, processes: int, keys: int) -> dict:
    """The counter files of ``processes`` app processes (``p<n>``) removed and written
    again with ``keys`` entries each that no round before had (label values that keep
    changing), and the exemplar file of ``p0`` likewise, with one exemplar on its first
    entry; the values of ``app_churn_total``, by label ``item``."""
    from gunicorn_prometheus_exporter.storage import exemplars
    from gunicorn_prometheus_exporter.storage.mmap_file import sample_key

    want = {}
    for p in range(processes):
        (directory / f"counter_p{p}.db").unlink(missing_ok=True)
        store = ProcessStore(str(directory), f"p{p}")
        counters = store.file("counter")
        for i in range(keys):
            item = f"{round_}-{p}-{i}"
            at = counters.index(sample_key("app_churn", "app_churn_total", {"item": item},
                                           "Churn."))
            counters.values[at] = want[item] = round_ * 1000.0 + i
        store.close()
    path = exemplars.path_of(str(directory), "p0")
    Path(path).unlink(missing_ok=True)
    slots = exemplars.ExemplarFile(path)
    key = sample_key("app_churn", "app_churn_total", {"item": f"{round_}-0-0"}, "Churn.")
    slots.put(slots.slot(key), 1.0, 1_700_000_000.0 + round_, bytes([round_]) * 24,
              1_800_000_000.0)
    return want


def _churned(found) -> dict:
    """The ``app_churn_total`` values a read served, by label ``item``."""
    return {s.labels["item"]: s.value for m in found if m.name == "app_churn"
            for s in m.samples}


@pytest.mark.parametrize("compiled", [pytest.param(native, marks=needs_native), None],
                         ids=["C", "Python"])
def test_the_tables_of_churning_keys_stay_bounded(tmp_path, compiled):
    """Files replaced round after round by files of keys never seen before: the key table
    and the series registry grow by the new keys until they hold more than twice what the
    files read need plus ``SLACK`` (4 files x 100 values: 2 x 400 + 1,024 = 1,824), and
    the next read starts afresh. Exactly: 400 keys and series more per round, 2,000 at
    most, 400 after each fresh start, on both paths; every read serves exactly the live
    files' values, and the fresh start's cold read exactly what the read before it served
    from the same files."""
    from gunicorn_prometheus_exporter.collector import SLACK

    assert SLACK == 1024  # the sizes below follow from it
    collector = DirectoryCollector(str(tmp_path), compiled=compiled)
    sizes = []
    for round_ in range(1, 11):
        want = _replace_churned(tmp_path, round_, 4, 100)
        first = collector.read()
        assert _churned(first) == want
        sizes.append((len(collector._key_table), collector.resets))
        again = collector.read()  # nothing changed: a repeat, or a fresh start's cold read
        assert _served(again) == _served(first)
        sizes.append((len(collector._key_table), collector.resets))
        assert len(collector.merger.registry.keys) == sizes[-1][0]  # a series per key
        exemplar = next(s.exemplar for m in again for s in m.samples
                        if s.labels.get("item") == f"{round_}-0-0")
        assert exemplar.timestamp == 1_700_000_000.0 + round_
    assert sizes == [(400, 0), (400, 0), (800, 0), (800, 0), (1200, 0), (1200, 0),
                     (1600, 0), (1600, 0), (2000, 0), (400, 1),  # 2,000 > 1,824: afresh
                     (800, 1), (800, 1), (1200, 1), (1200, 1), (1600, 1), (1600, 1),
                     (2000, 1), (400, 2), (800, 2), (800, 2)]


@pytest.mark.parametrize("compiled", [pytest.param(native, marks=needs_native), None],
                         ids=["C", "Python"])
def test_a_fresh_start_serves_exactly_what_the_tables_served(tmp_path, compiled):
    """Everything a directory holds, beside app files whose keys churn: the request
    families with their per-worker derived families and native histograms, gauges of the
    modes read without a lock (max, all by pid, mostrecent by timestamp), the counter of
    an app process that is no worker, exemplars of a file that stays and of one replaced.
    After every read, fresh start or not, the collector serves, sample by sample, exactly
    what the Python path's collector started beside the files serves."""
    from gunicorn_prometheus_exporter.storage import exemplars
    from gunicorn_prometheus_exporter.storage.mmap_file import sample_key

    _worker_files(tmp_path, 6)
    _more_files(tmp_path, 6, 1)
    stays = exemplars.ExemplarFile(exemplars.path_of(str(tmp_path), "w0"))
    jobs = stays.slot(sample_key("app_jobs", "app_jobs_total", {"queue": "q"}, "Jobs."))
    collector = DirectoryCollector(str(tmp_path), compiled=compiled)
    for round_ in range(1, 9):
        want = _replace_churned(tmp_path, round_, 4, 300)
        stays.put(jobs, float(round_), 1_700_000_000.0 + round_, b"\x07" * 24, 1_800_000_000.0)
        for _ in range(2):
            served = _served(collector.read())
            assert served == _served(DirectoryCollector(str(tmp_path)).read())
        assert _churned(collector.read()) == want
    assert collector.resets >= 2  # at least two fresh starts among the reads checked
    families = {m[0] for m in served}
    assert {"app_jobs", "app_max", "app_all", "app_mostrecent", catalogue.HTTP_DURATION.name,
            catalogue.WORKER_REQUESTS.name} <= families
    assert any(m[4] for m in served)  # native histograms among them


@needs_native
def test_a_cold_scrape_takes_the_compiled_path(tmp_path, monkeypatch):
    """The pin of the cold scrape's C path: every file's keys are walked and numbered by
    ``key_table`` in one C ``KeyTable``, their series looked up by ``pick``, and files of
    the same keys share one set of series (``key_set``), each key's parts parsed by
    ``parse_key`` and its series numbered by ``register``; the Python twins are never
    called (``SeriesRegistry.add`` only for what ``register`` leaves to it)."""
    from gunicorn_prometheus_exporter import collector as collection
    from gunicorn_prometheus_exporter.storage.reader import FileReader

    def not_here(*args):
        raise AssertionError("the Python path was taken")

    walked_in_python = []
    python_walk = FileReader._parse

    def parse(self, used, m):
        if self._walk is None:
            walked_in_python.append(self.path)
        return python_walk(self, used, m)

    added_in_python = []
    python_add = collection.SeriesRegistry.add

    def add(self, family, typ, help_text, sample, labels):
        added_in_python.append((typ, sample))
        return python_add(self, family, typ, help_text, sample, labels)

    monkeypatch.setattr(collection, "pick", not_here)
    monkeypatch.setattr(collection, "_parse_key", not_here)
    monkeypatch.setattr(collection.SeriesRegistry, "add", add)
    monkeypatch.setattr(FileReader, "_parse", parse)
    _worker_files(tmp_path, 6)
    _more_files(tmp_path, 6, 1)
    compiled = DirectoryCollector(str(tmp_path), compiled=native)
    assert compiled.read()
    assert isinstance(compiled._key_table, native.KeyTable)
    files = [(s, r) for s, r in compiled._files.values() if isinstance(r, FileReader)]
    assert len(files) == 6 * 6 + 1  # counters, gauges (4 modes), histograms; the app's
    assert all(r._walk is native.key_table and r._table is compiled._key_table
               for _, r in files)
    # only the files of other payloads: native histograms (a payload per key), exemplars
    assert walked_in_python and not {r.path for _, r in files} & set(walked_in_python)
    # two key sets (with "odd" or without) in three files each: in whatever order the
    # files are read, the third of each set at the latest takes the set of series of an
    # earlier one
    most = [s for s, _ in files if s.mode == "max"]
    assert len(most) == 6 and len({id(s.series) for s in most}) <= 4
    assert compiled.merger._pick is native.pick
    assert compiled.merger._parse_plain is native.parse_key
    # every series numbered in C (``register``), native buckets included (the files hold
    # no other histogram sample, such as a _count, that it leaves to ``add``)
    assert compiled.merger._add.func is native.register and added_in_python == []
    assert len(compiled._key_table.texts) == len(
        set().union(*(r.keys for _, r in compiled._files.values())))


@needs_native
def test_a_cold_scrape_of_native_and_derived_series_takes_the_compiled_path(tmp_path,
                                                                           monkeypatch):
    """The pin of the cold scrape's C path for what the default configuration writes
    besides classic values: the native files' virtual keys are numbered in the collector's
    C ``KeyTable`` (``key_ids``, an array('i') that ``pick`` reads) and each is built once,
    whichever files hold it; each native entry key is parsed once; a request family's key,
    which also feeds a per-worker derived family, is numbered once (its derived series once
    per worker, from its template), not once per worker; and all of it serves what the
    Python path serves. A repeat read builds and numbers nothing."""
    import array
    import collections
    import json

    from gunicorn_prometheus_exporter import collector as collection
    from gunicorn_prometheus_exporter.storage import native as native_files

    def not_here(*args):
        raise AssertionError("the Python path was taken")

    built, parsed, numbered = [], [], []
    virtual_key, entry_payload = native_files._Entry.key, native_files.entry_payload
    index_one = collection.Merger._index_one
    monkeypatch.setattr(native_files._Entry, "key",
                        lambda self, bucket: built.append(bucket) or virtual_key(self, bucket))
    monkeypatch.setattr(native_files, "entry_payload",
                        lambda key: parsed.append(key) or entry_payload(key))
    monkeypatch.setattr(collection.Merger, "_index_one",
                        lambda self, shard, key, *rest: numbered.append(key)
                        or index_one(self, shard, key, *rest))
    _worker_files(tmp_path, 6)
    _more_files(tmp_path, 6, 1)
    python = _served(DirectoryCollector(str(tmp_path)).read())
    built.clear(), parsed.clear(), numbered.clear()
    monkeypatch.setattr(collection, "pick", not_here)
    compiled = DirectoryCollector(str(tmp_path), compiled=native)
    assert _served(compiled.read()) == python
    readers = [r for _, r in compiled._files.values()
               if isinstance(r, native_files.NativeReader)]
    assert len(readers) == 6
    for reader in readers:
        assert reader._virtual is compiled._virtual
        assert compiled._virtual.table is compiled._key_table
        assert isinstance(reader.key_ids, array.array) and reader.key_ids.typecode == "i"
    virtual = set().union(*(r.keys for r in readers))
    # 8 routes, each its zero bucket and the bucket of its one duration, in all 6 files:
    # each built once
    assert len(built) == len(virtual) == 8 * 2
    # each made around its bucket's name, exactly the text json.dumps makes of its parts
    assert all(key == json.dumps(json.loads(key), sort_keys=True) for key in virtual)
    entries = set().union(*(r._file.keys for r in readers))
    assert sorted(parsed) == sorted(entries)  # 8 routes: each parsed once, not 6 times
    counts = collections.Counter(numbered)
    derived = [k for k in counts if json.loads(k)[0] in catalogue.DERIVED]
    assert len(derived) > 8 * 6 and all(counts[k] == 1 for k in derived)
    assert all(counts[k] == 1 for k in virtual)
    shards = [s for s, _ in compiled._files.values() if s.derived]
    assert len(shards) == 6 * 2  # counters and histograms of the 6 workers
    for shard in shards:  # the derived series of a worker are its own
        worker = {compiled.merger.registry.keys[sid][2] for sid, _ in shard.derived}
        assert {dict(labels)["worker_id"] for labels in worker} == {shard.worker_id}
        assert [p for _, p in shard.derived] == sorted(p for _, p in shard.derived)
    built.clear(), parsed.clear(), numbered.clear()
    assert _served(compiled.read()) == python
    assert built == parsed == numbered == []


@needs_native
def test_a_cold_scrapes_per_key_lists_are_left_to_reference_counting(tmp_path, monkeypatch):
    """The pin of what a cold scrape makes per key of each file, with the C speedups: a
    shard's series numbers (``pick``) and its derived series with their value positions
    (``_speedups.derived``, never the Python ``derived``) are lists the cyclic GC does not
    track (they hold ints, and pairs of ints, that no cycle can go through), the same
    pairs as the Python path's, their positions ints that every shard shares; and a worker's request files, which hold the same keys,
    share one set of series, their derived series kept apart."""
    import gc

    from gunicorn_prometheus_exporter import collector as collection

    def not_here(*args):
        raise AssertionError("the Python path was taken")

    _worker_files(tmp_path, 6)
    python = DirectoryCollector(str(tmp_path))
    served = _served(python.read())
    monkeypatch.setattr(collection, "derived", not_here)
    compiled = DirectoryCollector(str(tmp_path), compiled=native)
    assert _served(compiled.read()) == served
    requests = [(s, python._files[path][0]) for path, (s, _) in compiled._files.items()
                if s.derived]
    assert len(requests) == 6 * 2  # counters and histograms of the 6 workers
    # but the first shard of each kind read, whose keys were numbered one by one
    untracked = [s for s, _ in requests if not gc.is_tracked(s.derived)]
    assert len(untracked) == len(requests) - 2
    assert not any(gc.is_tracked(pair) for s in untracked for pair in s.derived)
    numbers = {id(n) for n in compiled.merger._numbers}  # the positions: shared ints
    assert all(id(position) in numbers for s in untracked for _, position in s.derived)
    assert not any(gc.is_tracked(s.targets) for s, _ in requests)
    assert all(shard.derived == twin.derived for shard, twin in requests)
    histograms = [s for s, _ in requests if s.typ == "histogram"]
    assert len({id(s.series) for s in histograms}) == 1  # the same keys: one set
    assert len({frozenset(s.derived_series) for s in histograms}) == 6  # each worker's
    assert _served(compiled.read()) == served


@pytest.mark.parametrize("compiled", [pytest.param(native, marks=needs_native), None],
                         ids=["C", "Python"])
def test_virtual_keys_and_derived_series_stay_exact_as_files_change(tmp_path, compiled):
    """What a collector keeps across reads and files (each native entry's virtual keys,
    each derived series' template and each worker's series of it) never serves a wrong
    number: buckets found later below and above a series' span, a worker's files replaced
    by files of other routes under another native layout (a new generation), a new worker,
    a worker gone. After each change the collector serves, sample by sample, what a fresh
    Python collector serves; and the totals are the requests recorded."""
    _worker_files(tmp_path, 4)
    collector = DirectoryCollector(str(tmp_path), compiled=compiled)
    assert collector.read()

    def record(identity, layout, requests):
        store = ProcessStore(str(tmp_path), identity)
        rec = Recorder(store, DURATIONS, SIZES, threaded=False, native=None,
                       native_layout=layout)
        for route, duration in requests:
            rec.add(rec.series("GET", route, "200"), duration, 1, 2)
        store.close()

    def check(want_w1):
        served = collector.read()
        assert _served(served) == _served(DirectoryCollector(str(tmp_path)).read())
        per_worker = {s.labels["worker_id"]: s.value for m in served
                      if m.name == catalogue.WORKER_REQUESTS.name for s in m.samples}
        assert per_worker.get("1") == want_w1
        return served

    # buckets below and above the spans found so far, in a file read before
    record("w0", LAYOUT, [("/r0", 1e-5), ("/r0", 30.0), ("/r3", 0.0015)])
    check(5.0)
    # w1's files replaced: other routes, another layout (schema 2), read as a new file
    for path in tmp_path.glob("*_w1.*"):
        path.unlink()
    record("w1", Layout.for_range(2, 1e-3, 10.0), [("/new", 0.2), ("/new", 0.002),
                                                    ("/r1", 5.0)])
    served = check(3.0)
    durations = next(m for m in served if m.name == catalogue.HTTP_DURATION.name)
    counts = {labels: h.count for labels, h in durations.native.items()}
    assert counts[(("method", "GET"), ("route", "/new"))] == 2.0
    assert sum(counts.values()) == 4 * 5 - 5 + 3 + 3  # w1's first 5 requests gone
    schemas = {labels: h.schema for labels, h in durations.native.items()}
    assert schemas[(("method", "GET"), ("route", "/r1"))] == 2  # merged at the coarser
    assert schemas[(("method", "GET"), ("route", "/r2"))] == 3
    # a new worker, then a worker gone
    record("w4", LAYOUT, [("/r0", 0.01), ("/new", 0.2)])
    check(3.0)
    for path in tmp_path.glob("*_w2.*"):
        path.unlink()
    check(3.0)


@needs_native
def test_the_metrics_process_reads_with_the_compiled_key_walk(tmp_path, monkeypatch):
    """The pin of the scrape side: the directory source the metrics process (and ``serve``)
    builds hands the module to its readers, and the switch turns it off there too."""
    from gunicorn_prometheus_exporter.sources import DirectorySource

    _worker_files(tmp_path, 1)
    source = DirectorySource(str(tmp_path), logging.getLogger("test"))
    assert source.collector.read()
    walks = [r._walk for _, r in source.collector._files.values() if hasattr(r, "_walk")]
    assert walks and all(walk is native.key_table for walk in walks)
    monkeypatch.setenv(speedups.SWITCH_ENV, "1")
    source = DirectorySource(str(tmp_path), logging.getLogger("test"))
    assert source.collector.read()
    assert all(r._walk is None for _, r in source.collector._files.values()
               if hasattr(r, "_walk"))


# -- the WSGI hooks and application wrapper -----------------------------------------------
class _Socket:
    """Where gunicorn's Response writes: kept nowhere (sendfile counts what it would send)."""

    def sendall(self, data):
        pass

    def sendfile(self, file, offset=0, count=None):
        return count


def _wsgi_app(environ, start_response):
    """One behaviour per path, the cases both hook implementations must record alike."""
    path = environ["PATH_INFO"]
    if path == "/boom":
        raise ValueError("before the response started")
    if path == "/chunked":
        environ["wsgi.input"].read()
    elif path == "/handled":
        environ[ERROR_ENVIRON_KEY] = "HandledError"
    elif path == "/custom/9":
        environ[ROUTE_ENVIRON_KEY] = "/custom/{n}"
    elif path == "/object/9":  # a framework's own template object: its str() counts
        environ[ROUTE_ENVIRON_KEY] = _Template()
    elif path == "/file":
        start_response("200 OK", [])
        return environ["wsgi.file_wrapper"](open(__file__, "rb"))
    start_response("404 Not Found" if path == "/nowhere" else "200 OK", [])
    if path == "/late-boom":
        return _late_boom()
    return [b"abc", b"de"]


class _Template:
    def __str__(self) -> str:
        return "/object/{n}"


def _late_boom():
    yield b"abc"
    raise KeyError("after the response started")


#: (path, request line and headers after the Host) of the mix; every request is sent twice
WSGI_REQUESTS = [
    ("/ok", b""), ("/upload", b"Content-Length: 8\r\n\r\n12345678"),
    ("/chunked", b"Transfer-Encoding: chunked\r\n\r\n5\r\n12345\r\n3\r\n678\r\n0\r\n\r\n"),
    ("/file", b""), ("/boom", b""), ("/late-boom", b""), ("/handled", b""),
    ("/custom/9", b""), ("/object/9", b""), ("/nowhere", b""),
    ("/old", b""),  # over HTTP/1.0
    ("/stamped", b"X-Request-Start: t=%.3f\r\n"),
    ("/traced", b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n"),
]


def _wsgi_request(cfg, path: str, rest: bytes):
    from gunicorn.http.message import Request
    from gunicorn.http.unreader import IterUnreader

    version = b"1.0" if path == "/old" else b"1.1"
    if b"%.3f" in rest:
        rest = rest % (time.time() - 0.3,)  # a proxy stamped it 0.3 s before
    method = b"POST" if rest.startswith((b"Content", b"Transfer")) else b"GET"
    head = b"%s %s HTTP/%s\r\nHost: t\r\n" % (method, path.encode(), version)
    data = head + (rest if rest.endswith(b"\r\n\r\n") or b"\r\n\r\n" in rest else rest + b"\r\n")
    return Request(cfg, IterUnreader([data]), ("127.0.0.1", 5000), 1)


def _wsgi_samples(directory: Path, compiled: bool):
    """Every sample the mix leaves through the worker's hooks and application wrapper, as
    gunicorn's sync worker calls them; and the paths whose recording reached Python
    (``record``, or the recorder's ``add`` from Python)."""
    from gunicorn.config import Config
    from gunicorn.http import wsgi

    from gunicorn_prometheus_exporter.workers.body import metered
    from gunicorn_prometheus_exporter.workers.wsgi_hooks import WSGIRequestHooks

    directory.mkdir()
    inst = _instrumentation(directory, compiled)
    extras = _extras(inst, directory, on=True)
    hooks = WSGIRequestHooks(inst, inst.recorder, exits.Intent(str(directory), "w0"), False,
                             extras, native if compiled else None)
    in_python = []
    record = hooks.record

    def counted(method, path, *args):
        in_python.append(path)
        return record(method, path, *args)

    hooks.record = counted
    add = hooks._add  # a known series is added without ``record`` (its route is its path)

    def counted_add(series, *args):
        in_python.append(inst.recorder.labels_of[series.requests][1])
        return add(series, *args)

    hooks._add = counted_add
    cfg = Config()
    hooks.install(cfg)
    assert (type(cfg.pre_request).__name__ == "builtin_function_or_method") is compiled
    app = metered(_wsgi_app, None, native if compiled else None)
    assert (type(app).__name__ == "MeteredWSGI") is compiled
    worker = type("Worker", (), {"nr": 0, "max_requests": 2 * len(WSGI_REQUESTS)})()

    def serve(req) -> None:  # as gunicorn's sync worker: post_request in the finally
        environ, resp = {}, None
        try:
            cfg.pre_request(worker, req)
            resp, environ = wsgi.create(req, _Socket(), ("127.0.0.1", 5000),
                                        ("127.0.0.1", 8000), cfg)
            worker.nr += 1
            body = app(environ, resp.start_response)
            if isinstance(body, environ["wsgi.file_wrapper"]):
                resp.write_file(body)
            else:
                for chunk in body:
                    resp.write(chunk)
            resp.close()
        finally:
            cfg.post_request(worker, req, environ, resp)

    for path, rest in WSGI_REQUESTS * 2:
        try:
            serve(_wsgi_request(cfg, path, rest))
        except (ValueError, KeyError):
            pass
    refused = _wsgi_request(cfg, "/refused", b"")
    cfg.pre_request(worker, refused)
    cfg.post_request(worker, refused, {}, None)  # gunicorn refused it: no environ
    cfg.post_request(worker, _wsgi_request(cfg, "/unseen", b""), {}, None)  # no pre_request
    gauges, index = inst.recorder.in_flight_cell()
    assert gauges[index] == 0.0
    inst.recorder.store.close()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in DirectoryCollector(str(directory)).read() for s in f.samples
               if not s.name.endswith("_duration_seconds_sum")}
    return samples, in_python, exits.take_intent(str(directory), "w0")


@needs_native
def test_compiled_wsgi_hooks_record_what_python_records(tmp_path):
    python, python_paths, python_intent = _wsgi_samples(tmp_path / "python", False)
    compiled, compiled_paths, compiled_intent = _wsgi_samples(tmp_path / "c", True)
    requests = {labels: v for (name, labels), v in python.items()
                if name == "gunicorn_http_requests_total"}
    assert requests == {
        (("method", "GET"), ("route", path), ("status", "200")): 2
        for path in ("/ok", "/file", "/late-boom", "/handled", "/custom/{n}", "/object/{n}",
                     "/old", "/stamped", "/traced")
    } | {
        (("method", "POST"), ("route", "/upload"), ("status", "200")): 2,
        (("method", "POST"), ("route", "/chunked"), ("status", "200")): 2,
        (("method", "GET"), ("route", "/boom"), ("status", "500")): 2,
        (("method", "GET"), ("route", "unmatched"), ("status", "404")): 2,
    }, requests
    received = {labels: v for (name, labels), v in python.items()
                if name == "gunicorn_http_request_size_bytes_sum"}
    sent = {labels: v for (name, labels), v in python.items()
            if name == "gunicorn_http_response_size_bytes_sum"}
    assert (received[(("method", "POST"), ("route", "/upload"))],
            received[(("method", "POST"), ("route", "/chunked"))]) == (2 * 8, 2 * 8)
    assert sent[(("method", "GET"), ("route", "/file"))] == 2 * Path(__file__).stat().st_size
    assert python[("gunicorn_http_protocol_requests_total", (("protocol", "HTTP/1.0"),))] == 2
    assert python[("gunicorn_http_request_queue_duration_seconds_count", ())] == 2
    assert compiled == python
    assert python_intent == compiled_intent == exits.MAX_REQUESTS
    # the pin: on the compiled path, a request of a known series that failed in no way
    # and has no sendfile or chunked body is recorded in C (its extras, if any, in Python)
    paths = [p for p, _ in WSGI_REQUESTS]
    assert python_paths == paths * 2
    in_c = {"/ok", "/upload", "/custom/9", "/old", "/stamped", "/traced"}
    assert compiled_paths == paths + [p for p in paths if p not in in_c]


@needs_native
@pytest.mark.parametrize("user_hook", [False, True])
def test_the_compiled_hooks_are_set_without_gunicorns_arity_check(tmp_path, monkeypatch,
                                                                  user_hook):
    """gunicorn's arity check parses a compiled method's text signature with tokenize,
    which in a worker dirties about 1.2 MiB of pages shared with the master
    (docs/benchmarks.md, Memory): the hooks are set past it, alone or chained."""
    import gunicorn.util
    from gunicorn.config import Config

    from gunicorn_prometheus_exporter.workers.wsgi_hooks import WSGIRequestHooks

    inst = _instrumentation(tmp_path, True)
    hooks = WSGIRequestHooks(inst, inst.recorder, exits.Intent(str(tmp_path), "w0"), False,
                             _extras(inst, tmp_path, on=False), native)
    cfg = Config()
    called = []
    if user_hook:
        cfg.set("pre_request", lambda worker, req: called.append(req))
    checked = []
    real = gunicorn.util.get_arity
    monkeypatch.setattr(gunicorn.util, "get_arity", lambda f: checked.append(f) or real(f))
    hooks.install(cfg)
    assert checked == []
    req = type("Request", (), {})()
    cfg.pre_request(None, req)
    assert isinstance(getattr(req, "_gunicorn_prometheus_started"), float)
    assert called == ([req] if user_hook else [])
    gauges, index = inst.recorder.in_flight_cell()
    assert gauges[index] == 1.0
    inst.recorder.store.close()

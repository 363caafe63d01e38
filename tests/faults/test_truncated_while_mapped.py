"""A storage file shortened in place (``truncate``) while the reader has it mapped.

A read of a mapped page past the file's new end raises SIGBUS, which killed the metrics
process (and the standalone exporter). The compiled reader guards its reads of the map; the
Python path reads each file with ``os.pread`` and never touches a mapped page: on both, the
file is read as torn (the entries its new size holds), counted once in
``gunicorn_exporter_read_errors_total``, and every other file is served exactly. Reads run
in a child process, so a SIGBUS fails the test instead of ending the run. A SIGBUS outside
a guarded read still kills the process as before (the handler hands it on)."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from gunicorn_prometheus_exporter import speedups
from gunicorn_prometheus_exporter.storage.reader import FileReader
from support import protodecode
from support.child import run_child
from support.procs import Serve
from support.scrape import Scrape, exemplars, fetch_bytes, scrape
from support.wait import until

TESTS = str(Path(__file__).resolve().parents[1])
READ_ERRORS = "gunicorn_exporter_read_errors_total"
needs_native = pytest.mark.skipif(speedups.load({}) is None,
                                  reason="the C speedups are not built here")

#: writes counter_w0.db (keys /a0.. valued 1, 2, ...) and counter_w1.db (/b0../b2), reads
#: the directory, shortens w0 to CUT bytes while the collector holds its map, reads again
READ_TRUNCATED = """
import json, os, sys
from gunicorn_prometheus_exporter import speedups
from gunicorn_prometheus_exporter.collector import DirectoryCollector
from gunicorn_prometheus_exporter.storage.mmap_file import MmapFile, sample_key

directory, where, cut, path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
native = speedups.load({{}}) if path == "c" else None

def write(f, prefix, numbers):
    for n in numbers:
        f.values[f.index(sample_key("c", "c_total", {{"route": f"/{{prefix}}{{n}}"}}, "h"))] \\
            = n + 1.0

def served(collector):
    return {{s.labels["route"]: s.value for f in collector.read() for s in f.samples
            if s.name == "c_total"}}, collector.read_errors

other = MmapFile(os.path.join(directory, "counter_w1.db"))
write(other, "b", range(3))
victim = MmapFile(os.path.join(directory, "counter_w0.db"))
write(victim, "a", range({entries} if where != "walk" else 10))
collector = DirectoryCollector(directory, compiled=native)
before = served(collector)
if where == "walk":  # entries appended after the first read: the key walk meets the cut
    write(victim, "a", range(10, {entries}))
os.truncate(victim.path, cut)
after = served(collector)
again = served(collector)
print(json.dumps({{"before": before, "after": after, "again": again}}))
"""

ENTRIES = 200  # about 17,000 bytes: the cut at 4,096 leaves a few dozen entries


def _held_in(path: Path) -> dict:
    """The routes (and values) a fresh reader finds in what is left of the file."""
    reader = FileReader(str(path))
    values = reader.read() or ()
    return {json.loads(k)[2]["route"]: v for k, v in zip(reader.keys, values)}


#: the compiled reader, and the Python path's
PATHS = [pytest.param("c", marks=needs_native), "python"]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("where,cut", [("values", 4096), ("walk", 8192), ("header", 0)])
def test_a_file_truncated_while_mapped_is_read_as_torn(tmp_path, where, cut, path):
    """``values``: the values read past the cut; ``walk``: the key walk over entries
    appended since the last read; ``header``: the file cut to nothing. The Python path
    died of SIGBUS here before it read with ``os.pread``."""
    done = run_child(READ_TRUNCATED.format(entries=ENTRIES), str(tmp_path), where, str(cut),
                     path)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    others = {f"/b{n}": n + 1.0 for n in range(3)}
    first = ENTRIES if where != "walk" else 10
    assert out["before"] == [{**others, **{f"/a{n}": n + 1.0 for n in range(first)}}, 0]
    held = _held_in(tmp_path / "counter_w0.db")
    assert (0 < len(held) < ENTRIES) if cut else held == {}
    assert held == {f"/a{n}": n + 1.0 for n in range(len(held))}
    assert out["after"] == out["again"] == [{**others, **held}, 1]
    assert done.stderr.count("was shortened while mapped") == 1
    assert "counter_w0.db" in done.stderr


@needs_native
def test_a_sigbus_outside_a_guarded_read_still_kills_the_process(tmp_path):
    """After a guarded read installed the handler, a plain Python read of a truncated map
    dies of SIGBUS as before, through the handler installed earlier (faulthandler's
    report, then the default action)."""
    code = """
    import faulthandler, mmap, os, sys
    faulthandler.enable()
    from gunicorn_prometheus_exporter import speedups
    from gunicorn_prometheus_exporter.collector import DirectoryCollector
    from gunicorn_prometheus_exporter.storage.mmap_file import MmapFile, sample_key
    f = MmapFile(os.path.join(sys.argv[1], "counter_w0.db"))
    f.values[f.index(sample_key("c", "c_total", {}, "h"))] = 1.0
    DirectoryCollector(sys.argv[1], compiled=speedups.load({})).read()  # installs it
    with open(f.path, "rb") as raw:
        m = mmap.mmap(raw.fileno(), 0, prot=mmap.PROT_READ)
    os.truncate(f.path, 4096)
    print(m[8192], flush=True)
    """
    done = run_child(code, str(tmp_path))
    assert done.returncode == -signal.SIGBUS, (done.returncode, done.stderr)
    assert "Fatal Python error: Bus error" in done.stderr


REQUESTS = "gunicorn_http_requests_total"


def _routes_in(path: Path) -> set:
    """The routes whose request count a fresh reader finds in what the file holds."""
    reader = FileReader(str(path))
    reader.read()
    parsed = (json.loads(key) for key in reader.keys)
    return {labels["route"] for _, sample, labels, _ in parsed if sample == REQUESTS}


#: the environment of each path's processes
PATH_ENV = {"c": {}, "python": {"GUNICORN_PROMETHEUS_NO_SPEEDUPS": "1"}}


@pytest.mark.parametrize("path", PATHS)
def test_a_worker_file_truncated_under_a_running_scrape(start_gunicorn, tmp_path, path):
    """A worker's counter file shortened while the metrics process (and the standalone
    exporter) hold it mapped: the same metrics process answers 200, what the other files
    hold is served exactly, the cut file counts once as a read error."""
    g = start_gunicorn(app="apps.routed:app", workers=2, extra_args=["--chdir", TESTS],
                       env=PATH_ENV[path]).wait_ready(workers=2)
    routes = 120  # about 10,000 bytes of counter entries per worker
    for n in range(routes):
        assert g.request(f"/x?template=/r/{n}")[0] == 200
    g.scrape_until(lambda s: s.total(REQUESTS) == routes)
    serve = Serve(tmp_path, Path(g.directory), **PATH_ENV[path]).wait_listening()
    try:
        assert scrape(serve.port).total(REQUESTS) == routes  # it maps the files too
        monitor = g.monitor_pid()
        victim = max(Path(g.directory).glob("counter_*.db"), key=lambda p: p.stat().st_size)
        had = _routes_in(victim)
        os.truncate(victim, 4096)
        lost = had - _routes_in(victim)
        assert lost and lost != had
        expected = {f"/r/{n}": 1.0 for n in range(routes) if f"/r/{n}" not in lost}
        for port in (g.metrics_port, serve.port):
            for _ in range(2):  # counted once, however often it is read
                s: Scrape = scrape(port)  # 200, or it raises
                assert s.value(READ_ERRORS) == 1
                assert {dict(ls)["route"]: v for ls, v in s.series(REQUESTS).items()} \
                    == expected
        assert g.monitor_pid() == monitor and serve.proc.poll() is None
        os.kill(monitor, 0)  # alive
    finally:
        serve.stop()
    assert "was shortened while mapped" in g.output()
    assert ("request path Python" in g.output()) == (path == "python")


# -- exemplar and native histogram files ------------------------------------------------

#: worker w0 records routes /a0.. (and, with WHERE "walk", more after the first read), w1
#: routes /b0../b2, each one traced request of 1 ms x (n + 1) through the real recorders
#: (native histogram and exemplars on); the directory is read (PATH "c": compiled,
#: "python"), w0's exemplar (KIND "exemplars") or native histogram file ("native") is cut
#: to CUT bytes while the collector holds its map, and read twice more
READ_CUT_EXTRAS = """
import json, os, sys
from gunicorn_prometheus_exporter import speedups
from gunicorn_prometheus_exporter.collector import DirectoryCollector
from gunicorn_prometheus_exporter.exemplars import ExemplarRecorder
from gunicorn_prometheus_exporter.recorder import Recorder
from gunicorn_prometheus_exporter.storage import exemplars, native
from gunicorn_prometheus_exporter.storage.store import ProcessStore

directory, kind, where, cut, path = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), \
    sys.argv[5]
BOUNDS = [0.1, 1.0]

def record(identity, prefix, numbers):
    store = ProcessStore(directory, identity)
    recorder = Recorder(store, BOUNDS, [100.0], threaded=False,
                        native_layout=native.Layout.for_range(3, 1e-6, 3600.0))
    traces = ExemplarRecorder(directory, identity, recorder, BOUNDS)
    for n in numbers:
        series = recorder.series("GET", f"/{{prefix}}{{n}}", "200")
        recorder.add(series, 0.001 * (n + 1), 10, 20)
        traces.observe(series, 0.001 * (n + 1), (f"{{n + 1:032x}}", f"{{n + 1:016x}}"),
                       1_700_000_000.0 + n)  # when it ended
    store.close()

def served(collector):
    out = {{"requests": {{}}, "exemplars": {{}}, "native": {{}}}}
    for family in collector.read():
        for s in family.samples:
            if s.name == "gunicorn_http_requests_total":
                out["requests"][s.labels["route"]] = s.value
            if s.exemplar is not None:
                out["exemplars"][f"{{s.name}} {{s.labels['route']}} {{s.labels.get('le', '')}}"] \\
                    = [s.exemplar.labels["trace_id"], s.exemplar.value, s.exemplar.timestamp]
        for labels, h in getattr(family, "native", {{}}).items():
            out["native"][dict(labels)["route"]] = [h.schema, h.zero_count,
                                                    sorted(h.buckets.items())]
    return out, collector.read_errors

record("w1", "b", range(3))
record("w0", "a", range({entries} if where != "walk" else 10))
collector = DirectoryCollector(directory, compiled=speedups.load({{}}) if path == "c" else None)
before = served(collector)
if where == "walk":  # entries appended after the first read: the walk meets the cut
    record("w0", "a", range(10, {entries}))
victim = (exemplars.path_of(directory, "w0") if kind == "exemplars"
          else os.path.join(directory, "histogram_native_w0.nh"))
os.truncate(victim, cut)
after = served(collector)
again = served(collector)
print(json.dumps({{"before": before, "after": after, "again": again, "victim": victim}}))
"""

EXTRA_ENTRIES = 25  # exemplars: about 12 KB, native about 56 KB: within the files' first 64 KiB


def _exemplar_name(sample: str, labels: dict) -> str:
    """How the child names a served exemplar: its sample, route and bucket."""
    return f"{sample} {labels['route']} {labels.get('le', '')}"


def _exemplars_held(directory: Path) -> dict:
    """What fresh readers find in the exemplar files as they are now, keyed as the child
    prints them."""
    from gunicorn_prometheus_exporter.storage import exemplars

    held = {}
    for path, _, _ in exemplars.files(str(directory)):
        reader = exemplars.ExemplarReader(path)
        for key, timestamp, value, trace_id, _ in reader.read():
            _, sample, labels, _ = json.loads(key)
            held[_exemplar_name(sample, labels)] = [trace_id, value, timestamp]
        reader.close()
    return held


def _native_routes_held(directory: Path) -> set:
    """The routes whose native entry a fresh reader finds in the native files now."""
    from gunicorn_prometheus_exporter.storage.native import NativeReader

    routes = set()
    for path in directory.glob("*.nh"):
        reader = NativeReader(str(path))
        reader.read()
        routes |= {json.loads(key)[2]["route"] for key in reader.keys}
        reader.close()
    return routes


def _recorded(route: str) -> float:
    """The one duration the child recorded for ``route`` (/a3: 4 ms)."""
    return 0.001 * (int(route[2:]) + 1)


def _exemplar_recorded(name: str, value: list) -> bool:
    """An exemplar is the request the child recorded there: its trace, and the request
    count (1) or its duration."""
    sample, route, _ = name.split(" ")
    n = int(route[2:])
    expected = 1.0 if sample == "gunicorn_http_requests_total" else _recorded(route)
    return value[:2] == [f"{n + 1:032x}", expected]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("where,cut", [("read", 4096), ("walk", 8192), ("header", 0)])
@pytest.mark.parametrize("kind", ["exemplars", "native"])
def test_an_exemplar_or_native_file_truncated_while_mapped_is_read_as_torn(
        tmp_path, kind, where, cut, path):
    """``read``: a cut under the slots or buckets read at every scrape; ``walk``: under
    entries appended since the last read; ``header``: to nothing. The scrape goes on: the
    counters are exact, the exemplars and native histograms the cut file still holds and
    the other worker's are served exactly, the file counts once as a read error and one
    warning names it. The old code died of SIGBUS here (the Python path until it read
    with ``os.pread``)."""
    from gunicorn_prometheus_exporter.storage.native import bucket_index

    done = run_child(READ_CUT_EXTRAS.format(entries=EXTRA_ENTRIES), str(tmp_path), kind,
                     where, str(cut), path)
    assert done.returncode == 0, (done.returncode, done.stderr)
    out = json.loads(done.stdout)
    routes = [f"/b{n}" for n in range(3)] + [f"/a{n}" for n in range(EXTRA_ENTRIES)]
    first = routes[:3 + (EXTRA_ENTRIES if where != "walk" else 10)]
    natives = {r: [3, 0.0, [[bucket_index(_recorded(r), 3), 1.0]]] for r in routes}
    (served, errors) = out["before"]
    assert errors == 0 and served["requests"] == {r: 1.0 for r in first}
    assert served["native"] == {r: natives[r] for r in first}
    assert len(served["exemplars"]) == 2 * len(first)  # the counter's and the bucket's
    assert all(_exemplar_recorded(k, v) for k, v in served["exemplars"].items())
    held_exemplars, held_native = _exemplars_held(tmp_path), _native_routes_held(tmp_path)
    held_routes = {k.split(" ")[1] for k in held_exemplars} if kind == "exemplars" \
        else held_native
    assert {f"/b{n}" for n in range(3)} <= held_routes < set(routes)  # the cut took some
    assert (len(held_routes) > 3) == (cut > 0)  # w0's, kept before the cut
    assert all(_exemplar_recorded(k, v) for k, v in held_exemplars.items())
    expected = {"requests": {r: 1.0 for r in routes},
                "exemplars": held_exemplars,
                "native": {r: natives[r] for r in held_native}}
    assert out["after"] == out["again"] == [expected, 1]
    assert done.stderr.count("was shortened while mapped") == 1
    assert out["victim"] in done.stderr


#: the guarded reads the exemplar and native histogram readers added, each over a map whose
#: file was cut to 4 KiB: MapFault, then a read below the cut as before
GUARDED_CALL = """
import array, mmap, os, sys
from gunicorn_prometheus_exporter import speedups
native = speedups.load({})
path = os.path.join(sys.argv[1], "f")
with open(path, "wb") as f:
    f.write(bytes(range(256)) * 64)
with open(path, "rb") as f:
    m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
os.truncate(path, 4096)
past = {"copy": lambda: native.copy(m, 4000, 5000),
        "stamped": lambda: native.stamped(m, array.array("q", [0, 8192]), 40)}
try:
    past[sys.argv[2]]()
except native.MapFault as fault:
    print(type(fault).__name__, isinstance(fault, OSError))
print(native.copy(m, 4094, 4096).hex(), native.stamped(m, array.array("q", [8]), 16).hex())
"""


@needs_native
@pytest.mark.parametrize("call", ["copy", "stamped"])
def test_each_added_read_of_the_map_is_guarded(tmp_path, call):
    done = run_child(GUARDED_CALL, str(tmp_path), call)
    assert done.returncode == 0, (done.returncode, done.stderr)
    # bytes 8..24 of the file, then byte 8 to 16 again (the slot's stamp read after it)
    assert done.stdout.split("\n")[:2] == ["MapFault True", "feff " + bytes(range(8, 24)).hex()
                                           + bytes(range(8, 16)).hex()]


PROTOBUF = ("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;"
            "encoding=delimited")
DURATION = "gunicorn_http_request_duration_seconds"


def _natives_served(pb2, port: int) -> dict:
    """``{route: (buckets, zero count)}`` of each duration histogram served as native."""
    body = fetch_bytes(f"http://127.0.0.1:{port}/metrics", headers={"Accept": PROTOBUF})
    family = {f.name: f for f in protodecode.decode(pb2, body)}[DURATION]
    return {next(pair.value for pair in m.label if pair.name == "route"):
            protodecode.native_buckets(m.histogram)
            for m in family.metric if m.histogram.HasField("zero_threshold")}


@needs_native
def test_exemplar_and_native_files_truncated_under_a_running_scrape(start_gunicorn, tmp_path):
    """A worker's exemplar and native histogram files shortened while the metrics process
    (and the standalone exporter) hold them mapped: the same metrics process answers in
    every format, the request counts are exact, the exemplars and native histograms the
    cut files still hold are served as before the cut, the others are gone, and each file
    counts once as a read error."""
    g = start_gunicorn(app="apps.routed:app", workers=1, extra_args=["--chdir", TESTS],
                       env={"PROMETHEUS_EXEMPLARS": "true",
                            "PROMETHEUS_NATIVE_HISTOGRAMS": "true"}).wait_ready(workers=1)
    routes = 40  # about 20 KB of exemplar slots, 92 KB of native buckets
    for n in range(routes):
        trace = f"00-{n + 1:032x}-{n + 1:016x}-01"
        assert g.request(f"/x?template=/r/{n}", headers={"traceparent": trace})[0] == 200
    g.scrape_until(lambda s: s.total(REQUESTS) == routes)
    (tmp_path / "pb2").mkdir()
    pb2 = protodecode.compiled(tmp_path / "pb2")
    serve = Serve(tmp_path, Path(g.directory)).wait_listening()
    try:
        ports = (g.metrics_port, serve.port)
        before = [(exemplars(port), _natives_served(pb2, port)) for port in ports]
        assert before[0] == before[1]
        assert len(before[0][0]) == 2 * routes and len(before[0][1]) == routes
        monitor = g.monitor_pid()
        (exemplar_file,) = Path(g.directory, "exemplars").glob("*.db")
        (native_file,) = Path(g.directory).glob("*.nh")
        for victim in (exemplar_file, native_file):
            os.truncate(victim, 4096)
        held = _exemplars_held(Path(g.directory))
        assert 0 < len(held) < 2 * routes
        kept = _native_routes_held(Path(g.directory))
        assert 0 < len(kept) < routes
        for port, (had_exemplars, had_natives) in zip(ports, before):
            for _ in range(2):  # counted once, however often it is read
                s: Scrape = scrape(port)  # 200, or it raises
                assert s.value(READ_ERRORS) == 2
                assert {dict(ls)["route"]: v for ls, v in s.series(REQUESTS).items()} \
                    == {f"/r/{n}": 1.0 for n in range(routes)}
                assert exemplars(port) == {(name, labels): had for (name, labels), had
                                           in had_exemplars.items()
                                           if _exemplar_name(name, dict(labels)) in held}
                assert _natives_served(pb2, port) == {r: had_natives[r] for r in kept}
        assert g.monitor_pid() == monitor and serve.proc.poll() is None
    finally:
        serve.stop()
    assert g.output().count("was shortened while mapped") == 2



# -- a worker's own file cut short -------------------------------------------------------

#: a worker's recorder (PATH "c": compiled, "python") stores 200 requests of 200 routes,
#: its histogram file is cut to 4 KiB, then (CHECK "first": after the sampler's check, as
#: it runs every interval) each route is stored again and a new route asked for
STORE_PAST_THE_CUT = """
import json, logging, os, sys
directory, path, check = sys.argv[1], sys.argv[2], sys.argv[3]
if path == "python":  # the whole process, as a worker's: its maps are not watched in C
    os.environ["GUNICORN_PROMETHEUS_NO_SPEEDUPS"] = "1"
from gunicorn_prometheus_exporter import families, speedups
from gunicorn_prometheus_exporter.recorder import Recorder
from gunicorn_prometheus_exporter.storage.store import ProcessStore

native = speedups.load()
logging.basicConfig(format="%(message)s")
recorder = Recorder(ProcessStore(directory, "w0"), [0.1, 1.0], [100.0], threaded=False,
                    native=native, log=logging.getLogger("gunicorn.error"))
series = [recorder.series("GET", f"/r{n}", "200") for n in range(200)]
for s in series:
    recorder.add(s, 0.05, 10, 20)
os.truncate(os.path.join(directory, "histogram_w0.db"), 4096)
if check == "first":
    recorder.check_storage()
for s in series:  # the compiled path: a store past the cut goes to the sink at once
    recorder.add(s, 0.05, 10, 20)
recorder.in_flight(1.0)
recorder.check_storage()
recorder.check_storage()  # found once
dropped = recorder.series("GET", "/new", "200") is recorder.dropped
print(json.dumps({"sunk": native.sunk() if native else None, "dropped": dropped,
                  "unstored": recorder.counter_value(families.UNSTORED)}))
"""


@pytest.mark.parametrize("path,check", [pytest.param("c", "after", marks=needs_native),
                                        ("python", "first")])
def test_a_store_past_the_end_of_a_cut_file_goes_to_a_sink(tmp_path, path, check):
    """The worker lives on: on the compiled path a store past the cut goes to a sink at
    once (``sunk``: the C handler took it; the pin of that path), on the Python path once
    the sampler's check found the file. The check finds it once, logs one line, counts it
    as unstored, and the cut file takes no new series (counted too). The entries the file
    still holds keep recording (requests counted twice), and the counters are exact."""
    done = run_child(STORE_PAST_THE_CUT, str(tmp_path), path, check)
    assert done.returncode == 0, (done.returncode, done.stderr)
    out = json.loads(done.stdout)
    assert out["dropped"] is True and out["unstored"] == 2.0
    assert (out["sunk"] > 0) if path == "c" else out["sunk"] is None
    assert done.stderr.count("was shortened by another process") == 1
    assert "histogram_w0.db" in done.stderr
    counters = FileReader(str(tmp_path / "counter_w0.db"))
    values = counters.read()
    counts = {json.loads(k)[2]["route"]: v for k, v in zip(counters.keys, values)
              if json.loads(k)[1] == REQUESTS}
    assert counts == {f"/r{n}": 2.0 for n in range(200)}
    histograms = FileReader(str(tmp_path / "histogram_w0.db"))
    held = histograms.read()
    assert histograms.torn and 0 < len(held) < 200
    assert {json.loads(k)[1]: v for k, v in zip(histograms.keys, held)}[
        "gunicorn_http_request_duration_seconds_sum"] == pytest.approx(0.1)


def test_the_python_path_dies_of_a_store_past_the_cut_before_its_check(tmp_path):
    """The window left on the Python path (docs/reliability.md): a store past the cut
    before the sampler's next check kills the worker with SIGBUS."""
    done = run_child(STORE_PAST_THE_CUT, str(tmp_path), "python", "after")
    assert done.returncode == -signal.SIGBUS, (done.returncode, done.stderr)


ASGI = "gunicorn_prometheus_exporter.PrometheusASGIWorker"
UNSTORED = "gunicorn_exporter_storage_unstored_total"


@pytest.mark.parametrize("worker,app,path", [
    pytest.param("sync", "apps.routed:app", "c", marks=needs_native),
    pytest.param(ASGI, "apps.traced:asgi_app", "c", marks=needs_native),
    ("sync", "apps.routed:app", "python")], ids=["sync-c", "asgi-c", "sync-python"])
def test_a_worker_whose_own_file_is_cut_serves_on(start_gunicorn, worker, app, path):
    """A running worker's histogram file cut to 4 KiB: every request after it answers 200
    from the same worker (compiled: at once; the Python path: once the sampler's check,
    every 0.2 s here, found the file), the cut is logged once and counted as unstored, as
    is each request of a new route (the file takes no new series); the counter file holds
    every request of the known routes, the cut file counts once as a read error."""
    g = start_gunicorn(app=app, worker_class=worker, workers=1, extra_args=["--chdir", TESTS],
                       env={**PATH_ENV[path], "PROMETHEUS_SAMPLE_INTERVAL": "0.2"}
                       ).wait_ready(workers=1)
    url = "/x?template=/r/{}" if worker == "sync" else "/r/{}"
    names = [f"{chr(97 + n // 26)}{chr(97 + n % 26)}" for n in range(45)]  # no digits: a
    routes = 40  # path of digits would be one route ("/r/{id}")
    for n in range(routes):
        assert g.request(url.format(names[n]))[0] == 200
    g.scrape_until(lambda s: s.total(REQUESTS) == routes)
    (pid,) = g.worker_pids()
    (victim,) = Path(g.directory).glob("histogram_*.db")
    os.truncate(victim, 4096)
    logged = "was shortened by another process"
    if path == "python":
        until(lambda: logged in g.output(), message="the sampler's check")
    for n in range(routes):
        assert g.request(url.format(names[n]))[0] == 200
    until(lambda: logged in g.output(), message="the sampler's check")
    for n in range(routes, routes + 5):  # new routes: not stored, counted
        assert g.request(url.format(names[n]))[0] == 200
    s = g.scrape_until(lambda s: s.total(UNSTORED) == 1 + 5)
    assert s.total(REQUESTS) == 2 * routes
    assert s.value(READ_ERRORS) == 1
    assert g.worker_pids() == [pid]
    assert g.output().count(logged) == 1
    assert victim.name in g.output()
    assert ("request path Python" in g.output()) == (path == "python")


@needs_native
def test_a_cut_file_is_never_grown_again(tmp_path):
    """New keys appended past the cut (before the sampler's check) go to the sink; the
    growth they lead to finds the cut instead of filling it with zeros (which would hide
    it from the check): ``StorageCut``, and the file keeps the size it was cut to."""
    done = run_child("""
        import os, sys
        from gunicorn_prometheus_exporter.storage.mmap_file import MmapFile, StorageCut
        f = MmapFile(os.path.join(sys.argv[1], "counter_w0.db"))
        os.truncate(f.path, 4096)
        n = 0
        try:
            while True:
                f.values[f.index(f"key {n:0100d}")] = 1.0
                n += 1
        except StorageCut as cut:
            print(n, cut.strerror, os.stat(f.path).st_size, f.found_cut())
    """, str(tmp_path))
    assert done.returncode == 0, (done.returncode, done.stderr)
    appended, *rest = done.stdout.split(" ", 1)
    # until the first map (64 KiB after the 8-byte header) held no more 128-byte entries
    assert int(appended) == ((1 << 16) - 8) // (4 + 108 + 16)
    assert rest == ["shortened by another process while mapped 4096 None\n"]

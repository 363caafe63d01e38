"""The compiled module (``_speedups.c``) and the scrape path against hostile input: files
in the storage directory that no writer of ours left (truncated, damaged, foreign),
applications that keep or step what they are given, and callers that use its types in
ways the plugin never does. Each test pins what the audit of the C found
(docs/reliability.md, "The compiled reader under hostile files"); the bounded fuzz run
holds the compiled and the Python reader to the same answers on a few hundred damaged
files. Where the bug was a crash, the case runs in a child process, so that a regression
fails this test instead of killing the test run."""
from __future__ import annotations

import asyncio
import json
import struct
from pathlib import Path

import pytest

from fuzz import keys, storage_files
from gunicorn_prometheus_exporter import families, speedups
from gunicorn_prometheus_exporter.collector import DirectoryCollector
from gunicorn_prometheus_exporter.server import protobuf
from gunicorn_prometheus_exporter.server.http import Exposition
from gunicorn_prometheus_exporter.storage.mmap_file import MmapFile, sample_key
from gunicorn_prometheus_exporter.storage.reader import FileReader
from gunicorn_prometheus_exporter.workers import asgi_metrics as asgi
from support import asgi_recording, protodecode
from support.child import run_child

native = speedups.load({})
needs_native = pytest.mark.skipif(native is None, reason="the C speedups are not built here")
KEY = sample_key("c", "c_total", {"route": "/a"}, "h")


def _file(path: Path, keys: int = 2) -> int:
    """A counter file of ``keys`` entries (values 1.0, 2.0, ...); its used count."""
    f = MmapFile(str(path))
    for n in range(keys):
        f.values[f.index(sample_key("c", "c_total", {"route": f"/{n}"}, "h"))] = n + 1.0
    used = f._used
    f.close()
    return used


def _readers(path: Path) -> list:
    return [FileReader(str(path), native=native), FileReader(str(path))]


def _served(directory: Path, compiled) -> tuple:
    collector = DirectoryCollector(str(directory), compiled=compiled)
    values = {(s.name, s.labels.get("route")): s.value for f in collector.read()
              for s in f.samples if s.name == "c_total"}
    return values, collector.read_errors


@needs_native
@pytest.mark.parametrize("cut", ["header-only", "at-an-entry", "within-4-bytes"])
def test_a_file_shorter_than_its_header_says_is_torn_in_both_walks(tmp_path, cut):
    """A file whose used count is beyond its size (truncated, or a foreign header): the
    entries it holds are read and it is torn, counted once as a read error. The Python
    walk raised struct.error on the length it could not read there, failing every
    scrape; the C walk stopped without saying the file was torn."""
    path = tmp_path / "counter_w0.db"
    used = _file(path)
    data = path.read_bytes()
    size = {"header-only": 8, "at-an-entry": used, "within-4-bytes": used + 3}[cut]
    path.write_bytes(struct.pack("<i", used + 64) + data[4:size])
    expected = () if cut == "header-only" else (1.0, 2.0)
    for reader in _readers(path):
        assert reader.read() == expected and reader.torn
    for compiled in (native, None):
        values, errors = _served(tmp_path, compiled)
        assert values == ({} if cut == "header-only"
                          else {("c_total", "/0"): 1.0, ("c_total", "/1"): 2.0})
        assert errors == 1


@needs_native
@pytest.mark.parametrize("length", [2 ** 31 - 1, 2 ** 31 - 4, 2 ** 31 - 8])
def test_a_key_length_near_the_int32_limit_is_a_torn_entry(tmp_path, length):
    """A key length near 2**31: the C walk computed its padding in int32 (``length + 4``
    overflowed: undefined behaviour, caught by UBSan); it is a torn entry, the entries
    before it read."""
    path = tmp_path / "counter_w0.db"
    used = _file(path, keys=1)
    with open(path, "r+b") as f:
        f.seek(used)
        f.write(struct.pack("<i", length) + b"x" * 12)
        f.seek(0)
        f.write(struct.pack("<i", used + 16))
    for reader in _readers(path):
        assert reader.read() == (1.0,) and reader.torn and reader._parsed_to == used


@needs_native
def test_an_empty_key_is_numbered_like_any_other():
    """``KeyTable()[b""]``: the table's key bytes were kept nowhere yet (a NULL arena),
    passed to memcpy and memcmp (undefined behaviour, reported by UBSan). A file's walk
    never asks for one (a key length of 0 is torn); the table numbers it as Python's."""
    from gunicorn_prometheus_exporter.storage.reader import KeyTable

    for table in (native.KeyTable(), KeyTable()):
        assert [table[b""], table[b"a"], table[b""]] == [0, 1, 0]
        assert table.texts == ["", "a"]


@needs_native
@pytest.mark.parametrize("key", ['[1, "s", {}, "h"]', '[["f"], "f", {}, "h"]',
                                 '["f", 1, {}, "h"]', '["f", "f", {}, 1]',
                                 '["f", "f", {}, null]', '["c", "c_total", {}, ["h"]]'])
def test_a_key_whose_parts_are_not_strings_is_served_as_unreadable(tmp_path, key):
    """A well-formed entry whose key is JSON of the right shape but whose family, sample
    or help is not a string (a foreign writer's): the scrape failed on both paths (a list
    is no dict key, a number no metric name to sort, a help that is no string cannot be
    rendered). It is served as ``gunicorn_exporter_unreadable``, as any key that is not
    prometheus_client's, and every other entry as usual."""
    f = MmapFile(str(tmp_path / "counter_w0.db"))
    f.values[f.index(key)] = 5.0
    f.values[f.index(KEY)] = 3.0
    f.close()
    for compiled in (native, None):
        families = DirectoryCollector(str(tmp_path), compiled=compiled).read()
        served = {(s.name, s.labels.get("route")): s.value for m in families
                  for s in m.samples}
        assert served == {("c_total", "/a"): 3.0, ("gunicorn_exporter_unreadable", None): 5.0}
        text = Exposition(lambda: families, "test").metrics(None)[0].decode()
        assert 'c_total{route="/a"} 3.0' in text.splitlines()


@needs_native
def test_a_bucket_or_quantile_that_is_no_number_is_served_in_protobuf_too(tmp_path):
    """A foreign histogram bucket whose ``le`` is no number (or absent), or a summary
    quantile that is none: the collector orders such a bucket as +Inf, but the protobuf
    exposition (what Prometheus asks for with native histograms on) raised ValueError or
    KeyError, failing every scrape in that format. Found by the fuzz harness."""
    (tmp_path / "pb2").mkdir()
    pb2 = protodecode.compiled(tmp_path / "pb2")
    h = MmapFile(str(tmp_path / "histogram_w0.db"))
    for labels, value in (({"le": "1.0"}, 2.0), ({"le": "x"}, 3.0), ({}, 4.0)):
        h.values[h.index(sample_key("h", "h_bucket", labels, "H."))] = value
    h.close()
    q = MmapFile(str(tmp_path / "summary_w0.db"))
    for labels, value in (({"quantile": "0.5"}, 1.5), ({"quantile": "x"}, 9.0)):
        q.values[q.index(sample_key("s", "s", labels, "S."))] = value
    q.close()
    for compiled in (native, None):
        families = DirectoryCollector(str(tmp_path), compiled=compiled).read()
        body = Exposition(lambda: families, "test").metrics(protobuf.CONTENT_TYPE)[0]
        decoded = {f.name: f.metric[0] for f in protodecode.decode(pb2, body)}
        buckets = decoded["h"].histogram.bucket
        assert [(b.upper_bound, b.cumulative_count) for b in buckets] == [(1.0, 2)]
        assert decoded["h"].histogram.sample_count == 9  # 2, then 3 and 4 at +Inf
        assert [(x.quantile, x.value) for x in decoded["s"].summary.quantile] == [(0.5, 1.5)]


@needs_native
def test_hostile_files_read_alike_in_c_and_python(tmp_path):
    """A bounded run of the fuzz harness (tests/fuzz/storage_files.py): 300 damaged files,
    each read by the C and the Python reader (alone and in a directory beside a good file):
    no read raises, both agree bit for bit, the good file's value is unchanged."""
    problems = storage_files.run(native, 300, seed=20261203, work=tmp_path)
    assert problems == []


@needs_native
def test_a_writer_whose_init_failed_again_holds_no_bounds(tmp_path):
    """``RequestWriter.__init__`` called again with bad bounds freed the old arrays but
    kept their counts (and a refused native layout kept its count): the next ``add`` read
    freed memory, a crash. Such a writer now holds no bounds and no native layout: its
    ``add`` refuses a native series with a ValueError."""
    done = run_child("""
        from gunicorn_prometheus_exporter import speedups
        native = speedups.load({})
        values = memoryview(bytearray(8 * 16)).cast("d")
        series = (values, 0, values, (1, 2, 3), 4, (5, 6), 7, (8, 9), 10, values, 12)
        for bad in (([0.1, "x"], [10.0]), ([0.1], ["x"]), ([0.1], [1.0], (0.0, 1.0, [0.5], 5, 3))):
            writer = native.RequestWriter([0.1, 1.0], [10.0], (0.0, 1.0, [0.5], 0, 3))
            try:
                writer.__init__(*bad)
            except (TypeError, ValueError):
                pass
            else:
                raise SystemExit("accepted " + repr(bad))
            try:
                writer.add(series, 0.5, 20, 30)
            except ValueError as exc:
                print(exc)
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["a native series, but no native layout"] * 3


@needs_native
def test_an_application_that_drives_its_own_call_gets_a_value_error(tmp_path):
    """An ASGI application that steps the compiled wrapper's call it runs in (found as what
    its caller awaits) re-entered it: the inner step concluded the request and freed the
    coroutine still running (a crash, or the request counted twice). The call refuses, as a
    coroutine already executing does; the request is recorded once, as the 500 the
    application's error makes it."""
    done = run_child(f"""
        import asyncio, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from pathlib import Path
        from gunicorn_prometheus_exporter import speedups
        from gunicorn_prometheus_exporter import families
        from gunicorn_prometheus_exporter.workers import asgi_metrics as asgi
        from support import asgi_recording
        native = speedups.load({{}})
        inst = asgi_recording.labeller(Path({str(tmp_path)!r}), native, [100.0])
        held = []

        async def app(scope, receive, send):
            for step in (lambda: held[0].send(None), lambda: held[0].throw(KeyError()),
                         held[0].close):
                try:
                    step()
                except ValueError as exc:
                    assert "already executing" in str(exc), exc
                else:
                    raise SystemExit("re-entered")
            raise RuntimeError("the application fails")

        wrapped = asgi.instrument(app, inst, asgi_recording.request_extras(inst, Path({str(tmp_path)!r})),
                                  native)
        held.append(wrapped({{"type": "http", "method": "GET", "path": "/"}}, None, None))
        try:
            held[0].send(None)
        except RuntimeError:
            pass
        gauges, index = inst.recorder.in_flight_cell()
        print(gauges[index], inst.recorder.counter_value(families.HTTP_REQUESTS, ("GET", "/", "500")))
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0.0", "1.0"]


@needs_native
@pytest.mark.parametrize("keeps", ["send", "receive", "both"])
def test_a_send_or_receive_kept_past_its_request_is_never_another_requests(tmp_path, keeps):
    """The compiled wrapper serves a finished call, and its meter, again for a later
    request (``retire``), but only when nothing else holds the meter or its receive. An
    application that keeps its send or receive past its return keeps a meter of its own:
    a late send reaches the server's send of its own request, and no later request's
    counts or messages change."""
    inst = asgi_recording.labeller(tmp_path, native, [100.0])
    kept = []

    async def app(scope, receive, send):
        if scope["path"] == "/keep":
            kept.append((send, receive))
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"abc"})

    wrapped = asgi.instrument(app, inst, asgi_recording.request_extras(inst, tmp_path), native)
    delivered = {}

    async def serve(path: str, n: int) -> None:
        async def receive():
            return {"type": "http.request", "body": b"12345"[:n], "more_body": False}

        async def send(message):
            delivered.setdefault(n, []).append(message.get("body"))

        await wrapped({"type": "http", "method": "GET", "path": path}, receive, send)

    async def mix():
        await serve("/ok", 1)
        await serve("/keep", 2)
        await serve("/ok", 3)  # a retired call again, with a meter of its own
        send, receive = kept[0]
        if keeps in ("send", "both"):
            await send({"type": "http.response.body", "body": b"late"})
        if keeps in ("receive", "both"):
            assert (await receive())["body"] == b"12"
        await serve("/ok", 4)

    asyncio.run(mix())
    assert delivered == {1: [None, b"abc"], 2: [None, b"abc"] + [b"late"] * (keeps != "receive"),
                         3: [None, b"abc"], 4: [None, b"abc"]}
    counter = inst.recorder.counter_value
    assert [counter(families.HTTP_REQUESTS, ("GET", p, "200")) for p in ("/ok", "/keep")] == [3, 1]
    sizes = {s.labels["route"]: s.value for f in DirectoryCollector(str(tmp_path)).read()
             for s in f.samples if s.name in ("gunicorn_http_request_size_bytes_sum",)}
    assert sizes == {"/ok": 1 + 3 + 4, "/keep": 2}
    gauges, index = inst.recorder.in_flight_cell()
    assert gauges[index] == 0.0


@needs_native
def test_damaged_keys_parse_alike_in_c_and_python():
    """tests/fuzz/keys.py: 5,000 keys damaged a character at a time (quotes, backslashes,
    braces, control and non-ASCII characters): the compiled parse gives the Python parts
    for every key it answers."""
    assert keys.run(native, 5000, seed=20261203) == []


@pytest.mark.parametrize("key", [
    '["f", "f_native", 5, "h", 3, 0, 1]',  # labels that are no object
    '["f", "f_native", {}, "h", 3, 10000000000000000000000, 10000000000000000000001]',
    '["f", "f_native", {}, "h", 0, 1030, 1031]',  # bounds past the largest double
    '"abcd302"', '{"f": 1}'])
def test_a_foreign_native_histogram_entry_is_torn_not_a_failed_scrape(tmp_path, key):
    """A native histogram file (``.nh``) with an entry no writer of ours made: the entries
    before it are served and the file is torn (one read error). Such an entry reached the
    code that builds its buckets' keys and bounds, which raised (TypeError, OverflowError)
    on every scrape. ``entry_payload`` refuses it on both paths (the compiled path walks
    a guarded copy of the entries with the same Python walk)."""
    from gunicorn_prometheus_exporter.storage.native import NativeReader, entry_payload

    f = MmapFile(str(tmp_path / "histogram_native_w0.nh"), payload=entry_payload)
    good = '["f", "f_native", {"route": "/a"}, "h", 3, 0, 1]'
    f.values[f.index(good) + 2] = 4.0  # slot 2: bucket index 1
    f.close()  # then the entry appended as another writer would (ours refuses it)
    with open(tmp_path / "histogram_native_w0.nh", "r+b") as raw:
        used = struct.unpack("<i", raw.read(4))[0]
        encoded = key.encode()
        padded = encoded + b" " * (8 - (len(encoded) + 4) % 8)
        raw.seek(used)
        raw.write(struct.pack("<i", len(encoded)) + padded + bytes(8 * 4))
        raw.seek(0)
        raw.write(struct.pack("<i", used + 4 + len(padded) + 8 * 4))
    for compiled in (native, None):
        collector = DirectoryCollector(str(tmp_path), compiled=compiled)
        collector.read()  # raised
        assert collector.read_errors == 1 and collector.source_up == 1
    for compiled in (native, None):
        reader = NativeReader(str(tmp_path / "histogram_native_w0.nh"), compiled)
        assert reader.read() == (0.0, 4.0) and reader.torn
        # the zero bucket (its threshold: the bound below index 0) and index 1
        assert [json.loads(k)[2]["__native__"] for k in reader.keys] == [
            f"3/z/{2.0 ** (-1 / 8)!r}", "3/1"]


def test_an_exemplar_slot_whose_timestamp_is_no_requests_is_left_out(tmp_path):
    """A damaged exemplar slot (a timestamp that is infinite, past year 9999 or NaN): the
    newest-wins merge kept it for good, the protobuf answer raised OverflowError on an
    infinite one (every scrape in that format failed) and wrote an over-long varint for a
    huge one. Such a slot is left out; the good slot of another worker is served."""
    import math

    from gunicorn_prometheus_exporter.storage import exemplars

    key = sample_key("c", "c_total", {}, "h")
    f = MmapFile(str(tmp_path / "counter_w0.db"))
    f.values[f.index(key)] = 1.0
    f.close()
    good = exemplars.ExemplarFile(exemplars.path_of(str(tmp_path), "w1"))
    good.put(good.slot(key), 0.25, 1_700_000_000.5, b"\x02" * 24, 1_800_000_000.0)
    bad = exemplars.ExemplarFile(exemplars.path_of(str(tmp_path), "w0"))
    (tmp_path / "pb2").mkdir()
    pb2 = protodecode.compiled(tmp_path / "pb2")
    # each replaces the one before, which is no request's of the past (``now``)
    for stamp in (math.inf, 1e300, math.nan, 1_700_000_000.5):
        bad.put(bad.slot(key), 9.0, stamp, b"\x01" * 24, 1_800_000_000.0)
        families = DirectoryCollector(str(tmp_path)).read()
        found = [s.exemplar for m in families for s in m.samples if s.name == "c_total"]
        if stamp == 1_700_000_000.5:  # a real one: as new as the good one; either is right
            assert found[0].timestamp == stamp
            continue
        assert [(e.value, e.timestamp) for e in found] == [(0.25, 1_700_000_000.5)]
        body = Exposition(lambda: families, "test").metrics(protobuf.CONTENT_TYPE)[0]
        counter = {f.name: f for f in protodecode.decode(pb2, body)}["c_total"].metric[0].counter
        assert counter.exemplar.timestamp.seconds == 1_700_000_000

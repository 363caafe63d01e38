"""Native histograms: the bucket layout, per-slot storage merged at scrape, and the protobuf
exposition decoded by an independent decoder (the ``protobuf`` package with a schema
compiled at test time). The real-Prometheus runs are in e2e/test_e2e_native.py."""
from __future__ import annotations

import math
import random
from bisect import bisect_left
from fractions import Fraction

import pytest

from gunicorn_prometheus_exporter.collector import DirectoryCollector, health_families
from gunicorn_prometheus_exporter.config.schema import DEFAULT_DURATION_BUCKETS
from gunicorn_prometheus_exporter.recorder import Recorder, duration_search
from gunicorn_prometheus_exporter.server import protobuf
from gunicorn_prometheus_exporter.server.http import Exposition
from gunicorn_prometheus_exporter.storage import native
from gunicorn_prometheus_exporter.storage.store import ProcessStore

from support import protodecode

DURATION = "gunicorn_http_request_duration_seconds"
LAYOUT = native.Layout.for_range(3, 1e-6, 3600.0)
PROTOBUF_ACCEPT = ("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;"
                   "encoding=delimited;q=0.8,application/openmetrics-text;version=1.0.0;q=0.5,"
                   "text/plain;version=0.0.4;q=0.2,*/*;q=0.1")


def _exact_index(value: float, schema: int) -> int:
    """``ceil(log2(value) * 2^schema)`` by exact rational comparison, no floating log."""
    v = Fraction(value)
    m = 1 << schema
    index = math.floor(math.log2(value) * m) - 2
    # the bucket is the first index whose upper bound 2^(index/m) is >= v: v^m <= 2^index
    while not v ** m <= Fraction(2) ** index:
        index += 1
    return index


@pytest.mark.parametrize("schema", [0, 1, 3, 8])
def test_bucket_index_is_ceil_log2_times_two_to_the_schema(schema):
    rng = random.Random(schema)
    values = [2.0 ** e for e in range(-20, 13)] + [rng.uniform(1e-6, 10.0) for _ in range(300)]
    values += [math.nextafter(2.0 ** e, 0) for e in range(-5, 5)]
    values += [math.nextafter(2.0 ** e, math.inf) for e in range(-5, 5)]
    for value in values:
        assert native.bucket_index(value, schema) == _exact_index(value, schema), value


def test_default_layout_range_size_and_edges():
    """1 µs .. 1 h at schema 3: buckets -159..95, 256 doubles (2 KiB) a series; the zero
    bucket below the lowest bucket, the top bucket above the highest."""
    assert (LAYOUT.lo, LAYOUT.hi, LAYOUT.doubles) == (-159, 95, 256)
    assert LAYOUT.zero_threshold == 2.0 ** -20 < 1e-6
    assert 3600.0 <= LAYOUT.top < 3600.0 * 2 ** (1 / 8)
    assert round(native.relative_error(3), 4) == 0.0433
    for value in (0.0, -1.0, math.nan, 2.0 ** -20, 1e-9):
        assert LAYOUT.slot(value) == 0, value
    for value in (LAYOUT.top * 1.0001, 1e9, math.inf):
        assert LAYOUT.slot(value) == LAYOUT.buckets, value
    assert LAYOUT.slot(math.nextafter(2.0 ** -20, 1)) == 1
    assert LAYOUT.slot(1.0) == 1 - LAYOUT.lo  # index 0
    assert LAYOUT.slot(LAYOUT.top) == LAYOUT.buckets
    with pytest.raises(ValueError, match="schema 9"):
        native.Layout.for_range(9, 1e-6, 1.0)
    with pytest.raises(ValueError, match="expected 0 < min < max"):
        native.Layout.for_range(3, 1.0, 1.0)


@pytest.mark.parametrize("layout", [None, LAYOUT, native.Layout.for_range(0, 1e-3, 10.0),
                                    native.Layout.for_range(8, 1e-9, 1e6)])
@pytest.mark.parametrize("bounds", [DEFAULT_DURATION_BUCKETS, (0.5, 1.0, 2.0, math.inf),
                                    (1e-12, 2.0 ** -20, 3600.0, 1e9)])
def test_one_bisect_finds_both_duration_buckets_as_their_own_searches(layout, bounds):
    """The recorder's single search gives, for any duration, the classic bucket of
    ``bisect_left(bounds, d)`` and the native slot of ``Layout.slot``: at every bound of
    either, just below and just above it, and between."""
    union, classic_at, native_at = duration_search(bounds, layout)
    rng = random.Random(3)
    values = [0.0, -0.0, -1.0, math.nan, math.inf, -math.inf, 1e-300, 5e-324]
    values += [rng.lognormvariate(-4, 3) for _ in range(2000)]
    for bound in union:
        values += [bound, math.nextafter(bound, -math.inf), math.nextafter(bound, math.inf)]
    for value in values:
        at = bisect_left(union, value)
        assert classic_at[at] == bisect_left(bounds, value), value
        assert native_at[at] == (layout.slot(value) if layout else 0), value


def _record(directory, identity, durations, layout=LAYOUT, route="/a"):
    directory.mkdir(exist_ok=True)
    store = ProcessStore(str(directory), identity)
    rec = Recorder(store, [0.1, 1.0], [100.0], threaded=False, native_layout=layout)
    series = rec.series("GET", route, "200")
    for d in durations:
        rec.add(series, d, 10, 20)
    store.close()


def _expected(durations, layout=LAYOUT):
    zero, buckets = 0, {}
    for d in durations:
        slot = layout.slot(d)
        if slot == 0:
            zero += 1
        else:
            index = layout.lo + slot - 1
            buckets[index] = buckets.get(index, 0) + 1
    return zero, buckets


def _native_of(directory, labels=(("method", "GET"), ("route", "/a"))):
    families = {f.name: f for f in DirectoryCollector(str(directory)).read()}
    return families[DURATION].native[labels]


def test_workers_and_a_continued_slot_merge_exactly(tmp_path):
    """Two slots, one of them reopened by its next worker (which continues its entry):
    the merged native histogram holds every observation in its own bucket."""
    rng = random.Random(7)
    first = [rng.lognormvariate(-4, 1.5) for _ in range(500)] + [0.0, 1e-8, 7200.0]
    second = [rng.uniform(0.001, 2.0) for _ in range(300)]
    third = [0.25] * 10
    _record(tmp_path, "w0", first)
    _record(tmp_path, "w1", second)
    _record(tmp_path, "w0", third)  # the slot's replacement worker
    merged = _native_of(tmp_path)
    zero, buckets = _expected(first + second + third)
    assert merged.schema == 3 and merged.zero_threshold == LAYOUT.zero_threshold
    assert merged.zero_count == zero == 2
    assert {i: c for i, c in merged.buckets.items() if c} == buckets
    assert merged.count == len(first + second + third)
    assert buckets[LAYOUT.hi] >= 1  # 7200 s counted in the top bucket


def test_layouts_written_under_other_settings_merge_at_the_coarser_one(tmp_path):
    """A slot written at schema 3 and another at schema 1 with a wider zero bucket: the
    merge is at schema 1 with the wider zero bucket, and no observation is lost."""
    coarse = native.Layout.for_range(1, 1e-3, 100.0)
    fine = [0.0004, 0.003, 0.02, 0.7, 5.0]
    _record(tmp_path, "w0", fine)
    _record(tmp_path, "w1", [0.003, 0.7], layout=coarse)
    merged = _native_of(tmp_path)
    assert merged.schema == 1 and merged.zero_threshold == coarse.zero_threshold
    assert merged.count == 7
    assert merged.zero_count == 1  # 0.0004 is under the coarse zero threshold
    expected = {}
    for d in fine[1:] + [0.003, 0.7]:
        i = native.bucket_index(d, 1)
        expected[i] = expected.get(i, 0) + 1
    assert {i: c for i, c in merged.buckets.items() if c} == expected


def test_native_off_writes_no_native_file_and_keeps_text_outputs(tmp_path):
    """Text and OpenMetrics are byte for byte what they are without native histograms."""
    durations = [0.01, 0.2, 3.0]
    _record(tmp_path / "on", "w0", durations)
    _record(tmp_path / "off", "w0", durations, layout=None)
    assert sorted(p.name for p in (tmp_path / "off").iterdir()) == [
        "counter_w0.db", "gauge_livesum_w0.db", "histogram_w0.db"]
    assert (tmp_path / "on" / "histogram_native_w0.nh").exists()
    for accept in ("text/plain", "application/openmetrics-text; version=1.0.0"):
        outputs = []
        for name in ("on", "off"):
            collector = DirectoryCollector(str(tmp_path / name))
            outputs.append(Exposition(collector.read, "test").metrics(accept))
        assert outputs[0] == outputs[1]
        assert b"__native__" not in outputs[0][0]


@pytest.mark.parametrize("accept, expected", [
    (PROTOBUF_ACCEPT, protobuf.CONTENT_TYPE),
    ("application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; "
     "encoding=delimited", protobuf.CONTENT_TYPE),
    ("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;"
     "encoding=delimited;q=0,application/openmetrics-text;version=1.0.0", "application/openmetrics-text"),
    ("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=text",
     "text/plain"),
    ("application/openmetrics-text;version=1.0.0;q=0.5,text/plain;q=0.2",
     "application/openmetrics-text"),
    ("", "text/plain"),
    (None, "text/plain"),
])
def test_content_negotiation_protobuf_then_openmetrics_then_text(tmp_path, accept, expected):
    _record(tmp_path, "w0", [0.1])
    _, content_type = Exposition(DirectoryCollector(str(tmp_path)).read, "t").metrics(accept)
    assert content_type.startswith(expected)


@pytest.fixture(scope="module")
def pb2(tmp_path_factory):
    return protodecode.compiled(tmp_path_factory.mktemp("pb2"))


def test_protobuf_exposition_decodes_with_an_independent_decoder(tmp_path, pb2):
    rng = random.Random(3)
    w0 = [rng.expovariate(20) for _ in range(200)] + [0.0]
    w1 = [rng.uniform(0.5, 4.0) for _ in range(100)] + [1e5]
    _record(tmp_path, "w0", w0)
    _record(tmp_path, "w1", w1)
    _record(tmp_path, "w1", [0.05] * 3, route="/b")
    collector = DirectoryCollector(str(tmp_path))
    body, content_type = Exposition(
        lambda: collector.read() + list(health_families(collector, "directory")),
        "t").metrics(PROTOBUF_ACCEPT)
    assert content_type == protobuf.CONTENT_TYPE
    families = {f.name: f for f in protodecode.decode(pb2, body)}
    counter = families["gunicorn_http_requests_total"]
    assert counter.type == pb2.COUNTER
    assert {m.label[1].value: m.counter.value for m in counter.metric} == {"/a": 302.0,
                                                                          "/b": 3.0}
    family = families[DURATION]
    assert family.type == pb2.HISTOGRAM and family.help
    by_route = {dict((lp.name, lp.value) for lp in m.label)["route"]: m.histogram
                for m in family.metric}
    h = by_route["/a"]
    everything = w0 + w1
    assert h.sample_count == len(everything)
    assert h.sample_sum == pytest.approx(sum(everything))
    assert [(b.upper_bound, b.cumulative_count) for b in h.bucket] == [
        (0.1, sum(d <= 0.1 for d in everything)), (1.0, sum(d <= 1.0 for d in everything))]
    assert h.schema == 3 and h.zero_threshold == LAYOUT.zero_threshold
    buckets, zero = protodecode.native_buckets(h)
    assert (zero, buckets) == _expected(everything)
    assert sum(buckets.values()) + zero == h.sample_count
    assert protodecode.native_buckets(by_route["/b"])[0] == {native.bucket_index(0.05, 3): 3}
    # the other families come along: gauges, per-worker counters and histograms, the size
    # histograms (no native part)
    assert families["gunicorn_exporter_source_up"].type == pb2.GAUGE
    assert families["gunicorn_exporter_source_up"].metric[0].gauge.value == 1.0
    assert sum(m.counter.value for m in families["gunicorn_worker_requests_total"].metric) == 305
    worker = families["gunicorn_worker_request_duration_seconds"].metric
    assert sum(m.histogram.sample_count for m in worker) == 305
    assert not any(m.histogram.positive_span for m in worker)
    size = families["gunicorn_http_request_size_bytes"].metric[0].histogram
    assert not size.positive_span and not size.HasField("schema")


def test_protobuf_encodes_a_histogram_without_observations_as_native(pb2):
    """A no-op span and the zero threshold mark it native for every Prometheus version."""
    from gunicorn_prometheus_exporter.collector import HistogramFamily

    family = HistogramFamily("h", "help", "histogram")
    family.add_sample("h_bucket", {"le": "+Inf"}, 0.0)
    family.add_sample("h_count", {}, 0.0)
    family.add_sample("h_sum", {}, 0.0)
    family.native[()] = native.NativeHistogram(3, 2.0 ** -20, 0.0, {})
    h = protodecode.decode(pb2, protobuf.encode([family]))[0].metric[0].histogram
    assert [(s.offset, s.length) for s in h.positive_span] == [(0, 0)]
    assert h.zero_threshold == 2.0 ** -20 and h.sample_count == 0


@pytest.mark.parametrize("buckets, spans, deltas", [
    ({5: 2}, [(5, 1)], [2]),
    ({-3: 1, -2: 4, 0: 1}, [(-3, 4)], [1, 3, -4, 1]),  # a one-bucket gap stays in the span
    ({1: 1, 10: 2}, [(1, 1), (8, 1)], [1, 1]),  # a long gap starts a new span
    ({1: 1, 2: 0.0, 9: 3}, [(1, 1), (7, 1)], [1, 2]),  # empty buckets are left out
])
def test_spans_and_deltas(buckets, spans, deltas):
    assert protobuf.spans_and_deltas(buckets) == (spans, deltas)


@pytest.mark.parametrize("env, message", [
    ({"PROMETHEUS_NATIVE_SCHEMA": "9"},
     "PROMETHEUS_NATIVE_SCHEMA='9': expected an integer from 0 to 8"),
    ({"PROMETHEUS_NATIVE_MIN_SECONDS": "2", "PROMETHEUS_NATIVE_MAX_SECONDS": "1"},
     "exporter.metrics.native_min_seconds (env PROMETHEUS_NATIVE_MIN_SECONDS): 2 must be "
     "below exporter.metrics.native_max_seconds (1)"),
    ({"PROMETHEUS_NATIVE_SCHEMA": "8", "PROMETHEUS_NATIVE_MIN_SECONDS": "1e-9",
      "PROMETHEUS_NATIVE_MAX_SECONDS": "1e6"},
     "schema 8 needs 12757 buckets from 1e-09s to 1e+06s; at most 4096"),
])
def test_native_settings_are_validated(env, message):
    from gunicorn_prometheus_exporter.config.loader import ConfigError, build

    with pytest.raises(ConfigError) as caught:
        build(None, env)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_native_settings_default_and_off():
    from gunicorn_prometheus_exporter.config.loader import build

    assert native.layout_of(build(None, {}).metrics) == LAYOUT
    assert native.layout_of(build(None, {"PROMETHEUS_NATIVE_HISTOGRAMS": "false"}).metrics) is None


def test_protobuf_carries_exemplars_of_counters_and_buckets(pb2):
    """A protobuf scrape (asked for by a Prometheus with native histograms on) keeps the
    exemplars that OpenMetrics would carry, +Inf bucket included."""
    from prometheus_client.metrics_core import Metric
    from prometheus_client.samples import Exemplar

    from gunicorn_prometheus_exporter.collector import HistogramFamily

    trace = {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"}
    counter = Metric("c", "help", "counter")
    counter.add_sample("c_total", {"route": "/a"}, 3.0,
                       exemplar=Exemplar(trace, 1.0, 1700000000.25))
    histogram = HistogramFamily("h", "help", "histogram")
    histogram.add_sample("h_bucket", {"le": "0.1"}, 1.0, exemplar=Exemplar(trace, 0.05, None))
    histogram.add_sample("h_bucket", {"le": "+Inf"}, 2.0, exemplar=Exemplar(trace, 7.0, None))
    histogram.add_sample("h_count", {}, 2.0)
    histogram.add_sample("h_sum", {}, 7.05)
    c, h = protodecode.decode(pb2, protobuf.encode([counter, histogram]))
    e = c.metric[0].counter.exemplar
    assert (e.label[0].name, e.label[0].value, e.value) == ("trace_id", trace["trace_id"], 1.0)
    assert (e.timestamp.seconds, e.timestamp.nanos) == (1700000000, 250000000)
    buckets = h.metric[0].histogram.bucket
    assert [(b.upper_bound, b.cumulative_count, b.exemplar.value) for b in buckets] == [
        (0.1, 1, 0.05), (math.inf, 2, 7.0)]
    assert not buckets[0].exemplar.HasField("timestamp")


@pytest.mark.parametrize("labels, help_text", [
    ({"method": "GET", "route": "/a"}, "Duration."),
    ({"route": "\x01bucket\x01"}, "Duration."),  # the value the key is encoded around
    ({"route": '"\x01bucket\x01"'}, "Duration."),
    ({"route": "\\u0001bucket\\u0001"}, "Duration \x01bucket\x01."),
    ({"rüte": "/ä", "z": "\n"}, ""),
])
def test_a_virtual_key_is_exactly_the_json_of_its_parts(labels, help_text):
    """A virtual key made around its bucket's name (``_Entry.key``, the text around the
    bucket label encoded once per entry) is the text ``json.dumps`` makes of its parts,
    whatever the labels and help hold (the value it is encoded around among them too)."""
    import json

    from gunicorn_prometheus_exporter.storage.native import _Entry, _virtual_key

    parts = json.loads(json.dumps(["f", "f_native", labels, help_text, 3, -10, 10]))
    entry = _Entry(parts)
    for bucket in ("3/z/0.5", "3/-10", "3/10", "3/0"):
        assert entry.key(bucket) == _virtual_key(parts, bucket)
        assert entry.key(bucket) == json.dumps(
            ["f", "f_native", dict(labels, __native__=bucket), help_text], sort_keys=True)

"""The Prometheus protobuf exposition (``io.prometheus.client.MetricFamily``, delimited):
the only format in which Prometheus 2.x scrapes native histograms.

Written by hand from the public field numbers of ``metrics.proto`` (client_model): a few
varint and length-delimited fields do not justify a protobuf runtime dependency, and
tests/test_protobuf.py decodes the output with the ``protobuf`` package and a schema
compiled from an independent copy of the field numbers. Every family of a scrape is
encoded (counters, gauges, summaries, classic histograms, with their exemplars); a histogram
that has a merged native histogram (``collector.HistogramFamily.native``) carries it in the
same message next to its classic buckets."""
from __future__ import annotations

import math
import struct
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from ..collector import bucket_bound

CONTENT_TYPE = ("application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; "
                "encoding=delimited")

# MetricType
COUNTER, GAUGE, SUMMARY, UNTYPED, HISTOGRAM = 0, 1, 2, 3, 4
_TYPES = {"counter": COUNTER, "gauge": GAUGE, "summary": SUMMARY, "histogram": HISTOGRAM,
          "info": GAUGE, "stateset": GAUGE}
#: sample suffixes that are not series of their own in this format
_SKIPPED = ("_created", "_gsum", "_gcount")
#: gaps of up to this many empty buckets are sent as zero deltas rather than a new span
#: (what client_golang does: a span costs more bytes than two zero deltas)
SPAN_GAP = 2

_DOUBLE = struct.Struct("<d")


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int32/int64 are sent as 10-byte two's complement
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _zigzag(value: int) -> int:
    return (value << 1) ^ (value >> 63) if value < 0 else value << 1


def _key(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _double(number: int, value: float) -> bytes:
    return _key(number, 1) + _DOUBLE.pack(value)


def _uint(number: int, value: int) -> bytes:
    return _key(number, 0) + _varint(value)


def _sint(number: int, value: int) -> bytes:
    return _key(number, 0) + _varint(_zigzag(value))


def _bytes(number: int, payload: bytes) -> bytes:
    return _key(number, 2) + _varint(len(payload)) + payload


def _string(number: int, text: str) -> bytes:
    return _bytes(number, text.encode("utf-8"))


def _count(value: float) -> int:
    """Counts are whole numbers stored as doubles; NaN or negative (never written) as 0."""
    return int(value) if math.isfinite(value) and value > 0 else 0


def delimited(message: bytes) -> bytes:
    """One message of a delimited stream: its length as a varint, then the message."""
    return _varint(len(message)) + message


def spans_and_deltas(buckets: Dict[int, float]) -> Tuple[List[Tuple[int, int]], List[int]]:
    """Positive spans ``(offset, length)`` and delta-encoded counts of sparse buckets, as
    the format wants them: the first span's offset is the first index, each next span's
    offset the gap after the previous span; each count is sent as its difference from the
    previous bucket's. Empty buckets are left out, except short gaps inside a span."""
    indices = sorted(i for i, v in buckets.items() if v > 0)
    spans: List[List[int]] = []
    counts: List[int] = []
    previous: Optional[int] = None
    for index in indices:
        gap = None if previous is None else index - previous - 1
        if gap is None or gap > SPAN_GAP:
            spans.append([index if previous is None else gap, 1])
        else:
            spans[-1][1] += gap + 1
            counts.extend([0] * gap)
        counts.append(_count(buckets[index]))
        previous = index
    deltas = []
    last = 0
    for count in counts:
        deltas.append(count - last)
        last = count
    return [(o, n) for o, n in spans], deltas


def _native_fields(histogram) -> bytes:
    spans, deltas = spans_and_deltas(histogram.buckets)
    out = [_sint(5, histogram.schema), _double(6, histogram.zero_threshold),
           _uint(7, _count(histogram.zero_count))]
    # no bucket yet: a no-op span still marks the histogram as native for every version
    for offset, length in spans or [(0, 0)]:
        out.append(_bytes(12, _sint(1, offset) + _uint(2, length)))
    if deltas:
        out.append(_bytes(13, b"".join(_varint(_zigzag(d)) for d in deltas)))
    return b"".join(out)


def _exemplar(number: int, exemplar) -> bytes:
    """An ``Exemplar`` (labels, value, ``google.protobuf.Timestamp``) as field ``number``;
    nothing for a sample without one."""
    if exemplar is None:
        return b""
    body = _labels(exemplar.labels) + _double(2, exemplar.value)
    if exemplar.timestamp is not None:
        seconds = math.floor(exemplar.timestamp)
        nanos = int(round((exemplar.timestamp - seconds) * 1e9))
        body += _bytes(3, _uint(1, seconds) + _uint(2, min(nanos, 999_999_999)))
    return _bytes(number, body)


def _labels(labels: Dict[str, str], skip: Sequence[str] = ()) -> bytes:
    return b"".join(_bytes(1, _string(1, name) + _string(2, value))
                    for name, value in sorted(labels.items()) if name not in skip)


def _family(name: str, help_text: str, typ: int, metrics: List[bytes]) -> bytes:
    """A family without series is left out (the format has no use for it)."""
    if not metrics:
        return b""
    body = _string(1, name) + _string(2, help_text) + _uint(3, typ)
    return delimited(body + b"".join(_bytes(4, m) for m in metrics))


def _histograms(metric) -> List[bytes]:
    """One Histogram message per label set: classic buckets (cumulative, +Inf left out as
    the format implies it), count, sum, and the native part when there is one."""
    groups: Dict[Tuple[Tuple[str, str], ...], dict] = {}
    natives = getattr(metric, "native", {})
    for sample in metric.samples:
        base = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
        group = groups.setdefault(base, {"buckets": [], "count": 0.0, "sum": 0.0})
        suffix = sample.name[len(metric.name):]
        if suffix == "_bucket":
            # as the collector ordered it: no ``le``, or one that is no number, is +Inf
            bound = bucket_bound(sample.labels.get("le", "+Inf"))
            # +Inf is implied by the count; sent only to carry an exemplar
            if not math.isinf(bound) or sample.exemplar is not None:
                group["buckets"].append((bound, sample.value, sample.exemplar))
        elif suffix == "_count":
            group["count"] = sample.value
        elif suffix == "_sum":
            group["sum"] = sample.value
    out = []
    for base, group in groups.items():
        native = natives.get(base)
        # with a native part the count is the native one: both are read in one scrape but
        # not atomically, and Prometheus expects the native buckets to add up to the count
        count = native.count if native is not None else group["count"]
        fields = [_uint(1, _count(count)), _double(2, group["sum"])]
        fields += [_bytes(3, _uint(1, _count(c)) + _double(2, b) + _exemplar(3, e))
                   for b, c, e in sorted(group["buckets"], key=lambda bucket: bucket[0])]
        if native is not None:
            fields.append(_native_fields(native))
        out.append(_labels(dict(base)) + _bytes(7, b"".join(fields)))
    return out


def _summaries(metric) -> List[bytes]:
    groups: Dict[Tuple[Tuple[str, str], ...], dict] = {}
    for sample in metric.samples:
        base = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "quantile"))
        group = groups.setdefault(base, {"quantiles": [], "count": 0.0, "sum": 0.0})
        suffix = sample.name[len(metric.name):]
        if suffix == "" and "quantile" in sample.labels:
            try:
                quantile = float(sample.labels["quantile"])
            except ValueError:  # a foreign file's: no quantile to send
                continue
            group["quantiles"].append((quantile, sample.value))
        elif suffix == "_count":
            group["count"] = sample.value
        elif suffix == "_sum":
            group["sum"] = sample.value
    return [_labels(dict(base)) + _bytes(4, _uint(1, _count(g["count"])) + _double(2, g["sum"])
                                         + b"".join(_bytes(3, _double(1, q) + _double(2, v))
                                                    for q, v in sorted(g["quantiles"])))
            for base, g in groups.items()]


def _scalars(metric, typ: int) -> Dict[str, List[bytes]]:
    """Counters, gauges and untyped samples, grouped by sample name (a counter family is
    named with its ``_total``, as the format has it)."""
    field = {COUNTER: 3, GAUGE: 2, UNTYPED: 5}[typ]
    by_name: Dict[str, List[bytes]] = {}
    for sample in metric.samples:
        if sample.name.endswith(_SKIPPED):
            continue
        exemplar = _exemplar(2, sample.exemplar) if typ == COUNTER else b""
        value = _bytes(field, _double(1, sample.value) + exemplar)
        by_name.setdefault(sample.name, []).append(_labels(sample.labels) + value)
    return by_name


def encode(families: Iterable) -> bytes:
    """The delimited protobuf exposition of prometheus_client ``Metric`` families."""
    out = []
    for metric in families:
        typ = _TYPES.get(metric.type, UNTYPED)
        if typ == HISTOGRAM:
            out.append(_family(metric.name, metric.documentation, typ, _histograms(metric)))
        elif typ == SUMMARY:
            out.append(_family(metric.name, metric.documentation, typ, _summaries(metric)))
        else:
            for name, messages in _scalars(metric, typ).items():
                out.append(_family(name, metric.documentation, typ, messages))
    return b"".join(out)


def accepts(accept: str) -> bool:
    """Whether an ``Accept`` header offers the delimited MetricFamily protobuf (with a
    non-zero quality), as Prometheus asks when native histograms are enabled."""
    for part in accept.split(","):
        items = [p.strip() for p in part.split(";")]
        if items[0].lower() != "application/vnd.google.protobuf":
            continue
        params = dict(p.split("=", 1) for p in items[1:] if "=" in p)
        params = {k.strip().lower(): v.strip() for k, v in params.items()}
        if params.get("proto") != "io.prometheus.client.MetricFamily":
            continue
        if params.get("encoding", "delimited") != "delimited":
            continue
        try:
            if float(params.get("q", "1")) <= 0:
                continue
        except ValueError:
            continue
        return True
    return False

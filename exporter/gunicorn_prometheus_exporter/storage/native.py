"""Native (sparse, exponential) histograms: the bucket layout, the file entries that hold
them, and how the entries of many writers are read and merged.

Buckets are Prometheus's: at schema ``s`` the bucket with index ``i`` holds the values in
``(2^((i-1)/2^s), 2^(i/2^s)]``, so a value's index is ``ceil(log2(v) * 2^s)``; it is
computed exactly, as client_golang does, from ``math.frexp`` (mantissa in ``[0.5, 1)``)
and a search among the ``2^s`` mantissa bounds. The relative error of a quantile read from
such a bucket is at most ``(2^(2^-s) - 1) / (2^(2^-s) + 1)`` (schema 3: 4.33%).

Storage per series is fixed: a ``Layout`` covers the bucket indices ``lo..hi`` that hold
the configured range (by default 1 µs to 1 h) and one entry of a worker's native file holds
``hi - lo + 2`` doubles: the zero bucket, then one count per bucket. A value at or below
the zero threshold (the lowest bucket's lower bound, just under the range's minimum; zero
and negative values too) is counted in the zero bucket, as Prometheus defines it; a value
above the highest bucket is counted in the highest bucket (its true value is kept in the
sum). A request therefore costs one store, whatever its duration.

A file's entries are written by one process and read here. The reader turns each entry into
*virtual* entries, one per bucket that has ever been non-zero (and the zero bucket), with
keys in prometheus_client's format: so the collector's merge, the Redis flusher and the
Redis reader handle them exactly like classic bucket values (summed across workers, slots
and instances, folded into totals), and only the bucket spans in use cost anything at a
scrape."""
from __future__ import annotations

import array
import json
import math
import mmap
from bisect import bisect_left
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from operator import itemgetter
from types import ModuleType
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from .reader import FileReader, KeyTable, KeyTexts

#: sample name suffix of a native entry's keys (never exposed as a sample)
SAMPLE_SUFFIX = "_native"
#: label of a virtual entry naming its bucket: ``"<schema>/<index>"`` or
#: ``"<schema>/z/<zero threshold>"`` for the zero bucket
BUCKET_LABEL = "__native__"
#: schema range: 0 (buckets double) to 8 (Prometheus's finest)
MIN_SCHEMA, MAX_SCHEMA = 0, 8


def relative_error(schema: int) -> float:
    """Largest relative error of a value estimated by the geometric middle of its bucket:
    ``(base - 1) / (base + 1)``, ``base = 2^(2^-schema)`` (Prometheus's histogram_quantile
    interpolates inside the bucket instead: at most one bucket, ``base - 1``, off)."""
    base = 2.0 ** (2.0 ** -schema)
    return (base - 1.0) / (base + 1.0)


def upper_bound(schema: int, index: int) -> float:
    """Upper bound of bucket ``index`` at ``schema``: ``2^(index / 2^schema)``."""
    return 2.0 ** (index / (1 << schema))


def bucket_index(value: float, schema: int) -> int:
    """``ceil(log2(value) * 2^schema)`` for a positive finite value, exactly (the reference
    the recorder and the C path implement with precomputed bounds)."""
    frac, exp = math.frexp(value)
    return bisect_left(mantissa_bounds(schema), frac) + (exp - 1) * (1 << schema)


def mantissa_bounds(schema: int) -> Tuple[float, ...]:
    """The ``2^schema`` mantissa bounds ``2^(i / 2^schema) / 2``: a value whose ``frexp``
    mantissa is at most bound ``i`` (and above bound ``i-1``) falls in bucket ``i`` of its
    octave."""
    m = 1 << schema
    return tuple(math.ldexp(2.0 ** (i / m), -1) for i in range(m))


@dataclass(frozen=True)
class Layout:
    """The buckets one writer keeps per series: schema and index range ``lo..hi``."""

    schema: int
    lo: int
    hi: int
    bounds: Tuple[float, ...] = field(repr=False, compare=False, default=())

    @classmethod
    def for_range(cls, schema: int, min_value: float, max_value: float) -> "Layout":
        """The smallest layout whose buckets hold ``[min_value, max_value]``."""
        if not MIN_SCHEMA <= schema <= MAX_SCHEMA:
            raise ValueError(f"native histogram schema {schema}: expected "
                             f"{MIN_SCHEMA} to {MAX_SCHEMA}")
        if not 0.0 < min_value < max_value < math.inf:
            raise ValueError(f"native histogram range {min_value!r} to {max_value!r}: "
                             "expected 0 < min < max, finite")
        return cls(schema, bucket_index(min_value, schema), bucket_index(max_value, schema),
                   mantissa_bounds(schema))

    # computed once: ``slot`` runs per request on the Python path
    @cached_property
    def buckets(self) -> int:
        return self.hi - self.lo + 1

    @property
    def doubles(self) -> int:
        """Doubles of one series: the zero bucket and every bucket."""
        return self.buckets + 1

    @cached_property
    def zero_threshold(self) -> float:
        """Values at or below this go to the zero bucket: the lowest bucket's lower bound."""
        return upper_bound(self.schema, self.lo - 1)

    @cached_property
    def top(self) -> float:
        """Values above this are counted in the highest bucket."""
        return upper_bound(self.schema, self.hi)

    @cached_property
    def slot(self) -> Callable[[float], int]:
        """``slot(value)``: offset of ``value``'s count in a series' doubles (0 is the zero
        bucket). A closure over the layout's constants: it runs per request on the Python
        path, where every attribute lookup counts."""
        zero, top, last, bounds = self.zero_threshold, self.top, self.buckets, self.bounds
        per_octave = 1 << self.schema
        # index = search + (exp - 1) * per_octave; slot = index - lo + 1
        offset = 1 - self.lo - per_octave
        frexp = math.frexp

        def slot(value: float) -> int:
            if not value > zero:  # zero, negative, NaN
                return 0
            if value > top:
                return last
            frac, exp = frexp(value)
            return bisect_left(bounds, frac) + exp * per_octave + offset
        return slot


def layout_of(metrics: Any) -> Optional[Layout]:
    """The layout the ``exporter.metrics`` settings ask for, None when native is off."""
    if not metrics.native_histograms:
        return None
    return Layout.for_range(metrics.native_schema, metrics.native_min_seconds,
                            metrics.native_max_seconds)


def entry_key(family: str, labels: Mapping[str, str], help_text: str, layout: Layout) -> str:
    """The key of one series' native entry; the layout is part of it, so entries written
    under another configuration stay readable and distinct."""
    return json.dumps([family, family + SAMPLE_SUFFIX, dict(labels), help_text,
                       layout.schema, layout.lo, layout.hi], sort_keys=True)


def entry_payload(key: str) -> int:
    """Bytes that follow a native entry's key, its zero bucket and buckets (ValueError for
    a key that is not one): the ``payload`` of native files (``mmap_file.Payload``). A key
    refused here makes the reader take the file as torn there, so what builds the buckets'
    keys and bounds (``NativeReader``) only ever meets a list with a labels object and
    indexes whose bounds are finite doubles: a foreign or damaged key (labels that are no
    object, an index of 10^22) failed every scrape."""
    parts = json.loads(key)
    if not (isinstance(parts, list) and len(parts) >= 7 and isinstance(parts[2], dict)):
        raise ValueError(f"not a native histogram entry: {key[:80]!r}")
    schema, lo, hi = (int(x) for x in parts[4:7])
    if not (MIN_SCHEMA <= schema <= MAX_SCHEMA and lo <= hi and hi - lo < 1 << 16
            and -(1100 << schema) < lo and hi < 1024 << schema):  # 2^1024 overflows
        raise ValueError(f"not a native histogram entry: {key[:80]!r}")
    return 8 * (hi - lo + 2)


def _virtual_key(parts: list, bucket: str) -> str:
    family, sample, labels, help_text = parts[:4]
    return json.dumps([family, sample, dict(labels, **{BUCKET_LABEL: bucket}), help_text],
                      sort_keys=True)


#: the bucket label's value ``_Entry`` encodes a virtual key around (as JSON: \u0001 ...)
_MARK = "\x01bucket\x01"
_MARK_JSON = json.dumps(_MARK)


class _Entry:
    """One distinct native entry key: its parts and the number of each of its virtual keys
    (by bucket slot, None until some file needs it)."""

    __slots__ = ("parts", "numbers", "_around")

    def __init__(self, parts: list) -> None:
        self.parts = parts
        self.numbers: List[Optional[int]] = [None] * (int(parts[6]) - int(parts[5]) + 2)
        self._around: Optional[Tuple[str, str]] = None

    def key(self, bucket: str) -> str:
        """``_virtual_key(parts, bucket)``, the text around the bucket label's value encoded
        once per entry (a ``json.dumps`` per bucket is most of what building a virtual key
        costs). Exactly the same text: a bucket name is digits, signs, ``/``, ``z``, ``.``
        and ``e``, which JSON takes as they are; the entry's own text is encoded with a
        value that only it holds (another occurrence of it, in a label or the help of a
        foreign key, leaves every bucket to ``_virtual_key``)."""
        if self._around is None:
            text = _virtual_key(self.parts, _MARK)
            self._around = (("", "") if text.count(_MARK_JSON) != 1
                            else tuple(text.split(_MARK_JSON)))  # type: ignore[assignment]
        before, after = self._around  # type: ignore[misc]
        if not before:
            return _virtual_key(self.parts, bucket)
        return f'{before}"{bucket}"{after}'


class VirtualKeys:
    """The virtual keys of a directory's native entries, each built and numbered once in
    ``table`` (the collector's ``KeyTable``, which numbers the value files' keys too), and
    each native entry key parsed once: the workers' files hold the same entries (one per
    route), so on a cold scrape most of a file's virtual keys are keys another file already
    showed; building each anew cost a ``json.dumps`` per bucket in use per series per file
    (two thirds of a cold scrape of 16 workers x 100 routes). The collector makes a new
    one whenever it starts its key table afresh: nothing is ever removed from either."""

    def __init__(self, table: Any) -> None:
        self.table = table
        #: the entry keys of every native file (a ``KeyTable``: each decoded once)
        self.entry_table = KeyTable()
        self._entries: List[Optional[_Entry]] = []  # by number in ``entry_table``
        self._payloads: Dict[str, int] = {}

    def payload(self, key: str) -> int:
        """``entry_payload`` of ``key``, parsed once per distinct key (a key refused is
        refused again at each meeting: only a hostile file holds one)."""
        size = self._payloads.get(key)
        if size is None:
            size = self._payloads[key] = entry_payload(key)
        return size

    def entry(self, number: int) -> _Entry:
        """The entry whose key is number ``number`` of ``entry_table``."""
        entries = self._entries
        if number >= len(entries):
            entries.extend([None] * (number + 1 - len(entries)))
        found = entries[number]
        if found is None:
            found = entries[number] = _Entry(json.loads(self.entry_table.texts[number]))
        return found

    def zero(self, entry: _Entry) -> int:
        """The key number of ``entry``'s zero bucket (``numbers`` of slot 0)."""
        number = entry.numbers[0]
        return self.numbers(entry, 0, 0)[0] if number is None else number  # type: ignore

    def numbers(self, entry: _Entry, first: int, last: int) -> List[Optional[int]]:
        """The key numbers of ``entry``'s slots ``first..last`` (0: the zero bucket)."""
        got = entry.numbers[first:last + 1]
        if None in got:
            table = self.table
            schema, lo = int(entry.parts[4]), int(entry.parts[5])
            for i, number in enumerate(got):
                if number is None:
                    slot = first + i
                    bucket = (f"{schema}/z/{upper_bound(schema, lo - 1)!r}" if slot == 0
                              else f"{schema}/{lo + slot - 1}")
                    got[i] = entry.numbers[slot] = table[entry.key(bucket).encode()]
        return got


class NativeReader:
    """Reads one native file as virtual entries: ``keys`` (prometheus_client keys, one per
    bucket ever non-zero, and the zero bucket of every series; numbered in a key table,
    ``key_ids``) and ``read()`` their values, in the order they were found. Counts only
    grow in a file, so a bucket once found stays and ``keys`` only grows, as a classic
    file's keys do; a file replaced by another starts afresh. With the C speedups
    (``native``, what ``speedups.load()`` gave) the map is read only in C under the SIGBUS
    guard (the header, the entries walked, each series' buckets, the values), so a file
    truncated while mapped reads as torn (``FileReader.read_with``) instead of killing the
    process. ``virtual``: the ``VirtualKeys`` shared by the readers of a directory (a
    reader of its own otherwise)."""

    def __init__(self, path: str, native: Optional[ModuleType] = None,
                 virtual: Optional[VirtualKeys] = None) -> None:
        self.path = path
        if virtual is None:
            virtual = VirtualKeys(native.KeyTable() if native is not None else KeyTable())
        self._virtual = virtual
        self._file = FileReader(path, payload=virtual.payload, native=native,
                                table=virtual.entry_table)
        self._copy = native.copy if native is not None else None
        self._values = native.values if native is not None else None
        self._generation = -1
        self._reset()

    def _reset(self) -> None:
        #: each virtual key's number in the table (an array('i'), as ``pick`` reads it,
        #: when compiled)
        self.key_ids: Any = array.array("i") if self._values is not None else []
        self._positions: List[int] = []  # value index of each virtual key
        self._spans: List[List[int]] = []  # per entry: first and last bucket slot found
        self._entries: List[_Entry] = []  # per entry: its parts and virtual keys
        self._get: Optional[Callable[[mmap.mmap], tuple]] = None

    @property
    def keys(self) -> Sequence[str]:
        """Each virtual key, in the order found (a view of ``key_ids``)."""
        return KeyTexts(self._virtual.table.texts, self.key_ids)

    @property
    def torn(self) -> bool:
        return self._file.torn

    @property
    def generation(self) -> int:
        """Which file ``keys`` describe (``FileReader.generation``)."""
        return self._file.generation

    def read(self, inode: Optional[int] = None) -> Optional[tuple]:
        return self._file.read_with(self._read, inode)

    def _read(self, m: mmap.mmap) -> tuple:
        f = self._file
        if f.generation != self._generation:
            self._generation = f.generation
            self._reset()
        known = len(self.key_ids)
        new = range(len(self._entries), len(f.key_ids))
        if new:  # the zero bucket of each new entry: a series is native from its first scrape
            entries = list(map(self._virtual.entry, f.key_ids[new.start:]))
            self._entries.extend(entries)
            self._spans.extend([0, 0] for _ in new)  # no bucket yet
            self.key_ids.extend(map(self._virtual.zero, entries))
            self._positions.extend([f.offsets[n] // 8 for n in new])
        for n, span in enumerate(self._spans):
            start = f.offsets[n] + 8  # the first bucket (slot 1)
            stop = start + f.sizes[n] - 8
            block = self._copy(m, start, stop) if self._copy is not None else m[start:stop]
            low = len(block) - len(block.lstrip(b"\0"))
            if low == len(block):
                continue
            first = low // 8 + 1
            last = (len(block.rstrip(b"\0")) - 1) // 8 + 1
            if span[0] == 0:  # the entry's first buckets: its keys in one call
                span[0], span[1] = first, last
                self._add(n, first, last)
                continue
            if first < span[0]:
                self._add(n, first, span[0] - 1)
            if last > span[1]:
                self._add(n, span[1] + 1, last)
            span[0], span[1] = min(span[0], first), max(span[1], last)
        if len(self.key_ids) != known or self._get is None:
            self._get = self._getter() if self._positions else None
        return () if self._get is None else self._get(m)

    def _getter(self) -> Callable[[mmap.mmap], tuple]:
        """What reads the values of ``keys`` from the map: in C under the guard (at their
        byte offsets), or an ``itemgetter`` of the map's doubles."""
        values = self._values
        if values is not None:
            offsets = array.array("q", [8 * position for position in self._positions])
            return lambda m: values(m, offsets, 1)
        get, single = itemgetter(*self._positions), len(self._positions) == 1

        def python(m: mmap.mmap) -> tuple:
            view = memoryview(m)[:len(m) // 8 * 8].cast("d")
            try:
                got = get(view)
            finally:
                view.release()
            return (got,) if single else got
        return python

    def _add(self, entry: int, first: int, last: int) -> None:
        """Entry ``entry``'s virtual keys of slots ``first..last`` (0: the zero bucket)."""
        self.key_ids.extend(self._virtual.numbers(self._entries[entry], first, last))
        base = self._file.offsets[entry] // 8
        self._positions.extend(range(base + first, base + last + 1))

    def close(self) -> None:
        self._file.close()


#: a parsed bucket label: (schema, index, 0.0), or (schema, None, threshold) for a zero bucket
Bucket = Tuple[int, Optional[int], float]


@lru_cache(maxsize=4096)
def parse_bucket(label: str) -> Optional[Bucket]:
    """The bucket a virtual entry's label names; None for a label that names none (parsed
    once, when the collector first sees the entry; and remembered: the native series of a
    cold scrape, one per route and bucket in use, name a few hundred buckets between
    them)."""
    parts = label.split("/")
    try:
        if len(parts) == 3 and parts[1] == "z":
            return int(parts[0]), None, float(parts[2])
        if len(parts) == 2:
            return int(parts[0]), int(parts[1]), 0.0
    except ValueError:
        pass
    return None


@dataclass
class NativeHistogram:
    """One merged native histogram: what the protobuf exposition serves."""

    schema: int
    zero_threshold: float
    zero_count: float
    buckets: Dict[int, float]  # index -> count

    @property
    def count(self) -> float:
        return self.zero_count + sum(self.buckets.values())


def merge(entries: Sequence[Tuple[Bucket, float]]) -> Optional[NativeHistogram]:
    """Sum ``(bucket, count)`` pairs of one series into one histogram. Entries written under
    different layouts (a configuration change while a slot's file lives on) are brought to
    the coarsest schema and the widest zero bucket among them, as Prometheus merges
    histograms: every count stays counted."""
    if not entries:
        return None
    schemas = {bucket[0] for bucket, _ in entries}
    thresholds = {bucket[2] for bucket, _ in entries if bucket[1] is None}
    schema = min(schemas)
    zero_threshold = max(thresholds, default=0.0)
    # one layout: its buckets all lie above its zero bucket, nothing to convert
    uniform = len(schemas) == 1 and len(thresholds) <= 1
    zero = 0.0
    buckets: Dict[int, float] = {}
    for (own_schema, index, _), value in entries:
        if index is None:
            zero += value
            continue
        if not uniform:
            shift = own_schema - schema
            if shift:
                index = -((-index) >> shift)  # ceil(index / 2^shift): the bucket holding it
            if upper_bound(schema, index) <= zero_threshold:
                zero += value
                continue
        buckets[index] = buckets.get(index, 0.0) + value
    return NativeHistogram(schema, zero_threshold, zero, buckets)

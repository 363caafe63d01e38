"""Merge the files of a multiprocess directory into metric families.

Unlike prometheus_client's ``MultiProcessCollector``, which decodes every key of every file
on every scrape, this collector keeps a reader per file (keys parsed once, values unpacked in
one C call) and a registry of series, so a scrape costs one add per stored value. It also
adds what only the directory knows: ``worker_id`` from a worker file's slot, the per-worker
families derived from the request families, live/dead filtering through the identities'
locks, and busy/idle workers."""
from __future__ import annotations

import contextlib
import functools
import gc
import json
import math
import os
import platform
import threading
import time
from itertools import compress, count, islice, repeat
from operator import is_, is_not, itemgetter
from types import ModuleType
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Exemplar, Sample

from . import families
from .bounded import BoundedCall
from .storage import directory as storage_dir
from .storage import exemplars as exemplar_files
from .storage import native
from .storage.reader import FileReader, KeyTable, Unreadable
from .version import __version__

Labels = Tuple[Tuple[str, str], ...]
SeriesKey = Tuple[str, str, Labels]
Reader = Union[FileReader, native.NativeReader]

#: entries a collector's tables may hold beyond twice what its last read needed (``outgrown``)
SLACK = 1024

_OPS = {"": "sum", "sum": "sum", "livesum": "sum", "all": "sum", "liveall": "sum",
        "max": "max", "livemax": "max", "min": "min", "livemin": "min",
        "mostrecent": "recent", "livemostrecent": "recent"}


def outgrown(held: int, needed: int) -> bool:
    """A table of ``held`` entries where the storage last read needs ``needed`` holds far
    more than it needs: the keys or series of files gone or replaced (label values that
    keep changing, files written over with other keys), which nothing else removes. Twice
    plus ``SLACK``: right after a fresh start a table holds at most what is needed, so a
    storage whose keys stay the same never starts afresh again, and one whose keys churn
    pays one cold read per ``needed + SLACK`` new entries or more."""
    return held > 2 * needed + SLACK


class SeriesRegistry:
    """Every series ever seen, numbered, with what exposition needs to know of it."""

    def __init__(self) -> None:
        self.ids: Dict[SeriesKey, int] = {}
        self.keys: List[SeriesKey] = []
        self.label_dicts: List[Dict[str, str]] = []  # built once, shared by every scrape
        self.histogram_ids: set = set()
        self.family_of: Dict[str, Tuple[str, str]] = {}  # family -> (type, help)
        self.histograms: Dict[Tuple[str, Labels], Dict] = {}

    def add(self, family: str, typ: str, help_text: str, sample: str, labels: Labels) -> int:
        key = (family, sample, labels)
        found = self.ids.get(key)
        if found is not None:
            return found
        sid = len(self.keys)
        self.ids[key] = sid
        self.keys.append(key)
        label_dict = dict(labels)
        self.label_dicts.append(label_dict)
        if family not in self.family_of:
            self.family_of[family] = (typ, help_text)
        if typ == "histogram":
            self.histogram_ids.add(sid)
            self._index_histogram(family, sample, labels, label_dict, sid)
        return sid

    def _index_histogram(self, family: str, sample: str, labels: Labels,
                         label_dict: Dict[str, str], sid: int) -> None:
        base = tuple([kv for kv in labels if kv[0] not in _NOT_BASE])
        group = self.histograms.get((family, base))
        if group is None:
            group = self.histograms[(family, base)] = {"buckets": [], "sum": None,
                                                       "labels": dict(base), "native": [],
                                                       "ordered": True}
        if sample.endswith(native.SAMPLE_SUFFIX):
            bucket = native.parse_bucket(label_dict.get(native.BUCKET_LABEL, ""))
            if bucket is not None:
                group["native"].append((bucket, sid))
        elif sample.endswith("_bucket"):
            le = label_dict.get("le", "+Inf")
            group["buckets"].append((bucket_bound(le), le, sid))
            group["ordered"] = False  # sorted once, at the next exposition
        elif sample.endswith("_sum"):
            group["sum"] = sid


#: labels that tell a histogram's samples apart (not part of its label set)
_NOT_BASE = ("le", native.BUCKET_LABEL)


def bucket_bound(le: str) -> float:
    """A bucket's upper bound from its ``le`` label: +Inf where it is no number (a foreign
    file's), so that the bucket is ordered and served, never a failed scrape."""
    try:
        return float(le)
    except ValueError:
        return math.inf


class Shard:
    """The values of one writer for one metric type: a file of the directory, or its copy
    in Redis. ``extra`` labels are added to every series (``instance`` in Redis)."""

    def __init__(self, typ: str, mode: str, identity: str,
                 extra: Labels = ()) -> None:
        self.typ = typ
        self.mode = mode
        self.identity = identity
        self.worker_id = storage_dir.worker_id_of(identity)
        self.extra = extra
        self.op = _OPS.get(mode, "sum") if typ == "gauge" else "sum"
        self.live_only = typ == "gauge" and mode.startswith("live")
        self.targets: List[int] = []
        self.derived: List[Tuple[int, int]] = []  # (series, value position)
        self.series: set = set()  # every series of ``targets``
        self._series_shared = False  # ``series`` is also another shard's (``share``)
        #: every series of ``derived`` (a few per worker: kept apart from ``series``, so
        #: that the request files of many workers share that one)
        self.derived_series: set = set()
        self.generation = 0  # of the keys ``targets`` number (FileReader.generation)

    def renumber(self, generation: int) -> None:
        """The file under this name is another file now: its keys are numbered anew."""
        self.targets, self.derived, self.series = [], [], set()
        self._series_shared = False
        self.derived_series = set()
        self.generation = generation

    def extend(self, sids: List[int]) -> None:
        """Number the shard's next keys ``sids`` (a list of the caller's own: taken as
        is for the first keys, not copied, a million references on a cold scrape)."""
        if self.targets:
            self.targets.extend(sids)
        else:
            self.targets = sids

    def feed(self, sids: Iterable[int]) -> None:
        """Add to the series of ``targets`` (copying a set it shares first)."""
        if self._series_shared:
            self.series = set(self.series)
            self._series_shared = False
        self.series.update(sids)

    def share(self, series: set) -> None:
        """Feed exactly ``series``, a set other shards of the same keys feed too (one set
        instead of one per file: a set of 16,000 series is half a megabyte)."""
        self.series = series
        self._series_shared = True


#: what a per-worker derived series is made of, alike in every worker's shard: (family,
#: type, help, sample, its labels but ``worker_id``)
Template = Tuple[str, str, str, str, Labels]

#: series numbers of keys numbered alike in every shard of a kind: by key number (None
#: where not yet numbered) or by key text
Plain = Union[List[Optional[int]], Dict[str, int]]


def pick(column: List[Optional[int]], ids: Sequence[int],
         start: int) -> Tuple[List[Optional[int]], int]:
    """``column[i]`` for each key number ``i`` of ``ids[start:]``, ``column`` first grown
    with None to hold them all, and how many of those are None (``_speedups.pick`` is the
    same in one C call: asking a list of a million entries ``None in`` costs a comparison
    of an int with None per entry)."""
    new = ids[start:]
    top = max(new, default=-1) + 1
    if top > len(column):
        column.extend([None] * (top - len(column)))
    found = list(map(column.__getitem__, new))
    return found, found.count(None)


def derived(templates: List[Optional[int]], own: Dict[int, int], numbers: List[int],
            start: int) -> List[Tuple[int, int]]:
    """``(own[t], numbers[start + i])`` for each template number ``t`` of ``templates``
    that is not None, in order: a worker's derived series, each with the position of a
    value that feeds it (``numbers``: ``list(range(n))``, whose ints every shard's pairs
    share). ``_speedups.derived`` is the same in one C call, its pairs and list left
    untracked by the cyclic GC. No Python step per key."""
    kept = list(map(is_not, templates, repeat(None)))
    return list(zip(map(own.__getitem__, compress(templates, kept)),
                    compress(islice(numbers, start, None), kept)))


def _nones(values: List[Optional[int]]) -> Iterator[int]:
    """The indexes of None in ``values``, found without a Python step per value: on a
    cold scrape most of a file's keys are numbered already (``list.index`` would compare
    each int with None, twice the instructions of ``is``)."""
    return compress(count(), map(is_, values, repeat(None)))


#: the decoder's scanner (``raw_decode`` without its Python frame): (value, end) of the
#: JSON value at an index, StopIteration where there is none
_SCAN = json.JSONDecoder().scan_once


def _decode_key(key: str) -> object:
    """``json.loads(key)`` in a third of the time: a cold scrape decodes every distinct key
    (17,000 at 64 x 1,000), and ``loads`` spends two thirds of a key's time around the
    decoding itself. Anything but a whole JSON document without surrounding space is left
    to ``loads``, which answers it (or fails) as it always did."""
    try:
        found, end = _SCAN(key, 0)
    except StopIteration:
        return json.loads(key)
    return found if end == len(key) else json.loads(key)


#: the parts of a key that is not one of prometheus_client's
_UNREADABLE = ("gunicorn_exporter_unreadable", "gunicorn_exporter_unreadable", (), "")


def _parse_key(key: str) -> tuple:
    """(family, sample, labels sorted, help) of a key; a key that is not one of
    prometheus_client's (not JSON of that shape, or a family, sample or help that is no
    string: a list is no dict key, a number no metric name) is served as
    ``gunicorn_exporter_unreadable``."""
    try:
        family, sample, labels, help_text = _decode_key(key)
        pairs = tuple(sorted(zip(map(str, labels), map(str, labels.values()))))
    except (ValueError, TypeError, AttributeError):
        return _UNREADABLE
    if not (isinstance(family, str) and isinstance(sample, str) and isinstance(help_text, str)):
        return _UNREADABLE
    return family, sample, pairs, help_text


class Merger:
    """Numbers series and merges the values of many shards into families. Shared by the
    directory collector and the Redis reader, so both expose exactly the same thing."""

    def __init__(self, compiled: Optional[ModuleType] = None) -> None:
        self.registry = SeriesRegistry()
        self._parsed_keys: Dict[str, tuple] = {}
        #: (type, worker shard?, by number?) -> two columns, key (number or text) -> series
        #: number, and -> ``Template`` number of its derived series, for keys numbered alike
        #: in every such shard (``index``)
        self._plain_sids: Dict[Tuple[str, bool, bool], Tuple[Plain, Plain]] = {}
        #: the ``Template`` of each derived series, numbered; and each worker's series of
        #: them, by worker id and template number
        self._template_ids: Dict[Template, int] = {}
        self._templates: List[Template] = []
        self._worker_derived: Dict[str, Dict[int, int]] = {}
        self._pick = compiled.pick if compiled is not None else pick
        self._derived = compiled.derived if compiled is not None else derived
        #: ``list(range(n))`` for the longest file yet: the value positions of derived pairs
        self._numbers: List[int] = []
        #: the set of key numbers of a file as bytes (``_speedups.key_set``); None: the
        #: Python path, where each shard builds its own set of series
        self._key_set = compiled.key_set if compiled is not None else None
        #: (kind, key set) -> the series of a shard holding exactly those keys, all plain;
        #: kept for one read (``merge`` clears it)
        self._shared_series: Dict[Tuple[Tuple[str, bool, bool], bytes], set] = {}
        #: a plain key's parts in one C call (``_speedups.parse_key``, None for any other)
        self._parse_plain = compiled.parse_key if compiled is not None else None
        #: ``registry.add``, in one C call with the speedups (``_speedups.register``)
        self._add = (functools.partial(compiled.register, self.registry, _NOT_BASE,
                                       native.parse_bucket)
                     if compiled is not None else self.registry.add)
        #: the series the last merge served (``outgrown``)
        self.served = 0

    def outgrown(self, keys: int) -> bool:
        """The series and the parsed keys held are far more than the last merge needed
        (``keys``: the values and exemplars it read, at least one per key): a new
        ``Merger`` would hold less."""
        return (outgrown(len(self.registry.keys), self.served)
                or outgrown(len(self._parsed_keys), keys))

    def index(self, shard: Shard, keys: Sequence[str],
              ids: Optional[Sequence[int]] = None) -> None:
        """Give series numbers to the keys the shard gained since the last call (``ids``:
        their numbers in a ``KeyTable``, when the shard's reader has them).

        Most keys number the same in every shard of a kind (no label added per worker or
        pid): those are remembered per kind, by key number (a list, read in one C call by
        ``pick``) or else by key text, so a cold scrape of many files holding the same keys
        numbers each key once and looks the rest up. A request family's key also feeds a
        per-worker family derived from it (``families.DERIVED``): its series differs per
        worker, but what it is made of does not, so that is remembered per kind too (a
        ``Template``) and each worker's series of it numbered once per worker and template,
        instead of each key of each worker's file being parsed and numbered anew (two
        thirds of a cold scrape of request files)."""
        start = len(shard.targets)
        if start >= len(keys):
            return
        pid_labelled = shard.typ == "gauge" and shard.mode in ("all", "liveall")
        columns: Optional[Tuple[Plain, Plain]] = None
        if not shard.extra and not pid_labelled:
            kind = (shard.typ, shard.worker_id is not None, ids is not None)
            columns = self._plain_sids.get(kind)
            if columns is None:
                columns = self._plain_sids[kind] = (([], []) if ids is not None else ({}, {}))
        templates: Optional[List[Optional[int]]] = None
        if columns is None:
            sids: List[Optional[int]] = [None] * (len(keys) - start)
            missing = len(sids)
        elif ids is not None:
            sids, missing = self._pick(columns[0], ids, start)
            if shard.worker_id is not None:  # (also grows the column to the keys)
                templates = self._pick(columns[1], ids, start)[0]
        else:
            sids = list(map(columns[0].get, keys[start:]))
            missing = sids.count(None)
            if shard.worker_id is not None:
                templates = list(map(columns[1].get, keys[start:]))
        if templates is not None and templates.count(None) == len(templates):
            templates = None
        if missing or templates is not None:
            shard.derived_series.update(
                self._number(shard, keys, ids, start, sids, missing, templates, columns))
        shard.extend(sids)  # type: ignore[arg-type]
        if (start == 0 and columns is not None and ids is not None
                and self._key_set is not None
                and (not missing or not self._pick(columns[0], ids, 0)[1])):
            # every key plain (a numbered key is plain unless its series is the worker's):
            # the series are those of any other shard of this kind with the same keys
            shared = (kind, self._key_set(ids))
            found = self._shared_series.get(shared)
            if found is None:
                found = self._shared_series[shared] = set(sids)
            shard.share(found)
        else:
            shard.feed(sids)  # type: ignore[arg-type]

    def _number(self, shard: Shard, keys: Sequence[str], ids: Optional[Sequence[int]],
                start: int, sids: List[Optional[int]], missing: int,
                templates: Optional[List[Optional[int]]],
                columns: Optional[Tuple[Plain, Plain]]) -> set:
        """Fill in ``sids`` (the series of the shard's keys from ``start``; None where the
        key is not numbered for this kind yet, ``missing`` of them) and add the shard's
        derived series in the order of its keys, as numbering each key on its own would
        (the same additions, in the same order, at a merge); the derived series added. The
        keys found numbered cost no Python step each: the others are found by ``_nones``,
        and the derived series of the found ones taken by ``derived``."""
        derived = shard.derived
        mark = len(derived)
        for i in _nones(sids) if missing else ():
            slot = keys[start + i] if ids is None else ids[start + i]
            sids[i] = self._index_one(shard, keys[start + i], start + i, columns, slot)
        added = {sid for sid, _ in derived[mark:]}  # of the keys numbered here
        if templates is None:
            return added
        worker_id = shard.worker_id or ""
        own = self._worker_derived.setdefault(worker_id, {})
        used = set(templates)
        used.discard(None)
        for template in sorted(used.difference(own)):  # each worker's series numbered once
            self._derived_sid(worker_id, template)  # (in the order templates were first seen)
        added.update(map(own.__getitem__, used))
        numbers = self._numbers
        if len(numbers) < start + len(templates):
            numbers.extend(range(len(numbers), start + len(templates)))
        found = self._derived(templates, own, numbers, start)
        if len(derived) > mark:  # some of the keys' just numbered: in the order of keys
            derived[mark:] = sorted(derived[mark:] + found, key=itemgetter(1))
        elif derived:
            derived.extend(found)
        else:  # (taken as is: a list of the caller's own, as ``Shard.extend`` takes)
            shard.derived = found
        return added

    def _index_one(self, shard: Shard, key: str, position: int,
                   columns: Optional[Tuple[Plain, Plain]], slot: Union[str, int]) -> int:
        """The series number of one key in ``shard`` (and its derived per-worker series),
        remembered in ``columns`` at ``slot`` when it does not depend on the shard (and, for
        a derived series, what it is made of: its ``Template``)."""
        worker_id = shard.worker_id
        family, sample, labels, help_text = self._parse_key(key)
        known = families.BY_NAME.get(family)
        extra = shard.extra
        if known is not None and known.per_worker and worker_id is not None:
            extra = extra + (("worker_id", worker_id),)
        elif shard.typ == "gauge" and shard.mode in ("all", "liveall"):
            extra = extra + (("pid", shard.identity),)
        merged = tuple(sorted(labels + extra)) if extra else labels
        sid = self._add(family, shard.typ, help_text, sample, merged)
        derived = families.DERIVED.get(family)
        template = None
        if (derived is not None and worker_id is not None
                and not sample.endswith(native.SAMPLE_SUFFIX)):
            suffix = "_total" if derived.typ == "counter" else sample[len(family):]
            kept = tuple(kv for kv in labels if kv[0] == "le") + shard.extra
            template = self._template((derived.name, derived.typ, derived.help,
                                       derived.name + suffix, kept))
            shard.derived.append((self._derived_sid(worker_id, template), position))
        if columns is not None and not extra:
            columns[0][slot] = sid  # type: ignore[index]
            if template is not None:
                columns[1][slot] = template  # type: ignore[index]
        return sid

    def _template(self, template: Template) -> int:
        """The number of a derived series' ``Template`` (numbered when new)."""
        number = self._template_ids.get(template)
        if number is None:
            number = self._template_ids[template] = len(self._templates)
            self._templates.append(template)
        return number

    def _derived_sid(self, worker_id: str, template: int) -> int:
        """The series of ``template`` for the worker ``worker_id`` (numbered when new)."""
        own = self._worker_derived.setdefault(worker_id, {})
        sid = own.get(template)
        if sid is None:
            name, typ, help_text, sample, kept = self._templates[template]
            sid = own[template] = self._add(name, typ, help_text, sample,
                                            tuple(sorted(kept + (("worker_id", worker_id),))))
        return sid

    def _parse_key(self, key: str) -> tuple:
        """(family, sample, labels sorted, help) of a key, each distinct key parsed once (in
        one C call when the key is plain)."""
        found = self._parsed_keys.get(key)
        if found is None:
            if self._parse_plain is not None:
                found = self._parse_plain(key)
            if found is None:
                found = _parse_key(key)
            self._parsed_keys[key] = found
        return found

    def newest_exemplars(self, found: Iterable[exemplar_files.Exemplar],
                         extra: Labels = ()) -> Dict[int, Exemplar]:
        """The most recent exemplar of each series among ``found`` (every worker's slots),
        by series number; ``extra`` labels as the shard's (``instance`` in Redis). Slots of
        series not (yet) seen in the value files are left out."""
        newest: Dict[int, Tuple[float, Exemplar]] = {}
        ids = self.registry.ids
        for key, timestamp, value, trace_id, span_id in found:
            family, sample, labels, _ = self._parse_key(key)
            merged = tuple(sorted(labels + extra)) if extra else labels
            sid = ids.get((family, sample, merged))
            if sid is None or (sid in newest and newest[sid][0] >= timestamp):
                continue
            newest[sid] = (timestamp, Exemplar({"trace_id": trace_id, "span_id": span_id},
                                               value, timestamp))
        return {sid: exemplar for sid, (_, exemplar) in newest.items()}

    def merge(self, batches: List[Tuple[Shard, tuple]],
              exemplars: Optional[Dict[int, Exemplar]] = None) -> List[Metric]:
        """Families from (shard, values) pairs; values as the shard's keys are numbered
        (value and timestamp interleaved for ``mostrecent`` gauges). ``exemplars`` by
        series number (``newest_exemplars``) go on their samples."""
        self._shared_series.clear()  # the shards indexed for this merge are numbered
        sums = [0.0] * len(self.registry.keys)
        shared = {id(shard.series): shard.series for shard, _ in batches}  # each set once
        present = set().union(*shared.values(), *(shard.derived_series for shard, _ in batches))
        self.served = len(present)
        extremes: Dict[int, float] = {}
        recent: Dict[int, Tuple[float, float]] = {}
        for shard, values in batches:
            targets = shard.targets
            if shard.op == "sum":
                for sid, value in zip(targets, values):
                    sums[sid] += value
                for sid, position in shard.derived:
                    sums[sid] += values[position]
            elif shard.op == "recent":
                for i, sid in enumerate(targets):
                    value, stamp = values[2 * i], values[2 * i + 1]
                    if sid not in recent or stamp > recent[sid][1]:
                        recent[sid] = (value, stamp)
            else:
                better = max if shard.op == "max" else min
                for sid, value in zip(targets, values):
                    extremes[sid] = better(extremes[sid], value) if sid in extremes else value
        for sid, value in extremes.items():
            sums[sid] = value
        for sid, (value, _) in recent.items():
            sums[sid] = value
        return self._families(sums, present, exemplars or {})

    def _families(self, sums: List[float], present: set,
                  exemplars: Dict[int, Exemplar]) -> List[Metric]:
        reg = self.registry
        labels_of = reg.label_dicts
        out: Dict[str, Metric] = {}

        def family(name: str) -> Metric:
            metric = out.get(name)
            if metric is None:
                typ, help_text = reg.family_of[name]
                kind = HistogramFamily if typ == "histogram" else Metric
                metric = out[name] = kind(name, help_text, typ)
            return metric

        keys = reg.keys
        for sid in sorted(present - reg.histogram_ids):
            name, sample, _ = keys[sid]
            family(name).samples.append(Sample(sample, labels_of[sid], sums[sid], None,
                                               exemplars.get(sid)))
        for (name, base), group in reg.histograms.items():
            if not group["ordered"]:
                group["buckets"].sort()
                group["ordered"] = True
            buckets = [sid for _, _, sid in group["buckets"] if sid in present]
            if not buckets:
                continue
            metric = family(name)
            natives = [(bucket, sums[sid]) for bucket, sid in group["native"] if sid in present]
            if natives:
                merged = native.merge(natives)
                if merged is not None:
                    metric.native[base] = merged
            samples = metric.samples
            bucket_name = name + "_bucket"
            running = 0.0
            for sid in buckets:
                running += sums[sid]
                samples.append(Sample(bucket_name, labels_of[sid], running, None,
                                      exemplars.get(sid)))
            samples.append(Sample(name + "_count", group["labels"], running))
            if group["sum"] is not None:
                samples.append(Sample(name + "_sum", group["labels"], sums[group["sum"]]))
        _add_worker_states(out)
        return [out[name] for name in sorted(out)]


class HistogramFamily(Metric):
    """A histogram family and, per label set that has one, its merged native histogram
    (served by the protobuf exposition only; the text formats are unchanged)."""

    def __init__(self, name: str, documentation: str, typ: str) -> None:
        super().__init__(name, documentation, typ)
        self.native: Dict[Labels, native.NativeHistogram] = {}


@contextlib.contextmanager
def gc_paused():
    """A collection creates tens of thousands of short-lived, acyclic objects (samples,
    label dicts), which would trigger full cyclic-GC passes over the long-lived series
    registry: two thirds of the time at 19,000 samples. Reference counting frees them all;
    the cyclic collector waits until the collection is done."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _add_worker_states(out: Dict[str, Metric]) -> None:
    """``gunicorn_workers{state}``: live workers with and without a request in flight."""
    in_flight = out.get(families.IN_FLIGHT.name)
    if in_flight is None:
        return
    busy = sum(1 for s in in_flight.samples if s.value > 0)
    spec = families.WORKERS
    metric = Metric(spec.name, spec.help, "gauge")
    metric.add_sample(spec.name, {"state": "busy"}, busy)
    metric.add_sample(spec.name, {"state": "idle"}, len(in_flight.samples) - busy)
    out[spec.name] = metric


class ReadStats:
    """How the last reads of a storage went, as ``health_families`` reports them."""

    def __init__(self) -> None:
        self.last_duration = 0.0
        self.last_files = 0
        self.last_values = 0
        self.read_errors = 0
        self.last_success: Optional[float] = None
        self.source_up = 0
        #: the series tables were built by the start-up read (``DirectoryCollector.warm_up``)
        self.warmed_up = False
        #: times the tables of keys and series were dropped for holding far more than the
        #: storage needs (``outgrown``); the read after each is a cold one
        self.resets = 0

    @property
    def warm(self) -> bool:
        """The series tables hold the storage's keys (built at start or by a read), so a
        scrape only reads values."""
        return self.warmed_up or self.last_success is not None


#: seconds a scrape waits for the directory to be read (Prometheus's default scrape timeout)
READ_DEADLINE = 10.0


class DirectoryCollector(ReadStats):
    """Reads one multiprocess directory: a reader per file, merged by a ``Merger``.

    A read never holds a scrape longer than ``deadline`` seconds: past it the scrape gets
    the health families only (``source_up`` 0) and ``stuck`` is True until the read
    finishes (a readiness probe reports it).

    Nothing is ever removed from the key table or the merger's tables while they are in
    use, so a storage whose keys churn would grow them without bound: a read that finds
    them ``outgrown`` (against what the read before needed) starts afresh
    (``_start_afresh``) and numbers every file's keys again, as a collector started
    beside the files would. It serves exactly the same values; only the order of samples
    within a family, which is the order series were first seen, may differ."""

    def __init__(self, directory: str, deadline: Optional[float] = None,
                 compiled: Optional[ModuleType] = None) -> None:
        super().__init__()
        self.directory = directory
        self._compiled = compiled  # speedups.load(): the readers' key walk in C
        self.deadline = READ_DEADLINE if deadline is None else deadline
        self._files: Dict[str, Tuple[Shard, Reader]] = {}
        self._exemplar_readers: Dict[str, exemplar_files.ExemplarReader] = {}
        self._start_afresh()
        #: exemplars the last read found (``_outgrown``)
        self._exemplars = 0
        self._lock = threading.Lock()
        self._torn_reported: set = set()
        self._refused: set = set()  # names that hold no regular file
        self._refused_exemplars: set = set()
        self._torn_exemplars: set = set()
        self._bounded = BoundedCall(self._read_once, self.deadline, f"reading {directory}")

    def read(self) -> List[Metric]:
        """Collect the directory into families (thread-safe; one read at a time)."""
        started = time.perf_counter()
        try:
            families = self._bounded()
        except OSError:  # the directory is gone or unreadable, or the read is overdue
            families = []
            self.source_up = 0
        self.last_duration = time.perf_counter() - started
        return families

    @property
    def stuck(self) -> bool:
        """A read is running past the deadline."""
        return self._bounded.overdue

    def _read_once(self) -> List[Metric]:
        with self._lock, gc_paused():
            families = self._read()
            self.source_up = 1
            self.last_success = time.time()
            return families

    def warm_up(self) -> None:
        """Read the directory once and serve nothing of it: numbering every key of every
        file is most of a first read (several times a repeat read at 64 files x 1,000
        label sets), done here before Prometheus's first scrape arrives. It holds the read
        lock, so a scrape arriving meanwhile waits for it (within its deadline), then reads
        the values itself: what a scrape serves is always read by that scrape."""
        with self._lock, gc_paused():
            self._read()
            self.warmed_up = True

    def _start_afresh(self) -> None:
        """Drop every key and series numbered so far: the key table, the merger, and the
        readers and shards numbered by them. Readers made anew start new generations
        (``FileReader.generation``), so whoever keeps anything by generation (the Redis
        flusher's field names) takes their keys anew too."""
        for _, reader in self._files.values():
            reader.close()
        for exemplars in self._exemplar_readers.values():
            exemplars.close()
        self._files.clear()
        self._exemplar_readers.clear()
        #: the keys of every file, numbered once (shared by the readers: FileReader)
        self._key_table = (self._compiled.KeyTable() if self._compiled is not None
                           else KeyTable())
        #: the native files' virtual keys, numbered in the key table (native.VirtualKeys)
        self._virtual = native.VirtualKeys(self._key_table)
        self.merger = Merger(self._compiled)

    def _outgrown(self) -> bool:
        """The tables hold far more than the last read needed (``outgrown``): its values
        (one per entry, two with a timestamp) and exemplars (the key table numbers the
        exemplar files' keys too) stand for its keys, a length per file, where counting the
        entries of 64 files cost a scrape 0.3%."""
        return (outgrown(len(self._key_table), self.last_values + self._exemplars)
                or self.merger.outgrown(self.last_values + self._exemplars))

    def shards(self) -> List[Tuple[Shard, Reader, tuple]]:
        """Every readable file with its values (live-mode gauges of dead identities left
        out). Also what the Redis flusher ships."""
        if not os.path.isdir(self.directory):
            raise FileNotFoundError(self.directory)
        if self._outgrown():
            self.resets += 1
            self._start_afresh()
        live = storage_dir.live_identities(self.directory)
        out = []
        seen = set()
        values_read = 0
        for db, inode in storage_dir.db_files(self.directory):
            seen.add(db.path)
            entry = self._files.get(db.path)
            if entry is None:
                entry = self._files[db.path] = (Shard(db.typ, db.mode, db.identity),
                                                _reader(db, self._compiled, self._key_table,
                                                        self._virtual))
            shard, reader = entry
            if shard.live_only and not live.get(db.owner, False):
                continue
            try:
                values = reader.read(inode)
            except Unreadable:
                if db.path not in self._refused:  # counted once while it stays there
                    self._refused.add(db.path)
                    self.read_errors += 1
                continue
            if reader.torn and db.path not in self._torn_reported:  # (a file cut to
                self._torn_reported.add(db.path)  # nothing while mapped reads as None)
                self.read_errors += 1
            if values is None:
                continue
            if shard.generation != reader.generation:
                shard.renumber(reader.generation)
            out.append((shard, reader, values))
            values_read += len(values)
        for gone in set(self._files) - seen:
            self._files.pop(gone)[1].close()
        self._refused &= seen
        self._torn_reported &= seen
        self.last_values = values_read
        return out

    def _read(self) -> List[Metric]:
        batches = []
        for shard, reader, values in self.shards():  # (which counts ``last_values``)
            self.merger.index(shard, reader.keys, reader.key_ids)
            batches.append((shard, values))
        self.last_files = len(batches)
        found = list(self.exemplars())
        self._exemplars = len(found)
        return self.merger.merge(batches, self.merger.newest_exemplars(found))

    def exemplars(self) -> Iterable[exemplar_files.Exemplar]:
        """Every exemplar slot of every worker, live or gone (the newest wins anyway). Also
        what the Redis flusher ships."""
        seen = set()
        for path, _, inode in exemplar_files.files(self.directory):
            seen.add(path)
            reader = self._exemplar_readers.get(path)
            if reader is None:
                reader = self._exemplar_readers[path] = exemplar_files.ExemplarReader(
                    path, self._compiled, self._key_table)
            try:
                yield from reader.read(inode)
            except Unreadable:
                if path not in self._refused_exemplars:  # once while it stays there
                    self._refused_exemplars.add(path)
                    self.read_errors += 1
            if reader.torn and path not in self._torn_exemplars:  # once, as a value file
                self._torn_exemplars.add(path)
                self.read_errors += 1
        for gone in set(self._exemplar_readers) - seen:
            self._exemplar_readers.pop(gone).close()
        self._refused_exemplars &= seen
        self._torn_exemplars &= seen


def _reader(db: storage_dir.DbFile, compiled: Optional[ModuleType], table: KeyTable,
            virtual: native.VirtualKeys) -> Reader:
    """A native histogram file's reader gives virtual entries, one per bucket in use."""
    if db.mode == storage_dir.NATIVE_MODE:
        return native.NativeReader(db.path, compiled, virtual)
    return FileReader(db.path, with_timestamps=_OPS.get(db.mode) == "recent",
                      native=compiled, table=table)


def _distribution_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


def health_families(collector: ReadStats, source: str) -> Iterable[Metric]:
    """The exporter's own metrics, from the state of a collector (directory or Redis)."""
    import gunicorn

    def gauge(spec: families.Family, value: float, labels: Optional[dict] = None) -> Metric:
        metric = Metric(spec.name, spec.help, spec.typ)
        metric.add_sample(spec.sample, labels or {}, value)
        return metric

    yield gauge(families.BUILD_INFO, 1, {
        "version": __version__, "gunicorn": gunicorn.__version__,
        "prometheus_client": _distribution_version("prometheus_client"),
        "python": platform.python_version()})
    yield gauge(families.SCRAPE_DURATION, collector.last_duration)
    yield gauge(families.FILES_READ, collector.last_files)
    yield gauge(families.SAMPLES_READ, collector.last_values)
    yield gauge(families.READ_ERRORS, collector.read_errors)
    yield gauge(families.SOURCE_UP, collector.source_up, {"source": source})
    yield gauge(families.WARM, int(collector.warm))
    yield gauge(families.TABLE_RESETS, collector.resets)
    if collector.last_success is not None:
        yield gauge(families.LAST_READ, collector.last_success)

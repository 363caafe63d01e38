"""Hostile multiprocess files, read by the compiled and by the Python reader: they must agree.

A case starts from files the plugin itself wrote (a worker's counters, classic and native
histograms, a summary and gauges of several modes, one with timestamps), damages one of them (bytes
flipped; a key length, the header's used count or a key's bytes set to what breaks a
reader; the file truncated, grown with garbage, entries cut out or repeated; or the file
written anew with keys that are not prometheus_client's), and reads it twice: a file reader
with the C walk against one with the Python walk (keys, offsets, torn flag and values), and
the whole directory, next to a good file, with the compiled collector against the Python
one (every family and sample bit for bit, the read-error count, and the text, OpenMetrics
and protobuf answers rendered from them). Half the cases damage the file again and read once more (the
incremental walk). A read may not raise, the two may not differ, and the good file's value
must come out unchanged.

Runs in the test suite as a bounded number of cases (tests/test_hostile_files.py); for a
long run under AddressSanitizer and UBSan see docs/reliability.md ("The compiled reader
under hostile files"): ``python -m fuzz.storage_files --cases 20000`` from ``tests/``."""
from __future__ import annotations

import argparse
import os
import random
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Callable, Dict, List, Optional, Tuple

from gunicorn_prometheus_exporter.collector import DirectoryCollector
from gunicorn_prometheus_exporter.recorder import Recorder
from gunicorn_prometheus_exporter.server import protobuf
from gunicorn_prometheus_exporter.server.http import Exposition
from gunicorn_prometheus_exporter.storage.mmap_file import MmapFile, sample_key
from gunicorn_prometheus_exporter.storage.native import Layout
from gunicorn_prometheus_exporter.storage.reader import FileReader
from gunicorn_prometheus_exporter.storage.store import ProcessStore

#: the good file's family and value: served unchanged whatever the damaged file holds
GOOD_FAMILY, GOOD_VALUE = "fuzz_good", 12345.5
#: values a damaged int32 field (a key length, the used count) takes
EXTREMES = (0, 1, 2, 3, 4, 7, 8, -1, -8, 2 ** 31 - 1, 2 ** 31 - 8, -2 ** 31, 2 ** 16)
#: bytes that break JSON, UTF-8 or the padding when set in a key
KEY_BYTES = b'"\\{}[],: \x00\x01\x7f\x80\xc3\xff0aZ'
#: keys of well-formed entries that are not prometheus_client's
ODD_KEYS = ['[1, "s", {}, "h"]', '[["f"], "f", {}, "h"]', '["f", 1, {}, "h"]',
            '["f", "f", {}, 1]', '["f", "f", {}, null]', '["f", "f", [], "h"]',
            '["f", "f", {"a": 1}, "h"]', '["f", "f", {"a": null}, "h"]',
            '["f", "f", {"a": "1", "a": "2"}, "h"]', '["f", "f", {"a": {"b": "c"}}, "h"]',
            '["f", "f", {}, "h", "extra"]', '["f", "f", {}]', '{"f": "g"}', '"f"', "1",
            "null", "", " ", "[", "not json", '["f\\u00e9", "f", {}, "h"]',
            '["f", "f", {"\\n": "\\""}, "h"]', '["h", "h_bucket", {"le": "x"}, "H"]',
            '["h", "h_bucket", {}, "H"]', '["h", "h_sum", {"le": "1"}, "H"]',
            '["h", "h_native", {"__native__": "a/b"}, "H"]', '["s", "s", {"quantile": "x"}, "S"]',
            '["s", "s", {"quantile": "0.5"}, "S"]', '["f", "f", {}, "h"]   ',
            '  ["f", "f", {}, "h"]', '["é", "é", {"é": "é"}, "é"]', '["f", "f", {}, "h"]x']

#: what Prometheus asks for when it prefers OpenMetrics
OPENMETRICS = "application/openmetrics-text; version=1.0.0"
Files = Dict[str, bytes]
Mutation = Callable[[random.Random, Files, str], None]


def base_files(directory: Path) -> Files:
    """What a worker of the plugin writes (and a prometheus_client gauge with timestamps,
    and a summary), each file cut to its used bytes and a little of the zeroes after them."""
    directory.mkdir()
    store = ProcessStore(str(directory), "w0")
    rec = Recorder(store, [0.005, 0.1, 1.0], [100.0, 1000.0], threaded=False, native=None,
                   native_layout=Layout.for_range(3, 1e-3, 10.0))
    for r in range(6):
        rec.add(rec.series("GET", f"/r{r}", "200"), 0.01 * (r + 1), r, 10 * r)
    for mode in ("max", "mostrecent", "livesum"):
        gauges = store.file("gauge", mode)
        for queue in ("a", "b", "é"):
            at = gauges.index(sample_key(f"app_{mode}", f"app_{mode}", {"queue": queue},
                                         "Depth."))
            gauges.values[at] = len(queue) + 0.5
            gauges.set_timestamp(at, 1000.0)
    summaries = store.file("summary")
    for sample, value in (("app_s_count", 3.0), ("app_s_sum", 0.75)):
        summaries.values[summaries.index(sample_key("app_s", sample, {"q": "a"}, "S."))] = value
    store.close()
    files = {}
    for path in sorted(directory.iterdir()):
        if path.suffix in (".db", ".nh"):
            data = path.read_bytes()
            used = _used(data)
            files[path.name] = data[:used + 64]
    return files


def _used(data: bytes) -> int:
    """The header's used count (0 for a file too short to hold one)."""
    return struct.unpack_from("<i", data)[0] if len(data) >= 4 else 0


def _entries(data: bytes) -> List[Tuple[int, int]]:
    """(start, end) of each well-formed entry (16 bytes of payload)."""
    out, pos = [], 8
    used = min(_used(data), len(data))
    while pos + 4 <= used:
        length = struct.unpack_from("<i", data, pos)[0]
        end = pos + 4 + length + (8 - (length + 4) % 8) + 16
        if length <= 0 or end > used:
            break
        out.append((pos, end))
        pos = end
    return out


def _set_used(data: bytearray, used: int) -> None:
    if len(data) < 4:
        data.extend(bytes(4 - len(data)))
    struct.pack_into("<i", data, 0, max(-2 ** 31, min(used, 2 ** 31 - 1)))


def flip_bytes(rng: random.Random, files: Files, name: str) -> None:
    data = bytearray(files[name])
    for _ in range(rng.randint(1, 8) if data else 0):
        data[rng.randrange(len(data))] = rng.randrange(256)
    files[name] = bytes(data)


def extreme_length(rng: random.Random, files: Files, name: str) -> None:
    data = bytearray(files[name])
    entries = _entries(files[name])
    if entries:
        start, _ = rng.choice(entries)
        struct.pack_into("<i", data, start, rng.choice(EXTREMES + (len(data), start)))
    files[name] = bytes(data)


def extreme_used(rng: random.Random, files: Files, name: str) -> None:
    data = bytearray(files[name])
    used = _used(data)
    ends = [end for _, end in _entries(files[name])] or [8]
    _set_used(data, rng.choice(EXTREMES + (len(data), len(data) + rng.randint(1, 9),
                                           used - rng.randint(1, 9), rng.choice(ends),
                                           rng.choice(ends) + rng.randint(1, 20))))
    files[name] = bytes(data)


def truncate(rng: random.Random, files: Files, name: str) -> None:
    data = files[name]
    ends = [end for _, end in _entries(data)] or [8]
    cut = rng.choice([rng.randrange(len(data) + 1), rng.choice(ends),
                      rng.choice(ends) + rng.randint(1, 19), rng.randint(0, 12)])
    files[name] = data[:cut]


def garbage_tail(rng: random.Random, files: Files, name: str) -> None:
    data = bytearray(files[name])
    used = min(max(_used(data), 0), len(data))
    tail = bytes(rng.randrange(256) for _ in range(rng.randint(1, 200)))
    data[used:used + len(tail)] = tail
    if rng.random() < 0.7:
        _set_used(data, used + rng.randint(1, len(tail)))
    files[name] = bytes(data)


def splice(rng: random.Random, files: Files, name: str) -> None:
    """An entry cut out, or one repeated (a key stored twice), the used count following."""
    data = files[name]
    entries = _entries(data)
    if not entries:
        return
    start, end = rng.choice(entries)
    used = min(_used(data), len(data))
    if rng.random() < 0.5:
        out = bytearray(data[:start] + data[end:])
        _set_used(out, used - (end - start))
    else:
        out = bytearray(data[:used] + data[start:end] + data[used:])
        _set_used(out, used + (end - start))
    files[name] = bytes(out)


def key_bytes(rng: random.Random, files: Files, name: str) -> None:
    """A key's bytes damaged where its length still holds: JSON, UTF-8 and shape breakers."""
    data = bytearray(files[name])
    entries = _entries(files[name])
    if entries:
        start, _ = rng.choice(entries)
        length = struct.unpack_from("<i", data, start)[0]
        for _ in range(rng.randint(1, 3)):
            data[start + 4 + rng.randrange(length)] = rng.choice(KEY_BYTES)
    files[name] = bytes(data)


def odd_keys(rng: random.Random, files: Files, name: str) -> None:
    """The file written anew by a writer of the format, with keys that are not
    prometheus_client's among its own."""
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, name)
        f = MmapFile(path)
        keys = [rng.choice(ODD_KEYS) for _ in range(rng.randint(1, 4))]
        keys.append(sample_key("app_odd", "app_odd_total", {"n": str(rng.randrange(9))}, "O."))
        for key in keys:
            f.values[f.index(key)] = rng.choice([1.0, -2.5, float("nan"), float("inf"), 0.0])
        used = f._used
        f.close()
        files[name] = Path(path).read_bytes()[:used + 8]


MUTATIONS: List[Mutation] = [flip_bytes, extreme_length, extreme_used, truncate,
                             garbage_tail, splice, key_bytes, odd_keys]


def _bits(value: float) -> bytes:
    return struct.pack("<d", value)


def _reader_state(reader: FileReader) -> tuple:
    """What a reader read. Its key numbers are left out: they are its table's, and the
    Python walk numbers the key of an entry whose payload is cut off before it finds the
    entry torn (the C walk checks the payload first), so after such an entry the two
    tables number alike keys differently, each consistently; the keys are compared. Read
    as the collector reads: the file under the name now (its inode), which the Python path
    reads (by ``os.pread``) in any case."""
    values = reader.read(os.stat(reader.path).st_ino)
    return (list(reader.keys), list(reader.offsets), reader.sizes, reader._parsed_to,
            reader.torn, None if values is None else [_bits(v) for v in values])


def _served(families) -> list:
    return [(m.name, m.type, m.documentation,
             sorted((s.name, sorted(s.labels.items()), _bits(s.value)) for s in m.samples))
            for m in families]


def _scrape(collector: DirectoryCollector) -> tuple:
    """What a scrape of the directory serves: its families, read errors and state, and
    the text and protobuf answers rendered from them. Read in this thread (``read`` runs
    it in a helper thread of the collector's, kept for its life: one per case)."""
    families = collector._read_once()
    exposition = Exposition(lambda: families, "fuzz")
    return (_served(families), collector.read_errors, collector.source_up,
            exposition.metrics(None)[0], exposition.metrics(OPENMETRICS)[0],
            exposition.metrics(protobuf.CONTENT_TYPE)[0])


def _outcome(call: Callable[[], object]) -> tuple:
    try:
        return ("ok", call())
    except Exception as exc:  # noqa: BLE001 - an exception is an outcome to compare
        return ("raised", type(exc).__name__, str(exc)[:200])


class Case:
    """One damaged file in a directory of its own, beside a good file."""

    def __init__(self, directory: Path, native: ModuleType, files: Files, name: str) -> None:
        self.directory = directory
        self.native = native
        self.name = name
        directory.mkdir()
        (directory / name).write_bytes(files[name])
        good = MmapFile(str(directory / "counter_w9.db"))
        good.values[good.index(sample_key(GOOD_FAMILY, GOOD_FAMILY + "_total", {}, "G."))] = \
            GOOD_VALUE
        good.close()
        path = str(directory / name)
        timestamps = "_mostrecent_" in name
        # a native histogram file is read by a NativeReader (C-guarded or Python), so only
        # through its collectors
        self.readers = () if name.endswith(".nh") else (
            FileReader(path, timestamps, native=self.native), FileReader(path, timestamps))
        self.collectors = (DirectoryCollector(str(directory), compiled=self.native),
                           DirectoryCollector(str(directory)))

    def check(self) -> List[str]:
        """What differs between the two readers, or went wrong in either."""
        problems = []
        readers = [_outcome(lambda r=r: _reader_state(r)) for r in self.readers]
        if readers and readers[0] != readers[1]:
            problems.append(f"file reader: C {readers[0]!r:.600} != Python {readers[1]!r:.600}")
        read = [_outcome(lambda c=c: _scrape(c)) for c in self.collectors]
        for which, outcome in zip(("C", "Python"), read):
            if outcome[0] != "ok":
                problems.append(f"{which} collector raised {outcome[1:]}")
                continue
            good = [s for m in outcome[1][0] if m[0] == GOOD_FAMILY for s in m[3]]
            if [s[2] for s in good] != [_bits(GOOD_VALUE)]:
                problems.append(f"{which} collector: the good file served {good!r}")
        if read[0] != read[1]:
            problems.append(f"collectors: C {read[0]!r:.600} != Python {read[1]!r:.600}")
        return problems

    def close(self) -> None:
        for reader in self.readers:
            reader.close()


def run(native: ModuleType, cases: int, seed: int, work: Path,
        log: Optional[Callable[[str], None]] = None) -> List[str]:
    """``cases`` cases from ``seed``; each problem found as one line naming its case."""
    rng = random.Random(seed)
    base = base_files(work / "base")
    problems: List[str] = []
    for n in range(cases):
        name = rng.choice(sorted(base))
        files = dict(base)
        mutations = [rng.choice(MUTATIONS) for _ in range(rng.choice((1, 1, 1, 2, 3)))]
        for mutation in mutations:
            mutation(rng, files, name)
        case = Case(work / f"case{n}", native, files, name)
        label = f"case {n} (seed {seed}, {name}, {'+'.join(m.__name__ for m in mutations)})"
        try:
            found = case.check()
            if not found and rng.random() < 0.5:  # more damage, read again: the increments
                again = rng.choice(MUTATIONS)
                again(rng, files, name)
                _store(case.directory / name, files[name])
                label += f" then {again.__name__}"
                found = case.check()
        finally:
            case.close()
        problems.extend(f"{label}: {p}" for p in found)
        if not found:
            shutil.rmtree(case.directory)
        if log is not None and (n + 1) % 1000 == 0:
            log(f"{n + 1} cases, {len(problems)} problems")
    return problems


def _store(path: Path, data: bytes) -> None:
    """``data`` over the file: in place when it is no shorter (a writer's appends, or its
    bytes changed under a reader's map), else as a new file. A file shortened in place
    under a reader's map faults (SIGBUS) where the map outlives it: known, and not the
    readers' to compare (docs/reliability.md)."""
    if path.exists() and len(data) >= path.stat().st_size:
        with open(path, "r+b") as f:
            f.write(data)
        return
    if path.exists():
        os.unlink(path)
    path.write_bytes(data)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    from gunicorn_prometheus_exporter import speedups

    native = speedups.load({})
    if native is None:
        print("the C speedups are not built (or stale): nothing to compare", file=sys.stderr)
        return 2
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as work:
        problems = run(native, args.cases, args.seed, Path(work),
                       log=lambda line: print(line, file=sys.stderr))
    for line in problems:
        print(line)
    print(f"{args.cases} cases (seed {args.seed}) in {time.monotonic() - started:.1f} s: "
          f"{len(problems)} problems", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

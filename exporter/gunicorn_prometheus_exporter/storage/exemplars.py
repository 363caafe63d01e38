"""Exemplars of one writer: a fixed-size slot per sample (each bucket of a duration series,
each request counter), holding the most recent traced request that landed there.

The file is ``exemplars/<identity>.db`` below the directory (a folder of its own, so that
prometheus_client's ``MultiProcessCollector``, should a user point it at the directory,
never reads these slots as values), in the same key-table format (``MmapFile``) with a 40-byte slot as the payload::

    [double timestamp][double value][16 bytes trace id, 8 bytes span id]

so its size is bounded by the series of the worker, whatever the traffic. The writer
writes the slot with a zero timestamp first (struct packs in field order), then the
timestamp; a reader takes a slot only when the
timestamp it read before and after copying the slot is the same and not zero, so it
never pairs one request's trace with another's value."""
from __future__ import annotations

import array
import mmap
import os
import struct
from types import ModuleType
from typing import Iterable, Iterator, List, Optional, Tuple

from .mmap_file import MmapFile
from .reader import FileReader, KeyTable

SLOT = struct.Struct("<dd24s")
_STAMP = struct.Struct("<d")
#: a slot as ``_speedups.stamped`` copies it: the slot, then its timestamp read again
_STAMPED = struct.Struct("<dd24sd")
FOLDER = "exemplars"
#: a timestamp past this (the end of year 9999, where protobuf's Timestamp ends), or not a
#: number, is no request's: a damaged or foreign slot, which would also stay the newest
#: for good and cannot be encoded (an infinite one failed every protobuf scrape)
_LAST = 253402300800.0

#: one read exemplar: (sample key, timestamp, value, trace id hex, span id hex)
Exemplar = Tuple[str, float, float, str, str]


def path_of(directory: str, identity: str) -> str:
    return os.path.join(directory, FOLDER, identity + ".db")


def files(directory: str) -> Iterator[Tuple[str, str, int]]:
    """(path, identity, inode) of every exemplar file of a directory."""
    try:
        entries = os.scandir(os.path.join(directory, FOLDER))
    except FileNotFoundError:
        return
    with entries:
        for entry in entries:
            if entry.name.endswith(".db"):
                yield entry.path, entry.name[:-3], entry.inode()


class ExemplarFile:
    """The writing side: ``slot(key)`` once per sample, then ``put`` per traced request."""

    def __init__(self, path: str) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self._file = MmapFile(path, payload=SLOT.size)

    def slot(self, key: str) -> int:
        """Byte offset of the slot of the sample ``key`` (appended when new)."""
        return self._file.index(key) * 8

    def put(self, offset: int, value: float, timestamp: float, ids: bytes, now: float) -> None:
        """Replace the slot's exemplar (``ids``: the raw trace id and span id, 24 bytes)
        unless it holds a newer one, one of a request that ended later. One that ended
        after ``now`` (the wall clock) dates from before the clock was set back: replaced,
        or it would stay the newest until the clock caught up. The only writer of the file
        is the caller, under its lock: the slot's timestamp read here is whole."""
        m = self._file.buffer  # the newest map: every slot lies within it
        if timestamp < _STAMP.unpack_from(m, offset)[0] <= now:
            return
        SLOT.pack_into(m, offset, 0.0, value, ids)
        _STAMP.pack_into(m, offset, timestamp)


class ExemplarReader:
    """The reading side: every complete slot of one file. With the C speedups (``native``,
    what ``speedups.load()`` gave) the map is read only in C under the SIGBUS guard (the
    header, the key walk, the stamps and the slots), so a file truncated while mapped reads
    as torn (``FileReader.read_with``) instead of killing the process. ``table``: the key
    table of the collector (``FileReader``): a slot's key is a value file's key, decoded
    once for every file that holds it (a table of its own otherwise)."""

    def __init__(self, path: str, native: Optional[ModuleType] = None,
                 table: Optional[KeyTable] = None) -> None:
        self._reader = FileReader(path, payload=SLOT.size, native=native, table=table)
        self._stamped = native.stamped if native is not None else None

    @property
    def torn(self) -> bool:
        """The file's entries stopped at a damaged one, or it was shortened while mapped."""
        return self._reader.torn

    def read(self, inode: Optional[int] = None) -> Iterator[Exemplar]:
        yield from self._reader.read_with(self._complete, inode) or ()

    def _complete(self, m: mmap.mmap) -> List[Exemplar]:
        """The slots of ``m`` holding a request's exemplar, each read whole."""
        reader = self._reader
        taken = [(key, offset) for key, offset, stamp
                 in zip(reader.keys, reader.offsets, reader.values_in(m)) if stamp > 0.0]
        out = []
        for (key, _), (timestamp, value, ids, again) in zip(taken, self._slots(m, taken)):
            if again != timestamp or not 0.0 < timestamp < _LAST:
                continue  # being rewritten (the next scrape has it), or no request's
            out.append((key, timestamp, value, ids[:16].hex(), ids[16:].hex()))
        return out

    def _slots(self, m: mmap.mmap, taken: List[Tuple[str, int]]) -> Iterable[tuple]:
        """(timestamp, value, ids, timestamp read again after the rest) of each slot."""
        if self._stamped is not None:
            offsets = array.array("q", [offset for _, offset in taken])
            return _STAMPED.iter_unpack(self._stamped(m, offsets, SLOT.size))
        return [SLOT.unpack_from(m, offset) + _STAMP.unpack_from(m, offset)
                for _, offset in taken]

    def close(self) -> None:
        self._reader.close()

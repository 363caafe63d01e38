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

import os
import struct
from typing import Iterator, Optional, Tuple

from .mmap_file import MmapFile
from .reader import FileReader

SLOT = struct.Struct("<dd24s")
_STAMP = struct.Struct("<d")
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
    """The reading side: every complete slot of one file."""

    def __init__(self, path: str) -> None:
        self._reader = FileReader(path, payload=SLOT.size)

    def read(self, inode: Optional[int] = None) -> Iterator[Exemplar]:
        stamps = self._reader.read(inode)  # the first double of each slot: its timestamp
        if stamps is None:
            return
        m = self._reader.map
        for key, offset, stamp in zip(self._reader.keys, self._reader.offsets, stamps):
            if stamp <= 0.0:
                continue
            timestamp, value, ids = SLOT.unpack_from(m, offset)
            if _STAMP.unpack_from(m, offset)[0] != timestamp or not 0.0 < timestamp < _LAST:
                continue  # being rewritten (the next scrape has it), or no request's
            yield key, timestamp, value, ids[:16].hex(), ids[16:].hex()

    def close(self) -> None:
        self._reader.close()

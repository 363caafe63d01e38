"""One writer's file in prometheus_client's multiprocess format, written through a view of
doubles so that recording a value is a single indexed store.

Layout (the format of ``prometheus_client.mmap_dict``): a 4-byte little-endian count of used
bytes, 4 bytes of padding, then entries ``[int32 key length][key, space-padded][double
value][double timestamp]``. Keeping the format lets prometheus_client's own tools read our
files, and lets users' own multiprocess metrics live in the same directory."""
from __future__ import annotations

import json
import mmap
import os
import struct
import threading
from typing import Callable, Dict, List, Mapping, Union

_INITIAL_SIZE = 1 << 16
_HEADER = 8
_USED = struct.Struct("<i")


def sample_key(family: str, sample: str, labels: Mapping[str, str], help_text: str) -> str:
    """The entry key prometheus_client uses for one sample."""
    return json.dumps([family, sample, dict(labels), help_text], sort_keys=True)


#: bytes after each key: the same for every entry of a file (16: a value and a timestamp),
#: or a function of the key for files whose entries differ (native histograms, whose key
#: names its bucket layout); a multiple of 8, so that the next entry stays aligned
Payload = Union[int, Callable[[str], int]]


def payload_of(payload: Payload, key: str) -> int:
    """Bytes after ``key`` (ValueError or TypeError from a function that finds no entry)."""
    return payload if isinstance(payload, int) else payload(key)


def padded_length(encoded_length: int) -> int:
    """Key bytes plus the 1 to 8 spaces that align the value that follows."""
    return encoded_length + (8 - (encoded_length + 4) % 8)


class MmapFile:
    """Append-only key table of one process. ``i = index(key)`` then ``values[i] += x``
    records (in that order: ``index`` may grow the file and replace ``values``).

    Appending is serialised; recording is not: each value has one writer thread (or the
    caller holds its own lock). Growing maps the file again and keeps the old maps open: a
    thread still holding the previous view writes to the same file pages, so nothing is
    lost and no lock is needed around growth. At most log2(size) maps are ever kept."""

    def __init__(self, path: str, payload: Payload = 16) -> None:
        self.path = path
        #: bytes after each key: a value and a timestamp (16), or a larger record of one's
        #: own (exemplars), a multiple of 8 so that the next entry stays aligned
        self.payload = payload
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        self._fd = fd
        size = os.fstat(fd).st_size
        if size < _HEADER or size % 8:
            size = _INITIAL_SIZE
            os.ftruncate(fd, size)
        self._maps: List[mmap.mmap] = []
        self._map(size)
        self._positions: Dict[str, int] = {}
        self._append_lock = threading.Lock()
        used = _USED.unpack_from(self._m, 0)[0]
        if used < _HEADER:
            used = _HEADER
            _USED.pack_into(self._m, 0, used)
        self._used = self._load(used)

    def _map(self, size: int) -> None:
        self._capacity = size
        self._m = mmap.mmap(self._fd, size)
        self._maps.append(self._m)
        self.values = memoryview(self._m).cast("d")

    def _load(self, used: int) -> int:
        """Index the entries already in the file (a slot reopened by the next worker)."""
        pos = _HEADER
        m = self._m
        while pos + 4 <= used:
            length = _USED.unpack_from(m, pos)[0]
            if length <= 0 or pos + 4 + length > used:
                break  # a torn tail: the entries before it are intact
            key = bytes(m[pos + 4:pos + 4 + length]).decode("utf-8", "replace")
            try:
                end = pos + 4 + padded_length(length) + payload_of(self.payload, key)
            except (ValueError, TypeError, IndexError):
                break
            if end > used:
                break
            self._positions[key] = (pos + 4 + padded_length(length)) // 8
            pos = end
        return pos

    def index(self, key: str) -> int:
        """Index in ``values`` of the entry for ``key``, appending it when new."""
        found = self._positions.get(key)
        if found is not None:
            return found
        with self._append_lock:  # a request thread and the sampler may both add keys
            found = self._positions.get(key)
            return found if found is not None else self._append(key)

    def _append(self, key: str) -> int:
        encoded = key.encode("utf-8")
        pad = padded_length(len(encoded))
        payload = payload_of(self.payload, key)
        size = 4 + pad + payload
        while self._used + size > self._capacity:
            new_size = self._capacity * 2
            os.ftruncate(self._fd, new_size)
            self._map(new_size)
        pos = self._used
        # zeroes the whole payload: the space may hold an unpublished entry of a writer
        # that died
        struct.pack_into(f"<i{pad}s{payload}x", self._m, pos, len(encoded),
                         encoded.ljust(pad, b" "))
        self._used = pos + size
        _USED.pack_into(self._m, 0, self._used)  # publish only a complete entry
        index = (pos + 4 + pad) // 8
        self._positions[key] = index
        return index

    @property
    def buffer(self) -> mmap.mmap:
        """The newest map of the file, which holds every entry appended so far."""
        return self._m

    def set_timestamp(self, index: int, timestamp: float) -> None:
        """For ``mostrecent`` gauges: the timestamp double follows the value."""
        self.values[index + 1] = timestamp

    def close(self) -> None:
        for view_owner in self._maps:
            try:
                view_owner.close()
            except BufferError:
                pass  # a view is still referenced; the map goes with the process
        os.close(self._fd)

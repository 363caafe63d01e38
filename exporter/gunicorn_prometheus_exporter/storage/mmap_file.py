"""One writer's file in prometheus_client's multiprocess format, written through a view of
doubles so that recording a value is a single indexed store.

Layout (the format of ``prometheus_client.mmap_dict``): a 4-byte little-endian count of used
bytes, 4 bytes of padding, then entries ``[int32 key length][key, space-padded][double
value][double timestamp]``. Keeping the format lets prometheus_client's own tools read our
files, and lets users' own multiprocess metrics live in the same directory.

A mapped page is never touched before its blocks are allocated: the file grows with
``posix_fallocate``, which reports a full disk (or quota, or a read-only file system) as an
error, where extending a mapping over a hole would kill the process with SIGBUS on the first
store. When the file cannot grow, ``index`` raises ``StorageFull`` for new keys, the entries
already stored keep recording, and growth is tried again after ``RETRY_INTERVAL``."""
from __future__ import annotations

import errno
import json
import mmap
import os
import struct
import threading
import time
from typing import Callable, Dict, List, Mapping, Union

_INITIAL_SIZE = 1 << 16
_HEADER = 8
_USED = struct.Struct("<i")
#: seconds between attempts to grow a file that could not grow: a request for a new series
#: meanwhile costs no system call
RETRY_INTERVAL = 1.0
#: what a file system answers when it cannot give a file more blocks
_CANNOT_GROW = frozenset((errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG))


class StorageFull(OSError):
    """The storage cannot take what is to be stored (no space, quota, read-only)."""


def cannot_store(exc: OSError, path: str) -> OSError:
    """``exc`` as StorageFull when it says the storage cannot take more, else itself."""
    if exc.errno in _CANNOT_GROW:
        return StorageFull(exc.errno, exc.strerror, path)
    return exc


def allocate(fd: int, size: int, path: str) -> None:
    """Give the file ``size`` bytes of real blocks (never shrinks it)."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        raise cannot_store(exc, path) from None


def sink() -> memoryview:
    """Doubles for stores that have nowhere to go: written, never read."""
    return memoryview(bytearray(16)).cast("d")


def open_writable(path: str) -> int:
    """Open (creating) a storage file; a file system that cannot take it is StorageFull."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError as exc:
        raise cannot_store(exc, path) from None


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
    lost and no lock is needed around growth. At most log2(size) maps are ever kept.

    A file that could not get its first blocks is not mapped at all (``values`` is a sink
    and ``index`` raises ``StorageFull``) until a later attempt succeeds."""

    def __init__(self, path: str, payload: Payload = 16) -> None:
        self.path = path
        #: bytes after each key: a value and a timestamp (16), or a larger record of one's
        #: own (exemplars), a multiple of 8 so that the next entry stays aligned
        self.payload = payload
        self._fd = -1
        self._first_size = _INITIAL_SIZE
        self._maps: List[mmap.mmap] = []
        self._capacity = 0
        self._used = _HEADER
        self._positions: Dict[str, int] = {}
        self._append_lock = threading.Lock()
        self._retry_at = 0.0
        self.values = sink()
        try:
            self._grow(0)
        except StorageFull:
            pass  # index() says so to the caller, and tries again later

    def _grow(self, size: int) -> None:
        """Allocate, then map ``size`` bytes (0: the file's first size); the first map
        also indexes what is already stored."""
        now = time.monotonic()
        if now < self._retry_at:
            raise StorageFull(errno.ENOSPC, "storage could not grow recently", self.path)
        try:
            if self._fd < 0:
                self._fd = open_writable(self.path)
                found = os.fstat(self._fd).st_size
                if found >= _HEADER and found % 8 == 0:
                    self._first_size = found  # a slot's file reopened by the next worker
            size = size or self._first_size
            allocate(self._fd, size, self.path)
        except StorageFull:
            self._retry_at = now + RETRY_INTERVAL
            raise
        first = not self._maps
        self._capacity = size
        self._m = mmap.mmap(self._fd, size)
        self._maps.append(self._m)
        self.values = memoryview(self._m).cast("d")
        if first:
            used = _USED.unpack_from(self._m, 0)[0]
            if used < _HEADER:
                used = _HEADER
                _USED.pack_into(self._m, 0, used)
            self._used = self._load(used)

    def _load(self, used: int) -> int:
        """Index the entries already in the file (a slot reopened by the next worker)."""
        pos = _HEADER
        m = self._m
        used = min(used, len(m))
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
        """Index in ``values`` of the entry for ``key``, appending it when new; raises
        ``StorageFull`` when a new entry cannot be stored."""
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
        while self._used + size > self._capacity:  # (the first map may load entries)
            self._grow(self._capacity * 2)
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
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

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
already stored keep recording, and growth is tried again after ``RETRY_INTERVAL``.

A file shortened by someone else (``truncate``) while mapped makes a store to a page past
its new end raise SIGBUS. With the C speedups every map is watched (``_speedups.watch``):
such a store goes to a sink instead (private memory mapped over the map from that page on).
``cut_files``, called by the worker's sampler, finds files shorter than their maps: it maps
the sink over their cut part itself (which is all the Python path has: a store there
before it runs still kills the process), and such a file takes no new key (``StorageCut``)."""
from __future__ import annotations

import errno
import json
import mmap
import os
import struct
import sys
import threading
import time
import weakref
from typing import Callable, Dict, List, Mapping, Optional, Union

from .. import speedups

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


class StorageCut(StorageFull):
    """A file of ours was shortened by someone else while mapped: what lay past the cut is
    gone, its stores there go to a sink, and it takes no new key for good."""


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


#: every MmapFile of this process not closed (``cut_files``)
_open_files: "weakref.WeakSet[MmapFile]" = weakref.WeakSet()


def cut_files() -> List["StorageCut"]:
    """The files of this process found shortened since the last call (their ``cut``), each
    now with a sink over its cut part. A stat per file: for the sampler, off the request
    path."""
    found = (f.found_cut() for f in list(_open_files))
    return [fault for fault in found if fault is not None]


def _sink_over(m: mmap.mmap, end: int) -> None:
    """Private anonymous memory mapped over ``m`` from its first page wholly past byte
    ``end`` (the file's end: the page holding it stays the file's, and faults not) on, at
    the same addresses (so every view of it stays valid): stores there go nowhere, and
    raise no SIGBUS. Through ctypes (PyDLL: the GIL held, so no Python store runs
    meanwhile); Linux only, and a Python without ctypes does nothing (nor where the call
    fails: then only the compiled sink, ``watch``, is left)."""
    start = -(-end // mmap.PAGESIZE) * mmap.PAGESIZE
    if not sys.platform.startswith("linux") or start >= len(m):
        return
    try:
        import ctypes
    except ImportError:
        return
    libc = ctypes.PyDLL(None, use_errno=True)
    remap = libc.mmap
    remap.restype = ctypes.c_void_p
    remap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long)
    anchor = ctypes.c_char.from_buffer(m)
    base = ctypes.addressof(anchor)
    del anchor  # (an export of the map: it could not be closed while this lives)
    fixed = 0x10  # MAP_FIXED (Linux)
    remap(base + start, len(m) - start, mmap.PROT_READ | mmap.PROT_WRITE,
          mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | fixed, -1, 0)


def watch(m: mmap.mmap) -> None:
    """With the C speedups, a store to ``m`` past the end of its file, once the file is cut
    short, goes to a sink instead of raising SIGBUS (``_speedups.watch``)."""
    native = speedups.load()
    if native is not None:
        native.watch(m)


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
        #: the fault when the file was found shortened by someone else (``found_cut``)
        self.cut: Optional[StorageCut] = None
        self.values = sink()
        _open_files.add(self)
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
        if self.found_cut() is not None:  # allocating would fill the cut with zeros, and
            raise self.cut  # hide it from the sampler's check (a stat per growth: rare)
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
        watch(self._m)
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
        if self.cut is not None:
            raise self.cut
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

    def found_cut(self) -> Optional[StorageCut]:
        """``cut`` when the file is found shortened now (None after: it is found once):
        its maps then have a sink over what lies past its new end, and it takes no new
        key."""
        if self.cut is not None or self._fd < 0 or not self._maps:
            return None
        try:
            size = os.fstat(self._fd).st_size
        except OSError:  # closed meanwhile by another thread
            return None
        if size >= self._capacity:
            return None
        for m in self._maps:
            _sink_over(m, size)
        self.cut = StorageCut(errno.EIO, "shortened by another process while mapped",
                              self.path)
        return self.cut

    def close(self) -> None:
        _open_files.discard(self)
        native = speedups.load()
        for view_owner in self._maps:
            try:
                if native is not None:
                    native.unwatch(view_owner)
                view_owner.close()
            except BufferError:  # a view is still referenced; the map goes with the process
                watch(view_owner)  # still mapped: still watched
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

"""Incremental reader of one multiprocess file.

Entries are append-only, so a reader parses each key once and afterwards only re-reads the
values: one call over the mapped file reads every value of the file in C (a ``struct``, or
``_speedups.values`` at the offsets the C walk found). This is what keeps a scrape cheap
when files hold thousands of entries.

A reader never blocks and never follows a name elsewhere: files are opened with
``O_NOFOLLOW | O_NONBLOCK`` and anything but a regular file (a FIFO, socket, device,
directory or link named like a storage file) is refused as ``Unreadable``. A file deleted
and created again under the same name (a live gauge file of a worker slot whose process
was replaced) starts a new ``generation``: its keys are parsed again from the start, and
whoever numbered the old keys must number them again.

A file shortened in place while mapped (a foreign ``truncate``) makes a read of a page past
its new end raise SIGBUS. The C reads (``_speedups``: header, key walk, values, and the
copies of the map the exemplar and native histogram readers take through ``read_with``)
are guarded and raise ``MapFault`` instead: the file is then read again from its start as a
new generation, torn (the entries its new size holds), and logged once. The Python path
(``GUNICORN_PROMETHEUS_NO_SPEEDUPS=1``) cannot survive a SIGBUS, so it maps nothing: it
reads the used part of each file with ``os.pread`` at every read (a file shorter than the
entries already read is ``Shortened``, handled as ``MapFault``; docs/reliability.md)."""
from __future__ import annotations

import array
import errno
import itertools
import logging
import mmap
import os
import stat
import struct
from types import ModuleType
from typing import (Callable, Dict, Iterator, List, Optional, Sequence, Tuple, TypeVar, Union,
                    overload)

from .mmap_file import Payload, padded_length, payload_of

_USED = struct.Struct("<i")
_OPEN = (os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
         | getattr(os, "O_CLOEXEC", 0))


_log = logging.getLogger("gunicorn_prometheus_exporter")
_Taken = TypeVar("_Taken")
#: what a read takes its bytes from: the map (compiled), a copy of the used part (Python)
Buffer = Union[mmap.mmap, bytes]

#: generations of every reader of this process, never the same twice (``FileReader``)
_generations = itertools.count(1)


class Unreadable(OSError):
    """A storage file that cannot be read: not a regular file, or refused to us."""


class Shortened(Exception):
    """The Python path's ``MapFault``: a file now shorter than the entries already read
    from it (truncated by someone else)."""


def open_regular(path: str) -> int:
    """A descriptor of the regular file at ``path`` (FileNotFoundError when it is gone);
    never blocks, never follows a link."""
    try:
        fd = os.open(path, _OPEN)
    except FileNotFoundError:
        raise
    except OSError as exc:  # ELOOP (a link), ENXIO (a socket), EACCES, EWOULDBLOCK (a lease)
        raise Unreadable(exc.errno, exc.strerror, path) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise Unreadable(errno.EINVAL, f"not a regular file (mode {stat.filemode(mode)})",
                         path)
    return fd


class KeyTable(Dict[bytes, int]):
    """The distinct keys of a directory's files, numbered in the order first seen, each
    decoded once: ``table[raw]`` is the number of the key whose bytes are ``raw`` (numbered
    when new: a known key costs one dict lookup). The collector shares one between all its
    readers: the files of different workers hold the same keys, so on a cold scrape most
    entries are keys some other file already showed. ``_speedups.KeyTable`` is the same in
    C, where an entry's key is hashed and compared where it lies in the map, without making
    a Python object. Nothing is ever removed from a table: the collector replaces it when it
    holds far more keys than the files need (``collector.outgrown``)."""

    def __init__(self) -> None:
        super().__init__()
        #: each distinct key's text, by number
        self.texts: List[str] = []

    def __missing__(self, raw: bytes) -> int:
        number = self[raw] = len(self.texts)
        self.texts.append(raw.decode("utf-8", "replace"))
        return number


class KeyTexts(Sequence[str]):
    """The keys of a file walked in C, as texts: the text of each key number, looked up
    when asked for. The C walk hands over numbers only; a list of a million references to
    the texts (64 files x 17,000 entries) would cost the walk an append per entry and the
    cyclic GC a visit per entry after a cold scrape, while the collector only ever needs the
    texts of keys it has not numbered yet."""

    __slots__ = ("_texts", "_ids")

    def __init__(self, texts: List[str], ids: Sequence[int]) -> None:
        self._texts = texts
        self._ids = ids

    def __len__(self) -> int:
        return len(self._ids)

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> List[str]: ...

    def __getitem__(self, index: Union[int, slice]) -> Union[str, List[str]]:
        if isinstance(index, slice):
            return list(map(self._texts.__getitem__, self._ids[index]))
        return self._texts[self._ids[index]]

    def __iter__(self) -> Iterator[str]:
        return map(self._texts.__getitem__, self._ids)


class FileReader:
    """Values of one file; ``keys`` grows as writers append entries.

    Each key is numbered by its bytes in ``table`` (a ``KeyTable``, or the C one), which
    the collector shares between all its readers, so a cold scrape decodes each distinct key
    once, every file's ``keys`` share the same strings, and ``key_ids`` let the collector
    number series by key without hashing text. The table is keyed by the key's bytes, never
    by a position, so a file created again can only ever be read through its own entries.
    With the C speedups (``native``, what ``speedups.load()`` gave, and its ``KeyTable``)
    and a fixed payload, new entries are walked in one C call. With them and a payload
    sized by each key (native histogram files), the Python walk reads a guarded C copy of
    the new entries instead of the map."""

    def __init__(self, path: str, with_timestamps: bool = False,
                 payload: Payload = 16, native: Optional[ModuleType] = None,
                 table: Optional[KeyTable] = None) -> None:
        self.path = path
        self.with_timestamps = with_timestamps
        self.payload = payload  # bytes after each key (``MmapFile.payload``)
        self._keys: List[str] = []  # the Python walk's (``keys``)
        #: each key's number in ``table``
        self.key_ids: Sequence[int] = []
        #: byte offset of each key's payload in the file
        self.offsets: Sequence[int] = []
        self._sizes: List[int] = []  # the Python walk's (``sizes``)
        #: which file ``keys`` describe: a number of this process's no other generation
        #: had, new each time the file is found replaced (its entries read afresh), so
        #: that a reader made anew for the same name is never taken for the one before
        self.generation = 0
        self._parsed_to = 8
        self._ino: Optional[Tuple[int, int]] = None
        self._map: Optional[mmap.mmap] = None
        self._struct = struct.Struct("<")
        self.torn = False
        fixed = isinstance(payload, int)
        if table is None:
            table = native.KeyTable() if native is not None and fixed else KeyTable()
        self._table = table
        compiled = native is not None and fixed and isinstance(table, native.KeyTable)
        #: the C walk (a fixed payload, the C key table)
        self._walk = native.key_table if compiled else None
        #: the guarded reads: of the values at ``offsets`` (no struct format), the header
        #: and the bytes the Python walk reads; and what they raise (``read_with``)
        self._values = native.values if native is not None else None
        self._header = native.header if native is not None else None
        self._copy = native.copy if native is not None else None
        self._faults: Tuple[type, ...] = (native.MapFault,) if native is not None \
            else (Shortened,)
        self._shortened_logged = False
        self._empty()

    def _empty(self) -> None:
        """No entries read: the C walk hands key numbers and offsets over as the bytes of
        arrays, and the C read of the values takes the offsets as an array (so the Python
        walk of a file with a payload sized by each key, a native histogram file of a few
        hundred entries, appends to arrays there); the Python path's walk appends to lists
        (an array's ``append`` parses its argument, ten times the instructions of a
        list's)."""
        self._keys, self._sizes, self._parsed_to = [], [], 8
        self._size_seen = 0  # the Python path's: the file's largest size, to tell it shrank
        if self._values is not None:
            self.key_ids, self.offsets = array.array("i"), array.array("q")
        else:
            self.key_ids, self.offsets = [], []

    def _reopen(self) -> bool:
        try:
            fd = open_regular(self.path)
        except FileNotFoundError:
            return False
        try:
            st = os.fstat(fd)
            if st.st_size < 8:
                return False
            self.close()
            self._map = mmap.mmap(fd, st.st_size, prot=mmap.PROT_READ)
            identity = (st.st_dev, st.st_ino)
            if identity != self._ino:
                self._another_file(identity)
            return True
        finally:
            os.close(fd)

    def _another_file(self, identity: Tuple[int, int]) -> None:
        """The file under the name is another (device, inode) than the one read so far:
        its entries are parsed from the start, as a new generation."""
        self._empty()
        self._struct = struct.Struct("<")
        self.generation = next(_generations)
        self._ino = identity

    def read(self, inode: Optional[int] = None) -> Optional[tuple]:
        """All values (value, or value and timestamp, per key) or None if the file is gone.
        ``inode`` (from the directory listing) reveals a file deleted and created again:
        the map held since the last read keeps the old inode alive, so a new file under
        the name always has another number (the Python path maps one page of it for that
        alone, and never reads it). Raises ``Unreadable``."""
        return self.read_with(self.values_in, inode)

    def read_with(self, take: Callable[[Buffer], _Taken],
                  inode: Optional[int] = None) -> Optional[_Taken]:
        """``take(map)`` of the file refreshed (``refresh``; the Python path's copy of its
        used bytes), or None if it is gone: how the exemplar and native histogram readers
        read their own payloads. A file found shortened under the map (``MapFault``, from
        the guarded reads here or in ``take``; ``Shortened`` on the Python path) is read
        again at once from its start, mapped at its new size; shortened again meanwhile, it
        is left to the next read (None now). Raises ``Unreadable``."""
        for _ in range(2):
            try:
                m = self.refresh(inode)
                return None if m is None else take(m)
            except self._faults:
                self._shortened()
        return None

    def _shortened(self) -> None:
        """The file was truncated while mapped: torn (counted once by the collector), its
        entries read afresh as a new generation (those past the new end are gone)."""
        if not self._shortened_logged:
            self._shortened_logged = True
            _log.warning("prometheus: %s was shortened while mapped (not by this plugin); "
                         "reading it as torn", self.path)
        self.torn = True
        self.close()
        self._ino = None  # the next map starts a new generation

    def values_in(self, m: Buffer) -> tuple:
        """The values at ``offsets`` in ``m`` (read in C under the guard when compiled)."""
        if self._values is not None:
            return self._values(m, self.offsets, 2 if self.with_timestamps else 1)
        return self._struct.unpack_from(m, 0)

    def refresh(self, inode: Optional[int] = None) -> Optional[Buffer]:
        """Map the file as it is now and parse the entries appended since the last call;
        the map, or None if the file is gone. Raises ``Unreadable``. The Python path
        (no ``native``) copies the used bytes instead (``_read_copy``)."""
        if self._copy is None:
            return self._read_copy()
        stale = inode is not None and self._ino is not None and inode != self._ino[1]
        if (self._map is None or stale) and not self._reopen():
            return None
        used = self._used()
        if used > len(self._map):
            if not self._reopen():  # the writer grew the file
                return None
            used = self._used()
        if used > self._parsed_to:
            self._parse(used, self._map)
        return self._map

    def _read_copy(self) -> Optional[bytes]:
        """The used bytes of the file as it is now (``os.pread``, not the map: a page past
        the end of a file cut short would kill the process with SIGBUS, which Python cannot
        catch), the entries appended since the last call parsed; None if the file is gone.
        A file found shorter than before raises ``Shortened``. Costs an
        open, a stat and a copy of the used part per read, where a map is read in place."""
        try:
            fd = open_regular(self.path)
        except FileNotFoundError:
            return None
        try:
            head = os.pread(fd, 8, 0)  # first: a writer grows the file before it counts more
            st = os.fstat(fd)
            identity = (st.st_dev, st.st_ino)
            if identity != self._ino:
                if st.st_size < 8:  # as ``_reopen``: nothing of it read, nothing forgotten
                    return None
                self.close()
                # a page mapped only to hold the inode, never read: a new file under the
                # name then always has another number (``read``)
                self._map = mmap.mmap(fd, 8, prot=mmap.PROT_READ)
                self._another_file(identity)
            if st.st_size < self._size_seen:  # our writers never shrink a file
                raise Shortened(self.path)
            self._size_seen = st.st_size
            used = _USED.unpack_from(head)[0] if len(head) == 8 else 0
            # the entries read before too (a damaged header may count fewer), at most the
            # file (or 2 GiB)
            want = min(max(used, self._parsed_to), st.st_size)
            data = os.pread(fd, want, 0) if want > 8 else head
        finally:
            os.close(fd)
        if self._parsed_to > 8 and len(data) < self._parsed_to:  # shrank since the stat
            raise Shortened(self.path)
        if len(data) < 8:
            return None
        if used > self._parsed_to:
            self._parse(used, data)
        return data

    def _used(self) -> int:
        """The header: bytes in use (read in C under the guard when compiled)."""
        if self._header is not None:
            return self._header(self._map)
        return _USED.unpack_from(self._map, 0)[0]

    def _parse(self, used: int, m: Buffer) -> None:
        """Walk the entries of ``m`` (the map, or the Python path's copy) from where the
        last walk stopped to ``used``."""
        if self._walk is not None:
            self._parse_fixed(used)
            return
        pos = self._parsed_to
        table = self._table
        texts = table.texts
        limit = min(used, len(m))
        # compiled: the new entries copied under the guard, walked in the copy (from base)
        data, base = (self._copy(m, pos, limit), pos) if self._copy is not None else (m, 0)
        while pos + 4 <= used:
            # an entry the header counts but the file does not hold (a file shorter than
            # its header says) is torn, as every other entry that ends past the file
            length = _USED.unpack_from(data, pos - base)[0] if pos + 4 <= limit else 0
            if length <= 0 or pos + 4 + length > limit:
                self.torn = True
                break
            number = table[data[pos - base + 4:pos - base + 4 + length]]
            key = texts[number]
            try:
                size = payload_of(self.payload, key)
            except (ValueError, TypeError, IndexError):
                size = -1
            end = pos + 4 + padded_length(length) + size
            if size < 8 or end > limit:
                self.torn = True
                break
            self._keys.append(key)
            self.key_ids.append(number)
            self.offsets.append(pos + 4 + padded_length(length))
            self._sizes.append(size)
            pos = end
        self._parsed_to = pos
        if self._values is None:  # (the C read of the values needs no format)
            self._struct = struct.Struct(self._format())

    def _parse_fixed(self, used: int) -> None:
        """``_parse`` in one C call (``key_table``) for a fixed payload, keys numbered in
        the shared C ``KeyTable``; no struct format (``read`` takes the values at
        ``offsets`` in C): a format of a million entries costs as much as the walk."""
        ids, offsets, pos, torn = self._walk(self._map, self._parsed_to, used, self.payload,
                                             self._table)
        self.key_ids.frombytes(ids)
        self.offsets.frombytes(offsets)
        self.torn = self.torn or torn
        self._parsed_to = pos

    @property
    def keys(self) -> Sequence[str]:
        """Each entry's key, in file order (a view of ``key_ids`` after the C walk)."""
        if self._walk is not None:
            return KeyTexts(self._table.texts, self.key_ids)
        return self._keys

    @property
    def sizes(self) -> List[int]:
        """Each entry's payload size (``payload`` for every one after the C walk)."""
        if self._walk is not None:
            return [self.payload] * len(self.key_ids)  # type: ignore[list-item]
        return self._sizes

    def _format(self) -> str:
        parts = ["<"]
        cursor = 0
        item = "dd" if self.with_timestamps else "d"
        width = 16 if self.with_timestamps else 8
        for offset in self.offsets:
            gap = offset - cursor
            parts.append(f"{gap}x{item}" if gap else item)
            cursor = offset + width
        return "".join(parts)

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None

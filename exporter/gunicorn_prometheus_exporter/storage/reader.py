"""Incremental reader of one multiprocess file.

Entries are append-only, so a reader parses each key once and afterwards only re-reads the
values: one ``struct`` call over the mapped file unpacks every value of the file in C. This
is what keeps a scrape cheap when files hold thousands of entries.

A reader never blocks and never follows a name elsewhere: files are opened with
``O_NOFOLLOW | O_NONBLOCK`` and anything but a regular file (a FIFO, socket, device,
directory or link named like a storage file) is refused as ``Unreadable``. A file deleted
and created again under the same name (a live gauge file of a worker slot whose process
was replaced) starts a new ``generation``: its keys are parsed again from the start, and
whoever numbered the old keys must number them again."""
from __future__ import annotations

import errno
import mmap
import os
import stat
import struct
from types import ModuleType
from typing import Dict, List, Optional, Tuple

from .mmap_file import Payload, padded_length, payload_of

_USED = struct.Struct("<i")
_OPEN = (os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
         | getattr(os, "O_CLOEXEC", 0))


class Unreadable(OSError):
    """A storage file that cannot be read: not a regular file, or refused to us."""


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


class FileReader:
    """Values of one file; ``keys`` grows as writers append entries.

    With the C speedups (``native``, what ``speedups.load()`` gave) and a fixed payload,
    new entries are walked in one C call, and each key's text is looked up by its bytes in
    ``names``, a table the collector shares between all its readers: the files of different
    workers hold the same keys, so a cold scrape decodes each distinct key once and every
    file's ``keys`` share the same strings. The table is keyed by the key's bytes, never by
    a position, so a file created again can only ever be read through its own entries."""

    def __init__(self, path: str, with_timestamps: bool = False,
                 payload: Payload = 16, native: Optional[ModuleType] = None,
                 names: Optional[Dict[bytes, str]] = None) -> None:
        self.path = path
        self.with_timestamps = with_timestamps
        self.payload = payload  # bytes after each key (``MmapFile.payload``)
        self.keys: List[str] = []
        #: byte offset of each key's payload in the file, and its size
        self.offsets: List[int] = []
        self.sizes: List[int] = []
        #: counts the times the file was found replaced (its entries read afresh)
        self.generation = 0
        self._parsed_to = 8
        self._ino: Optional[Tuple[int, int]] = None
        self._map: Optional[mmap.mmap] = None
        self._struct = struct.Struct("<")
        self.torn = False
        self._walk = native.key_table if native is not None and isinstance(payload, int) \
            else None
        self._names: Dict[bytes, str] = {} if names is None else names
        self._format_text = "<"  # the C walk's format so far (the Python one starts afresh)

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
                self.keys, self.offsets, self.sizes, self._parsed_to = [], [], [], 8
                self._struct = struct.Struct("<")
                self._format_text = "<"
                self.generation += 1
            self._ino = identity
            return True
        finally:
            os.close(fd)

    def read(self, inode: Optional[int] = None) -> Optional[tuple]:
        """All values (value, or value and timestamp, per key) or None if the file is gone.
        ``inode`` (from the directory listing) reveals a file deleted and created again:
        the map held since the last read keeps the old inode alive, so a new file under
        the name always has another number. Raises ``Unreadable``."""
        m = self.refresh(inode)
        return None if m is None else self._struct.unpack_from(m, 0)

    def refresh(self, inode: Optional[int] = None) -> Optional[mmap.mmap]:
        """Map the file as it is now and parse the entries appended since the last call;
        the map, or None if the file is gone. Raises ``Unreadable``."""
        stale = inode is not None and self._ino is not None and inode != self._ino[1]
        if (self._map is None or stale) and not self._reopen():
            return None
        used = _USED.unpack_from(self._map, 0)[0]
        if used > len(self._map):
            if not self._reopen():  # the writer grew the file
                return None
            used = _USED.unpack_from(self._map, 0)[0]
        if used > self._parsed_to:
            self._parse(used)
        return self._map

    def _parse(self, used: int) -> None:
        if self._walk is not None:
            self._parse_fixed(used)
            return
        m = self._map
        pos = self._parsed_to
        while pos + 4 <= used:
            length = _USED.unpack_from(m, pos)[0]
            limit = min(used, len(m))
            if length <= 0 or pos + 4 + length > limit:
                self.torn = True
                break
            key = bytes(m[pos + 4:pos + 4 + length]).decode("utf-8", "replace")
            try:
                size = payload_of(self.payload, key)
            except (ValueError, TypeError, IndexError):
                size = -1
            end = pos + 4 + padded_length(length) + size
            if size < 8 or end > limit:
                self.torn = True
                break
            self.keys.append(key)
            self.offsets.append(pos + 4 + padded_length(length))
            self.sizes.append(size)
            pos = end
        self._parsed_to = pos
        self._struct = struct.Struct(self._format())

    def _parse_fixed(self, used: int) -> None:
        """``_parse`` in one C call (``key_table``) for a fixed payload; key texts from the
        shared ``names`` table, decoded only the first time any file shows them (in C)."""
        item, width = ("dd", 16) if self.with_timestamps else ("d", 8)
        cursor = self.offsets[-1] + width if self.offsets else 0
        keys, offsets, pos, torn, text = self._walk(self._map, self._parsed_to, used,
                                                    self.payload, item, width, cursor,
                                                    self._names)
        self.keys.extend(keys)
        self.offsets.extend(offsets)
        self.sizes.extend([self.payload] * len(offsets))
        self.torn = self.torn or torn
        self._parsed_to = pos
        self._format_text += text
        self._struct = struct.Struct(self._format_text)

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

    @property
    def map(self) -> Optional[mmap.mmap]:
        """The file as last mapped by ``read`` (for payloads other than doubles)."""
        return self._map

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None

"""The shared multiprocess directory: file names, identities and their liveness.

Every writing process works under an *identity* it claims with ``flock`` on
``<identity>.lock``: ``w<N>`` for worker slots, ``m<N>`` for masters. The master claims a
worker's slot before forking it; the worker inherits the lock, and the master releases its
copy once it has reaped the worker. So

* a slot is never held by two live processes, even across the old and new master of a USR2
  upgrade, and the number of files is bounded by the most workers ever alive at once, not by
  the workers ever started;
* a reader (the metrics server, a sidecar in another container) tells a live identity from a
  dead one with one non-blocking lock attempt, without any shared process table.
"""
from __future__ import annotations

import errno
import fcntl
import glob
import os
import re
import time
from dataclasses import dataclass
from typing import Dict, Iterator, Optional, Tuple

from .reader import open_regular

MAX_SLOTS = 4096
_STEM = re.compile(r"^(counter|histogram|summary|gauge)(?:_(\w+?))?_([^_]+)$")
#: native histograms (storage/native.py) are kept in files of their own format, named
#: ``histogram_native_<identity>.nh`` (not ``.db``: prometheus_client reads every ``*.db``)
NATIVE_MODE = "native"
NATIVE_EXTENSION = ".nh"
_WORKER = re.compile(r"^w(\d+)$")


@dataclass(frozen=True)
class DbFile:
    path: str
    typ: str
    mode: str  # gauge multiprocess mode, '' for other types
    identity: str

    @property
    def worker_id(self) -> Optional[str]:
        return worker_id_of(self.identity)

    @property
    def owner(self) -> str:
        return owner_of(self.identity)


def owner_of(identity: str) -> str:
    """The identity whose lock tells whether a file's writer lives: ``w3`` for ``w3`` and
    for ``w3.app`` (the application's own prometheus_client files of slot 3)."""
    return identity.split(".", 1)[0]


def worker_id_of(identity: str) -> Optional[str]:
    """The ``worker_id`` label of a worker slot identity ``w<N>``; None for others."""
    match = _WORKER.match(identity)
    return match.group(1) if match else None


def parse_name(path: str) -> Optional[DbFile]:
    stem, extension = os.path.splitext(os.path.basename(path))
    parsed = parse_stem(stem, path)
    if parsed is None or extension != _extension(parsed.typ, parsed.mode):
        return None
    return parsed


def parse_stem(stem: str, path: str = "") -> Optional[DbFile]:
    """A file's name without its extension (also a shard's name in Redis)."""
    match = _STEM.match(stem)
    if not match:
        return None
    typ, mode, identity = match.groups()
    return DbFile(path, typ, mode or "", identity)


def _extension(typ: str, mode: str) -> str:
    return NATIVE_EXTENSION if (typ, mode) == ("histogram", NATIVE_MODE) else ".db"


def db_path(directory: str, typ: str, identity: str, mode: str = "") -> str:
    stem = f"{typ}_{mode}_{identity}" if mode else f"{typ}_{identity}"
    return os.path.join(directory, stem + _extension(typ, mode))


def _open_lock(path: str) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)


class Claim:
    """An identity held by this process (and, after fork, by its child)."""

    def __init__(self, identity: str, fd: int) -> None:
        self.identity = identity
        self.fd = fd

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def claim(directory: str, prefix: str) -> Claim:
    """Claim the lowest free identity ``<prefix><N>``."""
    for n in range(MAX_SLOTS):
        found = claim_identity(directory, f"{prefix}{n}")
        if found is not None:
            return found
    raise RuntimeError(f"more than {MAX_SLOTS} live identities '{prefix}N' in {directory}")


def claim_identity(directory: str, identity: str, wait: float = 0.0) -> Optional[Claim]:
    """Claim ``identity`` if it is free, or frees within ``wait`` seconds (polled every
    5 ms); None if not. The wait is for a lock only a moment away from free: a child forked
    a moment ago holds copies of its parent's lock descriptors until it drops them."""
    fd = _open_lock(os.path.join(directory, identity + ".lock"))
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return Claim(identity, fd)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                os.close(fd)
                raise
        if time.monotonic() >= deadline:
            os.close(fd)
            return None
        time.sleep(0.005)


def is_live(directory: str, identity: str) -> bool:
    """True while some process holds ``identity``'s lock."""
    path = os.path.join(directory, identity + ".lock")
    try:
        fd = open_regular(path)  # a FIFO named like a lock must not block the reader
    except OSError:
        return False  # gone, or no lock file of ours
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing drops the probe's own shared lock
    return False


def live_identities(directory: str) -> Dict[str, bool]:
    """Liveness of every identity that has a lock file."""
    out = {}
    for path in glob.glob(os.path.join(glob.escape(directory), "*.lock")):
        identity = os.path.basename(path)[:-5]
        out[identity] = is_live(directory, identity)
    return out


def db_files(directory: str) -> Iterator[Tuple[DbFile, int]]:
    """The storage files of a directory with their inode numbers (which tell a file that
    was removed and created again)."""
    try:
        entries = os.scandir(directory)
    except FileNotFoundError:
        return
    with entries:
        for entry in entries:
            if entry.name.endswith((".db", NATIVE_EXTENSION)):
                parsed = parse_name(entry.path)
                if parsed is not None:
                    yield parsed, entry.inode()


def unusable(directory: str, exc: OSError) -> str:
    """The one line that says why a writer cannot use ``directory`` and what it needs."""
    where = f" ({exc.filename})" if exc.filename and exc.filename != directory else ""
    return (f"prometheus: cannot use the multiprocess directory {directory} "
            f"(PROMETHEUS_MULTIPROC_DIR): {exc.strerror or exc}{where}; expected a "
            f"directory that user {_user()} (uid {os.geteuid()}) can create and write "
            f"files in, on a writable file system with free space")


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        return "?"


def prepare(directory: str, cleanup: bool) -> bool:
    """Create the directory; when ``cleanup`` and no identity in it is live, empty it.
    Returns True when it was emptied. Never removes a live process's files (a USR2 upgrade
    starts a second master on the same directory)."""
    os.makedirs(directory, exist_ok=True)
    if not cleanup:
        return False
    if any(live_identities(directory).values()):
        return False
    for pattern in ("*.db", "*" + NATIVE_EXTENSION, "*.lock", "routes", "exemplars/*.db"):
        for path in glob.glob(os.path.join(glob.escape(directory), pattern)):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
    return True


def remove_live_gauges(directory: str, identity: str) -> None:
    """Drop the live-mode gauge files of an identity whose process has gone, as
    prometheus_client's ``mark_process_dead`` does."""
    base = glob.escape(directory)
    for pattern in (f"gauge_live*_{identity}.db", f"gauge_live*_{identity}.*.db"):
        for path in glob.glob(os.path.join(base, pattern)):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

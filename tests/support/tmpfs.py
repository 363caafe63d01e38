"""A real, small tmpfs mounted for one test: the only honest way to fill a disk, make it
read-only or give space back. CI runs as root and mounts it; elsewhere the test skips with
one line saying why."""
from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import tempfile
from typing import Iterator

import pytest


def _run(*args: str) -> None:
    done = subprocess.run(args, capture_output=True, text=True, timeout=30)
    if done.returncode:
        raise OSError(f"{' '.join(args)}: {done.stderr.strip()}")


@contextlib.contextmanager
def mounted(size: str, options: str = "") -> Iterator[str]:
    """A fresh tmpfs of ``size`` (``1m``) with extra mount ``options`` (``ro``)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    where = tempfile.mkdtemp(prefix="gpe-tmpfs-")
    opts = f"size={size},mode=0755" + (f",{options}" if options else "")
    try:
        _run("mount", "-t", "tmpfs", "-o", opts, "tmpfs", where)
    except OSError as exc:
        os.rmdir(where)
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", where], capture_output=True, timeout=30)
        os.rmdir(where)


def resize(where: str, size: str) -> None:
    """Give the mounted tmpfs ``size`` (space returns without touching its files)."""
    _run("mount", "-o", f"remount,size={size}", where)


def fill(path: str) -> int:
    """Write ``path`` until the file system is full; the bytes written."""
    written = 0
    chunk = b"\0" * 4096
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        while True:
            try:
                written += os.write(fd, chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return written
    finally:
        os.close(fd)

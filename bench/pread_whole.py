"""Whether ``os.pread`` (the Python path's read of a storage file, storage/reader.py) copies
each aligned double whole while a writer stores it: the kernel's copy is not promised to
load 8 aligned bytes at once, where a read of the map is (a torn value would be one mixed
of two stores).

A writer process stores, over and over, one of two bit patterns into every double of a
mapped file (each byte differs between them: 0x55.. and 0xAA..), as whole 8-byte aligned
stores (a ``memoryview`` of doubles, the way our writers store) or as block copies
(``--blocks``: a slice assignment, memcpy's wide stores); this process reads the file with
``os.pread`` meanwhile and counts the doubles that are neither pattern.

Run: ``python bench/pread_whole.py [--seconds 20] [--doubles 8192] [--blocks]``. Prints
reads, doubles checked, the reads that met a pass of the writer under way (both patterns
in one read) and the torn doubles found.
"""
from __future__ import annotations

import argparse
import mmap
import multiprocessing
import os
import struct
import tempfile
import time

A, B = 0x5555555555555555, 0xAAAAAAAAAAAAAAAA


def write(path: str, doubles: int, blocks: bool, stop) -> None:
    """Alternate the two patterns over every double until ``stop`` is set."""
    fd = os.open(path, os.O_RDWR)
    m = mmap.mmap(fd, doubles * 8)
    view = memoryview(m).cast("Q")
    patterns = [struct.pack("<Q", p) * doubles for p in (A, B)]
    n = 0
    while not stop.is_set():
        if blocks:
            m[:] = patterns[n & 1]
        else:
            value = (A, B)[n & 1]
            for i in range(doubles):
                view[i] = value
        n += 1
    view.release()
    m.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--doubles", type=int, default=8192)
    parser.add_argument("--blocks", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) \
            as directory:
        path = os.path.join(directory, "f.db")
        fd = os.open(path, os.O_RDWR | os.O_CREAT)
        os.posix_fallocate(fd, 0, args.doubles * 8)
        os.pwrite(fd, struct.pack("<Q", A) * args.doubles, 0)
        stop = multiprocessing.Event()
        writer = multiprocessing.Process(target=write,
                                         args=(path, args.doubles, args.blocks, stop))
        writer.start()
        reads = torn = straddled = 0
        mixed = set()
        until = time.monotonic() + args.seconds
        while time.monotonic() < until:
            data = os.pread(fd, args.doubles * 8, 0)
            found = set(memoryview(data).cast("Q"))
            reads += 1
            straddled += {A, B} <= found  # the read overlapped a pass of the writer
            if not found <= {A, B}:
                odd = found - {A, B}
                mixed |= odd
                torn += sum(1 for v in memoryview(data).cast("Q") if v in odd)
        stop.set()
        writer.join()
        os.close(fd)
    print(f"{reads:,} reads of {args.doubles:,} doubles ({reads * args.doubles:,} checked, "
          f"{'block copies' if args.blocks else 'stores of 8 bytes'}): {straddled:,} reads "
          f"saw both patterns (a pass of the writer under way), {torn} torn doubles"
          + (f", e.g. {sorted(mixed)[:3]}" if mixed else ""))


if __name__ == "__main__":
    main()

"""The application's own prometheus_client metrics, written through ``MmapFile``.

prometheus_client's multiprocess values open their files with ``MmapedDict``, which grows a
file with ``ftruncate`` and writes through the mapping: on a full disk the first store into
a new page kills the process with SIGBUS. ``identity.route_prometheus_client`` hands
prometheus_client ``AppFiles`` instead; it keeps the file format (so prometheus_client's
own readers still read them) and only allocates before it maps. A value that cannot be
stored stays in prometheus_client's memory (its ``MmapedValue`` keeps the current value),
is reported to ``unstored`` and is written by its next update once space returns."""
from __future__ import annotations

from typing import Callable, Tuple

from .mmap_file import MmapFile, StorageFull


def _ignore(fault: StorageFull) -> None:
    """Until a process has a writer of its own, nothing can count the drop."""


class AppFiles:
    """What prometheus_client calls as ``MmapedDict(filename)``."""

    def __init__(self) -> None:
        self.unstored: Callable[[StorageFull], None] = _ignore

    def __call__(self, filename: str, read_mode: bool = False) -> "AppFile":
        return AppFile(filename, self)


class AppFile:
    """The part of ``MmapedDict`` that ``MultiProcessValue`` uses."""

    def __init__(self, filename: str, files: AppFiles) -> None:
        self._file = MmapFile(filename)
        self._files = files

    def read_value(self, key: str) -> Tuple[float, float]:
        try:
            index = self._file.index(key)
        except StorageFull:
            return 0.0, 0.0  # a new value: nothing is lost until it is written
        values = self._file.values
        return values[index], values[index + 1]

    def write_value(self, key: str, value: float, timestamp: float) -> None:
        try:
            index = self._file.index(key)
        except StorageFull as fault:
            self._files.unstored(fault)
            return
        values = self._file.values
        values[index] = value
        values[index + 1] = timestamp

    def close(self) -> None:
        self._file.close()

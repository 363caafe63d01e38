"""Counters and gauges of one process for the rarer events (errors, signals, exits, log
lines, samples), off the request path: the master, its signal handlers, the log counter,
the backlog sampler, the metrics process and the Redis flusher's health all write through
a ``Writer``. The request path has its own, ``recorder.Recorder``."""
from __future__ import annotations

import threading
from typing import Dict, Optional, Tuple

from .families import Family
from .storage.mmap_file import MmapFile, sample_key
from .storage.store import ProcessStore


def scalar_position(file: MmapFile, family: Family, labels: Dict[str, str]) -> int:
    """The position of one counter or gauge sample in ``file`` (appended on first use)."""
    return file.index(sample_key(family.name, family.sample, labels, family.help))


class Writer:
    """Counters and gauges of one process. ``lock`` serialises writers of the same value
    from several threads."""

    def __init__(self, store: ProcessStore, threaded: bool = False) -> None:
        self.store = store
        self._counters = store.file("counter")
        self._counts: Dict[Tuple[str, Tuple[str, ...]], int] = {}
        self.lock: Optional[threading.Lock] = threading.Lock() if threaded else None

    def prepare(self, family: Family, values: Tuple[str, ...]) -> None:
        """Create a counter's entry now, so that counting it later (for instance from a
        signal handler) never has to append to the file."""
        self._position(family, values)

    def _position(self, family: Family, values: Tuple[str, ...]) -> int:
        key = (family.name, values)
        position = self._counts.get(key)
        if position is None:
            position = scalar_position(self._counters, family, dict(zip(family.labels, values)))
            self._counts[key] = position
        return position

    def count(self, family: Family, values: Tuple[str, ...] = (), amount: float = 1.0) -> None:
        """Add to a counter of ``family`` (labels in the family's order)."""
        position = self._position(family, values)
        if self.lock is None:
            self._counters.values[position] += amount
        else:
            with self.lock:
                self._counters.values[position] += amount

    def counter_value(self, family: Family, values: Tuple[str, ...] = ()) -> float:
        return self._counters.values[self._position(family, values)]

    def set_counter(self, family: Family, value: float, values: Tuple[str, ...] = ()) -> None:
        self._counters.values[self._position(family, values)] = value

    def set_gauge(self, family: Family, value: float, values: Tuple[str, ...] = ()) -> None:
        file = self.store.file("gauge", family.mode)
        position = scalar_position(file, family, dict(zip(family.labels, values)))
        file.values[position] = value

"""Counters and gauges of one process for the rarer events (errors, signals, exits, log
lines, samples), off the request path: the master, its signal handlers, the log counter,
the backlog sampler, the metrics process and the Redis flusher's health all write through
a ``Writer``. The request path has its own, ``recorder.Recorder``."""
from __future__ import annotations

import os
import threading
from typing import Any, Dict, Optional, Set, Tuple

from . import families
from .families import Family
from .storage.mmap_file import MmapFile, StorageCut, StorageFull, cut_files, sample_key
from .storage.store import ProcessStore


def scalar_position(file: MmapFile, family: Family, labels: Dict[str, str]) -> int:
    """The position of one counter or gauge sample in ``file`` (appended on first use)."""
    return file.index(sample_key(family.name, family.sample, labels, family.help))


class Writer:
    """Counters and gauges of one process. ``lock`` serialises writers of the same value
    from several threads.

    What the storage cannot take (a full disk) is dropped, counted in
    ``gunicorn_exporter_storage_unstored_total`` and logged once per episode through
    ``log`` (gunicorn's logger); the count waits in memory while even its own entry cannot
    be stored."""

    def __init__(self, store: ProcessStore, threaded: bool = False, log: Any = None) -> None:
        self.store = store
        self.log = log
        self._counters = store.file("counter")
        self._counts: Dict[Tuple[str, Tuple[str, ...]], int] = {}
        self.lock: Optional[threading.Lock] = threading.Lock() if threaded else None
        self._full: Optional[StorageFull] = None  # the fault of the episode in progress
        self._unstored = 0.0  # dropped records not yet added to the stored counter
        self._unstored_lock = threading.Lock()
        self._cut_logged: Set[str] = set()  # the files found cut, each logged once
        self.prepare(families.UNSTORED)

    def prepare(self, family: Family, values: Tuple[str, ...] = ()) -> None:
        """Create a counter's entry now, so that counting it later (for instance from a
        signal handler) never has to append to the file."""
        try:
            self._position(family, values)
        except StorageFull:
            pass  # counting it later tries again (and counts the drop if it must)

    def _position(self, family: Family, values: Tuple[str, ...]) -> int:
        key = (family.name, values)
        position = self._counts.get(key)
        if position is None:
            position = scalar_position(self._counters, family, dict(zip(family.labels, values)))
            self._counts[key] = position
            if self._full is not None and family is not families.UNSTORED:
                self.stored_again(self._counters.path)
        return position

    def _add_to(self, view: memoryview, position: int, amount: float) -> None:
        if self.lock is None:
            view[position] += amount
        else:
            with self.lock:
                view[position] += amount

    def count(self, family: Family, values: Tuple[str, ...] = (), amount: float = 1.0) -> None:
        """Add to a counter of ``family`` (labels in the family's order)."""
        try:
            position = self._position(family, values)
        except StorageFull as fault:
            self.unstored(fault)
            return
        self._add_to(self._counters.values, position, amount)

    def counter_value(self, family: Family, values: Tuple[str, ...] = ()) -> float:
        try:
            return self._counters.values[self._position(family, values)]
        except StorageFull:
            return 0.0

    def set_counter(self, family: Family, value: float, values: Tuple[str, ...] = ()) -> None:
        try:
            self._counters.values[self._position(family, values)] = value
        except StorageFull as fault:
            self.unstored(fault)

    def set_gauge(self, family: Family, value: float, values: Tuple[str, ...] = ()) -> None:
        file = self.store.file("gauge", family.mode)
        try:
            position = scalar_position(file, family, dict(zip(family.labels, values)))
        except StorageFull as fault:
            self.unstored(fault)
            return
        file.values[position] = value

    # -- what the storage cannot take --------------------------------------------------------
    def check_storage(self) -> None:
        """Files of this process shortened by someone else (``cut_files``): each counted
        once as unstored, and logged (off the request path: the sampler calls this)."""
        for fault in cut_files():
            self.unstored(fault)

    def unstored(self, fault: StorageFull, records: float = 1.0) -> None:
        """``records`` (requests, events) dropped because the storage cannot grow, or was
        shortened by someone else (``StorageCut``: logged once per file)."""
        first = False
        with self._unstored_lock:
            if isinstance(fault, StorageCut):  # for good: no episode that ends
                first = fault.filename not in self._cut_logged
                self._cut_logged.add(fault.filename)
            elif self._full is None:
                self._full, first = fault, True
            self._unstored += records
        if first and self.log is not None:  # outside the lock: logging counts a message
            self._log_unstored(fault)
        try:
            position = self._position(families.UNSTORED, ())
        except StorageFull:
            return  # kept in memory until the entry can be stored
        with self._unstored_lock:
            amount, self._unstored = self._unstored, 0.0
        self._add_to(self._counters.values, position, amount)

    def _log_unstored(self, fault: StorageFull) -> None:
        """The one line of an episode of the storage not taking what is stored."""
        name = os.path.basename(fault.filename or "")
        if isinstance(fault, StorageCut):
            self.log.error(
                "prometheus: %s in %s was shortened by another process while this process "
                "(pid %s) had it mapped; requests are still served, its values past the cut "
                "are gone and no longer recorded, and it takes no new series (counted in "
                "%s_total); a new process of this slot reads what it still holds",
                name, self.store.directory, os.getpid(), families.UNSTORED.name)
            return
        self.log.error(
            "prometheus: cannot store metrics in %s (%s: %s); requests are still "
            "served, new series of this process (pid %s) are not recorded until space "
            "returns, counted in %s_total", self.store.directory, fault.strerror, name,
            os.getpid(), families.UNSTORED.name)

    def stored_again(self, path: Optional[str] = None) -> None:
        """A new entry was stored after a fault (in the file ``path``, None: a whole new
        request series): the episode is over if that is where the fault was."""
        with self._unstored_lock:
            was = self._full
            if was is None or (path is not None and path != was.filename):
                return
            self._full = None
        if self.log is not None:
            self.log.info("prometheus: the storage in %s takes new series again; "
                          "recording resumed (pid %s)", self.store.directory, os.getpid())

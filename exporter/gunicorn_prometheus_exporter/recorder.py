"""The request path: turn one finished request into a handful of stores into the worker's
mapped files. Everything that can be computed once (entry positions for a label set, bucket
bounds, the views) is kept with the series, so a request costs at most three bisects and
seven float stores (five without a body), plus the in-flight gauge's two."""
from __future__ import annotations

import math
import os
import threading
from bisect import bisect_left
from typing import Any, Dict, Optional, Sequence, Tuple

from prometheus_client.utils import floatToGoString

from . import metrics as catalogue
from . import speedups
from .metrics import Family
from .storage.mmap_file import MmapFile, StorageFull, sample_key, sink
from .storage.store import ProcessStore

#: positions of one histogram series: (bucket positions incl. +Inf, sum position)
HistPositions = Tuple[Tuple[int, ...], int]
#: where one request series is recorded: (counter view, count index, histogram view,
#: then bucket positions and sum index of duration, request size, response size)
Series = tuple


def histogram_positions(file: MmapFile, family: Family, labels: Dict[str, str],
                        bounds: Sequence[float]) -> HistPositions:
    buckets = []
    for bound in list(bounds) + [float("inf")]:
        bucket_labels = dict(labels, le=floatToGoString(bound))
        buckets.append(file.index(sample_key(family.name, family.name + "_bucket",
                                             bucket_labels, family.help)))
    total = file.index(sample_key(family.name, family.name + "_sum", labels, family.help))
    return tuple(buckets), total


def scalar_position(file: MmapFile, family: Family, labels: Dict[str, str]) -> int:
    return file.index(sample_key(family.name, family.sample, labels, family.help))


class Writer:
    """Counters and gauges of one process, for the rarer events (errors, signals, exits,
    samples). ``lock`` serialises writers of the same value from several threads.

    What the storage cannot take (a full disk) is dropped, counted in
    ``gunicorn_exporter_storage_unstored_total`` and logged once through ``log`` (gunicorn's
    logger) per episode; the count waits in memory while even its own entry cannot be
    stored."""

    def __init__(self, store: ProcessStore, threaded: bool = False, log: Any = None) -> None:
        self.store = store
        self.log = log
        self._counters = store.file("counter")
        self._counts: Dict[Tuple[str, Tuple[str, ...]], int] = {}
        self.lock: Optional[threading.Lock] = threading.Lock() if threaded else None
        self._full: Optional[StorageFull] = None  # the fault of the episode in progress
        self._unstored = 0.0  # dropped records not yet added to the stored counter
        self._unstored_lock = threading.Lock()
        self.prepare(catalogue.UNSTORED)

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
            if self._full is not None and family is not catalogue.UNSTORED:
                self.stored_again(self._counters.path)
        return position

    def _add(self, view: memoryview, position: int, amount: float) -> None:
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
        self._add(self._counters.values, position, amount)

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
    def unstored(self, fault: StorageFull, records: float = 1.0) -> None:
        """``records`` (requests, events) dropped because the storage cannot grow."""
        first = False
        with self._unstored_lock:
            if self._full is None:
                self._full, first = fault, True
            self._unstored += records
        if first and self.log is not None:  # outside the lock: logging counts a message
            self.log.error(
                "prometheus: cannot store metrics in %s (%s: %s); requests are still "
                "served, new series of this process (pid %s) are not recorded until space "
                "returns, counted in %s_total", self.store.directory, fault.strerror,
                os.path.basename(fault.filename or ""), os.getpid(),
                catalogue.UNSTORED.name)
        try:
            position = self._position(catalogue.UNSTORED, ())
        except StorageFull:
            return  # kept in memory until the entry can be stored
        with self._unstored_lock:
            amount, self._unstored = self._unstored, 0.0
        self._add(self._counters.values, position, amount)

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


class Recorder(Writer):
    """Writes the request families and the worker's own gauges of one process."""

    def __init__(self, store: ProcessStore, duration_bounds: Sequence[float],
                 size_bounds: Sequence[float], threaded: bool, log: Any = None) -> None:
        super().__init__(store, threaded, log)
        self._histograms = store.file("histogram")
        self._gauges = store.file("gauge", "livesum")
        self._duration_bounds = list(duration_bounds)
        # sizes are whole bytes, so ``size <= bound`` exactly when ``size <= floor(bound)``;
        # comparing int with int makes the cheaper bisect
        self._size_label_bounds = list(size_bounds)
        self._size_bounds = [math.floor(b) if math.isfinite(b) else b for b in size_bounds]
        self._empty_bucket = bisect_left(self._size_bounds, 0)
        self._series: Dict[Tuple[str, str, str], tuple] = {}
        self._by_route: Dict[Tuple[str, str], tuple] = {}
        #: the series of a request the storage cannot take: stores into a sink, never
        #: kept by callers (``add`` takes it like any other, in C too)
        self.dropped = self._sink_series()
        try:
            index = scalar_position(self._gauges, catalogue.IN_FLIGHT, {})
            view = self._gauges.values
        except StorageFull as fault:
            self.unstored(fault)
            view, index = sink(), 0
        view[index] = 0.0
        self._in_flight_view, self._in_flight = view, index
        if threaded:
            # per request the lock's bound methods: a ``with`` block costs twice as much
            # (about 1,950 instructions against 1,000, counted with callgrind)
            self._acquire = self.lock.acquire  # type: ignore[union-attr]
            self._release = self.lock.release  # type: ignore[union-attr]
        if speedups.native is not None:
            # the same stores in C; it holds the GIL throughout, so threads need no lock
            self.add = speedups.native.RequestWriter(  # type: ignore[method-assign]
                self._duration_bounds, self._size_bounds).add
        elif threaded:
            self.add = self._add_locked  # type: ignore[method-assign]

    # -- per request --------------------------------------------------------------------
    def series(self, method: str, route: str, status: str) -> Series:
        """Where one ``{method, route, status}`` is recorded; callers keep it for ``add``
        unless it is ``dropped`` (the storage could not take it: counted as unstored)."""
        series = self._series.get((method, route, status))
        if series is not None:
            return series
        try:
            series = self._register(method, route, status)
        except StorageFull as fault:
            self.unstored(fault)
            return self.dropped
        if self._full is not None:
            self.stored_again()
        return series

    def _sink_series(self) -> Series:
        into = sink()
        durations = (0,) * (len(self._duration_bounds) + 1)
        sizes = (0,) * (len(self._size_bounds) + 1)
        return (into, 0, into, durations, 1, sizes, 1, sizes, 1)

    def add(self, series: Series, duration: float, request_bytes: int,
            response_bytes: int) -> None:
        """One finished request: seven float stores into the mapped files (five for a
        request without a body: adding zero to a sum is skipped). The views in ``series``
        may be older maps of a grown file, which still write the same pages."""
        counters, count, h, dur_b, dur_s, req_b, req_s, resp_b, resp_s = series
        counters[count] += 1.0
        h[dur_b[bisect_left(self._duration_bounds, duration)]] += 1.0
        h[dur_s] += duration
        if request_bytes:
            h[req_b[bisect_left(self._size_bounds, request_bytes)]] += 1.0
            h[req_s] += request_bytes
        else:
            h[req_b[self._empty_bucket]] += 1.0
        if response_bytes:
            h[resp_b[bisect_left(self._size_bounds, response_bytes)]] += 1.0
            h[resp_s] += response_bytes
        else:
            h[resp_b[self._empty_bucket]] += 1.0

    def _add_locked(self, series: Series, duration: float, request_bytes: int,
                    response_bytes: int) -> None:
        self._acquire()
        try:
            Recorder.add(self, series, duration, request_bytes, response_bytes)
        finally:
            self._release()

    def _register(self, method: str, route: str, status: str) -> Series:
        by_route = self._by_route.get((method, route))
        if by_route is None:
            labels = {"method": method, "route": route}
            h = self._histograms
            by_route = (
                histogram_positions(h, catalogue.HTTP_DURATION, labels, self._duration_bounds)
                + histogram_positions(h, catalogue.HTTP_REQUEST_SIZE, labels,
                                      self._size_label_bounds)
                + histogram_positions(h, catalogue.HTTP_RESPONSE_SIZE, labels,
                                      self._size_label_bounds))
            self._by_route[(method, route)] = by_route
        count = scalar_position(self._counters, catalogue.HTTP_REQUESTS,
                                {"method": method, "route": route, "status": status})
        # the views are taken after the appends, which may have grown the files
        series = (self._counters.values, count, self._histograms.values) + by_route
        self._series[(method, route, status)] = series
        return series

    def in_flight_cell(self) -> Tuple[memoryview, int]:
        """The in-flight gauge as (view, index), for a single-threaded event loop that
        adds to it directly."""
        return self._in_flight_view, self._in_flight

    def in_flight(self, delta: float) -> None:
        """Requests started (+1) or finished (-1)."""
        if self.lock is None:
            self._in_flight_view[self._in_flight] += delta
        else:
            self._acquire()
            try:
                self._in_flight_view[self._in_flight] += delta
            finally:
                self._release()

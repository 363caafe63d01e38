"""The request path: turn one finished request into a handful of stores into the worker's
mapped files. Everything that can be computed once (entry positions for a label set, bucket
bounds, the views) is kept with the series, so a request costs at most three bisects and
seven float stores (five without a body), one more bucket search and store for the native
duration histogram when it is on, plus the in-flight gauge's two."""
from __future__ import annotations

import math
import threading
from bisect import bisect_left
from typing import Dict, Optional, Sequence, Tuple

from prometheus_client.utils import floatToGoString

from . import metrics as catalogue
from . import speedups
from .metrics import Family
from .storage import native
from .storage.directory import NATIVE_MODE
from .storage.mmap_file import MmapFile, sample_key
from .storage.store import ProcessStore

#: positions of one histogram series: (bucket positions incl. +Inf, sum position)
HistPositions = Tuple[Tuple[int, ...], int]
#: where one request series is recorded: (counter view, count index, histogram view,
#: then bucket positions and sum index of duration, request size, response size, then the
#: native histogram view and the index of the series' zero bucket, or None and 0)
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
    samples). ``lock`` serialises writers of the same value from several threads."""

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


class Recorder(Writer):
    """Writes the request families and the worker's own gauges of one process."""

    def __init__(self, store: ProcessStore, duration_bounds: Sequence[float],
                 size_bounds: Sequence[float], threaded: bool,
                 native_layout: Optional[native.Layout] = None) -> None:
        super().__init__(store, threaded)
        self._histograms = store.file("histogram")
        #: the native duration histogram's buckets, None when it is off
        self._native_layout = native_layout
        self._native = store.file("histogram", NATIVE_MODE) if native_layout else None
        self._native_slot = native_layout.slot if native_layout else None
        self._gauges = store.file("gauge", "livesum")
        self._duration_bounds = list(duration_bounds)
        # sizes are whole bytes, so ``size <= bound`` exactly when ``size <= floor(bound)``;
        # comparing int with int makes the cheaper bisect
        self._size_label_bounds = list(size_bounds)
        self._size_bounds = [math.floor(b) if math.isfinite(b) else b for b in size_bounds]
        self._empty_bucket = bisect_left(self._size_bounds, 0)
        self._series: Dict[Tuple[str, str, str], tuple] = {}
        self._by_route: Dict[Tuple[str, str], tuple] = {}
        self._in_flight = scalar_position(self._gauges, catalogue.IN_FLIGHT, {})
        self._gauges.values[self._in_flight] = 0.0
        if threaded:
            # per request the lock's bound methods: a ``with`` block costs twice as much
            # (about 1,950 instructions against 1,000, counted with callgrind)
            self._acquire = self.lock.acquire  # type: ignore[union-attr]
            self._release = self.lock.release  # type: ignore[union-attr]
        if speedups.native is not None:
            # the same stores in C; it holds the GIL throughout, so threads need no lock
            layout = native_layout
            self.add = speedups.native.RequestWriter(  # type: ignore[method-assign]
                self._duration_bounds, self._size_bounds,
                None if layout is None else (layout.zero_threshold, layout.top,
                                             layout.bounds, layout.lo, layout.hi)).add
        elif threaded:
            self.add = self._add_locked  # type: ignore[method-assign]

    # -- per request --------------------------------------------------------------------
    def series(self, method: str, route: str, status: str) -> Series:
        """Where one ``{method, route, status}`` is recorded; callers keep it for ``add``."""
        series = self._series.get((method, route, status))
        return series if series is not None else self._register(method, route, status)

    def add(self, series: Series, duration: float, request_bytes: int,
            response_bytes: int) -> None:
        """One finished request: seven float stores into the mapped files (five for a
        request without a body: adding zero to a sum is skipped), and the native bucket's.
        The views in ``series`` may be older maps of a grown file, which still write the
        same pages."""
        counters, count, h, dur_b, dur_s, req_b, req_s, resp_b, resp_s, nh, zero = series
        counters[count] += 1.0
        h[dur_b[bisect_left(self._duration_bounds, duration)]] += 1.0
        h[dur_s] += duration
        if nh is not None:
            nh[zero + self._native_slot(duration)] += 1.0
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
                                      self._size_label_bounds)
                + (self._native_position(labels),))
            self._by_route[(method, route)] = by_route
        count = scalar_position(self._counters, catalogue.HTTP_REQUESTS,
                                {"method": method, "route": route, "status": status})
        # the views are taken after the appends, which may have grown the files
        native_view = self._native.values if self._native is not None else None
        series = ((self._counters.values, count, self._histograms.values) + by_route[:-1]
                  + (native_view, by_route[-1]))
        self._series[(method, route, status)] = series
        return series

    def _native_position(self, labels: Dict[str, str]) -> int:
        """Index of the zero bucket of the series' native entry (0 when native is off)."""
        if self._native is None or self._native_layout is None:
            return 0
        family = catalogue.HTTP_DURATION
        return self._native.index(native.entry_key(family.name, labels, family.help,
                                                    self._native_layout))

    def in_flight_cell(self) -> Tuple[memoryview, int]:
        """The in-flight gauge as (view, index), for a single-threaded event loop that
        adds to it directly."""
        return self._gauges.values, self._in_flight

    def in_flight(self, delta: float) -> None:
        """Requests started (+1) or finished (-1)."""
        if self.lock is None:
            self._gauges.values[self._in_flight] += delta
        else:
            self._acquire()
            try:
                self._gauges.values[self._in_flight] += delta
            finally:
                self._release()

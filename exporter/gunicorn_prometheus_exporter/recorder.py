"""The request path: turn one finished request into a handful of stores into the worker's
mapped files. Everything that can be computed once (entry positions for a label set, bucket
bounds, the views) is kept with the series, so a request costs at most two bisects and
seven float stores (five without a body), one more store for the native duration histogram
when it is on (its bucket is found by the same bisect as the classic one), plus the
in-flight gauge's two."""
from __future__ import annotations

import math
from bisect import bisect_left
from types import ModuleType
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

from prometheus_client.utils import floatToGoString

from . import families
from .families import Family
from .storage.directory import NATIVE_MODE
from .storage.mmap_file import MmapFile, StorageFull, sample_key, sink
from .storage.native import Layout, entry_key
from .storage.store import ProcessStore
from .writer import Writer, scalar_position

#: positions of one histogram series: (bucket positions incl. +Inf, sum position)
HistPositions = Tuple[Tuple[int, ...], int]


class Series(NamedTuple):
    """Where one ``{method, route, status}`` is recorded: positions in the worker's mapped
    files, found once by ``Recorder.series``. The compiled writer reads the fields by
    position, in this order."""

    counters: memoryview  # the counter file's values
    requests: int  # gunicorn_http_requests_total{method, route, status}
    histograms: memoryview  # the histogram file's values
    duration_buckets: Tuple[int, ...]  # gunicorn_http_request_duration_seconds, +Inf last
    duration_sum: int
    request_size_buckets: Tuple[int, ...]  # gunicorn_http_request_size_bytes
    request_size_sum: int
    response_size_buckets: Tuple[int, ...]  # gunicorn_http_response_size_bytes
    response_size_sum: int
    native_histogram: Optional[memoryview]  # the native file's values; None when off
    native_zero: int  # the series' zero bucket in it (its buckets follow)


#: one finished request: (series, duration, request body bytes, response body bytes)
AddRequest = Callable[[Series, float, int, int], None]


def histogram_positions(file: MmapFile, family: Family, labels: Dict[str, str],
                        bounds: Sequence[float]) -> HistPositions:
    buckets = []
    for bound in list(bounds) + [float("inf")]:
        bucket_labels = dict(labels, le=floatToGoString(bound))
        buckets.append(file.index(sample_key(family.name, family.name + "_bucket",
                                             bucket_labels, family.help)))
    total = file.index(sample_key(family.name, family.name + "_sum", labels, family.help))
    return tuple(buckets), total


def duration_search(bounds: Sequence[float], layout: Optional[Layout]
                    ) -> Tuple[List[float], Tuple[int, ...], Tuple[int, ...]]:
    """Both duration histograms' buckets from one bisect: the sorted union of the classic
    bounds and of every value where the native slot (``Layout.slot``) changes, and for
    each place ``k`` a duration can be inserted at (``bisect_left(union, duration)``) its
    classic bucket and its native slot. A duration inserted at ``k`` is above
    ``union[k-1]`` and at most ``union[k]`` (or NaN, at 0), where neither bucket changes,
    so both are those of ``union[k]`` (of +inf past the end): exactly what each search
    gives, NaN and negative durations included. On the Python path this is two thirds of
    a bucket search fewer per request (``frexp``, a bisect and a call, ~2,500
    instructions) for a few more comparisons."""
    union = set(bounds)
    slot: Callable[[float], int] = lambda value: 0  # noqa: E731 (native off)
    if layout is not None:
        slot = layout.slot
        zero, top = layout.zero_threshold, layout.top
        # within an octave the slot changes where the mantissa passes one of its bounds
        octaves = range(math.frexp(zero)[1], math.frexp(top)[1] + 1)
        union.update(x for e in octaves for x in (math.ldexp(b, e) for b in layout.bounds)
                     if zero < x < top)
        union.update((zero, top))
    ordered = sorted(union)
    places = ordered + ([] if math.inf in union else [math.inf])
    return (ordered, tuple(bisect_left(bounds, value) for value in places),
            tuple(slot(value) for value in places))


class Recorder(Writer):
    """Writes the request families and the worker's own gauges of one process."""

    def __init__(self, store: ProcessStore, duration_bounds: Sequence[float],
                 size_bounds: Sequence[float], threaded: bool,
                 native: Optional[ModuleType] = None,
                 native_layout: Optional[Layout] = None, log: Any = None,
                 serial_requests: bool = False) -> None:
        """``threaded``: several threads write (the lock of ``Writer``); ``serial_requests``:
        but only one of them records requests (gthread with one thread), so the request
        path's stores and the in-flight gauge take no lock (about 5,700 instructions a
        request on the Python path)."""
        super().__init__(store, threaded, log)
        #: requests recorded by several threads at once: their stores take the lock
        self.parallel_requests = threaded and not serial_requests
        self._histograms = store.file("histogram")
        #: the native duration histogram's buckets (storage/native.py), None when it is off
        self._native_layout = native_layout
        self._native = store.file("histogram", NATIVE_MODE) if native_layout else None
        self._gauges = store.file("gauge", "livesum")
        self._duration_bounds = list(duration_bounds)
        #: one bisect in ``_durations`` gives the classic bucket and the native slot
        self._durations, self._classic_at, self._native_at = duration_search(
            self._duration_bounds, native_layout)
        # sizes are whole bytes, so ``size <= bound`` exactly when ``size <= floor(bound)``;
        # comparing int with int makes the cheaper bisect
        self._size_label_bounds = list(size_bounds)
        self._size_bounds = [math.floor(b) if math.isfinite(b) else b for b in size_bounds]
        self._empty_bucket = bisect_left(self._size_bounds, 0)
        self._series: Dict[Tuple[str, str, str], Series] = {}
        #: (method, route, status) of each series, by its counter's index (exemplars)
        self.labels_of: Dict[int, Tuple[str, str, str]] = {}
        #: (method, route) -> the three histograms' bucket and sum positions, flat
        self._by_route: Dict[Tuple[str, str], tuple] = {}
        #: the series of a request the storage cannot take: stores into a sink, never
        #: kept by callers (``add`` takes it like any other, the compiled one too)
        self.dropped = self._sink_series()
        try:
            index = scalar_position(self._gauges, families.IN_FLIGHT, {})
            view = self._gauges.values
        except StorageFull as fault:
            self.unstored(fault)
            view, index = sink(), 0
        view[index] = 0.0
        self._in_flight_view, self._in_flight = view, index
        if self.parallel_requests:
            # per request the lock's bound methods: a ``with`` block costs twice as much
            # (about 1,950 instructions against 1,000, counted with callgrind)
            self._acquire = self.lock.acquire  # type: ignore[union-attr]
            self._release = self.lock.release  # type: ignore[union-attr]
        #: one finished request's stores, chosen here once for the life of the recorder
        self.add: AddRequest = self._request_writer(native, self.parallel_requests)

    def _request_writer(self, native: Optional[ModuleType], parallel: bool) -> AddRequest:
        """The compiled stores where ``native`` (``speedups.load()``) is given: they hold
        the GIL throughout, so threads need no lock. Else the Python stores, behind the
        lock when several threads record at once (``parallel``)."""
        if native is not None:
            layout = self._native_layout
            return native.RequestWriter(
                self._duration_bounds, self._size_bounds,
                None if layout is None else (layout.zero_threshold, layout.top,
                                             layout.bounds, layout.lo, layout.hi)).add
        return self._add_locked if parallel else self._add

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
        return Series(into, 0, into, durations, 1, sizes, 1, sizes, 1, None, 0)

    def _add(self, series: Series, duration: float, request_bytes: int,
             response_bytes: int) -> None:
        """One finished request: seven float stores into the mapped files (five for a
        request without a body: adding zero to a sum is skipped), and the native bucket's.
        The views in ``series`` may be older maps of a grown file, which still write the
        same pages. Unpacked by position: one step, where reading the fields by name would
        be eleven."""
        counters, requests, h, dur_b, dur_s, req_b, req_s, resp_b, resp_s, nh, zero = series
        counters[requests] += 1.0  # gunicorn_http_requests_total
        # gunicorn_http_request_duration_seconds, classic and native: one bisect
        at = bisect_left(self._durations, duration)
        h[dur_b[self._classic_at[at]]] += 1.0
        h[dur_s] += duration
        if nh is not None:
            nh[zero + self._native_at[at]] += 1.0
        # gunicorn_http_request_size_bytes
        if request_bytes:
            h[req_b[bisect_left(self._size_bounds, request_bytes)]] += 1.0
            h[req_s] += request_bytes
        else:
            h[req_b[self._empty_bucket]] += 1.0
        # gunicorn_http_response_size_bytes
        if response_bytes:
            h[resp_b[bisect_left(self._size_bounds, response_bytes)]] += 1.0
            h[resp_s] += response_bytes
        else:
            h[resp_b[self._empty_bucket]] += 1.0

    def _add_locked(self, series: Series, duration: float, request_bytes: int,
                    response_bytes: int) -> None:
        self._acquire()
        try:
            self._add(series, duration, request_bytes, response_bytes)
        finally:
            self._release()

    def _register(self, method: str, route: str, status: str) -> Series:
        by_route = self._by_route.get((method, route))
        if by_route is None:
            labels = {"method": method, "route": route}
            h = self._histograms
            by_route = (
                histogram_positions(h, families.HTTP_DURATION, labels, self._duration_bounds)
                + histogram_positions(h, families.HTTP_REQUEST_SIZE, labels,
                                      self._size_label_bounds)
                + histogram_positions(h, families.HTTP_RESPONSE_SIZE, labels,
                                      self._size_label_bounds)
                + (self._native_position(labels),))
            self._by_route[(method, route)] = by_route
        requests = scalar_position(self._counters, families.HTTP_REQUESTS,
                                   {"method": method, "route": route, "status": status})
        # the views are taken after the appends, which may have grown the files
        native_view = self._native.values if self._native is not None else None
        series = Series(self._counters.values, requests, self._histograms.values,
                        *by_route[:-1], native_view, by_route[-1])
        self._series[(method, route, status)] = series
        self.labels_of[requests] = (method, route, status)
        return series

    def _native_position(self, labels: Dict[str, str]) -> int:
        """Index of the zero bucket of the series' native entry (0 when native is off)."""
        if self._native is None or self._native_layout is None:
            return 0
        family = families.HTTP_DURATION
        return self._native.index(entry_key(family.name, labels, family.help,
                                            self._native_layout))

    def in_flight_cell(self) -> Tuple[memoryview, int]:
        """The in-flight gauge as (view, index), for a single-threaded event loop that
        adds to it directly."""
        return self._in_flight_view, self._in_flight

    def in_flight(self, delta: float) -> None:
        """Requests started (+1) or finished (-1)."""
        if not self.parallel_requests:
            self._in_flight_view[self._in_flight] += delta
        else:
            self._acquire()
            try:
                self._in_flight_view[self._in_flight] += delta
            finally:
                self._release()

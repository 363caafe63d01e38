"""Exemplars of the request families: the trace of a recent request on each bucket of
``gunicorn_http_request_duration_seconds`` and on ``gunicorn_http_requests_total``.

Recorded by a call of its own after ``Recorder.add``, and only for a request that carries
a trace: a request without one pays nothing here."""
from __future__ import annotations

from bisect import bisect_left
from time import time
from typing import Dict, Optional, Sequence, Tuple

from prometheus_client.utils import floatToGoString

from . import families
from .recorder import Recorder, Series
from .storage import exemplars as files
from .storage.mmap_file import StorageFull, sample_key
from .tracing import Trace


class ExemplarRecorder:
    """One worker's exemplar slots; ``recorder`` gives the series' labels and the lock
    that serialises threads (gthread). The file is created by the first traced request:
    a worker that never sees one has none."""

    def __init__(self, directory: str, identity: str, recorder: Recorder,
                 duration_bounds: Sequence[float]) -> None:
        self._path = files.path_of(directory, identity)
        self._file: Optional[files.ExemplarFile] = None
        self._recorder = recorder
        self._bounds = list(duration_bounds)
        self._le = [floatToGoString(b) for b in self._bounds] + ["+Inf"]
        #: (series counter index, bucket) -> (counter slot, bucket slot)
        self._slots: Dict[Tuple[int, int], Tuple[int, int]] = {}

    def observe(self, series: Series, duration: float, trace: Trace, ended: float) -> None:
        """The request of ``series`` that took ``duration`` and ended at Unix time ``ended``
        belongs to ``trace``. Its slots keep the request that ended last: threads (gthread)
        and coroutines (ASGI: a background task after the response) record in another
        order than their requests ended."""
        bucket = bisect_left(self._bounds, duration)
        slots = self._slots.get((series.requests, bucket))
        if slots is None:
            if series is self._recorder.dropped:
                return  # the request itself could not be stored: nor can its exemplar
            try:
                slots = self._register(series.requests, bucket)
            except StorageFull as fault:
                self._recorder.unstored(fault)
                return
        ids = bytes.fromhex(trace[0] + trace[1])
        now = time()  # a slot newer than now dates from before the clock was set back
        file = self._file
        lock = self._recorder.lock
        if lock is not None:
            lock.acquire()
        try:
            file.put(slots[0], 1.0, ended, ids, now)  # type: ignore[union-attr]
            file.put(slots[1], duration, ended, ids, now)  # type: ignore[union-attr]
        finally:
            if lock is not None:
                lock.release()

    def _register(self, count: int, bucket: int) -> Tuple[int, int]:
        if self._file is None:
            self._file = files.ExemplarFile(self._path)
        method, route, status = self._recorder.labels_of[count]
        requests, duration = families.HTTP_REQUESTS, families.HTTP_DURATION
        counter_key = sample_key(requests.name, requests.sample,
                                 {"method": method, "route": route, "status": status},
                                 requests.help)
        bucket_key = sample_key(duration.name, duration.name + "_bucket",
                                {"method": method, "route": route, "le": self._le[bucket]},
                                duration.help)
        slots = (self._file.slot(counter_key), self._file.slot(bucket_key))
        self._slots[(count, bucket)] = slots
        return slots

"""Request queue time: how long a request waited between the front proxy stamping it
(``X-Request-Start`` or ``X-Queue-Start``) and a worker starting it. Request duration
starts when a worker is free, so it hides this wait; a growing queue time is the signal to
add workers.

Only a request that carries the header costs anything: the worker looks the header up
(one dict lookup in WSGI) and comes here only when it is present."""
from __future__ import annotations

import math
from bisect import bisect_left
from typing import Optional, Sequence

from . import families
from .recorder import histogram_positions
from .writer import Writer

#: the headers read, in order of preference, as WSGI environ keys and ASGI header names
ENVIRON_KEYS = ("HTTP_X_REQUEST_START", "HTTP_X_QUEUE_START")
HEADER_NAMES = (b"x-request-start", b"x-queue-start")

#: reasons a stamp was not observed as it came (``gunicorn_http_request_queue_invalid``)
MALFORMED = "malformed"  # not a number of any supported form: dropped
NEGATIVE = "negative"  # stamped after the worker started (clock skew): observed as 0
TOO_LARGE = "too_large"  # longer than ``queue_max_seconds``: dropped
REASONS = (MALFORMED, NEGATIVE, TOO_LARGE)


def stamp_seconds(value: str) -> Optional[float]:
    """Unix time in seconds of a proxy's stamp, or None when it is not one.

    Accepted: ``t=`` followed by a number, or the number alone; seconds with a fraction
    (nginx ``t=${msec}``), or whole milliseconds, microseconds (Apache ``%t``) or
    nanoseconds since the epoch (Heroku, HAProxy ``%[date(0,ms)]``), told apart by their
    size; anything after a space or comma is ignored (Apache adds ``D=...``)."""
    text = value.strip()
    if text.startswith("t="):
        text = text[2:]
    for separator in (" ", ","):
        text = text.split(separator, 1)[0]
    try:
        number = float(text)
    except ValueError:
        return None
    if not (number > 0 and math.isfinite(number)):
        return None
    for limit, scale in ((1e17, 1e-9), (1e14, 1e-6), (1e11, 1e-3)):
        if number >= limit:
            return number * scale
    return number


class QueueTime:
    """Observes queue times into the worker's histogram file. ``writer`` is the worker's
    ``Recorder``, whose lock (threaded workers) also guards these stores."""

    def __init__(self, writer: Writer, bounds: Sequence[float], max_seconds: float) -> None:
        self._writer = writer
        self._bounds = list(bounds)
        self._max = max_seconds
        histograms = writer.store.file("histogram")
        self._buckets, self._sum = histogram_positions(histograms, families.HTTP_QUEUE, {},
                                                       self._bounds)
        self._values = histograms.values  # after the appends, which may grow the file
        for reason in REASONS:  # every series exists from the start, at zero
            writer.prepare(families.HTTP_QUEUE_INVALID, (reason,))

    def observe(self, header: str, started: float) -> None:
        """One request stamped ``header`` that a worker started at Unix time ``started``."""
        stamp = stamp_seconds(header)
        if stamp is None:
            self._writer.count(families.HTTP_QUEUE_INVALID, (MALFORMED,))
            return
        waited = started - stamp
        if waited < 0.0:
            self._writer.count(families.HTTP_QUEUE_INVALID, (NEGATIVE,))
            waited = 0.0
        elif waited > self._max:
            self._writer.count(families.HTTP_QUEUE_INVALID, (TOO_LARGE,))
            return
        lock = self._writer.lock
        if lock is None:
            self._store(waited)
        else:
            with lock:
                self._store(waited)

    def _store(self, waited: float) -> None:
        values = self._values
        values[self._buckets[bisect_left(self._bounds, waited)]] += 1.0
        values[self._sum] += waited

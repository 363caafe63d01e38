"""Where a metrics process reads metrics from: a multiprocess directory (the plugin's own
metrics process, or the standalone exporter as a sidecar), or Redis (the standalone
exporter as a DaemonSet). Each source exposes ``collect()`` (families, health included)
and ``close()``."""
from __future__ import annotations

import logging
import os
import time
from typing import Any, Iterable, Iterator, Protocol

from . import speedups
from .collector import DirectoryCollector, health_families
from .config import Settings

_DOWN = ("cannot read %s (missing or not readable); serving health metrics only until it "
         "appears")


class Source(Protocol):
    description: str

    def collect(self) -> Iterable[Any]: ...

    def ready(self) -> bool:
        """False while a read cannot finish (``/-/ready`` answers 503)."""

    def warm_up(self) -> None:
        """Build what makes a first scrape cheap, before one arrives (a background thread
        of the metrics process at start); never raises."""

    def close(self) -> None: ...


class DirectorySource:
    def __init__(self, directory: str, log: logging.Logger) -> None:
        self.collector = DirectoryCollector(directory, compiled=speedups.load())
        self.description = f"directory {directory}"
        self._log = log
        self._was_up = os.path.isdir(directory)
        self._was_stuck = False
        self._resets_said = False
        if not self._was_up:  # said at start, not only at the first scrape
            log.error(_DOWN, self.description)

    def collect(self) -> Iterator[Any]:
        families = self.collector.read()
        stuck = self.collector.stuck
        if stuck and not self._was_stuck:
            self._log.error("reading %s did not finish within %g s; serving health metrics "
                            "only, and /-/ready answers 503, until it does",
                            self.description, self.collector.deadline)
        self._was_stuck = stuck
        up = bool(self.collector.source_up) or stuck
        if up != self._was_up:
            if up:
                self._log.info("reading %s again", self.description)
            else:
                self._log.error(_DOWN, self.description)
            self._was_up = up
        if self.collector.resets and not self._resets_said:
            self._resets_said = True
            self._log.info("the tables of keys and series read from %s held far more than "
                           "its files need (keys that churn: label values that keep "
                           "changing, files replaced with other keys): dropped, and the "
                           "files numbered afresh (a cold read), as happens again each time "
                           "they outgrow the files; counted in "
                           "gunicorn_exporter_table_resets_total (said once)",
                           self.description)
        yield from families
        yield from health_families(self.collector, "directory")

    def ready(self) -> bool:
        return not self.collector.stuck

    def warm_up(self) -> None:
        """One read at start, so the first scrape numbers no keys; a missing directory was
        said at start already (its first read after it appears is a full one)."""
        if not self._was_up:
            return
        started = time.perf_counter()
        try:
            self.collector.warm_up()
        except Exception as exc:  # noqa: BLE001 - the first scrape reads it in full
            self._log.warning("reading %s at start failed (%s: %s); the first scrape reads "
                              "it in full", self.description, type(exc).__name__, exc)
            return
        self._log.info("read %s at start in %.2f s (%d files): scrapes only read values",
                       self.description, time.perf_counter() - started,
                       self.collector.last_files)

    def close(self) -> None:
        pass


def open_source(settings: Settings, log: logging.Logger) -> Source:
    if settings.redis.enabled:
        from .redis_storage.source import RedisSource

        return RedisSource(settings, log)
    return DirectorySource(settings.multiproc_dir, log)

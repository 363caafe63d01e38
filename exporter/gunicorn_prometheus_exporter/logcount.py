"""``gunicorn_log_messages_total{level}``: a logging handler on gunicorn's error logger,
as gunicorn's own statsd logger counts levels. In the master it also passes every record
to the exit witness, which learns from gunicorn's messages how a reaped worker ended.

Each process counts into its own files. The one line a new worker logs before it has
any ("Booting worker with pid ...") is not counted."""
from __future__ import annotations

import logging
import os
from typing import Callable, Dict, Optional

from . import families
from .writer import Writer

LEVELS = ("debug", "info", "warning", "error", "critical")
LOGGER = "gunicorn.error"


class LevelCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.writer: Optional[Writer] = None
        self.witness: Optional[Callable[[str], None]] = None
        self._owner = os.getpid()
        self._pending: Dict[str, int] = {}  # counted before this process had a writer

    def use(self, writer: Optional[Writer], witness: Optional[Callable[[str], None]] = None
            ) -> None:
        """Count into ``writer`` from now on (each process sets its own after fork)."""
        if writer is not None:
            for level in LEVELS:
                writer.prepare(families.LOG_MESSAGES, (level,))
            if os.getpid() == self._owner:
                for level, count in self._pending.items():
                    writer.count(families.LOG_MESSAGES, (level,), count)
        self._pending = {}
        self.writer = writer
        self.witness = witness
        self._owner = os.getpid()

    def emit(self, record: logging.LogRecord) -> None:
        if os.getpid() != self._owner:
            return  # a child between fork and taking over its own counter: not ours to count
        try:
            level = record.levelname.lower()
            level = level if level in LEVELS else "critical"
            writer = self.writer
            if writer is not None:
                writer.count(families.LOG_MESSAGES, (level,))
            else:
                self._pending[level] = self._pending.get(level, 0) + 1
            if self.witness is not None:
                self.witness(record.getMessage())
        except Exception:  # noqa: BLE001 - a metrics failure must not break logging
            pass


def counter() -> LevelCounter:
    """The process's handler, attached once to the ``gunicorn.error`` logger (which
    gunicorn's logger class uses whatever its configuration) and found there again: the
    logger holds it, not a global of ours. Attached when gunicorn loads the worker class,
    before the master logs its first line; what it counts before the master has a writer
    is kept and handed over."""
    logger = logging.getLogger(LOGGER)
    for handler in logger.handlers:
        if isinstance(handler, LevelCounter):
            return handler
    handler = LevelCounter()
    logger.addHandler(handler)
    return handler

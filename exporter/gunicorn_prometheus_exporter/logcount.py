"""``gunicorn_log_messages_total{level}``: a logging handler on gunicorn's error logger,
as gunicorn's own statsd logger counts levels. In the master it also passes every record
to the exit witness, which learns from gunicorn's messages how a reaped worker ended."""
from __future__ import annotations

import logging
from typing import Callable, Optional

from . import metrics as catalogue
from .recorder import Writer

LEVELS = ("debug", "info", "warning", "error", "critical")
_handler: Optional["LevelCounter"] = None


class LevelCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.writer: Optional[Writer] = None
        self.witness: Optional[Callable[[str], None]] = None

    def use(self, writer: Optional[Writer], witness: Optional[Callable[[str], None]] = None
            ) -> None:
        """Count into ``writer`` from now on (each process sets its own after fork)."""
        if writer is not None:
            for level in LEVELS:
                writer.prepare(catalogue.LOG_MESSAGES, (level,))
        self.writer = writer
        self.witness = witness

    def emit(self, record: logging.LogRecord) -> None:
        try:
            writer = self.writer
            if writer is not None:
                level = record.levelname.lower()
                writer.count(catalogue.LOG_MESSAGES,
                             (level if level in LEVELS else "critical",))
            if self.witness is not None:
                self.witness(record.getMessage())
        except Exception:  # noqa: BLE001 - a metrics failure must not break logging
            pass


def counter() -> LevelCounter:
    """The process's handler, attached once to the ``gunicorn.error`` logger (which
    gunicorn's logger class uses whatever its configuration)."""
    global _handler
    if _handler is None:
        _handler = LevelCounter()
        logging.getLogger("gunicorn.error").addHandler(_handler)
    return _handler

"""Counting the signals the master receives.

Gunicorn's arbiter installs its handlers in ``init_signals`` (before ``when_ready``); ours
are chained in front of them: count, note what the master is about to do (reload,
shutdown), then call gunicorn's handler unchanged. The handlers only add to values whose
entries exist already, so they never allocate file space or take a lock."""
from __future__ import annotations

import signal
from typing import Any, Callable, Dict

from . import families
from .recorder import Writer

COUNTED = ("HUP", "USR1", "USR2", "TTIN", "TTOU", "INT", "TERM", "QUIT", "WINCH")


def install(writer: Writer, on_signal: Callable[[str], None]) -> None:
    """Chain a counting handler in front of the current one of every counted signal."""
    previous: Dict[int, Any] = {}
    for name in COUNTED:
        signum = getattr(signal, "SIG" + name)
        writer.prepare(families.MASTER_SIGNALS, (name.lower(),))
        previous[signum] = signal.getsignal(signum)
        signal.signal(signum, _handler(name, writer, on_signal, previous[signum]))


def _handler(name: str, writer: Writer, on_signal: Callable[[str], None],
             theirs: Any) -> Callable[[int, Any], None]:
    label = (name.lower(),)

    def counting_handler(signum: int, frame: Any) -> None:
        try:
            writer.count(families.MASTER_SIGNALS, label)
            on_signal(name)
        except Exception:  # noqa: BLE001 - never break gunicorn's own handling
            pass
        if callable(theirs):
            theirs(signum, frame)
        elif theirs == signal.SIG_DFL and signum != signal.SIGWINCH:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)

    return counting_handler

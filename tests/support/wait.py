"""Polling with a deadline: the only way tests wait for something to happen (standard
library only: the image tests use it too)."""
from __future__ import annotations

import time
from typing import Callable, Optional, TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError, TimeoutError):
    """The deadline passed: a failed assertion of the test, and a ``TimeoutError`` for
    callers that catch one."""


def until(condition: Callable[[], Optional[T]], timeout: float = 15.0, interval: float = 0.05,
          message: str = "condition",
          abort: Optional[Callable[[], Optional[str]]] = None) -> T:
    """Return the first truthy result of ``condition``; fail after ``timeout`` seconds.
    ``abort`` (say, "the container exited") is asked each round: a reason it returns ends
    the wait at once with that reason."""
    deadline = time.monotonic() + timeout
    last_error: Optional[BaseException] = None
    while time.monotonic() < deadline:
        if abort is not None:
            reason = abort()
            if reason:
                raise AssertionError(f"{message}: {reason}")
        try:
            result = condition()
            if result:
                return result
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last_error = exc
        time.sleep(interval)
    raise WaitTimeout(f"timed out after {timeout}s waiting for {message}"
                      + (f" (last error: {last_error!r})" if last_error else ""))

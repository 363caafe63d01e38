"""Polling with a deadline: the only way tests wait for something to happen."""
from __future__ import annotations

import time
from typing import Callable, Optional, TypeVar

T = TypeVar("T")


def until(condition: Callable[[], Optional[T]], timeout: float = 15.0, interval: float = 0.05,
          message: str = "condition") -> T:
    """Return the first truthy result of ``condition``; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Optional[BaseException] = None
    while time.monotonic() < deadline:
        try:
            result = condition()
            if result:
                return result
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}"
                         + (f" (last error: {last_error!r})" if last_error else ""))

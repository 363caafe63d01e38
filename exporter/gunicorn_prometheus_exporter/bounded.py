"""A call that its callers wait for at most a deadline.

A scrape must answer even when reading the storage cannot finish (a hung network file
system, a file that blocks): the read runs in a helper thread, the caller waits until the
deadline and goes on without it. An overdue read is never started twice: later callers
wait for the same one (so a stuck storage holds one thread, not one per scrape), and
``overdue`` says so to a readiness probe until it finishes."""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, Generic, Optional, TypeVar

T = TypeVar("T")


class Overdue(TimeoutError):
    """The call did not finish within the deadline (it goes on in the background)."""


class _Run:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.done = threading.Event()
        self.result: Any = None
        self.error: Optional[BaseException] = None


class BoundedCall(Generic[T]):
    def __init__(self, call: Callable[[], T], deadline: float, name: str) -> None:
        self._call = call
        self.deadline = deadline
        self._name = name
        self._lock = threading.Lock()
        self._running: Optional[_Run] = None

    def __call__(self) -> T:
        """The call's result (or its exception); ``Overdue`` once ``deadline`` seconds
        have passed since the call started."""
        with self._lock:
            run = self._running
            if run is None:
                run = self._running = _Run()
                threading.Thread(target=self._run, args=(run,), name=self._name,
                                 daemon=True).start()
        if not run.done.wait(max(0.0, run.started + self.deadline - time.monotonic())):
            raise Overdue(f"{self._name} did not finish within {self.deadline:g} s")
        if run.error is not None:
            raise run.error
        return run.result

    def _run(self, run: _Run) -> None:
        try:
            run.result = self._call()
        except BaseException as exc:  # handed to every caller waiting for this run
            run.error = exc
        finally:
            with self._lock:
                self._running = None
            run.done.set()

    @property
    def overdue(self) -> bool:
        """True while a call runs past its deadline."""
        run = self._running
        return run is not None and time.monotonic() - run.started > self.deadline

"""A call that its callers wait for at most a deadline.

A scrape must answer even when reading the storage cannot finish (a hung network file
system, a file that blocks): the read runs in a helper thread, the caller waits until the
deadline and goes on without it. An overdue read is never started twice: later callers
wait for the same one (so a stuck storage holds one thread, not one per scrape), and
``overdue`` says so to a readiness probe until it finishes. The helper thread is started
once and kept: a scrape starts no thread (and the process's thread count stays flat)."""
from __future__ import annotations

import queue
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
        self._runs: "queue.SimpleQueue[_Run]" = queue.SimpleQueue()
        self._helper: Optional[threading.Thread] = None

    def __call__(self) -> T:
        """The call's result (or its exception); ``Overdue`` once ``deadline`` seconds
        have passed since the call started."""
        with self._lock:
            run = self._running
            if run is None:
                run = self._running = _Run()
                if self._helper is None:
                    self._helper = threading.Thread(target=self._serve, name=self._name,
                                                    daemon=True)
                    self._helper.start()
                self._runs.put(run)
        if not run.done.wait(max(0.0, run.started + self.deadline - time.monotonic())):
            raise Overdue(f"{self._name} did not finish within {self.deadline:g} s")
        if run.error is not None:
            raise run.error
        return run.result

    def _serve(self) -> None:
        """The helper thread: one run after another (a run is only queued once the one
        before has finished)."""
        while True:
            self._run(self._runs.get())

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

"""Periodic work that runs in the metrics server process, off every request path: the
Redis flusher (when Redis storage is on) and samplers of master-side state. A task fails
alone: its exception is logged and it runs again at its next period."""
from __future__ import annotations

import time
from typing import Any, List, Optional, Protocol, Sequence

from ..config import Settings
from ..master_id import MasterId


class Task(Protocol):
    name: str
    interval: float

    def run(self) -> None: ...

    def close(self) -> None: ...


def background_tasks(settings: Settings, directory: str, log: Any,
                     listeners: Sequence[Any] = (), writer: Any = None,
                     master: Optional[MasterId] = None) -> List[Task]:
    tasks: List[Task] = []
    if writer is not None and listeners:
        from ..backlog import BacklogSampler

        sampler = BacklogSampler(listeners, writer, interval=1.0)
        if sampler.useful:
            tasks.append(sampler)
    if settings.redis.enabled:
        from ..redis_storage.flusher import Flusher

        tasks.append(Flusher(settings, directory, log, master))
    return tasks


class Scheduler:
    """Runs each task every ``interval`` seconds from one loop."""

    def __init__(self, tasks: List[Task], log: Any) -> None:
        self._tasks = tasks
        self._log = log
        self._due = [time.monotonic()] * len(tasks)

    def tick(self) -> float:
        """Run what is due; returns seconds until the next task is due."""
        now = time.monotonic()
        for i, task in enumerate(self._tasks):
            if now >= self._due[i]:
                try:
                    task.run()
                except Exception:
                    self._log.exception("prometheus: background task %s failed", task.name)
                self._due[i] = time.monotonic() + task.interval
        return max(0.0, min(self._due, default=now + 1.0) - time.monotonic())

    def close(self) -> None:
        for task in self._tasks:
            try:
                task.close()
            except Exception:
                self._log.exception("prometheus: closing background task %s failed",
                                    task.name)

"""gunicorn 27's dirty-worker pool: the dirty arbiter (a child of the master) and its dirty
workers, which run the ``dirty_apps`` for the HTTP workers. Measured through gunicorn's
own hooks, chained in front of the user's: ``on_dirty_starting`` (in the arbiter: the pool
size), ``dirty_worker_init`` (in each dirty worker, after its apps loaded: every app wrapped
so that its tasks are timed and counted) and ``dirty_worker_exit`` (in the arbiter: exits
by reason). Each of these processes writes under an identity of its own (``a<N>``,
``d<N>``), so no two processes ever write the same file. On a gunicorn without dirty
workers none of the hooks exist and nothing here runs.

``dirty_worker_exit`` gets the worker but not its exit status, which the arbiter's
``reap_workers`` reads with ``waitpid`` and keeps to itself. So the arbiter's
``reap_workers`` is wrapped: before it reaps, each of its workers' status is read without
reaping (``waitid`` with ``WNOWAIT``), and the hook that follows names the reason from it."""
from __future__ import annotations

import os
import signal
from bisect import bisect_left
from time import perf_counter
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from . import families
from .recorder import histogram_positions
from .storage import directory as storage_dir
from .storage.store import ProcessStore
from .writer import Writer


#: ``gunicorn_dirty_worker_exits_total{reason}``: killed after ``dirty_timeout``; by
#: SIGKILL from elsewhere (the kernel's OOM killer); by another signal or a non-zero exit
#: code; with code 0 (told to stop: reload, scale down, shutdown), or status unknown
EXIT_REASONS = ("timeout", "killed", "crashed", "exited")
#: the ways a child ends that ``waitid`` reports (``CLD_*`` of siginfo ``si_code``)
_SIGNALLED = (getattr(os, "CLD_KILLED", -1), getattr(os, "CLD_DUMPED", -1))
_EXITED = getattr(os, "CLD_EXITED", -1)


def exit_reason(aborted: bool, status: Optional[Tuple[int, int]]) -> str:
    """The reason of a dirty worker's exit from the arbiter's ``aborted`` flag (set when it
    killed the worker for its timeout) and ``status``: ``(si_code, si_status)`` of
    ``waitid``, or None when it could not be read (then ``exited``)."""
    if aborted:
        return "timeout"
    if status is None:
        return "exited"
    code, value = status
    if code in _SIGNALLED:
        return "killed" if value == signal.SIGKILL else "crashed"
    return "crashed" if code == _EXITED and value != 0 else "exited"


def peek_statuses(pids: Sequence[int]) -> Dict[int, Tuple[int, int]]:
    """``(si_code, si_status)`` of each of ``pids`` that has ended, left to be reaped."""
    found = {}
    flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
    for pid in pids:
        try:
            info = os.waitid(os.P_PID, pid, flags)
        except ChildProcessError:  # already reaped, or not a child
            continue
        if info is not None:
            found[pid] = (info.si_code, info.si_status)
    return found


class DirtyPool:
    """The hooks' side, created in the master and inherited by the arbiter and workers."""

    def __init__(self, directory: str, duration_bounds: Sequence[float]) -> None:
        self.directory = directory
        self.duration_bounds = list(duration_bounds)
        self.writer: Optional[Writer] = None  # set in the arbiter's process
        #: exit statuses of the dirty workers the arbiter is about to reap
        self._statuses: Dict[int, Tuple[int, int]] = {}

    def _writer(self, prefix: str, threaded: bool) -> Writer:
        # the claim's lock is held until the process exits (the kernel drops it)
        claim = storage_dir.claim(self.directory, prefix)
        return Writer(ProcessStore(self.directory, claim.identity), threaded)

    def arbiter_starting(self, arbiter: Any) -> None:
        """``on_dirty_starting``: in the dirty arbiter's process."""
        writer = self.writer = self._writer("a", threaded=False)
        writer.set_gauge(families.DIRTY_WORKERS_DESIRED, float(arbiter.cfg.dirty_workers))
        for reason in EXIT_REASONS:
            writer.prepare(families.DIRTY_WORKER_EXITS, (reason,))
        reap = getattr(arbiter, "reap_workers", None)
        if callable(reap) and hasattr(os, "waitid"):  # not on macOS: reasons stay coarse
            arbiter.reap_workers = self._peeking(reap, arbiter)

    def _peeking(self, reap: Callable[[], None], arbiter: Any) -> Callable[[], None]:
        """``reap`` after reading the exit statuses of the arbiter's workers."""
        def reap_workers() -> None:
            self._statuses = peek_statuses(list(arbiter.workers))
            reap()
        return reap_workers

    def worker_exit(self, arbiter: Any, worker: Any) -> None:
        """``dirty_worker_exit``: in the arbiter, once a dirty worker is gone."""
        if self.writer is not None:
            status = self._statuses.pop(getattr(worker, "pid", None), None)
            reason = exit_reason(getattr(worker, "aborted", False), status)
            self.writer.count(families.DIRTY_WORKER_EXITS, (reason,))

    def worker_init(self, worker: Any) -> None:
        """``dirty_worker_init``: in a dirty worker whose apps are loaded; its tasks run in
        a thread pool, so the writer is locked."""
        meter = TaskMeter(self._writer("d", threaded=True), self.duration_bounds)
        worker.apps = {path: MeteredDirtyApp(app, path, meter)
                       for path, app in worker.apps.items()}


class TaskMeter:
    """The tasks of one dirty worker: counts, durations, failures and busy/idle."""

    def __init__(self, writer: Writer, bounds: Sequence[float]) -> None:
        self.writer = writer
        self._bounds = bounds
        self._histograms = writer.store.file("histogram")
        self._apps: Dict[str, Tuple[Tuple[int, ...], int]] = {}
        self._running = 0
        self._set_state()

    def _set_state(self) -> None:
        busy = float(self._running > 0)
        self.writer.set_gauge(families.DIRTY_WORKERS, busy, ("busy",))
        self.writer.set_gauge(families.DIRTY_WORKERS, 1.0 - busy, ("idle",))

    def prepare(self, app: str) -> None:
        self.writer.prepare(families.DIRTY_TASKS, (app,))
        self._apps[app] = histogram_positions(self._histograms, families.DIRTY_TASK_DURATION,
                                              {"app": app}, self._bounds)

    def started(self) -> None:
        with self.writer.lock:  # type: ignore[union-attr]
            self._running += 1
            if self._running == 1:
                self._set_state()

    def ended(self, app: str, took: float, error: Optional[BaseException] = None) -> None:
        buckets, total = self._apps[app]
        values = self._histograms.values
        with self.writer.lock:  # type: ignore[union-attr]
            values[buckets[bisect_left(self._bounds, took)]] += 1.0
            values[total] += took
            self._running -= 1
            if not self._running:
                self._set_state()
        self.writer.count(families.DIRTY_TASKS, (app,))
        if error is not None:
            self.writer.count(families.DIRTY_TASK_FAILURES, (app, type(error).__name__))


class MeteredDirtyApp:
    """A dirty app whose calls are timed and counted; everything else is the app's."""

    def __init__(self, app: Any, path: str, meter: TaskMeter) -> None:
        self._app = app
        self._path = path
        self._meter = meter
        meter.prepare(path)

    def __call__(self, action: str, *args: Any, **kwargs: Any) -> Any:
        meter = self._meter
        meter.started()
        started = perf_counter()
        try:
            result = self._app(action, *args, **kwargs)
        except BaseException as exc:
            meter.ended(self._path, perf_counter() - started, exc)
            raise
        meter.ended(self._path, perf_counter() - started)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._app, name)


def hooks(pool: DirtyPool) -> Dict[str, Callable[..., None]]:
    """Our dirty-pool hooks by name, for ``hookchain``."""
    return {"on_dirty_starting": pool.arbiter_starting,
            "dirty_worker_init": pool.worker_init,
            "dirty_worker_exit": pool.worker_exit}

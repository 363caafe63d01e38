"""Worker resource metrics, sampled on a timer whether or not requests flow, and never on
the request path: in a daemon thread, or on the event loop of an asyncio worker."""
from __future__ import annotations

import threading
import time
from typing import Any, Optional

import psutil

from . import families
from .writer import Writer


class ResourceSampler:
    def __init__(self, recorder: Writer, interval: float) -> None:
        self._recorder = recorder
        self._interval = interval
        self._process = psutil.Process()
        self._started = self._process.create_time()
        # CPU seconds of the slot carry on from the slot's earlier workers
        self._cpu_base = recorder.counter_value(families.WORKER_CPU_SECONDS)
        self._last: Optional[tuple] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        self.sample()
        self._thread = threading.Thread(target=self._run, name="prometheus-sampler",
                                        daemon=True)
        self._thread.start()

    def run_on(self, loop: Any) -> None:
        """Samples every interval as a timer of ``loop`` (an asyncio worker's), so that the
        worker process keeps a single thread: a second one, even asleep, switches glibc's
        malloc into its multi-threaded mode for the rest of the process (locks, and a
        costlier reuse of freed blocks), which cost uvicorn's worker about 6.8 k
        instructions per request, half of what the plugin added (docs/benchmarks.md). A
        loop blocked by the application delays a sample, as it delays every request."""
        loop.call_later(self._interval, self._tick, loop)

    def _tick(self, loop: Any) -> None:
        if self._stop.is_set():
            return
        try:
            self.sample()
        except psutil.Error:
            return
        loop.call_later(self._interval, self._tick, loop)

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.sample()
            except psutil.Error:
                return

    def sample(self) -> None:
        """The resource values; first, the files of this process shortened by someone else
        are found and given a sink (``Writer.check_storage``), before a store here meets
        one."""
        self._recorder.check_storage()
        now = time.time()
        times = self._process.cpu_times()
        cpu = times.user + times.system
        rec = self._recorder
        rec.set_counter(families.WORKER_CPU_SECONDS, self._cpu_base + cpu)
        rec.set_gauge(families.WORKER_MEMORY, float(self._process.memory_info().rss))
        rec.set_gauge(families.WORKER_UPTIME, max(0.0, now - self._started))
        if self._last is not None:
            last_time, last_cpu = self._last
            elapsed = now - last_time
            if elapsed > 0:
                rec.set_gauge(families.WORKER_CPU_PERCENT, 100.0 * (cpu - last_cpu) / elapsed)
        else:
            rec.set_gauge(families.WORKER_CPU_PERCENT, 0.0)
        self._last = (now, cpu)

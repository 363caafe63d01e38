"""Why a worker exited.

Gunicorn's ``child_exit`` hook gets the worker but not its exit status, so the reason is
put together from three witnesses, all off the request path:

* the worker itself writes its *intent* into a one-byte shared-memory file of its slot
  when it decides or is told to stop (``max_requests`` reached, SIGTERM/INT/QUIT received,
  SIGABRT from the arbiter's timeout);
* gunicorn's own log records about the reaped pid (``exited with code N``, ``was sent
  SIGKILL``, ``WORKER TIMEOUT``), read by a logging handler as they are emitted;
* what the master was doing: a HUP (reload), a shutdown, or neither (TTOU scale-down).
"""
from __future__ import annotations

import mmap
import os
import re
from typing import Any, Dict, Optional, Set, Tuple

from .storage.mmap_file import StorageFull, allocate, open_writable, watch

NONE, MAX_REQUESTS, TERMINATED, TIMEOUT = 0, 1, 2, 3
_INTENT_NAMES = {MAX_REQUESTS: "max_requests", TIMEOUT: "timeout"}

_EXIT_CODE = re.compile(r"Worker \(pid:(\d+)\) exited with code (-?\d+)")
_SIGNALLED = re.compile(r"Worker \(pid:(\d+)\) was sent (\w+)")
_TIMED_OUT = re.compile(r"WORKER TIMEOUT \(pid:(\d+)\)")

#: gunicorn halts the whole server when a worker exits with these codes (boot failure,
#: application load failure), so every exit after them is part of a shutdown
HALTING_CODES = (3, 4)


class Intent:
    """A slot's one-byte intent, in shared memory (a store, never a system call)."""

    def __init__(self, directory: str, identity: str) -> None:
        path = os.path.join(directory, identity + ".exit")
        self._map: Any = bytearray(8)  # kept in memory when the storage cannot take it
        try:
            fd = open_writable(path)
        except StorageFull:
            return
        try:
            allocate(fd, 8, path)  # a page of real blocks before it is mapped
            self._map = mmap.mmap(fd, 8)
            watch(self._map)  # a file cut short under it: set() stores into a sink
        except StorageFull:
            pass
        finally:
            os.close(fd)
        self._map[0] = NONE

    def set(self, code: int) -> None:
        if self._map[0] in (NONE, TERMINATED) or code == TIMEOUT:
            self._map[0] = code


def take_intent(directory: str, identity: str) -> int:
    """Read and clear a dead slot's intent (master side)."""
    path = os.path.join(directory, identity + ".exit")
    try:
        fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return NONE
    try:
        value = os.pread(fd, 1, 0)
        if value:  # an allocated byte: rewriting it never needs a block
            os.pwrite(fd, bytes([NONE]), 0)
        return value[0] if value else NONE
    finally:
        os.close(fd)


class ExitWitness:
    """Master-side memory of what gunicorn logged about worker pids, and of the master's
    own state, turned into one reason per exit."""

    def __init__(self) -> None:
        self._status: Dict[int, str] = {}  # pid -> 'SIGKILL' | 'exit_3' ...
        self._timed_out: Set[int] = set()
        self.reloading: Set[int] = set()
        self.stopping = False

    def observe_log(self, message: str) -> None:
        match = _EXIT_CODE.search(message)
        if match:
            code = int(match.group(2))
            self._status[int(match.group(1))] = f"exit_{code}"
            if code in HALTING_CODES:
                self.stopping = True
            return
        match = _SIGNALLED.search(message)
        if match:
            self._status.setdefault(int(match.group(1)), match.group(2))
            return
        match = _TIMED_OUT.search(message)
        if match:
            self._timed_out.add(int(match.group(1)))

    def reason(self, pid: int, intent: int) -> Tuple[str, str]:
        """(reason, restart_type) for a reaped worker; forgets the pid."""
        status = self._status.pop(pid, None)
        timed_out = pid in self._timed_out
        self._timed_out.discard(pid)
        reloading = pid in self.reloading
        self.reloading.discard(pid)
        how = status or "exit_0"
        if timed_out or intent == TIMEOUT:
            return "timeout", status or "SIGABRT"
        if intent == MAX_REQUESTS:
            return "max_requests", how
        if self.stopping and how in ("exit_0", "SIGTERM", "SIGQUIT", "SIGINT", "SIGKILL"):
            return "shutdown", how
        if status == "SIGKILL":
            return "killed", how
        if intent == TERMINATED or status in ("SIGTERM", "SIGINT", "SIGQUIT"):
            return ("reload" if reloading else "scale_down"), how
        if how != "exit_0":
            return "crashed", how  # a non-zero exit code or a fatal signal
        return "exited", how

    def ended(self, pid: Optional[int]) -> bool:
        """Whether gunicorn reported this pid's end (it may have halted before calling
        ``child_exit`` for it)."""
        return pid is not None and (pid in self._status or pid in self._timed_out)

"""Which incarnation a gunicorn instance writes under, kept in its multiprocess directory.

An incarnation is ``<name>-<start>-<pid>``: the name is ``REDIS_INSTANCE_ID`` (default
the host or pod name, ``HOSTNAME``), the start is when the directory's first master
started (base 36 milliseconds) and the pid is that master's (base 36), so two masters
started on one host within the same clock tick are still two instances. It is stored in the directory, in ``redis-instance.lock``, so

* a restarted metrics process, and the new master of a USR2 upgrade (which shares the
  directory and continues its files), go on under the same incarnation;
* the master's start-up clean-up of the directory (which removes ``*.lock`` with the data
  files) also forgets the incarnation: fresh files, fresh incarnation. A restart therefore
  never writes to its predecessor's keys, even with a fixed ``REDIS_INSTANCE_ID``.

The file is JSON, not a lock anyone takes (the suffix only ties it to the clean-up). After
a revival (see ``Flusher``) it also holds the baseline: values already folded into the
durable totals under the previous incarnation, subtracted from what is shipped."""
from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from typing import Dict, Optional, Tuple

FILE = "redis-instance.lock"


def default_name(configured: Optional[str]) -> str:
    name = (configured or os.environ.get("HOSTNAME") or socket.gethostname() or "gunicorn")
    return name.strip().replace("\n", " ") or "gunicorn"


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if not n:
            return out


def master_start(pid: int) -> float:
    """Start time of the master ``pid`` (the metrics process's parent)."""
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:  # noqa: BLE001 - any clock will do for a unique name
        return time.time()


def load(directory: str, name: str, master_pid: int
         ) -> Tuple[str, Dict[str, float], Optional[int]]:
    """(incarnation, baseline, pid of the master that closed it) of the directory, created
    on first use by the master ``master_pid``."""
    path = os.path.join(directory, FILE)
    try:
        with open(path, encoding="utf-8") as fh:
            state = json.load(fh)
        baseline = {str(k): float(v) for k, v in state.get("baseline", {}).items()}
        closed = state.get("closed_by")
        return str(state["id"]), baseline, int(closed) if closed is not None else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    incarnation = (f"{name}-{_base36(int(master_start(master_pid) * 1000))}"
                   f"-{_base36(master_pid)}")
    save(directory, incarnation, {})
    return incarnation, {}, None


def save(directory: str, incarnation: str, baseline: Dict[str, float],
         closed_by: Optional[int] = None) -> None:
    """``closed_by``: the master whose shutdown folded the incarnation (a metrics process
    started again by that master while it exits must not revive it)."""
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".redis-instance-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"id": incarnation, "baseline": baseline, "closed_by": closed_by}, fh)
        os.replace(tmp, os.path.join(directory, FILE))
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def next_incarnation(incarnation: str) -> str:
    """``name-start`` -> ``name-start.r1`` -> ``name-start.r2`` ..."""
    head, dot, tail = incarnation.rpartition(".r")
    if dot and tail.isdigit():
        return f"{head}.r{int(tail) + 1}"
    return incarnation + ".r1"

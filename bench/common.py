"""Plumbing shared by the benchmarks: ports, readiness, wrk, CPU time of a process tree."""
from __future__ import annotations

import re
import socket
import subprocess
import time
from typing import Dict, Optional

import psutil


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0,
              proc: Optional[subprocess.Popen] = None) -> None:
    """Until something accepts on ``port``; fails early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc is not None and proc.poll() is not None:
                break
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of a process and all its descendants."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def wrk(port: int, duration: int, connections: int, threads: int = 1) -> Dict[str, object]:
    """One wrk run against ``http://127.0.0.1:port/``."""
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s",
                          f"http://127.0.0.1:{port}/"], capture_output=True, text=True,
                         timeout=duration + 60).stdout
    errors = re.search(r"Socket errors: (.*)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "requests": int(re.search(r"(\d+) requests in", out).group(1)),
            "errors": errors.group(1) if errors else "",
            "non2xx": int(non2xx.group(1)) if non2xx else 0}

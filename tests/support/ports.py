"""Free loopback ports (standard library only: the image tests and the benchmarks use it
from their own environments)."""
from __future__ import annotations

import socket
from typing import Set

_handed_out: Set[int] = set()


def free_port() -> int:
    """A free loopback port, never one handed out before in this session: the kernel may
    give the same free port to two binds in a row, and a test's app and metrics port
    must differ."""
    for _ in range(1000):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no loopback port left that this session has not used")

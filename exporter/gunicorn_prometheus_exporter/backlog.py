"""Listen backlog of gunicorn's TCP listeners, from Linux ``TCP_INFO``: for a listening
socket ``tcpi_unacked`` is the current accept-queue length and ``tcpi_sacked`` its
configured maximum. Sampled by the metrics-server process, which inherits the listeners,
never by a worker or on a request path."""
from __future__ import annotations

import socket
import struct
from typing import Any, List, Optional, Sequence, Tuple

from . import families
from .recorder import Writer

_TCP_INFO = getattr(socket, "TCP_INFO", 11)
_LAYOUT = struct.Struct("8B6I")  # up to tcpi_sacked


def sample(sock: socket.socket) -> Optional[Tuple[int, int]]:
    """(queued, maximum) for a listening TCP socket, or None where unsupported."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _LAYOUT.size)
    except OSError:
        return None
    if len(raw) < _LAYOUT.size:
        return None
    fields = _LAYOUT.unpack(raw)
    return fields[12], fields[13]


class BacklogSampler:
    """A monitor task: one gauge pair per TCP listener."""

    name = "listen-backlog"

    def __init__(self, listeners: Sequence[Any], writer: Writer, interval: float) -> None:
        self.interval = interval
        self._writer = writer
        self._sockets: List[Tuple[str, socket.socket]] = []
        for listener in listeners:
            sock = getattr(listener, "sock", listener)
            if isinstance(sock, socket.socket) and sample(sock) is not None:
                self._sockets.append((str(listener), sock))

    @property
    def useful(self) -> bool:
        return bool(self._sockets)

    def run(self) -> None:
        for name, sock in self._sockets:
            found = sample(sock)
            if found is not None:
                self._writer.set_gauge(families.LISTEN_BACKLOG, float(found[0]), (name,))
                self._writer.set_gauge(families.LISTEN_BACKLOG_MAX, float(found[1]), (name,))

    def close(self) -> None:
        pass

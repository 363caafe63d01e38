"""The metrics socket: bound in the master before any worker (a port conflict is one clear
log line at start-up) or by the standalone exporter, and handed to the metrics process;
taken over from the previous master across a USR2 upgrade, so the port answers throughout."""
from __future__ import annotations

import os
import socket
import stat
from typing import Any, Collection, Optional

#: hosts that bind every address of their family, so they share a port with any host
_WILDCARDS = ("", "0.0.0.0", "::")

#: Kernel queue of connections not yet accepted: room for a flood of reconnecting clients
#: without dropping a scraper's SYN (a dropped SYN costs the scraper a second or more).
LISTEN_BACKLOG = 1024


def shares_port(host: str, port: int, address: Any) -> bool:
    """Whether serving metrics on ``host:port`` would need the port of ``address`` (one
    of gunicorn's listeners: a (host, port, ...) tuple, or a unix socket path)."""
    if not isinstance(address, tuple) or address[1] != port:
        return False
    return host == address[0] or host in _WILDCARDS or address[0] in _WILDCARDS


def listening_socket(host: str, port: int, taken: Collection[int] = ()) -> socket.socket:
    """The metrics socket: one inherited from the previous master of a USR2 upgrade if it
    left one bound to this address (so the port answers throughout the upgrade), otherwise
    a new one. ``taken`` are descriptors never to adopt (gunicorn's own listeners). Raises
    OSError (e.g. address in use)."""
    inherited = _inherited(host, port, taken)
    if inherited is not None:
        return inherited
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=LISTEN_BACKLOG)
    sock.set_inheritable(True)
    return sock


def _inherited(host: str, port: int, taken: Collection[int]) -> Optional[socket.socket]:
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return None
    for fd in fds:
        if fd <= 2 or fd in taken:
            continue
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            candidate = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        try:
            name = candidate.getsockname()
            listening = candidate.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            if (listening and candidate.type == socket.SOCK_STREAM
                    and isinstance(name, tuple) and name[1] == port
                    and name[0] in (host, "::ffff:" + host)):
                os.close(fd)
                candidate.set_inheritable(True)
                return candidate
        except OSError:
            pass
        candidate.close()
    return None

"""Command-line flags that depend on the installed gunicorn (standard library only: the
benchmarks use it too)."""
from __future__ import annotations

from importlib import metadata
from typing import List


def control_socket_args(path: str) -> List[str]:
    """``--control-socket path`` where gunicorn has one (25.1 and later open a control
    socket in the home directory by default: tests and benchmarks give each instance its
    own path); nothing on an older gunicorn, which would refuse the flag."""
    try:
        major, minor = (int(x) for x in metadata.version("gunicorn").split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return []
    return ["--control-socket", path] if (major, minor) >= (25, 1) else []

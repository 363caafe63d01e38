"""Which identity this process writes under, for our files and for prometheus_client's.

Users' own prometheus_client metrics follow the worker's slot instead of its pid (as
django-prometheus does with uWSGI worker ids), so their files do not pile up with worker
restarts either."""
from __future__ import annotations

import os
from typing import Callable, Optional

from .storage.app_file import AppFiles
from .storage.mmap_file import StorageFull

_identity: Optional[str] = None
#: how prometheus_client opens its files in this process (see ``route_prometheus_client``)
_app_files = AppFiles()


#: suffix of the identity under which prometheus_client writes the application's own
#: metrics: its files must not be the plugin's (two writers of one file would overwrite
#: each other's entries), yet they live and die with the same slot lock.
APP_SUFFIX = ".app"


def for_prometheus_client() -> str:
    """prometheus_client's process identifier: the slot's ``.app`` identity in a worker,
    the pid elsewhere (prometheus_client's own default)."""
    return (_identity + APP_SUFFIX) if _identity else str(os.getpid())


def adopt(identity: str) -> None:
    global _identity
    _identity = identity


def route_prometheus_client(directory: str) -> None:
    """Point prometheus_client's multiprocess values at ``directory`` under our identity.
    Called before the application is imported (gunicorn loads the worker class first),
    so the order of imports in the user's code never matters."""
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError:
        pass  # the master's storage set-up says why, in one line, before any worker
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    from prometheus_client import values

    # MultiProcessValue opens its files with the ``MmapedDict`` of its module, looked up
    # when a file is opened: ours never maps a page before it is allocated
    values.MmapedDict = _app_files
    values.ValueClass = values.MultiProcessValue(process_identifier=for_prometheus_client)


def report_unstored(unstored: Callable[[StorageFull], None]) -> None:
    """Where this process counts the application's values the storage cannot take."""
    _app_files.unstored = unstored

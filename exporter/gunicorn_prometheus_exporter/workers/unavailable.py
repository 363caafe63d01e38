"""Stand-ins for worker classes whose library is not installed (or whose gunicorn lacks
the worker): importing the worker module must not fail with a traceback, so the module
exports a class of the same name that stops start-up with one line saying what to install.
Gunicorn calls ``check_config`` in the master before it forks any worker."""
from __future__ import annotations

from typing import Any


def unavailable(name: str, reason: str) -> type:
    """A class named ``name`` whose ``check_config`` ends start-up with ``reason``."""

    def check_config(cls: type, cfg: Any, log: Any) -> None:
        raise SystemExit(reason)

    return type(name, (), {"check_config": classmethod(check_config),
                           "__doc__": f"Not available here: {reason}"})


def install_hint(extra: str) -> str:
    return f"install gunicorn-prometheus-exporter[{extra}]"

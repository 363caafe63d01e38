"""The optional compiled request path (``_speedups.c``), and the switch that turns it off.

The C module is built when the package is installed from source where a C compiler is
present (setup.py marks it optional: without one the install still succeeds). It takes
the per-request steps that cost most in Python: ``Recorder.add``, the WSGI hooks and
application wrapper (``workers.wsgi_hooks``, ``workers.body.metered``) and the whole ASGI
wrapper (``workers.asgi_metrics.instrument``); and, in the metrics process, the walk over a
file's key table on a cold scrape (``storage.reader.FileReader``). Each worker process (and
the metrics process's directory source) calls ``load()`` once
and hands the module (or None) to what it builds. The Python code it replaces stays the
reference, and the fallback wherever the module is missing or switched off with
``GUNICORN_PROMETHEUS_NO_SPEEDUPS=1`` (at run time, or at install: setup.py asks
``switched_off`` here too); tests/test_speedups.py holds both to the same results."""
from __future__ import annotations

import os
from types import ModuleType
from typing import Mapping, Optional

SWITCH_ENV = "GUNICORN_PROMETHEUS_NO_SPEEDUPS"
_OFF = ("", "0", "false", "no", "off")


def switched_off(environ: Mapping[str, str]) -> bool:
    """Whether ``environ`` turns the compiled path off (any value but empty/0/false/no/off)."""
    return environ.get(SWITCH_ENV, "").strip().lower() not in _OFF


def load(environ: Optional[Mapping[str, str]] = None) -> Optional[ModuleType]:
    """The compiled module, or None: not built here, or switched off."""
    if switched_off(os.environ if environ is None else environ):
        return None
    try:
        from . import _speedups
    except ImportError:
        return None
    return _speedups


def describe(native: Optional[ModuleType]) -> str:
    """For the start-up log: which request path ``native`` (what ``load()`` gave) means."""
    if native is not None:
        return "compiled (C speedups)"
    if load({}) is not None:
        return f"Python ({SWITCH_ENV} is set)"
    return "Python (the C speedups are not built in this install)"

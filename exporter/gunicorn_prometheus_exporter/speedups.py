"""The optional compiled request path (``_speedups.c``), and the switch that turns it off.

The C module is built when the package is installed from source where a C compiler is
present (setup.py marks it optional: without one the install still succeeds). It takes
the per-request steps that cost most in Python: ``Recorder.add``, the WSGI hooks and
application wrapper (``workers.wsgi_hooks``, ``workers.body.metered``) and the whole ASGI
wrapper (``workers.asgi_metrics.instrument``); and, in the metrics process, the walk over a
file's key table on a cold scrape (``storage.reader.FileReader``) and every read of a mapped
storage file, under a SIGBUS guard (a file truncated while mapped reads as torn; the
exemplar and native histogram readers too). Each worker process (and
the metrics process's directory source) calls ``load()`` once
and hands the module (or None) to what it builds. The Python code it replaces stays the
reference, and the fallback wherever the module is missing or switched off with
``GUNICORN_PROMETHEUS_NO_SPEEDUPS=1`` (at run time, or at install: setup.py asks
``switched_off`` here too); tests/test_speedups.py holds both to the same results."""
from __future__ import annotations

import functools
import hashlib
import os
from types import ModuleType
from typing import Mapping, Optional

SWITCH_ENV = "GUNICORN_PROMETHEUS_NO_SPEEDUPS"
_OFF = ("", "0", "false", "no", "off")


def switched_off(environ: Mapping[str, str]) -> bool:
    """Whether ``environ`` turns the compiled path off (any value but empty/0/false/no/off)."""
    return environ.get(SWITCH_ENV, "").strip().lower() not in _OFF


def source_digest(path: str) -> str:
    """What setup.py compiles into the module (``SOURCE_DIGEST``) of the source it built."""
    with open(path, "rb") as source:
        return hashlib.sha256(source.read()).hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def is_stale(module: ModuleType) -> bool:
    """Whether ``module`` was built from another ``_speedups.c`` than the one beside it: an
    editable install whose C source changed without a rebuild, where the old module lacks
    what the Python code now asks of it and would fail every worker at boot. An install
    without the source beside the module is taken as built from its own. Read once per
    process (the master's answer is inherited by its workers)."""
    path = os.path.join(os.path.dirname(module.__file__ or ""), "_speedups.c")
    try:
        digest = source_digest(path)
    except OSError:
        return False
    return getattr(module, "SOURCE_DIGEST", None) != digest


def _built() -> Optional[ModuleType]:
    try:
        from . import _speedups
    except ImportError:
        return None
    return _speedups


def load(environ: Optional[Mapping[str, str]] = None) -> Optional[ModuleType]:
    """The compiled module, or None: not built here, built from another source (stale), or
    switched off."""
    if switched_off(os.environ if environ is None else environ):
        return None
    module = _built()
    return None if module is None or is_stale(module) else module


def describe(native: Optional[ModuleType]) -> str:
    """For the start-up log: which request path ``native`` (what ``load()`` gave) means."""
    if native is not None:
        return "compiled (C speedups)"
    if load({}) is not None:
        return f"Python ({SWITCH_ENV} is set)"
    if _built() is not None:
        return ("Python (the C speedups were built from another _speedups.c: rebuild them "
                "with pip install -e ./exporter)")
    return "Python (the C speedups are not built in this install)"

"""Builds the optional C speedups of the request path (gunicorn_prometheus_exporter/
_speedups.c); everything else is in pyproject.toml. Without a C compiler, on an interpreter
other than CPython or older than 3.10 (it drives coroutines through PyIter_Send), or with
GUNICORN_PROMETHEUS_NO_SPEEDUPS=1 set, the package installs without it and runs the same
code in Python."""
import os
import platform
import runpy
import sys

from setuptools import Extension, setup

_PACKAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gunicorn_prometheus_exporter")
# the package's own reading of the switch and digest (the package is not importable yet)
_speedups = runpy.run_path(os.path.join(_PACKAGE, "speedups.py"))
_switched_off = _speedups["switched_off"]


def _wanted() -> bool:
    return (platform.python_implementation() == "CPython" and sys.version_info >= (3, 10)
            and not _switched_off(os.environ))


setup(ext_modules=[
    Extension("gunicorn_prometheus_exporter._speedups",
              sources=["gunicorn_prometheus_exporter/_speedups.c"],
              # the source it was built from, so that a stale build is never loaded
              define_macros=[("SOURCE_DIGEST", '"%s"' % _speedups["source_digest"](
                  os.path.join(_PACKAGE, "_speedups.c")))],
              optional=True),  # a failed build is a warning: the Python path is used
] if _wanted() else [])

"""Code run in a fresh interpreter, for tests whose subject may crash the process (a
SIGSEGV or SIGBUS there fails the test, not the test run)."""
from __future__ import annotations

import subprocess
import sys
import textwrap


def run_child(code: str, *args: str) -> subprocess.CompletedProcess:
    """``code`` (dedented) in a fresh interpreter with ``args`` as its argv; its output
    captured as text, at most 60 seconds."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args],
                          capture_output=True, text=True, timeout=60)

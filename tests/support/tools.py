"""External tools the tests use: skip with the install hint when one is missing."""
import shutil

import pytest

_PACKAGES = {"promtool": "prometheus", "prometheus": "prometheus",
             "redis-server": "redis-server", "redis-cli": "redis-tools"}


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (make test installs it: apt-get install "
                    f"{_PACKAGES.get(name, name)})")
    return path

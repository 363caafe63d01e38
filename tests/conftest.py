from pathlib import Path

import pytest

from support.procs import Gunicorn


@pytest.fixture
def start_gunicorn(tmp_path: Path):
    """Start gunicorn instances; every one is stopped (process group killed) at the end."""
    started = []

    def start(**kwargs) -> Gunicorn:
        g = Gunicorn(tmp_path, **kwargs)
        started.append(g)
        return g

    yield start
    for g in started:
        g.stop()

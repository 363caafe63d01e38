"""Fixtures and small helpers of the Redis storage tests; the processes themselves (redis-server,
a Cluster, the standalone exporter) are tests/support's."""
from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from support.procs import Exporter
from support.redis import Cluster, RedisServer, redis_server_bin
from support.redis import redis_env  # noqa: F401 (the tests import it from here with the fixtures)
from support.scrape import Scrape


def requests_total(s: Scrape) -> float:
    return s.total("gunicorn_http_requests_total")


def send(g, n: int, path: str = "/") -> None:
    for _ in range(n):
        status, _ = g.request(path)
        assert status == 200


def bounded_wait(seconds: float) -> None:
    """The scenario's own duration (e.g. 'Redis is down for 10 s'), not a synchronisation."""
    time.sleep(seconds)

# -- fixtures (imported by the test modules: a conftest.py here would shadow tests/conftest.py
# for `from conftest import ...`) -------------------------------------------------------------


@pytest.fixture
def redis_server(tmp_path: Path):
    """Start redis-server processes on free loopback ports; all stopped at the end."""
    redis_server_bin()
    started = []

    def start(**kwargs) -> RedisServer:
        server = RedisServer(tmp_path, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def redis_cluster(tmp_path: Path):
    redis_server_bin()
    cluster = Cluster(tmp_path)
    yield cluster
    cluster.stop()


@pytest.fixture
def exporter():
    started = []

    def start(env) -> Exporter:
        e = Exporter(env)
        started.append(e)
        return e

    yield start
    for e in started:
        e.stop()


@pytest.fixture
def prefix() -> str:
    return "t" + uuid.uuid4().hex[:8]


def log_of(proc) -> str:
    """A process's output, also after ``stop()``."""
    return Path(proc.log_path).read_text(errors="replace")

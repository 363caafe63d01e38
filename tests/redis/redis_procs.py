"""Real redis-server processes (standalone, TLS, ACL users, a 3-node Cluster) and the
standalone exporter, on free loopback ports, for the Redis storage tests. Never the shared
127.0.0.1:6379."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from support.procs import Process, free_port
from support.scrape import Scrape, scrape
from support.wait import until


def redis_server_bin() -> str:
    path = shutil.which("redis-server")
    if path is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; "
                    "make system-deps installs it)")
    pytest.importorskip("redis", reason="redis-py is not installed (pip install redis)")
    return path


def free_port_pair() -> int:
    """A port whose cluster bus port (+10000) is free too."""
    for _ in range(100):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair")


class RedisServer:
    """One redis-server; ``stop()`` and ``start()`` again keep the port and options."""

    def __init__(self, workdir: Path, args: Optional[List[str]] = None, port: Optional[int] = None,
                 tls=None, admin_password: Optional[str] = None, cluster: bool = False) -> None:
        self.port = port or (free_port_pair() if cluster else free_port())
        self.workdir = workdir / f"redis-{self.port}"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.tls = tls
        self.admin_password = admin_password
        self.extra = list(args or [])
        self.cluster = cluster
        self.proc: Optional[Process] = None
        self.start()

    def command(self) -> List[str]:
        args = [redis_server_bin(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.workdir), "--protected-mode", "no"]
        if self.tls is not None:
            args += ["--port", "0", "--tls-port", str(self.port),
                     "--tls-cert-file", str(self.tls.server_cert),
                     "--tls-key-file", str(self.tls.server_key),
                     "--tls-ca-cert-file", str(self.tls.ca), "--tls-auth-clients", "optional"]
        else:
            args += ["--port", str(self.port)]
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file",
                     str(self.workdir / "nodes.conf"), "--cluster-node-timeout", "2000"]
        if self.admin_password:
            args += ["--requirepass", self.admin_password]
        return args + self.extra

    def start(self) -> "RedisServer":
        if self.cluster:
            (self.workdir / "nodes.conf").unlink(missing_ok=True)
        self.proc = Process(self.command(), dict(os.environ))
        until(lambda: self.client().ping(), timeout=15,
              message=f"redis-server on port {self.port}")
        return self

    def client(self, **kwargs):
        import redis

        options = dict(host="127.0.0.1", port=self.port, decode_responses=True,
                       socket_timeout=5, password=self.admin_password)
        if self.tls is not None:
            options.update(ssl=True, ssl_ca_certs=str(self.tls.ca),
                           ssl_certfile=str(self.tls.client), ssl_keyfile=str(self.tls.client))
        options.update(kwargs)
        return redis.Redis(**options)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.signal(9)
            self.proc.stop(timeout=5)
            self.proc = None

    def keyslot(self, key: str) -> int:
        return int(self.client().execute_command("CLUSTER", "KEYSLOT", key))

    def commands(self) -> int:
        """Commands the server has executed (INFO commandstats, scripts' inner calls too)."""
        stats = self.client().info("commandstats")
        return sum(v["calls"] for v in stats.values())


class Cluster:
    """Three masters, no replicas, slots spread by redis-cli."""

    def __init__(self, workdir: Path) -> None:
        self.nodes = [RedisServer(workdir, cluster=True) for _ in range(3)]
        subprocess.run(["redis-cli", "--cluster", "create",
                        *[f"127.0.0.1:{n.port}" for n in self.nodes],
                        "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)

        def ok():
            return all("cluster_state:ok" in str(n.client().execute_command("CLUSTER", "INFO"))
                       for n in self.nodes)
        until(ok, timeout=30, message="cluster_state:ok on every node")

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


def exporter_bin() -> str:
    return str(Path(sys.executable).with_name("gunicorn-prometheus-exporter"))


class Exporter(Process):
    """``gunicorn-prometheus-exporter serve`` reading Redis."""

    def __init__(self, env: Dict[str, str]) -> None:
        self.port = free_port()
        full = {**os.environ, "PYTHONUNBUFFERED": "1", "REDIS_ENABLED": "true", **env}
        super().__init__([exporter_bin(), "serve", "--port", str(self.port),
                          "--bind", "127.0.0.1"], full)
        until(self._answers, timeout=20, message="the exporter to listen")

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"exporter exited: {self.output()}")
        socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        return True

    def scrape(self) -> Scrape:
        return scrape(self.port)

    def scrape_until(self, condition, timeout: float = 20.0, message: str = "") -> Scrape:
        last = []

        def check():
            s = self.scrape()
            last[:] = [s]
            return s if condition(s) else None
        try:
            return until(check, timeout=timeout, message=message or "the expected metrics")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last scrape:\n"
                                 + (last[0].text if last else "(none)")
                                 + "\n--- exporter output ---\n" + self.output()) from None


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


def redis_env(server, prefix: str, **extra) -> dict:
    """Environment of a gunicorn instance or exporter using ``server``: fast flushes and
    short timeouts so that the tests' deadlines stay short."""
    env = {"REDIS_ENABLED": "true", "REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(server.port),
           "REDIS_KEY_PREFIX": prefix, "REDIS_FLUSH_INTERVAL": "0.2",
           "REDIS_SOCKET_TIMEOUT": "1"}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def log_of(proc) -> str:
    """A process's output, also after ``stop()``."""
    return Path(proc.log_path).read_text(errors="replace")

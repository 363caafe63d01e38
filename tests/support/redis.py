"""Real redis-server processes on free loopback ports (standalone, TLS, ACL users, a
3-node Cluster), never the shared 127.0.0.1:6379, for every test that needs Redis."""
from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path
from typing import List, Optional

import pytest

from .ports import free_port
from .procs import Process
from .tools import require_tool
from .wait import until


def redis_server_bin() -> str:
    """redis-server and redis-py, or the test is skipped with the install hint."""
    path = require_tool("redis-server")
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
    """One redis-server without persistence; ``stop()`` (SIGKILL: Redis vanishes at once,
    as a crashed pod does) then ``start()`` gives an empty server on the same port and
    options."""

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


def redis_env(server: RedisServer, prefix: str, **extra) -> dict:
    """Environment of a gunicorn instance or exporter using ``server``: fast flushes and
    short timeouts so that the tests' deadlines stay short."""
    env = {"REDIS_ENABLED": "true", "REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(server.port),
           "REDIS_KEY_PREFIX": prefix, "REDIS_FLUSH_INTERVAL": "0.2",
           "REDIS_SOCKET_TIMEOUT": "1"}
    env.update({k: str(v) for k, v in extra.items()})
    return env

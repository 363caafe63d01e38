"""Connection options against real servers: an ACL user whose password is `p@ss#1/x:%`
(environment, URL encoded or not, YAML), TLS with verification, a 3-node Cluster. No
secret in a log line or in any process environment the plugin makes."""
import os
import socket
from pathlib import Path

import pytest

from redis_procs import (exporter, log_of, prefix, redis_cluster, redis_env,  # noqa: F401
                         redis_server, redis_server_bin, requests_total, send)
from support.procs import Process, free_port
from support.tls import make_certs
from support.wait import until

pytestmark = pytest.mark.redis

PASSWORD = "p@ss#1/x:%"
ADMIN = "admin-Secret-9"


def _acl_server(redis_server, prefix):
    server = redis_server(admin_password=ADMIN)
    server.client().acl_setuser("metrics", enabled=True, passwords=["+" + PASSWORD],
                                keys=["{%s}:*" % prefix], commands=["+@all", "-@dangerous"])
    return server


def _environ_of(pid: int) -> bytes:
    return Path(f"/proc/{pid}/environ").read_bytes()


def test_acl_user_with_any_password_characters(start_gunicorn, redis_server, exporter, prefix,
                                               tmp_path):
    server = _acl_server(redis_server, prefix)
    config = tmp_path / "exporter.yaml"
    config.write_text(  # the original's YAML section; the password only in this file
        "exporter:\n"
        "  redis:\n"
        "    enabled: true\n"
        f"    port: {server.port}\n"
        "    username: metrics\n"
        f"    password: '{PASSWORD}'\n"
        f"    key_prefix: {prefix}\n"
        "    flush_interval: 0.2\n")
    g = start_gunicorn(env={"GUNICORN_PROMETHEUS_CONFIG": str(config)}).wait_ready(2)
    send(g, 6)
    g.scrape_until(lambda s: s.value("gunicorn_exporter_redis_up") == 1)

    encoded = "p%40ss%231%2Fx%3A%25"
    readers = {
        "env": exporter(redis_env(server, prefix, REDIS_USERNAME="metrics",
                                  REDIS_PASSWORD=PASSWORD)),
        "encoded URL": exporter(redis_env(server, prefix, REDIS_URL=(
            f"redis://metrics:{encoded}@127.0.0.1:{server.port}/0"))),
        "raw URL": exporter(redis_env(server, prefix, REDIS_URL=(
            f"redis://metrics:{PASSWORD}@127.0.0.1:{server.port}/0"))),
    }
    for how, e in readers.items():
        e.scrape_until(lambda s: requests_total(s) == 6, message=how)
    wrong = exporter(redis_env(server, prefix, REDIS_USERNAME="metrics",
                               REDIS_PASSWORD=PASSWORD + "x"))
    s = wrong.scrape_until(lambda s: s.value("gunicorn_exporter_source_up",
                                             source="redis") == 0)
    assert requests_total(s) == 0
    assert "cannot read" in wrong.output()

    # the key restriction of the ACL user held: every key is under the prefix's hash tag
    assert all(k.startswith("{%s}:" % prefix) for k in server.client().keys("*"))
    # no secret in any log line, nor in the environment of gunicorn's processes
    pids = [g.pid, g.monitor_pid(), *g.worker_pids()]
    assert len(pids) == 4
    for pid in pids:
        assert PASSWORD.encode() not in _environ_of(pid), pid
    g.stop()
    for text in [log_of(g)] + [e.output() for e in [*readers.values(), wrong]]:
        assert PASSWORD not in text and encoded not in text


def test_tls_with_verification(start_gunicorn, redis_server, exporter, prefix, tmp_path):
    certs = make_certs(tmp_path / "certs")
    server = redis_server(tls=certs)
    tls = {"REDIS_SSL": "true", "REDIS_SSL_CA_CERTS": str(certs.ca)}
    g = start_gunicorn(env=redis_env(server, prefix, **tls)).wait_ready(2)
    send(g, 3)
    # rediss:// and a client certificate work the same way
    e = exporter(redis_env(server, prefix, REDIS_URL=f"rediss://127.0.0.1:{server.port}/0",
                           REDIS_SSL_CA_CERTS=str(certs.ca), REDIS_SSL_CERTFILE=str(certs.client),
                           REDIS_SSL_KEYFILE=str(certs.client)))
    e.scrape_until(lambda s: requests_total(s) == 3)
    # verification is on by default: a server whose CA we were not given is refused
    untrusted = exporter(redis_env(server, prefix, REDIS_SSL="true"))
    untrusted.scrape_until(lambda s: s.value("gunicorn_exporter_source_up",
                                             source="redis") == 0)
    assert "certificate verify failed" in untrusted.output()
    assert requests_total(untrusted.scrape()) == 0


def test_three_node_cluster(start_gunicorn, redis_cluster, exporter, prefix):
    first, second, _ = redis_cluster.nodes
    a = start_gunicorn(env=redis_env(first, prefix, REDIS_CLUSTER="true",
                                     REDIS_INSTANCE_ID="a")).wait_ready(2)
    b = start_gunicorn(env=redis_env(second, prefix, REDIS_CLUSTER="true",
                                     REDIS_INSTANCE_ID="b")).wait_ready(2)
    send(a, 5)
    send(b, 2)
    e = exporter(redis_env(second, prefix, REDIS_CLUSTER="true"))
    e.scrape_until(lambda s: requests_total(s) == 7
                   and len(s.series("gunicorn_worker_capacity")) == 4)
    # the whole prefix sits in the one slot of its hash tag, on one node
    holders = [n for n in redis_cluster.nodes if n.client().dbsize() > 0]
    assert len(holders) == 1
    slot = holders[0].keyslot("{%s}" % prefix)
    assert all(holders[0].keyslot(k) == slot for k in holders[0].client().keys("*"))
    a.stop()
    s = e.scrape_until(lambda s: len(s.series("gunicorn_worker_capacity")) == 2)
    assert requests_total(s) == 7


def test_sentinel(start_gunicorn, redis_server, exporter, prefix, tmp_path):
    master = redis_server()
    conf = tmp_path / "sentinel.conf"
    port = free_port()
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
                    f"sentinel monitor mymaster 127.0.0.1 {master.port} 1\n")
    sentinel = Process([redis_server_bin(), str(conf), "--sentinel"], dict(os.environ))
    try:
        until(lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close() or True,
              message="the sentinel")
        via = {"REDIS_SENTINELS": f"127.0.0.1:{port}", "REDIS_SENTINEL_MASTER": "mymaster",
               "REDIS_PORT": str(free_port())}  # the master's address comes from the Sentinel
        g = start_gunicorn(env=redis_env(master, prefix, **via)).wait_ready(2)
        send(g, 3)
        e = exporter(redis_env(master, prefix, **via))
        e.scrape_until(lambda s: requests_total(s) == 3)
        assert "Redis Sentinel master 'mymaster' via 127.0.0.1:%d" % port in e.output()
    finally:
        sentinel.stop()

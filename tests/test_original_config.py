"""The original project's (0.2.4) public interface, as its documentation put it, starts
unchanged: its README's Option A and its YAML guide's "Complete Configuration Example" under
real gunicorn (verbatim apart from ports and paths), its ``ssl:`` section at both places,
and one table of every YAML key, environment variable, hook, import path and extra it
documented. The documents' texts are written into this file: tests never read outside the
repository."""
from __future__ import annotations

import importlib
import os
import ssl
import urllib.request
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from support.gunicorn_flags import control_socket_args
from support.procs import DEMO_APP, Process, free_port, gunicorn_bin
from support.scrape import Scrape, assert_get_requests, scrape
from support.wait import until

# -- the original's documents (ports and paths are the only changes) --------------------------

#: README "Basic Usage", Option A: gunicorn-prometheus-exporter.yml
OPTION_A_YAML = """\
exporter:
  prometheus:
    metrics_port: {metrics_port}
    bind_address: "0.0.0.0"
    multiproc_dir: "{multiproc_dir}"
  gunicorn:
    workers: 2
    timeout: 30
    keepalive: 2
  redis:
    enabled: false
  ssl:
    enabled: false
  cleanup:
    db_files: true
"""

#: docs/components/config/yaml-configuration.md, "Complete Configuration Example"
COMPLETE_YAML = """\
# gunicorn-prometheus-exporter.yml
exporter:
  prometheus:
    metrics_port: {metrics_port}
    bind_address: "0.0.0.0"
    multiproc_dir: "{multiproc_dir}"
  gunicorn:
    workers: 2
    timeout: 30
    keepalive: 2
  redis:
    enabled: false
    host: "localhost"
    port: 6379
    db: 0
    password: ""
    key_prefix: "gunicorn"
    ttl_seconds: 300
    ttl_disabled: false
  ssl:
    enabled: false
    certfile: ""
    keyfile: ""
    client_cafile: ""
    client_capath: ""
    client_auth_required: false
  cleanup:
    db_files: true
"""

#: the same guide's "SSL Configuration" example (certificate paths are the test's)
SSL_YAML = """\
# gunicorn-prometheus-exporter-ssl.yml
exporter:
  prometheus:
    metrics_port: {metrics_port}
    bind_address: "0.0.0.0"
    multiproc_dir: "{multiproc_dir}"
  gunicorn:
    workers: 2
    timeout: 30
    keepalive: 2
  redis:
    enabled: false
  ssl:
    enabled: true
    certfile: "{certfile}"
    keyfile: "{keyfile}"
    client_cafile: "{client_cafile}"
    client_capath: "{client_capath}"
    client_auth_required: true
  cleanup:
    db_files: true
"""

#: README Option A: gunicorn.conf.py (the bind port is the test's)
OPTION_A_CONF = """\
from gunicorn_prometheus_exporter import load_yaml_config

# Load YAML configuration
load_yaml_config("gunicorn-prometheus-exporter.yml")

# Import hooks after loading YAML config
from gunicorn_prometheus_exporter.hooks import (
    default_when_ready,
    default_on_starting,
    default_worker_int,
    default_on_exit,
    default_post_fork,
)

# Gunicorn settings
bind = "0.0.0.0:{port}"
workers = 2
worker_class = "gunicorn_prometheus_exporter.PrometheusWorker"

# Use pre-built hooks
when_ready = default_when_ready
on_starting = default_on_starting
worker_int = default_worker_int
on_exit = default_on_exit
post_fork = default_post_fork
"""

SENT = {"/": 5, "/users/7": 3, "/error": 2}


def _clean_env() -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PROMETHEUS_", "REDIS_", "GUNICORN_", "CLEANUP_", "NODE_NAME"))}
    return {**env, "PYTHONUNBUFFERED": "1"}


class OriginalSetUp:
    """gunicorn started as the original README says: ``gunicorn -c gunicorn.conf.py
    app`` in the directory holding both files."""

    def __init__(self, tmp: Path, yaml_text: str, **paths: Any) -> None:
        self.port, self.metrics_port = free_port(), free_port()
        self.directory = tmp / "prometheus_multiproc"
        (tmp / "gunicorn-prometheus-exporter.yml").write_text(yaml_text.format(
            metrics_port=self.metrics_port, multiproc_dir=self.directory, **paths))
        (tmp / "gunicorn.conf.py").write_text(OPTION_A_CONF.format(port=self.port))
        args = [gunicorn_bin(), "-c", "gunicorn.conf.py", *control_socket_args(str(tmp / "c.sock"))]
        self.process = Process(args + [DEMO_APP], _clean_env(), cwd=str(tmp))

    def get(self, path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}",
                                        timeout=10) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code


def _send_and_check(setup: OriginalSetUp, read: Any) -> Scrape:
    """Send SENT, then assert every count exactly through ``read()`` (one scrape)."""
    until(lambda: len(read().series("gunicorn_worker_capacity")) == 2, timeout=30,
          message="two workers on /metrics:\n" + setup.process.output())
    for path, count in SENT.items():
        for _ in range(count):
            assert setup.get(path) == (500 if path == "/error" else 200)
    total = sum(SENT.values())
    s = until(lambda: (lambda s: s if s.total("gunicorn_http_requests_total") >= total
                       else None)(read()), message="the requests on /metrics")
    assert_get_requests(s, {("/", "200"): 5, ("/users/{id}", "200"): 3, ("/error", "500"): 2})
    assert s.total("gunicorn_worker_requests_total") == total  # the original's family
    assert s.total("gunicorn_worker_failed_requests_total") == 2
    assert s.value("gunicorn_workers_desired") == 2
    assert any(f.endswith(".db") for f in os.listdir(setup.directory))  # its multiproc_dir
    assert setup.process.output().count("serving metrics at") == 1
    return s


@pytest.mark.parametrize("document", ["readme_option_a", "complete_example"])
def test_the_originals_yaml_starts_unchanged_and_counts_exactly(tmp_path, document):
    text = OPTION_A_YAML if document == "readme_option_a" else COMPLETE_YAML
    setup = OriginalSetUp(tmp_path, text)
    try:
        _send_and_check(setup, lambda: scrape(setup.metrics_port))
    finally:
        status = setup.process.stop()
    output = Path(setup.process.log_path).read_text()
    assert status == 0, output
    assert output.count("Traceback") == SENT["/error"], output  # gunicorn logs each /error


@pytest.mark.parametrize("place", ["exporter.ssl", "exporter.prometheus.ssl"])
def test_the_originals_ssl_example_serves_mutual_tls(tmp_path, place):
    """The guide's SSL example at the original's place and at ours: the metrics server
    requires a client certificate from the configured CA, and counts stay exact."""
    from support.tls import make_certs

    certs = make_certs(tmp_path / "certs")
    capath = tmp_path / "capath"
    capath.mkdir()
    text = SSL_YAML
    if place == "exporter.prometheus.ssl":
        head, ssl_part = text.split("  ssl:\n")
        ssl_lines, cleanup = ssl_part.split("  cleanup:\n")
        nested = "".join("  " + line + "\n" for line in ssl_lines.splitlines())
        head = head.replace("  gunicorn:\n", "    ssl:\n" + nested + "  gunicorn:\n", 1)
        text = head + "  cleanup:\n" + cleanup
    setup = OriginalSetUp(tmp_path, text, certfile=certs.server_cert, keyfile=certs.server_key,
                          client_cafile=certs.ca, client_capath=capath)
    url = f"https://127.0.0.1:{setup.metrics_port}/metrics"

    def read(cert: Optional[Path] = certs.client) -> Scrape:
        with urllib.request.urlopen(url, timeout=10,
                                    context=certs.client_context(cert)) as resp:
            return Scrape(resp.read().decode())

    try:
        _send_and_check(setup, read)
        with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
            read(cert=None)
        with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
            read(cert=certs.stranger)
    finally:
        setup.process.stop()


# -- every documented key, variable, hook, import path and extra ---------------------------------

#: YAML keys of the original's documents (README, YAML guide), at every place they put
#: them -> the setting they set here
YAML_KEYS = {
    "prometheus.metrics_port": ("prometheus.metrics_port", 9100, 9100),
    "prometheus.bind_address": ("prometheus.bind_address", "127.0.0.2", "127.0.0.2"),
    "prometheus.multiproc_dir": ("prometheus.multiproc_dir", "/tmp/x-mp", "/tmp/x-mp"),
    "gunicorn.workers": ("gunicorn.workers", 3, 3),
    "gunicorn.timeout": ("gunicorn.timeout", 31, 31),
    "gunicorn.keepalive": ("gunicorn.keepalive", 4, 4),
    "redis.enabled": ("redis.enabled", True, True),
    "redis.host": ("redis.host", "redis.example.com", "redis.example.com"),
    "redis.port": ("redis.port", 6380, 6380),
    "redis.db": ("redis.db", 2, 2),
    "redis.password": ("redis.password", "", ""),
    "redis.key_prefix": ("redis.key_prefix", "gunicorn_prod", "gunicorn_prod"),
    "redis.ttl_seconds": ("redis.ttl_seconds", 600, 600),
    "redis.ttl_disabled": ("redis.ttl_disabled", True, True),
    "cleanup.db_files": ("cleanup.db_files", False, False),
    **{f"{place}.{key}": (f"prometheus.ssl.{key}", value, expected)
       for place in ("ssl", "prometheus.ssl")
       for key, value, expected in (
           ("enabled", False, False),
           ("certfile", "", None),
           ("keyfile", "", None),
           ("client_cafile", "", None),
           ("client_capath", "", None),
           ("client_auth_required", False, False))},
}

#: environment variables of the original's documents -> (setting, raw value, parsed)
ENV_VARS = {
    "PROMETHEUS_METRICS_PORT": ("prometheus.metrics_port", "9092", 9092),
    "PROMETHEUS_BIND_ADDRESS": ("prometheus.bind_address", "127.0.0.3", "127.0.0.3"),
    "PROMETHEUS_MULTIPROC_DIR": ("prometheus.multiproc_dir", "/tmp/y-mp", "/tmp/y-mp"),
    "GUNICORN_WORKERS": ("gunicorn.workers", "5", 5),
    "GUNICORN_TIMEOUT": ("gunicorn.timeout", "45", 45),
    "GUNICORN_KEEPALIVE": ("gunicorn.keepalive", "6", 6),
    "REDIS_ENABLED": ("redis.enabled", "true", True),
    "REDIS_HOST": ("redis.host", "redis-service", "redis-service"),
    "REDIS_PORT": ("redis.port", "6390", 6390),
    "REDIS_DB": ("redis.db", "3", 3),
    "REDIS_PASSWORD": ("redis.password", "pw", "pw"),
    "REDIS_KEY_PREFIX": ("redis.key_prefix", "app1", "app1"),
    "REDIS_TTL_SECONDS": ("redis.ttl_seconds", "900", 900),
    "REDIS_TTL_DISABLED": ("redis.ttl_disabled", "true", True),
    "PROMETHEUS_SSL_ENABLED": ("prometheus.ssl.enabled", "false", False),
    "PROMETHEUS_SSL_CERTFILE": ("prometheus.ssl.certfile", "", None),
    "PROMETHEUS_SSL_KEYFILE": ("prometheus.ssl.keyfile", "", None),
    "PROMETHEUS_SSL_CLIENT_CAFILE": ("prometheus.ssl.client_cafile", "", None),
    "PROMETHEUS_SSL_CLIENT_CAPATH": ("prometheus.ssl.client_capath", "", None),
    "PROMETHEUS_SSL_CLIENT_AUTH_REQUIRED": ("prometheus.ssl.client_auth_required", "false",
                                            False),
    "CLEANUP_DB_FILES": ("cleanup.db_files", "false", False),
    "NODE_NAME": ("redis.node_name", "node-1", "node-1"),  # its DaemonSet manifest
}

#: (module, name) its documents import
IMPORTS = [
    ("gunicorn_prometheus_exporter", "load_yaml_config"),
    ("gunicorn_prometheus_exporter", "PrometheusWorker"),
    ("gunicorn_prometheus_exporter", "PrometheusThreadWorker"),
    ("gunicorn_prometheus_exporter", "PrometheusGeventWorker"),
    ("gunicorn_prometheus_exporter", "PrometheusEventletWorker"),
    ("gunicorn_prometheus_exporter.hooks", "default_when_ready"),
    ("gunicorn_prometheus_exporter.hooks", "default_on_starting"),
    ("gunicorn_prometheus_exporter.hooks", "default_worker_int"),
    ("gunicorn_prometheus_exporter.hooks", "default_on_exit"),
    ("gunicorn_prometheus_exporter.hooks", "default_post_fork"),
    ("gunicorn_prometheus_exporter.hooks", "redis_when_ready"),
]

#: extras of its installation section
EXTRAS = ["async", "eventlet", "gevent", "redis", "all"]


def _nested(dotted: str, value: Any) -> str:
    parts = dotted.split(".")
    lines: List[str] = ["exporter:"]
    for depth, part in enumerate(parts[:-1], start=1):
        lines.append("  " * depth + part + ":")
    import json

    lines.append("  " * len(parts) + f"{parts[-1]}: {json.dumps(value)}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("key", list(YAML_KEYS))
def test_every_documented_yaml_key_sets_its_setting(tmp_path, key):
    from gunicorn_prometheus_exporter.config.loader import build

    setting, value, expected = YAML_KEYS[key]
    path = tmp_path / "exporter.yml"
    path.write_text(_nested(key, value))
    settings = build(str(path), {})
    assert settings.get(setting) == expected
    assert settings.origins[setting] == f"{path}:{len(key.split('.')) + 1}"


@pytest.mark.parametrize("name", list(ENV_VARS))
def test_every_documented_environment_variable_sets_its_setting(name):
    from gunicorn_prometheus_exporter.config.loader import build

    setting, raw, expected = ENV_VARS[name]
    settings = build(None, {name: raw})
    assert settings.get(setting) == expected
    if raw:
        assert settings.origins[setting] == f"env {name}"


@pytest.mark.parametrize("module,name", IMPORTS, ids=[f"{m}.{n}" for m, n in IMPORTS])
def test_every_documented_import_path_resolves(module, name):
    found = getattr(importlib.import_module(module), name)
    assert callable(found)


def test_every_documented_extra_exists():
    provided = set(metadata.metadata("gunicorn-prometheus-exporter").get_all("Provides-Extra"))
    assert set(EXTRAS) <= provided, provided


def test_both_ssl_places_with_the_same_value_are_fine(tmp_path):
    from gunicorn_prometheus_exporter.config.loader import build

    path = tmp_path / "exporter.yml"
    path.write_text("exporter:\n  prometheus:\n    ssl:\n      client_auth_required: false\n"
                    "  ssl:\n    client_auth_required: false\n")
    assert build(str(path), {}).get("prometheus.ssl.client_auth_required") is False

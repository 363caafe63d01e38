"""Configuration as users meet it: every YAML and environment error stops gunicorn with one
line before any worker starts; environment over YAML over defaults; ``check-config``; the
original's documented hooks; ``worker_class`` alone; the generated reference in docs/."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Dict, Optional

import pytest

from support.configrun import (EXE, PREFIX, WORKER, assert_one_line_and_no_worker, clean_env,
                               ctl, run_gunicorn, yaml_conf)
from support.procs import REPO, DEMO_APP, Process, free_port, gunicorn_bin
from support.scrape import scrape
from support.wait import until

# -- YAML errors through real gunicorn ------------------------------------------------------------

YAML_CASES = {
    "unknown key": (
        "exporter:\n  prometheus:\n    metrics_prot: 9100\n",
        "{f}:3: exporter.prometheus.metrics_prot: unknown key; expected one of: metrics_port, "
        "bind_address, multiproc_dir, server, web_config_file, ssl"),
    "unknown section": (
        "exporter:\n  promethus:\n    metrics_port: 9100\n",
        "{f}:2: exporter.promethus: unknown key; expected one of: prometheus, metrics, "
        "gunicorn, redis, cleanup, ssl"),
    "unknown key at the original's ssl place": (
        "exporter:\n  ssl:\n    enabled: false\n    cafile: x\n",
        "{f}:4: exporter.ssl.cafile: unknown key; expected one of: enabled, certfile, keyfile, "
        "client_cafile, client_capath, client_auth_required"),
    "ssl at both places with different values": (
        "exporter:\n  prometheus:\n    ssl:\n      enabled: false\n"
        "  ssl:\n    enabled: true\n",
        "{f}:6: exporter.ssl.enabled is true but exporter.prometheus.ssl.enabled (line 4) "
        "is false; both name exporter.prometheus.ssl.enabled: give it once"),
    "unknown top-level key": (
        "prometheus:\n  metrics_port: 9100\n",
        "{f}:1: prometheus: unknown key; expected 'exporter' at the top level"),
    "wrong type": (
        "exporter:\n  prometheus:\n    metrics_port: nine\n",
        "{f}:3: exporter.prometheus.metrics_port: expected an integer from 1 to 65535, "
        "got 'nine'"),
    "wrong type, boolean": (
        "exporter:\n  cleanup:\n    db_files: 3\n",
        "{f}:3: exporter.cleanup.db_files: expected true or false, got 3"),
    "wrong type, section": (
        "exporter:\n  redis: yes\n",
        "{f}:2: exporter.redis: expected a mapping of settings"),
    "out of range": (
        "exporter:\n  prometheus:\n    bind_address: 127.0.0.1\n    metrics_port: 70000\n",
        "{f}:4: exporter.prometheus.metrics_port: expected an integer from 1 to 65535, "
        "got 70000"),
    "out of range, float": (
        "exporter:\n  metrics:\n    sample_interval: 0\n",
        "{f}:3: exporter.metrics.sample_interval: expected a number from 0.1 to 3600, got 0"),
    "bad buckets": (
        "exporter:\n  metrics:\n    duration_buckets: [0.1, 0.05]\n",
        "{f}:3: exporter.metrics.duration_buckets: expected a list of at most 1000 increasing positive "
        "numbers, got [0.1, 0.05]"),
    "bad choice": (
        "exporter:\n  redis:\n    scope: planet\n",
        "{f}:3: exporter.redis.scope: expected one of all, node, got 'planet'"),
    "duplicate key": (
        "exporter:\n  prometheus:\n    metrics_port: 9100\n    metrics_port: 9101\n",
        "{f}:4: exporter.prometheus.metrics_port: duplicate key"),
    "duplicate section": (
        "exporter:\n  prometheus:\n    metrics_port: 9100\n  prometheus:\n"
        "    bind_address: 127.0.0.1\n",
        "{f}:4: exporter.prometheus: duplicate key"),
    "invalid YAML": (
        "exporter:\n  prometheus:\n    metrics_port: [9100\n",
        "{f}:4: invalid YAML: expected ',' or ']', but got '<stream end>'"),
    "invalid YAML, tab": (
        "exporter:\n\tprometheus: {}\n",
        "{f}:2: invalid YAML: found character '\\t' that cannot start any token"),
    "not a mapping": (
        "- exporter\n",
        "{f}:1: expected a mapping with an 'exporter' key"),
    "secret of the wrong type": (
        "exporter:\n  redis:\n    url: [a, b]\n",
        "{f}:3: exporter.redis.url: expected a redis:// or rediss:// URL"),
    "inconsistent settings": (
        "exporter:\n  prometheus:\n    ssl:\n      enabled: true\n",
        "exporter.prometheus.ssl.enabled ({f}:4): TLS is enabled but "
        "exporter.prometheus.ssl.certfile is not set"),
    "file named in the YAML is missing": (
        "exporter:\n  prometheus:\n    ssl:\n      certfile: /nonexistent/cert.pem\n",
        "exporter.prometheus.ssl.certfile ({f}:4): file not found: /nonexistent/cert.pem"),
}


@pytest.mark.parametrize("case", list(YAML_CASES))
def test_yaml_error_stops_gunicorn_with_one_line(tmp_path, case):
    text, expected = YAML_CASES[case]
    config, conf = yaml_conf(tmp_path, text)
    status, output = run_gunicorn(tmp_path, clean_env(), str(conf))
    assert_one_line_and_no_worker(status, output, expected.format(f=config))


def test_missing_yaml_file_stops_gunicorn_with_one_line(tmp_path):
    config, conf = yaml_conf(tmp_path, "")
    config.unlink()
    status, output = run_gunicorn(tmp_path, clean_env(), str(conf))
    assert_one_line_and_no_worker(
        status, output, f"{config}: cannot read the config file: No such file or directory")


def test_missing_yaml_file_named_by_the_environment(tmp_path):
    missing = tmp_path / "nope.yml"
    status, output = run_gunicorn(tmp_path, clean_env(GUNICORN_PROMETHEUS_CONFIG=str(missing)))
    assert_one_line_and_no_worker(
        status, output, f"{missing}: cannot read the config file: No such file or directory")


def test_yaml_secret_is_not_echoed(tmp_path):
    config, conf = yaml_conf(tmp_path, "exporter:\n  redis:\n    url: 'http://u:TopSecret9@h'\n")
    status, output = run_gunicorn(tmp_path, clean_env(), str(conf))
    assert_one_line_and_no_worker(
        status, output, f"{config}:3: exporter.redis.url: expected a redis:// or rediss:// URL")
    assert "TopSecret9" not in output


# -- environment errors through real gunicorn -----------------------------------------------------

ENV_CASES = {
    "wrong type": ({"PROMETHEUS_METRICS_PORT": "abc"},
                   "environment variable PROMETHEUS_METRICS_PORT='abc': expected an integer "
                   "from 1 to 65535, got 'abc'"),
    "out of range": ({"PROMETHEUS_METRICS_PORT": "0"},
                     "environment variable PROMETHEUS_METRICS_PORT='0': expected an integer "
                     "from 1 to 65535, got '0'"),
    "boolean": ({"REDIS_ENABLED": "perhaps"},
                "environment variable REDIS_ENABLED='perhaps': expected true or false, "
                "got 'perhaps'"),
    "workers": ({"GUNICORN_WORKERS": "0"},
                "environment variable GUNICORN_WORKERS='0': expected an integer from 1 to "
                "4096, got '0'"),
    "buckets": ({"PROMETHEUS_DURATION_BUCKETS": "0.1,x"},
                "environment variable PROMETHEUS_DURATION_BUCKETS='0.1,x': expected a list "
                "of at most 1000 increasing positive numbers, got '0.1,x'"),
    "not a number": ({"PROMETHEUS_SAMPLE_INTERVAL": "nan"},
                     "environment variable PROMETHEUS_SAMPLE_INTERVAL='nan': expected a number "
                     "from 0.1 to 3600, got 'nan'"),
    "choice": ({"REDIS_SCOPE": "planet"},
               "environment variable REDIS_SCOPE='planet': expected one of all, node, "
               "got 'planet'"),
    "secret": ({"REDIS_URL": "http://user:Hunter2xyz@cache"},
               "environment variable REDIS_URL=********: expected a redis:// or rediss:// URL"),
    "missing file": ({"PROMETHEUS_SSL_CERTFILE": "/nonexistent/cert.pem"},
                     "exporter.prometheus.ssl.certfile (env PROMETHEUS_SSL_CERTFILE): file not "
                     "found: /nonexistent/cert.pem"),
    "inconsistent": ({"PROMETHEUS_SSL_CLIENT_AUTH_REQUIRED": "true"},
                     "exporter.prometheus.ssl.client_auth_required (env "
                     "PROMETHEUS_SSL_CLIENT_AUTH_REQUIRED): client certificates are required "
                     "but no client CA file or path is set"),
}


@pytest.mark.parametrize("case", list(ENV_CASES))
def test_environment_error_stops_gunicorn_with_one_line(tmp_path, case):
    env, expected = ENV_CASES[case]
    status, output = run_gunicorn(tmp_path, clean_env(**env))
    assert_one_line_and_no_worker(status, output, expected)
    assert "Hunter2xyz" not in output


def test_environment_error_with_a_yaml_file_too(tmp_path):
    config, conf = yaml_conf(tmp_path, "exporter:\n  prometheus:\n    metrics_port: 9100\n")
    status, output = run_gunicorn(tmp_path, clean_env(REDIS_PORT="99999"), str(conf))
    assert_one_line_and_no_worker(
        status, output, "environment variable REDIS_PORT='99999': expected an integer from 1 "
        "to 65535, got '99999'")


@pytest.mark.parametrize("metrics_host", ["127.0.0.1", "0.0.0.0"])
def test_a_metrics_port_that_is_gunicorns_own_stops_start_up(tmp_path, metrics_host):
    """The metrics server never takes gunicorn's listener (it once adopted it as a socket
    inherited through USR2 and answered the application's requests)."""
    port = free_port()
    status, output = run_gunicorn(tmp_path, clean_env(PROMETHEUS_METRICS_PORT=str(port),
                                                      PROMETHEUS_BIND_ADDRESS=metrics_host),
                                  port=port)
    assert status == 1
    assert "Booting worker" not in output and "serving metrics" not in output
    errors = [line for line in output.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1 and "Traceback" not in output, output
    assert errors[0].endswith(
        f"[ERROR] metrics address {metrics_host}:{port} (PROMETHEUS_BIND_ADDRESS, "
        f"PROMETHEUS_METRICS_PORT) takes the port of gunicorn's bind 127.0.0.1:{port}; "
        "expected a port of its own"), output


def test_bad_web_config_file_stops_gunicorn_with_one_line(tmp_path):
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users:\n  prometheus: $2b$04$abc\nbasic_auth_user: {}\n")
    status, output = run_gunicorn(tmp_path, clean_env(PROMETHEUS_WEB_CONFIG_FILE=str(web),
                                                      PROMETHEUS_METRICS_PORT=str(free_port())))
    assert status != 0
    assert "Booting worker" not in output
    lines = [line for line in output.splitlines() if "config error" in line]
    assert len(lines) == 1, output
    assert lines[0].endswith(f"{PREFIX}{web}: basic_auth_user: unknown key; expected one of: "
                             "basic_auth_users, http_server_config, tls_server_config")
    assert "Traceback" not in output


# -- precedence, check-config ---------------------------------------------------------------------

def check_config(env: Dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, "check-config", *args], capture_output=True, text=True,
                          env=env, timeout=30)


def lines_of(result: subprocess.CompletedProcess) -> Dict[str, str]:
    """{'exporter.x.y': 'value  (origin)'} from check-config's output."""
    out = {}
    for line in result.stdout.splitlines():
        key, sep, rest = line.partition(" = ")
        if sep:
            out[key] = rest
    return out


def test_environment_overrides_yaml_overrides_defaults(tmp_path):
    config = tmp_path / "exporter.yml"
    config.write_text("exporter:\n"
                      "  prometheus:\n"
                      "    metrics_port: 9100\n"
                      "    bind_address: 127.0.0.2\n"
                      "  metrics:\n"
                      "    route_cap: 50\n")
    for how, args, env in (
            ("--config", ["--config", str(config)], {}),
            ("GUNICORN_PROMETHEUS_CONFIG", [], {"GUNICORN_PROMETHEUS_CONFIG": str(config)})):
        result = check_config(clean_env(PROMETHEUS_METRICS_PORT="9200", **env), *args)
        assert result.returncode == 0, (how, result.stderr)
        got = lines_of(result)
        assert got["exporter.prometheus.metrics_port"] == "9200  (env PROMETHEUS_METRICS_PORT)"
        assert got["exporter.prometheus.bind_address"] == f"'127.0.0.2'  ({config}:4)"
        assert got["exporter.metrics.route_cap"] == f"50  ({config}:6)"
        assert got["exporter.metrics.sample_interval"] == "5.0  (default)"
        assert got["exporter.redis.enabled"] == "False  (default)"
        assert result.stdout.splitlines()[-2:] == [
            "(effective multiprocess directory: " + os.path.join(
                __import__('tempfile').gettempdir(), 'gunicorn-prometheus-exporter-9200') + ")",
            "configuration OK"]
    from gunicorn_prometheus_exporter.config.schema import SETTINGS
    assert len(got) == len(SETTINGS)


def test_yaml_settings_reach_gunicorn_and_env_wins(tmp_path):
    """Through real gunicorn: the YAML's port and multiprocess directory are used (the
    original silently ignored multiproc_dir), and an environment variable beats the YAML."""
    yaml_port, env_port = free_port(), free_port()
    directory = tmp_path / "from-yaml"
    config, conf = yaml_conf(tmp_path, "exporter:\n  prometheus:\n"
                                       f"    metrics_port: {yaml_port}\n"
                                       "    bind_address: 127.0.0.1\n"
                                       f"    multiproc_dir: {directory}\n")
    app_port = free_port()
    p = Process([gunicorn_bin(), "-c", str(conf), "--bind", f"127.0.0.1:{app_port}",
                 "--workers", "1", *ctl(tmp_path / "ctl.sock"), DEMO_APP],
                clean_env(), cwd=str(tmp_path))
    try:
        s = until(lambda: scrape(yaml_port), timeout=20, message="metrics on the YAML's port")
        assert s.value("gunicorn_exporter_source_up", source="directory") == 1
        assert any(f.endswith(".db") for f in os.listdir(directory))
    finally:
        p.stop()
    p = Process([gunicorn_bin(), "-c", str(conf), "--bind", f"127.0.0.1:{app_port}",
                 "--workers", "1", *ctl(tmp_path / "ctl.sock"), DEMO_APP],
                clean_env(PROMETHEUS_METRICS_PORT=str(env_port)), cwd=str(tmp_path))
    try:
        until(lambda: scrape(env_port), timeout=20, message="metrics on the environment's port")
        assert f"serving metrics at http://127.0.0.1:{env_port}/metrics" in p.output()
        assert str(yaml_port) not in p.output()
    finally:
        p.stop()


def test_check_config_masks_secrets(tmp_path):
    config = tmp_path / "exporter.yml"
    config.write_text("exporter:\n  redis:\n    password: 'YamlPw!1'\n")
    result = check_config(clean_env(
        REDIS_PASSWORD="EnvPw#2", REDIS_URL="rediss://metrics:UrlPw@3@cache:6390/2"),
        "--config", str(config))
    assert result.returncode == 0, result.stderr
    got = lines_of(result)
    assert got["exporter.redis.password"] == "********  (env REDIS_PASSWORD)"
    assert got["exporter.redis.url"] == "'rediss://metrics:********@cache:6390/2'  (env REDIS_URL)"
    for secret in ("YamlPw", "EnvPw", "UrlPw", "@3"):
        assert secret not in result.stdout + result.stderr
    # from the YAML alone, still masked
    result = check_config(clean_env(), "--config", str(config))
    assert lines_of(result)["exporter.redis.password"] == f"********  ({config}:3)"
    assert "YamlPw" not in result.stdout


def test_check_config_exits_1_with_one_line_on_error(tmp_path):
    config = tmp_path / "exporter.yml"
    config.write_text("exporter:\n  redis:\n    port: 0\n")
    result = check_config(clean_env(), "--config", str(config))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{PREFIX}{config}:3: exporter.redis.port: expected an integer from 1 to 65535, got 0"]
    result = check_config(clean_env(REDIS_PASSWORD="EnvPw#2", REDIS_PORT="x"))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"{PREFIX}environment variable REDIS_PORT='x': expected an integer from 1 to 65535, "
        "got 'x'"]
    assert "EnvPw" not in result.stderr


def test_check_config_validates_tls_files(tmp_path):
    bad = tmp_path / "cert.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    result = check_config(clean_env(PROMETHEUS_SSL_CERTFILE=str(bad),
                                    PROMETHEUS_SSL_KEYFILE=str(bad)))
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"{PREFIX}metrics server TLS: cannot load certificate, "
                                    f"key or CA ({bad})")


# -- the original's hooks, and worker_class alone -------------------------------------------------

HOOKS_CONF = """\
from gunicorn_prometheus_exporter.hooks import (
    default_on_exit,
    default_on_starting,
    default_post_fork,
    default_when_ready,
    default_worker_int,
)

worker_class = "gunicorn_prometheus_exporter.PrometheusWorker"
on_starting = default_on_starting
when_ready = default_when_ready
post_fork = default_post_fork
worker_int = default_worker_int
on_exit = default_on_exit
"""


def test_documented_hooks_start_exactly_one_metrics_server(start_gunicorn, tmp_path):
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(HOOKS_CONF)
    g = start_gunicorn(workers=2, config=str(conf)).wait_ready(workers=2)
    for _ in range(7):
        assert g.request("/")[0] == 200
    s = g.scrape_until(lambda s: s.total("gunicorn_http_requests_total") == 7)
    assert s.value("gunicorn_http_requests_total", method="GET", route="/", status="200") == 7
    assert g.output().count("serving metrics at") == 1
    monitor = g.monitor_pid()
    # a reload (HUP) re-reads the config file with its hooks: still one server, same one
    g.signal(signal.SIGHUP)
    until(lambda: g.output().count("Booting worker") >= 4, message="reloaded workers")
    g.wait_ready(workers=2)
    assert g.output().count("serving metrics at") == 1
    assert g.monitor_pid() == monitor
    for _ in range(3):
        assert g.request("/")[0] == 200
    g.scrape_until(lambda s: s.total("gunicorn_http_requests_total") == 10)
    # on_exit stops it: gunicorn ends cleanly and the metrics server with it
    assert g.stop() == 0
    until(lambda: not _alive(monitor), timeout=5, message="the metrics server to end")
    log = Path(g.log_path).read_text()
    assert "Traceback" not in log
    assert log.count("serving metrics at") == 1


def test_worker_class_alone_gives_metrics(tmp_path):
    conf = tmp_path / "gunicorn.conf.py"
    app_port, metrics_port = free_port(), free_port()
    conf.write_text(f'worker_class = "{WORKER}"\nbind = "127.0.0.1:{app_port}"\nworkers = 2\n')
    env = clean_env(PROMETHEUS_METRICS_PORT=str(metrics_port),
                    PROMETHEUS_BIND_ADDRESS="127.0.0.1",
                    PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "mp"))
    p = Process([gunicorn_bin(), "-c", str(conf), *ctl(tmp_path / "c.sock"),
                 DEMO_APP], env, cwd=str(tmp_path))
    try:
        until(lambda: len(scrape(metrics_port).series("gunicorn_worker_capacity")) == 2,
              timeout=20, message="two workers on /metrics")
        import urllib.request
        for _ in range(4):
            with urllib.request.urlopen(f"http://127.0.0.1:{app_port}/users/3", timeout=10) as r:
                assert r.status == 200
        until(lambda: scrape(metrics_port).value(
            "gunicorn_http_requests_total", method="GET", route="/users/{id}",
            status="200") == 4, message="4 requests counted")
        assert p.output().count("serving metrics at") == 1
    finally:
        assert p.stop() == 0


def test_default_when_ready_alone_serves_a_plain_worker_class(tmp_path):
    """The original's set-up without our worker class: the application's own
    prometheus_client metrics in multiprocess mode, served by the hook's server."""
    conf = tmp_path / "gunicorn.conf.py"
    app_port, metrics_port = free_port(), free_port()
    conf.write_text("from gunicorn_prometheus_exporter.hooks import default_when_ready\n"
                    f'bind = "127.0.0.1:{app_port}"\nworkers = 1\n'
                    "when_ready = default_when_ready\n")
    env = clean_env(PROMETHEUS_METRICS_PORT=str(metrics_port),
                    PROMETHEUS_BIND_ADDRESS="127.0.0.1",
                    PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "mp"),
                    PYTHONPATH=str(REPO / "tests"))
    p = Process([gunicorn_bin(), "-c", str(conf), *ctl(tmp_path / "c.sock"),
                 "apps.user_metrics:app"], env, cwd=str(tmp_path))
    try:
        until(lambda: scrape(metrics_port), timeout=20, message="metrics server")
        import urllib.request
        for _ in range(3):
            with urllib.request.urlopen(f"http://127.0.0.1:{app_port}/", timeout=10) as r:
                assert r.status == 200
        until(lambda: scrape(metrics_port).value("shop_orders_total", kind="book") == 3,
              message="the app's own counter")
        assert p.output().count("serving metrics at") == 1
    finally:
        assert p.stop() == 0


def _alive(pid: Optional[int]) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is as good as gone
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return False


# -- the generated reference ----------------------------------------------------------------------

def test_configuration_reference_is_up_to_date():
    result = subprocess.run([sys.executable, str(REPO / "docs" / "gen_config_reference.py"),
                             "--check"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_configuration_reference_lists_every_setting():
    from gunicorn_prometheus_exporter.config.schema import SETTINGS

    text = (REPO / "docs" / "configuration.md").read_text()
    for s in SETTINGS:
        assert f"`{s.yaml_key}`" in text, s.yaml_key
        for name in s.env:
            assert f"`{name}`" in text, name

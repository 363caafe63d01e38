"""``gunicorn-prometheus-exporter`` as a user runs it: ``serve`` over a directory that a real
gunicorn writes, a directory that appears late, signals, ``--help``, ``version`` and
``healthcheck``."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from support.procs import Process, Serve, base_env, exporter_bin, free_port
from support.scrape import assert_get_requests, scrape
from support.wait import until

EXE = exporter_bin()

SUBCOMMANDS = ["serve", "check-config", "version", "healthcheck"]


@pytest.fixture
def start_serve(tmp_path):
    started: List[Serve] = []

    def start(directory: Path, args: Optional[List[str]] = None, **env: str) -> Serve:
        s = Serve(tmp_path, directory, args, **env)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


def run(args: List[str], env: Optional[Dict[str, str]] = None,
        timeout: float = 30.0) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=timeout,
                          env=env or base_env(9091, Path("/nonexistent")))


# -- serve ---------------------------------------------------------------------------------------

def _by_labels(s, name: str) -> Dict[frozenset, float]:
    return dict(s.series(name))


def test_serve_reads_what_gunicorn_writes_exactly(start_gunicorn, start_serve):
    g = start_gunicorn(workers=2).wait_ready(workers=2)
    sent = {"/": 6, "/users/7": 4, "/error": 2, "/status/503": 3}
    for path, count in sent.items():
        for _ in range(count):
            g.request(path)
    total = sum(sent.values())
    own = g.scrape_until(lambda s: s.total("gunicorn_http_requests_total") == total)
    s = start_serve(Path(g.directory)).wait_listening()
    theirs = until(lambda: scrape(s.port), message="serve to answer")
    for name in ("gunicorn_http_requests_total", "gunicorn_worker_requests_total",
                 "gunicorn_http_request_duration_seconds_count",
                 "gunicorn_http_response_size_bytes_sum",
                 "gunicorn_worker_failed_requests_total", "gunicorn_worker_capacity"):
        assert _by_labels(theirs, name) == _by_labels(own, name), name
    assert_get_requests(theirs, {("/", "200"): 6, ("/users/{id}", "200"): 4,
                                 ("/error", "500"): 2, ("/status/{id}", "503"): 3})
    assert theirs.value("gunicorn_exporter_source_up", source="directory") == 1
    assert len(theirs.series("gunicorn_worker_capacity")) == 2
    # more traffic shows up in both, without a restart of serve
    for _ in range(5):
        g.request("/")
    until(lambda: scrape(s.port).total("gunicorn_http_requests_total") == total + 5,
          message="serve to see the new requests")
    assert g.scrape().total("gunicorn_http_requests_total") == total + 5


def test_missing_directory_is_a_metric_and_a_log_line_then_recovers(start_serve, tmp_path):
    directory = tmp_path / "not-yet"
    s = start_serve(directory).wait_listening()
    first = scrape(s.port)
    assert first.value("gunicorn_exporter_source_up", source="directory") == 0
    assert first.value("gunicorn_exporter_build_info") is None  # labels differ, see below
    assert len(first.series("gunicorn_exporter_build_info")) == 1
    until(lambda: f"cannot read directory {directory}" in s.output(),
          message="a log line about the directory")
    errors = [line for line in s.output().splitlines() if "[ERROR]" in line]
    assert errors == [line for line in errors if f"cannot read directory {directory}" in line]
    assert len(errors) == 1
    for _ in range(3):  # polled again: still down, still one line
        assert scrape(s.port).value("gunicorn_exporter_source_up", source="directory") == 0
    assert s.output().count(f"cannot read directory {directory}") == 1
    directory.mkdir()
    up = until(lambda: (lambda x: x if x.value("gunicorn_exporter_source_up",
                                                source="directory") == 1 else None)(
        scrape(s.port)), message="the directory to be read")
    assert up.value("gunicorn_exporter_last_read_timestamp_seconds") \
        == pytest.approx(time.time(), abs=30)
    assert f"reading directory {directory} again" in s.output()
    assert s.proc.poll() is None


def test_missing_directory_is_logged_at_start(start_serve, tmp_path):
    """Nobody scrapes yet: the log still says the directory is missing."""
    directory = tmp_path / "absent"
    s = start_serve(directory).wait_listening()
    until(lambda: f"cannot read directory {directory}" in s.output(), timeout=10,
          message="the start-up log line")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_serve_within_a_second(start_serve, tmp_path, sig):
    s = start_serve(tmp_path).wait_listening()
    assert scrape(s.port).value("gunicorn_exporter_source_up", source="directory") == 1
    with socket.create_connection(("127.0.0.1", s.port), timeout=5) as idle:
        idle.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")
        assert idle.recv(1000).startswith(b"HTTP/1.1 200 OK")  # kept alive, then idle
        started = time.monotonic()
        s.signal(sig)
        code = s.proc.wait(timeout=10)
        elapsed = time.monotonic() - started
    assert code == 0, s.output()
    assert elapsed < 1.0, f"took {elapsed:.2f}s"
    assert "stopping" in s.output()
    assert "Traceback" not in s.output()


def test_no_subcommand_means_serve(tmp_path):
    port = free_port()
    p = Process([EXE, "--port", str(port)], base_env(free_port(), tmp_path), cwd=str(tmp_path))
    try:
        until(lambda: p.proc.poll() is not None or
              socket.create_connection(("127.0.0.1", port), timeout=1).close() is None,
              message="the default command to serve")
        assert p.proc.poll() is None, p.output()
        assert scrape(port).value("gunicorn_exporter_source_up", source="directory") == 1
    finally:
        assert p.stop() == 0


def test_flags_override_the_environment(start_serve, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    port = free_port()
    s = start_serve(tmp_path / "missing", args=["--port", str(port), "--bind", "127.0.0.1",
                                                "--multiproc-dir", str(other)])
    until(lambda: scrape(port), message="serve on the flag's port")
    assert scrape(port).value("gunicorn_exporter_source_up", source="directory") == 1
    assert f"directory {other}" in s.output()


def test_port_in_use_exits_with_one_line(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        result = run(["serve"], env=base_env(port, tmp_path))
    finally:
        taken.close()
    assert result.returncode == 1
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert f"[ERROR] cannot listen on 127.0.0.1:{port}: Address already in use" in lines[0]


def test_serve_config_error_exits_before_listening(tmp_path):
    port = free_port()
    result = run(["serve"], env=base_env(port, tmp_path, PROMETHEUS_SSL_CERTFILE=str(
        tmp_path / "nope.pem")))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "gunicorn-prometheus-exporter: config error: exporter.prometheus.ssl.certfile "
        f"(env PROMETHEUS_SSL_CERTFILE): file not found: {tmp_path / 'nope.pem'}"]
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    result = run(["serve"], env=base_env(port, tmp_path, PROMETHEUS_SSL_CERTFILE=str(bad)))
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("gunicorn-prometheus-exporter: config error: metrics "
                                    f"server TLS: cannot load certificate, key or CA ({bad})")
    assert "Traceback" not in result.stderr
    assert "serving" not in result.stderr


# -- help, version ---------------------------------------------------------------------------------

def test_top_level_help_lists_the_subcommands():
    result = run(["--help"])
    assert result.returncode == 0
    assert result.stdout.startswith("usage: gunicorn-prometheus-exporter")
    for command in SUBCOMMANDS:
        assert re.search(rf"^\s+{command}\s+\S", result.stdout, re.M), command
    assert "PROMETHEUS_METRICS_PORT" in result.stdout


@pytest.mark.parametrize("command, flags", [
    ("serve", ["--config", "--port", "--bind", "--multiproc-dir", "--web-config-file",
               "--log-level"]),
    ("check-config", ["--config"]),
    ("version", []),
    ("healthcheck", ["--url", "--timeout", "--cert", "--key"]),
])
def test_subcommand_help(command, flags):
    result = run([command, "--help"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: gunicorn-prometheus-exporter {command}")
    for flag in flags:
        assert re.search(rf"^\s+{flag}\b", result.stdout, re.M), (flag, result.stdout)
    assert result.stderr == ""


def test_unknown_subcommand_is_a_usage_error():
    result = run(["frobnicate"])
    assert result.returncode == 2
    assert "invalid choice: 'frobnicate'" in result.stderr


def test_version():
    import gunicorn
    import prometheus_client  # noqa: F401
    from importlib import metadata
    import platform

    from gunicorn_prometheus_exporter import __version__

    result = run(["version"])
    assert result.returncode == 0
    assert result.stdout == (
        f"gunicorn-prometheus-exporter {__version__} (gunicorn {gunicorn.__version__}, "
        f"prometheus_client {metadata.version('prometheus_client')}, "
        f"python {platform.python_version()})\n")


# -- healthcheck -------------------------------------------------------------------------------------

def test_healthcheck_up_and_down(start_serve, tmp_path):
    s = start_serve(tmp_path).wait_listening()
    env = base_env(s.port, tmp_path)
    assert run(["healthcheck"], env=env).returncode == 0
    assert run(["healthcheck", "--url", f"http://127.0.0.1:{s.port}/-/healthy"]).returncode == 0
    assert run(["healthcheck", "--url", f"http://127.0.0.1:{s.port}/nope"]).returncode == 1
    s.stop()
    started = time.monotonic()
    assert run(["healthcheck"], env=env).returncode == 1
    assert time.monotonic() - started < 5


def test_healthcheck_of_a_server_that_never_answers():
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    try:
        started = time.monotonic()
        result = run(["healthcheck", "--timeout", "0.5", "--url",
                      f"http://127.0.0.1:{silent.getsockname()[1]}/-/healthy"])
        assert result.returncode == 1
        assert time.monotonic() - started < 5
    finally:
        silent.close()


def test_healthcheck_behind_basic_auth(start_serve, tmp_path):
    bcrypt = pytest.importorskip("bcrypt")
    web = tmp_path / "web.yml"
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    web.write_text(f"basic_auth_users:\n  prometheus: '{hashed}'\n")
    s = start_serve(tmp_path, PROMETHEUS_WEB_CONFIG_FILE=str(web)).wait_listening()
    result = run(["healthcheck"], env=base_env(s.port, tmp_path,
                                               PROMETHEUS_WEB_CONFIG_FILE=str(web)))
    assert result.returncode == 0, result.stderr


def test_healthcheck_of_a_tls_server(start_serve, tmp_path):
    from support.tls import make_certs

    certs = make_certs(tmp_path / "certs")
    tls_env = {"PROMETHEUS_SSL_CERTFILE": str(certs.server_cert),
               "PROMETHEUS_SSL_KEYFILE": str(certs.server_key)}
    s = start_serve(tmp_path, **tls_env).wait_listening()
    assert run(["healthcheck"], env=base_env(s.port, tmp_path, **tls_env)).returncode == 0
    # TLS from a web config file only
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {certs.server_cert}\n"
                   f"  key_file: {certs.server_key}\n")
    s2 = start_serve(tmp_path, PROMETHEUS_WEB_CONFIG_FILE=str(web)).wait_listening()
    result = run(["healthcheck"], env=base_env(s2.port, tmp_path,
                                               PROMETHEUS_WEB_CONFIG_FILE=str(web)))
    assert result.returncode == 0, result.stderr


def test_healthcheck_of_a_server_requiring_client_certificates(start_serve, tmp_path):
    """The image's HEALTHCHECK (no flags) reports a mutual-TLS server healthy; with
    ``--cert`` it makes a full request, and a certificate the server refuses fails."""
    from support.tls import make_certs

    certs = make_certs(tmp_path / "certs")
    tls_env = {"PROMETHEUS_SSL_CERTFILE": str(certs.server_cert),
               "PROMETHEUS_SSL_KEYFILE": str(certs.server_key),
               "PROMETHEUS_SSL_CLIENT_CAFILE": str(certs.ca)}
    s = start_serve(tmp_path, **tls_env).wait_listening()
    env = base_env(s.port, tmp_path, **tls_env)
    for _ in range(5):  # the refusal is read on a connection that sends nothing: no race
        result = run(["healthcheck"], env=env)
        assert result.returncode == 0, result.stderr
    assert run(["healthcheck", "--cert", str(certs.client)], env=env).returncode == 0
    assert run(["healthcheck", "--cert", str(certs.stranger)], env=env).returncode == 1
    # the same through an exporter-toolkit web config file
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {certs.server_cert}\n"
                   f"  key_file: {certs.server_key}\n"
                   f"  client_ca_file: {certs.ca}\n"
                   "  client_auth_type: RequireAndVerifyClientCert\n")
    s2 = start_serve(tmp_path, PROMETHEUS_WEB_CONFIG_FILE=str(web)).wait_listening()
    env2 = base_env(s2.port, tmp_path, PROMETHEUS_WEB_CONFIG_FILE=str(web))
    assert run(["healthcheck"], env=env2).returncode == 0
    s.stop()
    s2.stop()
    assert run(["healthcheck"], env=env).returncode == 1
    assert run(["healthcheck"], env=env2).returncode == 1


def test_healthcheck_reads_the_config_file(start_serve, tmp_path):
    s = start_serve(tmp_path).wait_listening()
    conf = tmp_path / "exporter.yml"
    conf.write_text(f"exporter:\n  prometheus:\n    metrics_port: {s.port}\n"
                    "    bind_address: 127.0.0.1\n")
    env = base_env(1, tmp_path)
    env.pop("PROMETHEUS_METRICS_PORT")
    assert run(["healthcheck", "--config", str(conf)], env=env).returncode == 0
    env["GUNICORN_PROMETHEUS_CONFIG"] = str(conf)
    assert run(["healthcheck"], env=env).returncode == 0

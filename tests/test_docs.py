"""The documentation tells the truth: the metric reference, the chart's dashboard and
alerts, and the README's example queries name only metrics a real scrape has."""
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gunicorn_prometheus_exporter import families as catalogue

ROOT = Path(__file__).resolve().parents[1]


def test_metric_reference_is_generated_from_the_catalogue():
    result = subprocess.run([sys.executable, str(ROOT / "docs" / "gen_metrics_reference.py"),
                             "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_architecture_names_real_files_and_the_recording_line():
    """docs/architecture.md's paths exist, and the line it says records
    gunicorn_http_requests_total is in recorder.py."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    package = ROOT / "exporter" / "gunicorn_prometheus_exporter"
    named = set(re.findall(r"`([\w/]+\.(?:py|c))`", text))
    files = {str(f.relative_to(package)) for f in package.rglob("*.[pc]*")}
    missing = sorted(p for p in named if not (ROOT / p).exists()
                     and not any(f == p or f.endswith("/" + p) for f in files))
    assert named and not missing, missing
    recorder = (package / "recorder.py").read_text()
    assert "counters[requests] += 1.0  # gunicorn_http_requests_total" in recorder
    assert "families.HTTP_REQUESTS" in recorder


@pytest.fixture(scope="module")
def full_scrape(tmp_path_factory):
    """A scrape after every kind of event: requests of every kind, an application error,
    a malformed request, a reload (worker exits, a signal), log lines."""
    from support.procs import Gunicorn

    g = Gunicorn(tmp_path_factory.mktemp("docs"), workers=2)
    try:
        g.wait_ready(workers=2)
        for path in ("/", "/users/1", "/error", "/nope", "/stream?chunks=2&size=10"):
            g.request(path)
        g.request("/upload", method="POST", body=b"abc")
        with socket.create_connection(("127.0.0.1", g.port)) as c:
            c.sendall(b"BAD\r\n\r\n")
            c.recv(100)
        g.signal(signal.SIGHUP)
        yield g.scrape_until(
            lambda s: s.total("gunicorn_master_worker_restart_total") == 2
            and s.total("gunicorn_worker_error_handling_total") == 1, timeout=30)
    finally:
        g.stop()


@pytest.fixture(scope="module")
def server_scrapes(tmp_path_factory):
    """Scrapes of what only some servers write, by ``Family.servers``: the ASGI worker's
    WebSocket families (at zero once it has loaded the application) and gunicorn 27's
    dirty pool after a task that failed."""
    pytest.importorskip("gunicorn.dirty", reason="gunicorn >= 27 (dirty workers)")
    from apps.dirty_app import DIRTY_APP, POOL_ARGS
    from support.procs import Gunicorn

    tmp = tmp_path_factory.mktemp("servers")
    tests = ["--chdir", str(ROOT / "tests")]
    asgi = Gunicorn(tmp, app="apps.traced:asgi_app", workers=1, extra_args=tests,
                    worker_class="gunicorn_prometheus_exporter.PrometheusASGIWorker")
    dirty = Gunicorn(tmp, app="apps.dirty_app:app", workers=1, extra_args=tests + POOL_ARGS)
    try:
        asgi.wait_ready(workers=1)
        dirty.wait_ready(workers=1)
        assert dirty.request("/fail") == (500, b"DirtyAppError")
        yield {"asgi": asgi.scrape_until(
                   lambda s: s.value("gunicorn_websocket_connections", worker_id="0") == 0),
               "dirty": dirty.scrape_until(
                   lambda s: s.value("gunicorn_dirty_task_failures_total", app=DIRTY_APP,
                                     error_type="ValueError") == 1, timeout=30)}
    finally:
        asgi.stop()
        dirty.stop()


def _names(scrape):
    names = set(scrape.types)
    for name, typ in scrape.types.items():
        if typ == "counter":
            names.add(name + "_total")
    return names | scrape.names()


def test_reference_and_real_scrape_hold_the_same_families(full_scrape):
    documented = {f.name for f in catalogue.ALL if f.storage != "redis" and f.servers == "any"}
    scraped = {name for name in full_scrape.types if name.startswith("gunicorn_")}
    assert scraped == documented


@pytest.mark.parametrize("servers", ["asgi", "dirty"])
def test_reference_and_real_scrape_of_other_servers(server_scrapes, servers):
    """Beside the families of every server, a scrape of the ASGI worker (or of a dirty
    pool) holds exactly the reference's families of those servers."""
    documented = {f.name for f in catalogue.ALL if f.servers == servers}
    scraped = {name for name in server_scrapes[servers].types if name.startswith("gunicorn_")}
    assert scraped <= set(catalogue.BY_NAME)
    assert {name for name in scraped if catalogue.BY_NAME[name].servers != "any"} == documented


def test_dashboard_alerts_and_kubernetes_docs_use_real_metrics(full_scrape, server_scrapes):
    from chart.metric_names import series_names

    real = _names(full_scrape).union(*map(_names, server_scrapes.values()))
    missing = sorted(n for n in series_names() if n not in real)
    assert missing == []


def test_readme_queries_use_real_metrics(full_scrape):
    text = (ROOT / "README.md").read_text()
    queries = "\n".join(re.findall(r"```promql\n(.*?)```", text, re.S))
    used = set(re.findall(r"\bgunicorn_[a-z0-9_]*[a-z0-9]\b", queries))
    assert used, "the README has example queries"
    assert sorted(used - _names(full_scrape)) == []

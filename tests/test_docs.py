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


def test_dashboard_alerts_and_kubernetes_docs_use_real_metrics(full_scrape):
    from chart.metric_names import series_names

    missing = sorted(n for n in series_names() if n not in _names(full_scrape))
    assert missing == []


def test_readme_queries_use_real_metrics(full_scrape):
    text = (ROOT / "README.md").read_text()
    queries = "\n".join(re.findall(r"```promql\n(.*?)```", text, re.S))
    used = set(re.findall(r"\bgunicorn_[a-z0-9_]*[a-z0-9]\b", queries))
    assert used, "the README has example queries"
    assert sorted(used - _names(full_scrape)) == []

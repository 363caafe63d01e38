"""Fixtures of the local end-to-end suite: one real Prometheus for the session (the chart's
alert rules loaded), and gunicorn instances that it scrapes, one scenario label each.

Every process started here runs in its own session and has its process group killed by the
fixture's finalizer, so nothing outlives the run."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

import alert_rules
import promapi
from support.procs import Gunicorn


@pytest.fixture(scope="session")
def rule_file(tmp_path_factory):
    """The chart's PrometheusRule rendered for this run (None when no renderer is found)."""
    directory = tmp_path_factory.mktemp("rules")
    try:
        return alert_rules.render_rules(directory)
    except LookupError:
        return None


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory, rule_file):
    binary = promapi.prometheus_binary()
    if binary is None:
        pytest.skip("prometheus is not installed (apt-get install prometheus; make system-deps)")
    prom = promapi.Prometheus(binary, tmp_path_factory.mktemp("prometheus"), rule_file)
    yield prom
    prom.stop()


@pytest.fixture
def scenario(request, prometheus, tmp_path):
    """Start gunicorn instances scraped by the session's Prometheus under the label
    scenario=<test name>; returns start(**Gunicorn kwargs) -> (Gunicorn, scenario name)."""
    started = []
    name = re.sub(r"[^a-zA-Z0-9_]", "_", request.node.name)

    def start(workers: int = 2, label: str = "", scraped: bool = True, **kwargs) -> Gunicorn:
        """``scraped=False``: Prometheus is told of it later, by ``start.scrape(g)``."""
        g = Gunicorn(tmp_path, workers=workers, **kwargs)
        g.label = label or name
        started.append(g)
        g.wait_ready(workers=workers)
        if scraped:
            prometheus.add_target(g.metrics_port, g.label)
        return g

    start.name = name
    start.scrape = lambda g: prometheus.add_target(g.metrics_port, g.label)
    yield start
    for g in started:
        prometheus.remove_target(g.label)
        g.stop()
        # shown by pytest only when the test failed
        print(f"--- gunicorn {g.label} (port {g.port}) log, last lines ---")
        print("\n".join(Path(g.log_path).read_text(errors="replace").splitlines()[-60:]))


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).parent == here:
            item.add_marker(pytest.mark.e2e)


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: end-to-end: real Prometheus scraping real gunicorn")
    config.addinivalue_line("markers", "kind: end-to-end in a kind cluster (Docker, kind, "
                            "kubectl, helm)")

"""The chart's alert rules (the PrometheusRule of charts/gunicorn-prometheus-exporter, rendered
with `for:` of 2 s and grouped by job and scenario) against real traffic:

* saturation reads 1.0 while every worker is held busy and 0 after, and
  GunicornWorkersSaturated fires, then resolves, in the live Prometheus;
* a 5xx share of 2/9 makes GunicornHighErrorRatio fire in the live Prometheus;
* `promtool test rules`, given the same rule file and the samples the live Prometheus stored
  (a 1 s grid read back with query_range), fires the same alerts with the same labels and
  annotations.
"""
import math
import threading
import time

import pytest

from alert_rules import as_expected, live_input_series, promtool_test, saturation_query
from promapi import JOB, promtool_binary
from promql_checks import assert_no_resets, assert_totals
from traffic import MIX, Ledger, Req, burst, send
from support.wait import until


@pytest.fixture
def rules(rule_file):
    if rule_file is None:
        pytest.skip("alert rules not rendered: helm (make chart-tools) or helm-python-sdk "
                    "is needed")
    return rule_file


@pytest.fixture
def promtool():
    path = promtool_binary()
    if path is None:
        pytest.skip("promtool is not installed (apt-get install prometheus; make system-deps)")
    return path


def quiesce(g, ledger):
    g.scrape_until(lambda s: s.total("gunicorn_http_requests_total") == ledger.total
                   and s.value("gunicorn_workers", state="busy") == 0)


def test_saturation_reads_1_then_0_and_alert_fires(scenario, prometheus, rules, promtool,
                                                    tmp_path):
    t0 = math.floor(time.time())
    g = scenario(workers=2)
    ledger = Ledger()
    sel = f'job="{JOB}",scenario="{scenario.name}"'
    # the query the chart's KEDA ScaledObject scales on (the alert's own expression), and
    # the share of busy workers
    saturation = saturation_query(sel)
    assert saturation == (f"sum(gunicorn_worker_in_flight_requests{{{sel}}}) / "
                          f"sum(gunicorn_worker_capacity{{{sel}}})")
    busy_share = (f'sum(gunicorn_workers{{{sel},state="busy"}}) / '
                  f"sum(gunicorn_workers{{{sel}}})")
    prometheus.wait_for(saturation, 0.0)
    hold = Req("/slow?ms=9000", "/slow", 200)
    held = [threading.Thread(target=send, args=(g.port, hold, ledger), daemon=True)
            for _ in range(2)]
    for t in held:
        t.start()
    prometheus.wait_for(saturation, 1.0, timeout=5)
    prometheus.wait_for(busy_share, 1.0, timeout=5)
    firing = until(lambda: prometheus.firing("GunicornWorkersSaturated",
                                             scenario=scenario.name),
                   timeout=7, interval=0.25, message="GunicornWorkersSaturated to fire")
    assert len(firing) == 1 and firing[0]["labels"] == {
        "alertname": "GunicornWorkersSaturated", "job": JOB, "scenario": scenario.name,
        "severity": "warning"}, firing
    assert float(firing[0]["value"]) == 1.0
    assert not prometheus.firing("GunicornHighErrorRatio", scenario=scenario.name)
    for t in held:
        t.join(30)
    prometheus.wait_for(saturation, 0.0, timeout=10)
    prometheus.wait_for(busy_share, 0.0)
    assert_totals(prometheus, scenario.name, ledger, t0)
    until(lambda: not prometheus.firing("GunicornWorkersSaturated", scenario=scenario.name),
          timeout=10, interval=0.25, message="GunicornWorkersSaturated to resolve")

    # promtool, on what the live Prometheus stored (a 1 s grid from t0): saturated from
    # second k on, the alert fires at k + 3 (for: 2s, evaluated every second); it is gone at
    # the first second that reads 0 again
    def grid_with_release():
        end = math.floor(time.time())
        values = [(int(round(t - t0)), v) for t, v in
                  prometheus.query_range(saturation, t0, end)[0]["values"]]
        saturated = [i for i, v in values if v == 1.0]
        after = [i for i, v in values if saturated and i > saturated[-1] and v == 0.0]
        return (end, saturated, after[0]) if after else None
    end, saturated, released = until(grid_with_release, timeout=10, interval=0.5,
                                     message="a 0 after the saturated seconds")
    first = saturated[0]
    assert saturated == list(range(first, saturated[-1] + 1)), saturated
    assert first + 3 in saturated, f"saturated for less than 4 s: {saturated}"
    series = live_input_series(prometheus, [f"gunicorn_worker_in_flight_requests{{{sel}}}",
                                            f"gunicorn_worker_capacity{{{sel}}}"], t0, end)
    promtool_test(promtool, rules, tmp_path, series, "GunicornWorkersSaturated",
                  [(first + 1, []), (first + 3, [as_expected(firing[0])]), (released, [])])


def test_error_ratio_alert_live_and_in_promtool(scenario, prometheus, rules, promtool,
                                                tmp_path):
    """2 of the 9 requests of each round of the mix answer 5xx (/error 500, /status/503):
    the live alert fires with "22.22% of the requests ..." and promtool agrees."""
    t0 = math.floor(time.time())
    # One request of each kind before Prometheus scrapes the instance, so that every series
    # has its first sample in the same scrape; whole rounds of the mix after that keep every
    # series' increase in the same proportion, so rate() ratios are exactly 2/9 (their
    # extrapolation is the same for every series).
    g = scenario(workers=2, scraped=False)
    ledger = Ledger()
    burst([g.port], ledger, len(MIX), threads=1)
    quiesce(g, ledger)
    scenario.scrape(g)
    assert_totals(prometheus, scenario.name, ledger, t0)
    for _ in range(4):  # 4 bursts of 20 rounds, each seen by at least one scrape
        burst([g.port], ledger, 20 * len(MIX))
        assert_totals(prometheus, scenario.name, ledger, t0)
    errors = sum(v for (_, _, status), v in ledger.counts.items() if status.startswith("5"))
    assert errors * 9 == ledger.total * 2
    percent = f"{100 * 2 / 9:.4g}%"  # humanizePercentage: 22.22%

    def fired():
        alerts = prometheus.firing("GunicornHighErrorRatio", scenario=scenario.name)
        return alerts if alerts and alerts[0]["annotations"]["description"].startswith(
            percent) else None
    alert = until(fired, timeout=15, interval=0.25,
                  message=f"GunicornHighErrorRatio to fire with {percent}")[0]
    assert alert["labels"] == {"alertname": "GunicornHighErrorRatio", "job": JOB,
                               "scenario": scenario.name, "severity": "warning"}
    assert alert["annotations"]["description"] == (
        f"{percent} of the requests of {JOB} answered 5xx over 5 minutes (threshold 5%).")
    assert not prometheus.firing("GunicornWorkersSaturated", scenario=scenario.name)
    assert_no_resets(prometheus, scenario.name, t0)

    # The SLO rules (prometheusRule.slo) evaluate live: the 5m error ratio is 2/9 too, the
    # 1h burn rate 2/9 over the 0.1 % budget, and the fast burn alert is pending (for: 2m).
    slo = f'{{job="{JOB}",scenario="{scenario.name}"}}'
    ratio = prometheus.scalar(f"gunicorn:slo_errors:ratio_rate5m{slo}")
    assert ratio is not None and abs(ratio - 2 / 9) < 1e-9, ratio
    burn = prometheus.scalar(f"gunicorn:slo_availability:burn_rate1h{slo}")
    assert burn is not None and abs(burn - (2 / 9) / (1 - 99.9 / 100)) < 1e-6, burn
    pending = until(lambda: [a for a in prometheus.alerts()
                             if a["labels"].get("alertname") == "GunicornAvailabilitySLOFastBurn"
                             and a["labels"].get("scenario") == scenario.name],
                    timeout=10, interval=0.25, message="GunicornAvailabilitySLOFastBurn pending")
    assert pending[0]["state"] == "pending"
    assert pending[0]["labels"] == {"alertname": "GunicornAvailabilitySLOFastBurn", "job": JOB,
                                    "scenario": scenario.name, "severity": "critical",
                                    "slo": "availability"}

    # promtool at a second of the grid where the ratio has held for `for:` (2 s) since
    # the second sample of the series (the first rate()): 2 + 2 + 1 s after their first
    selector = f'gunicorn_http_requests_total{{job="{JOB}",scenario="{scenario.name}"}}'
    first = int(round(min(t for r in prometheus.query_range(selector, t0, time.time())
                          for t, _ in r["values"]) - t0))
    until(lambda: time.time() >= t0 + first + 6, timeout=10, message="5 s of samples")
    end = math.floor(time.time()) - 1
    series = live_input_series(prometheus, [selector], t0, end)
    assert len(series) == 8  # (method, route, status) kinds of the mix
    promtool_test(promtool, rules, tmp_path, series, "GunicornHighErrorRatio",
                  [(end - t0, [as_expected(alert)])])

"""promtool check rules / test rules on the alert rules of the rendered PrometheusRule."""
import shutil
import subprocess

import pytest
import yaml

import chartlib

pytestmark = pytest.mark.needs_helm

ALERT_TESTS = chartlib.CHART / "tests" / "alerts-test.yaml"
# Rules of each values file: 6 alerts; monitors-values.yaml adds the SLO group (10 ratio records
# over 5 windows, 2 budget and 4 burn-rate records, 4 burn-rate alerts).
RULES = {"monitors-values.yaml": 26, "podmonitor-values.yaml": 6}


@pytest.fixture(scope="module")
def promtool():
    path = shutil.which("promtool")
    if not path:
        pytest.skip("promtool not found: apt-get install -y prometheus (Debian's package ships promtool)")
    return path


def write_rules(directory, values_file="monitors-values.yaml", sets=()):
    rule = chartlib.render(values_file, sets=sets).get("PrometheusRule")
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"], sort_keys=False))
    return path


@pytest.mark.parametrize("values_file", ["monitors-values.yaml", "podmonitor-values.yaml"])
def test_promtool_check_rules(promtool, tmp_path, values_file):
    rules = write_rules(tmp_path, values_file)
    proc = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {RULES[values_file]} rules found" in proc.stdout


def test_promtool_check_rules_with_additional_rules(promtool, tmp_path):
    rules = write_rules(tmp_path, sets=(
        "prometheusRule.additionalRules[0].record=job:gunicorn_http_requests:rate5m",
        "prometheusRule.additionalRules[0].expr=sum by (job) (rate(gunicorn_http_requests_total[5m]))",
    ))
    proc = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {RULES['monitors-values.yaml'] + 1} rules found" in proc.stdout


def test_promtool_test_rules(promtool, tmp_path):
    write_rules(tmp_path)
    shutil.copy(ALERT_TESTS, tmp_path / "alerts-test.yaml")
    proc = subprocess.run([promtool, "test", "rules", "alerts-test.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_every_alert_has_a_unit_test():
    tests = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    tested = {t["alertname"] for group in tests for t in group.get("alert_rule_test", [])
              if t.get("exp_alerts")}
    rule = chartlib.render("monitors-values.yaml").get("PrometheusRule")
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r}
    assert alerts == tested


def slo_group(sets=()):
    rule = chartlib.render("monitors-values.yaml", sets=sets).get("PrometheusRule")
    groups = {g["name"]: g["rules"] for g in rule["spec"]["groups"]}
    return groups.get(f"{chartlib.RELEASE}-gunicorn-prometheus-exporter.slo")


def test_slo_rules_are_off_by_default():
    assert slo_group(("prometheusRule.slo.enabled=false",)) is None
    values = yaml.safe_load((chartlib.CHART / "values.yaml").read_text())
    assert values["prometheusRule"]["slo"]["enabled"] is False


def test_slo_burn_rates_follow_the_sre_workbook():
    """Fast burn 14.4x over 1h and 5m, slow burn 6x over 6h and 30m, of the budget 1 - objective."""
    alerts = {r["alert"]: r for r in slo_group() if "alert" in r}
    fast = alerts["GunicornAvailabilitySLOFastBurn"]["expr"]
    assert fast == ("gunicorn:slo_errors:ratio_rate1h > (14.4 * (1 - 99.9 / 100))\nand\n"
                    "gunicorn:slo_errors:ratio_rate5m > (14.4 * (1 - 99.9 / 100))")
    slow = alerts["GunicornLatencySLOSlowBurn"]["expr"]
    assert slow == ("gunicorn:slo_slow_requests:ratio_rate6h > (6 * (1 - 99 / 100))\nand\n"
                    "gunicorn:slo_slow_requests:ratio_rate30m > (6 * (1 - 99 / 100))")
    records = {r["record"] for r in slo_group() if "record" in r}
    for window in ("5m", "30m", "1h", "6h", "30d"):
        assert {f"gunicorn:slo_errors:ratio_rate{window}",
                f"gunicorn:slo_slow_requests:ratio_rate{window}"} <= records


@pytest.mark.parametrize("threshold, le", [("1", "1.0"), ("0.25", "0.25"), ("2.5", "2.5")])
def test_slo_latency_threshold_is_written_as_the_exporter_writes_le(threshold, le):
    rules = {r.get("record"): r["expr"] for r in slo_group((f"prometheusRule.slo.latency.threshold={threshold}",))}
    assert f'le="{le}"' in rules["gunicorn:slo_slow_requests:ratio_rate5m"]


def test_slo_per_route(promtool, tmp_path):
    sets = ("prometheusRule.slo.byRoute=true",)
    group = slo_group(sets)
    assert "sum by (namespace, job, route)" in next(r["expr"] for r in group if r.get("record") == "gunicorn:slo_errors:ratio_rate1h")
    alert = next(r for r in group if r.get("alert") == "GunicornAvailabilitySLOFastBurn")
    assert "route {{ $labels.route }}" in alert["annotations"]["description"]
    rules = write_rules(tmp_path, sets=sets)
    proc = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_slo_only_one_objective():
    group = slo_group(("prometheusRule.slo.latency.enabled=false",))
    assert {r["alert"] for r in group if "alert" in r} == {"GunicornAvailabilitySLOFastBurn",
                                                          "GunicornAvailabilitySLOSlowBurn"}
    assert not [r for r in group if "slow_requests" in r.get("record", "") + r["expr"]]


@pytest.mark.parametrize("bad", ["prometheusRule.slo.availability.objective=100",
                                 "prometheusRule.slo.availability.objective=0",
                                 "prometheusRule.slo.period=30days"])
def test_slo_bad_values_are_refused(bad):
    key = bad.split("=")[0].rsplit(".", 1)[-1]
    with pytest.raises(chartlib.RenderError, match=key):
        chartlib.render_text("monitors-values.yaml", sets=(bad,))

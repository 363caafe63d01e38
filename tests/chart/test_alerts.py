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
    assert "SUCCESS: 7 rules found" in proc.stdout


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
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert alerts == tested

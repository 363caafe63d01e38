"""helm lint --strict over every CI values file, with the helm CLI (v3) and the Helm v4 engine."""
import pytest

import chartlib

pytestmark = pytest.mark.needs_helm


def test_ci_values_files_cover_the_required_cases():
    required = {"sidecar", "daemonset", "external-redis", "tls", "netpol-off", "monitors"}
    present = {name.removesuffix("-values.yaml") for name in chartlib.CI_FILES}
    assert required <= present, f"missing CI values files: {required - present}"


@pytest.mark.parametrize("values_file", chartlib.CI_FILES)
def test_helm_lint_strict(values_file):
    proc = chartlib.helm("lint", "--strict", str(chartlib.CHART), "-f", str(chartlib.CI_DIR / values_file))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout
    # nothing above INFO (icon is only recommended)
    for line in proc.stdout.splitlines():
        assert not line.startswith(("[WARNING]", "[ERROR]")), line


@pytest.mark.parametrize("values_file", chartlib.CI_FILES)
def test_helm4_engine_lint(values_file):
    """The same chart through the Helm v4 engine (helm-python-sdk)."""
    helm_python = pytest.importorskip("helm_python", reason="pip install helm-python-sdk")
    import yaml

    values = yaml.safe_load((chartlib.CI_DIR / values_file).read_text()) or {}
    report = helm_python.lint(str(chartlib.CHART), values, strict=True, namespace=chartlib.NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems, problems

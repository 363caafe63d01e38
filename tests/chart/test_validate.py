"""Every rendered object is valid: built-in kinds with kubernetes-validate --strict for the oldest
and newest supported Kubernetes versions, prometheus-operator kinds against their CRD schemas
(from an installed package: crd_schemas.py)."""
from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import yaml

import chartlib
from crd_schemas import MissingModels, crd_errors, is_custom

pytestmark = pytest.mark.needs_helm


def k8s_validate(obj: dict, version: str):
    kv = pytest.importorskip("kubernetes_validate.utils", reason="pip install kubernetes-validate")
    try:
        kv.validate(obj, version, strict=True)
    except kv.ValidationError as e:
        path = ".".join(str(p) for p in e.path)
        pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} invalid for Kubernetes {version}: {path}: {e.message}")


@pytest.mark.parametrize("kube_version", chartlib.KUBE_VERSIONS)
@pytest.mark.parametrize("values_file", chartlib.CI_FILES)
def test_rendered_objects_are_valid(values_file, kube_version):
    objs = chartlib.render(values_file, kube_version=f"v{kube_version}", api_versions=(chartlib.MONITORING_API,))
    assert objs
    for obj in objs:
        if is_custom(obj["apiVersion"]):
            errors = crd_errors(obj)
            assert not errors, (obj["kind"], errors)
        else:
            k8s_validate(obj, kube_version)


def test_all_kinds_are_covered():
    """The CI values files between them render every kind the chart has."""
    kinds = set()
    for values_file in chartlib.CI_FILES:
        kinds |= {o["kind"] for o in chartlib.render(values_file)}
    assert kinds == {"ConfigMap", "DaemonSet", "Deployment", "NetworkPolicy", "PersistentVolumeClaim",
                     "Pod", "PodDisruptionBudget", "PodMonitor", "PrometheusRule", "ScaledObject", "Secret",
                     "Service", "ServiceAccount", "ServiceMonitor"}


def test_crd_validation_catches_a_bad_field():
    obj = copy.deepcopy(chartlib.render("monitors-values.yaml").get("ServiceMonitor"))
    obj["spec"]["endpoints"][0]["intervall"] = "30s"
    assert crd_errors(obj) == ["spec.endpoints.0: Additional properties are not allowed ('intervall' was unexpected)"]


@pytest.mark.parametrize(("kind", "path", "value", "error"), [
    ("ServiceMonitor", ("spec", "endpoints", 0, "interval"), "30 seconds", "does not match"),
    ("ServiceMonitor", ("spec", "endpoints", 0, "scheme"), "ftp", "is not one of"),
    ("PodMonitor", ("spec", "podMetricsEndpoints", 0, "honorLabels"), "yes", "is not of type 'boolean'"),
    ("PrometheusRule", ("spec", "groups", 0, "rules", 0, "for"), "5 minutes", "does not match"),
])
def test_crd_validation_catches_a_bad_value(kind, path, value, error):
    """The schemas keep the CRDs' patterns, enums and types, not only their field names."""
    values_file = {"PodMonitor": "podmonitor-values.yaml"}.get(kind, "monitors-values.yaml")
    obj = copy.deepcopy(chartlib.render(values_file, api_versions=(chartlib.MONITORING_API,)).get(kind))
    node = obj
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    errors = crd_errors(obj)
    assert len(errors) == 1 and errors[0].startswith(".".join(map(str, path)) + ": ")
    assert error in errors[0], errors


def test_missing_models_package_fails_with_its_name(monkeypatch):
    """A missing models package is an error naming it, never a skip."""
    import crd_schemas
    monkeypatch.setitem(crd_schemas.MODEL_PACKAGES, "example.com", "cloudcoil.models.not_installed")
    with pytest.raises(MissingModels, match="cloudcoil.models.not_installed is not installed.*"
                                            "pip install cloudcoil-models-not_installed"):
        crd_schemas.crd_schema("example.com/v1", "Widget")


def test_scaled_object_validation_catches_a_bad_field():
    obj = copy.deepcopy(chartlib.render("monitors-values.yaml").get("ScaledObject"))
    assert not crd_errors(obj)
    obj["spec"]["minReplicas"] = 2
    assert any("minReplicas" in e for e in crd_errors(obj))


def test_kube_version_below_support_is_refused():
    with pytest.raises(chartlib.RenderError, match="kubeVersion"):
        chartlib.render("sidecar-values.yaml", kube_version="v1.24.0")


@pytest.mark.parametrize("kube_version", chartlib.KUBE_VERSIONS)
def test_raw_manifests_pass_the_kubernetes_validate_cli(kube_version):
    pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    files = sorted(str(p) for p in (chartlib.ROOT / "k8s").glob("*.yaml"))
    proc = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet",
                           "-k", kube_version, *files], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr

"""Every rendered object is valid: built-in kinds with kubernetes-validate --strict for the oldest
and newest supported Kubernetes versions, prometheus-operator kinds against their CRD schemas."""
from __future__ import annotations

import copy
import functools
import subprocess
import sys

import pytest
import yaml

import chartlib
import crd_schemas

pytestmark = pytest.mark.needs_helm

CRD_FILES = {
    "ServiceMonitor": "monitoring.coreos.com_servicemonitors.yaml",
    "PodMonitor": "monitoring.coreos.com_podmonitors.yaml",
    "PrometheusRule": "monitoring.coreos.com_prometheusrules.yaml",
}


@functools.lru_cache(maxsize=None)
def crd_validator(kind: str):
    jsonschema = pytest.importorskip("jsonschema", reason="pip install jsonschema")
    base = chartlib.SCHEMAS
    dirs = sorted(base.glob("prometheus-operator-*")) if base.exists() else []
    if not dirs:
        pytest.skip(f"CRD schemas not found at {base} (the shared/ directory beside the repository)")
    crd = yaml.safe_load((dirs[-1] / CRD_FILES[kind]).read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema = crd_schemas.strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
    return jsonschema.Draft7Validator(schema)


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
        if obj["kind"] in crd_schemas.MODELS:
            assert not crd_schemas.errors(obj), crd_schemas.errors(obj)
        elif obj["kind"] not in CRD_FILES:
            k8s_validate(obj, kube_version)
    # prometheus-operator kinds last, so that a missing shared/schemas skips only them
    for obj in objs:
        if obj["kind"] in CRD_FILES:
            errors = sorted(crd_validator(obj["kind"]).iter_errors(obj), key=lambda e: list(e.path))
            assert not errors, [f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors]


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
    assert list(crd_validator("ServiceMonitor").iter_errors(obj))


def test_scaled_object_validation_catches_a_bad_field():
    obj = copy.deepcopy(chartlib.render("monitors-values.yaml").get("ScaledObject"))
    assert not crd_schemas.errors(obj)
    obj["spec"]["minReplicas"] = 2
    assert any("minReplicas" in e for e in crd_schemas.errors(obj))


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

"""The raw manifests of k8s/ are identical to a fresh render of the chart."""
import subprocess
import sys

import pytest

import chartlib

pytestmark = pytest.mark.needs_helm

K8S = chartlib.ROOT / "k8s"
ORIGINAL_NAMES = {"sidecar-deployment.yaml", "sidecar-daemonset.yaml", "daemonset-service.yaml",
                  "daemonset-metrics-service.yaml", "daemonset-netpol.yaml"}


def test_k8s_matches_a_fresh_render(tmp_path):
    proc = subprocess.run([sys.executable, str(K8S / "render.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True, env=chartlib.helm_env())
    assert proc.returncode == 0, proc.stderr
    fresh = {p.name: p.read_text() for p in tmp_path.glob("*.yaml")}
    committed = {p.name: p.read_text() for p in K8S.glob("*.yaml")}
    assert ORIGINAL_NAMES | {"redis.yaml"} == set(fresh)
    assert set(committed) == set(fresh), "k8s/ has other files than the render: run `make k8s-manifests`"
    for name in fresh:
        assert committed[name] == fresh[name], f"k8s/{name} drifted from the chart: run `make k8s-manifests`"


def test_render_check_mode():
    proc = subprocess.run([sys.executable, str(K8S / "render.py"), "--check"], capture_output=True, text=True,
                          env=chartlib.helm_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_raw_manifests_hold_no_generated_secret():
    text = "".join(p.read_text() for p in K8S.glob("*.yaml"))
    assert "kind: Secret" not in text
    assert "gunicorn-redis-auth" in text
    assert "kind: Pod\n" not in text  # no helm test hook

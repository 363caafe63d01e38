"""Helpers of the chart tests: find helm, render the chart, index the rendered objects."""
from __future__ import annotations

import functools
import subprocess
from pathlib import Path

import yaml

from support.helm import find_helm, helm_env  # noqa: F401 (the chart tests use both)

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "gunicorn-prometheus-exporter"
CI_DIR = CHART / "ci"
RELEASE = "gpe"
NAMESPACE = "shop"
MONITORING_API = "monitoring.coreos.com/v1"
# Oldest and newest Kubernetes versions the chart supports (Chart.yaml kubeVersion >=1.25) and
# kubernetes-validate ships schemas for.
KUBE_VERSIONS = ("1.25.0", "1.37.0")

CI_FILES = sorted(p.name for p in CI_DIR.glob("*-values.yaml"))


class RenderError(Exception):
    pass


def helm(*args: str) -> subprocess.CompletedProcess:
    binary = find_helm()
    if not binary:
        raise RuntimeError("helm not found")
    return subprocess.run([binary, *args], capture_output=True, text=True, env=helm_env())


def render_text(values_file: str | None = None, *, sets: tuple[str, ...] = (), api_versions: tuple[str, ...] = (),
                kube_version: str | None = None, release: str = RELEASE, namespace: str = NAMESPACE,
                skip_tests: bool = False) -> str:
    args = ["template", release, str(CHART), "--namespace", namespace]
    if values_file:
        args += ["-f", str(CI_DIR / values_file) if "/" not in values_file else values_file]
    for s in sets:
        args += ["--set", s]
    for a in api_versions:
        args += ["--api-versions", a]
    if kube_version:
        args += ["--kube-version", kube_version]
    if skip_tests:
        args.append("--skip-tests")
    proc = helm(*args)
    if proc.returncode != 0:
        raise RenderError(proc.stderr.strip())
    return proc.stdout


@functools.lru_cache(maxsize=None)
def render(values_file: str | None = None, sets: tuple[str, ...] = (), api_versions: tuple[str, ...] = (),
           kube_version: str | None = None, release: str = RELEASE) -> "Objects":
    text = render_text(values_file, sets=sets, api_versions=api_versions, kube_version=kube_version, release=release)
    return Objects([d for d in yaml.safe_load_all(text) if d])


class Objects(list):
    """The rendered objects of one render, with lookups."""

    def kind(self, kind: str) -> list[dict]:
        return [o for o in self if o["kind"] == kind]

    def get(self, kind: str, name: str | None = None, component: str | None = None) -> dict:
        found = [o for o in self.kind(kind)
                 if (name is None or o["metadata"]["name"] == name)
                 and (component is None or labels(o).get("app.kubernetes.io/component") == component)]
        assert len(found) == 1, f"expected one {kind} name={name} component={component}, found {len(found)}"
        return found[0]

    def find(self, kind: str, component: str | None = None) -> list[dict]:
        return [o for o in self.kind(kind)
                if component is None or labels(o).get("app.kubernetes.io/component") == component]

    def workloads(self) -> list[dict]:
        return [o for o in self if o["kind"] in ("Deployment", "DaemonSet", "StatefulSet")]

    def pod_specs(self) -> list[tuple[dict, dict, dict]]:
        """(object, pod metadata, pod spec) of every workload and bare pod."""
        out = []
        for o in self:
            if o["kind"] in ("Deployment", "DaemonSet", "StatefulSet"):
                out.append((o, o["spec"]["template"]["metadata"], o["spec"]["template"]["spec"]))
            elif o["kind"] == "Pod":
                out.append((o, o["metadata"], o["spec"]))
        return out


def labels(obj: dict) -> dict:
    return obj.get("metadata", {}).get("labels") or {}


def container(pod_spec: dict, name: str) -> dict:
    found = [c for c in pod_spec["containers"] if c["name"] == name]
    assert found, f"no container {name} in {[c['name'] for c in pod_spec['containers']]}"
    return found[0]


def env_of(c: dict) -> dict:
    """name -> value, or -> valueFrom dict."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def selector_matches(selector: dict, pod_labels: dict) -> bool:
    return all(pod_labels.get(k) == v for k, v in selector.items())

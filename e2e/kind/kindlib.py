"""Helpers of the kind suite: every external command goes through ``run()``, which logs it
(with its duration and exit status) before anything else happens, so a reader of the log can
replay the whole run by hand."""
from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

from support.helm import find_helm

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "gunicorn-prometheus-exporter"
KIND_CONFIG = ROOT / "kind-config.yaml"
CLUSTER = os.environ.get("E2E_KIND_CLUSTER", "gpe-e2e")
MIN_KIND = (0, 24)  # kindnet enforces NetworkPolicies from kind 0.24 on

log = logging.getLogger("e2e.kind")


# -- commands -------------------------------------------------------------------------------------

def run(args: Sequence[str], *, check: bool = True, timeout: float = 600,
        input: Optional[str] = None, env: Optional[Dict[str, str]] = None,
        quiet: bool = False) -> subprocess.CompletedProcess:
    """Run a command, logging it first; raise with its output when ``check`` and it fails."""
    args = [str(a) for a in args]
    log.info("$ %s", shlex.join(args))
    started = time.monotonic()
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, input=input,
                          env={**os.environ, **(env or {})})
    log.info("  -> exit %d in %.1fs", proc.returncode, time.monotonic() - started)
    if proc.returncode != 0 and not quiet:
        log.info("  stdout: %s\n  stderr: %s", proc.stdout[-4000:], proc.stderr[-4000:])
    if check and proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(args)} exited {proc.returncode}:\n"
                           f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def missing_system_tools() -> List[str]:
    """What this machine lacks for the kind suite among the tools `make` cannot install (a Docker
    engine, kind, kubectl), in words (empty: all there). Needs no package beyond tests/support: `make e2e-kind`
    asks before it installs anything (`PYTHONPATH=tests python3 e2e/kind/kindlib.py`)."""
    missing = []
    docker = shutil.which("docker")
    if docker is None:
        missing.append("docker (not on PATH)")
    else:
        try:
            ok = subprocess.run([docker, "info"], capture_output=True, timeout=20).returncode == 0
        except (subprocess.TimeoutExpired, OSError):
            ok = False
        if not ok:
            missing.append("a Docker engine (`docker info` fails)")
    kind = shutil.which("kind")
    if kind is None:
        missing.append("kind (not on PATH)")
    else:
        out = subprocess.run([kind, "version"], capture_output=True, text=True).stdout
        found = re.search(r"v(\d+)\.(\d+)", out)
        if found and tuple(int(x) for x in found.groups()) < MIN_KIND:
            missing.append(f"kind >= {MIN_KIND[0]}.{MIN_KIND[1]} (found {out.strip()})")
    if shutil.which("kubectl") is None:
        missing.append("kubectl (not on PATH)")
    return missing


def missing_tools() -> List[str]:
    """What this machine lacks for the kind suite, in words (empty: all there)."""
    missing = missing_system_tools()
    if find_helm() is None:
        missing.append("helm (make chart-tools)")
    try:
        import kubernetes  # noqa: F401
    except ImportError:
        missing.append("the kubernetes Python client (pip install kubernetes)")
    return missing


def skip_reason(missing: List[str]) -> str:
    """The one line the suite skips with."""
    return ("kind suite needs " + ", ".join(missing)
            + " (run `make e2e-kind` where they are installed)")


# -- cluster and images ---------------------------------------------------------------------------

class Cluster:
    """A kind cluster made from kind-config.yaml, with its own kubeconfig file."""

    def __init__(self, workdir: Path, name: str = CLUSTER) -> None:
        self.name = name
        self.kubeconfig = workdir / "kubeconfig"
        self.env = {"KUBECONFIG": str(self.kubeconfig)}
        self.created = False

    def create(self) -> "Cluster":
        existing = run(["kind", "get", "clusters"]).stdout.split()
        if self.name in existing and os.environ.get("E2E_KIND_REUSE") == "1":
            run(["kind", "export", "kubeconfig", "--name", self.name,
                 "--kubeconfig", self.kubeconfig])
        else:
            if self.name in existing:
                run(["kind", "delete", "cluster", "--name", self.name])
            run(["kind", "create", "cluster", "--name", self.name, "--config", KIND_CONFIG,
                 "--kubeconfig", self.kubeconfig, "--wait", "180s"], timeout=900)
            self.created = True
        self.kubectl("wait", "--for=condition=Ready", "node", "--all", "--timeout=180s")
        return self

    def delete(self) -> None:
        if self.created and os.environ.get("E2E_KIND_KEEP") != "1":
            run(["kind", "delete", "cluster", "--name", self.name], check=False)

    def load(self, image: str) -> None:
        run(["kind", "load", "docker-image", image, "--name", self.name], timeout=900)

    def kubectl(self, *args, **kw) -> subprocess.CompletedProcess:
        return run(["kubectl", *args], env=self.env, **kw)

    def helm(self, *args, **kw) -> subprocess.CompletedProcess:
        home = self.kubeconfig.parent / "helm"
        env = {**self.env, "HELM_CACHE_HOME": str(home / "cache"),
               "HELM_CONFIG_HOME": str(home / "config"), "HELM_DATA_HOME": str(home / "data")}
        return run([find_helm(), *args], env=env, **kw)

    def api(self):
        """A CoreV1Api client of this cluster."""
        from kubernetes import client, config

        return client.CoreV1Api(config.new_client_from_config(str(self.kubeconfig)))

    def namespace(self, name: str, labels: Optional[Dict[str, str]] = None) -> str:
        manifest = {"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": name, "labels": labels or {}}}
        self.kubectl("apply", "-f", "-", input=json.dumps(manifest))
        return name


def build_images() -> Dict[str, str]:
    """Build the exporter and demo images with image/build.sh (docker); return their names."""
    env = {"IMAGE_RUNTIME": "docker"}
    run(["bash", ROOT / "image" / "build.sh", "build"], env=env, timeout=1800)
    described = run(["bash", ROOT / "image" / "build.sh", "env"], env=env).stdout
    images = dict(line.split("=", 1) for line in described.splitlines() if "=" in line)
    return {"exporter": images["IMAGE"], "demo": images["DEMO_IMAGE"]}


def image_values(images: Dict[str, str]) -> List[str]:
    """--set arguments pointing the chart at the images loaded into kind (never pulled)."""
    exp_repo, exp_tag = images["exporter"].rsplit(":", 1)
    demo_repo, demo_tag = images["demo"].rsplit(":", 1)
    return ["--set", f"exporter.image.repository={exp_repo}",
            "--set", f"exporter.image.tag={exp_tag}",
            "--set", "exporter.image.pullPolicy=Never",
            "--set", f"app.image.repository={demo_repo}",
            "--set", f"app.image.tag={demo_tag}",
            "--set", "app.image.pullPolicy=Never"]


# -- pods -----------------------------------------------------------------------------------------

def pod_names(cluster: Cluster, namespace: str, selector: str) -> List[str]:
    pods = cluster.api().list_namespaced_pod(namespace, label_selector=selector).items
    names = sorted(p.metadata.name for p in pods
                   if p.status.phase == "Running" and p.metadata.deletion_timestamp is None)
    log.info("pods of %s in %s: %s", selector, namespace, names)
    return names


def wait_rollout(cluster: Cluster, namespace: str, *workloads: str) -> None:
    for workload in workloads:
        cluster.kubectl("-n", namespace, "rollout", "status", workload, "--timeout=300s",
                        timeout=330)


@contextmanager
def port_forward(cluster: Cluster, namespace: str, target: str, remote_port: int,
                 timeout: float = 30) -> Iterator[int]:
    """``kubectl port-forward <target> :<remote_port>``; yields the local port (loopback)."""
    args = ["kubectl", "-n", namespace, "port-forward", "--address", "127.0.0.1", target,
            f":{remote_port}"]
    log.info("$ %s &", shlex.join(args))
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **cluster.env}, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        port = None
        while port is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                if proc.poll() is not None:
                    raise RuntimeError(f"port-forward {target} exited {proc.returncode}")
                continue
            found = re.search(r"Forwarding from 127\.0\.0\.1:(\d+)", line)
            if found:
                port = int(found.group(1))
        if port is None:
            raise RuntimeError(f"port-forward {target}: no local port in {timeout}s")
        log.info("  -> %s:%d on 127.0.0.1:%d", target, remote_port, port)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


RESTRICTED = {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
              "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_RESTRICTED = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]}}

PROBE = ("import socket,sys\n"
         "try:\n"
         "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5).close()\n"
         "    print('open')\n"
         "except OSError as e:\n"
         "    print('blocked', e)\n")


def tcp_probe(cluster: Cluster, namespace: str, name: str, labels: Dict[str, str], image: str,
              host: str, port: int) -> str:
    """Run a one-shot pod (``labels``) that opens a TCP connection to host:port; returns
    "open" or "blocked" (a connection that times out or is refused)."""
    pod = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": RESTRICTED,
            "containers": [{
                "name": "probe", "image": image, "imagePullPolicy": "Never",
                "command": ["python3", "-c", PROBE, host, str(port)],
                "securityContext": CONTAINER_RESTRICTED,
            }],
        },
    }
    cluster.kubectl("-n", namespace, "delete", "pod", name, "--ignore-not-found", "--wait")
    cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))
    cluster.kubectl("-n", namespace, "wait", f"pod/{name}",
                    "--for=jsonpath={.status.phase}=Succeeded", "--timeout=120s", timeout=150)
    out = cluster.kubectl("-n", namespace, "logs", name).stdout.strip()
    cluster.kubectl("-n", namespace, "delete", "pod", name, "--wait=false")
    log.info("  probe %s/%s -> %s:%d: %s", namespace, name, host, port, out)
    return out.split()[0] if out else ""


def exec_probe(cluster: Cluster, namespace: str, pod: str, container: str, host: str,
               port: int) -> str:
    """The same TCP probe, run inside an existing pod's container."""
    out = cluster.kubectl("-n", namespace, "exec", pod, "-c", container, "--", "python3", "-c",
                          PROBE, host, str(port)).stdout.strip()
    return out.split()[0] if out else ""


if __name__ == "__main__":
    # `make e2e-kind`: print why the suite cannot run here (nothing when it can)
    _system = missing_system_tools()
    if _system:
        print(skip_reason(_system))

"""Run the chart's rendered objects with ``podman kube play`` on one "node".

The node is a network namespace of the test's own (``ip netns add``, loopback only): podman runs
in it (``nsenter --net``) and plays every pod with ``--network host``, i.e. into the node's
namespace (podman 4.3 refuses ``--network ns:PATH`` for pods). The pods reach each other on
127.0.0.1 as pods on one node reach each other through Services, and the rendered ports (8000,
9091, 6379) never meet the host's or another test's. The test talks to the pods from inside the
namespace (``Node.request``: the calling thread enters it with setns(2) for one request).

podman 4.3 plays Pod and Deployment objects only. ``for_kube_play`` adapts the rendered objects
the least it can; each adaptation is listed in ``ADAPTATIONS`` with why it is needed, and
nothing else of the rendered pod (command, args, env, probes, security contexts, volumes,
mounts) is touched.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import ctypes
import json
import os
import re
import subprocess
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Iterator, Optional

import yaml

from support.containers import Runtime

CLONE_NEWNET = 0x40000000

# What the tests change in a rendered object before playing it, or do differently to a played
# pod than Kubernetes would, and why (kube play's limits).
ADAPTATIONS = {
    "$(VAR) in command and args": "expanded from the container's env (values and the rendered "
                                  "Secrets) as the kubelet does: kube play 4.3 passes them "
                                  "literally (the bundled Redis's --requirepass $(REDIS_PASSWORD))",
    "Service": "dropped; a *_HOST env value naming it becomes 127.0.0.1: kube play has "
               "no Services, all pods share the node's network namespace, and podman gives "
               "host-network containers the host's /etc/hosts (hostAliases are ignored)",
    "DaemonSet": "played as one Pod (the DaemonSet's name, its pod template's metadata and "
                 "spec): kube play has no DaemonSet controller; the node runs one exporter",
    "Secret": "created as a podman secret holding the rendered data: kube play 4.3 resolves "
              "secretKeyRef from podman's secret store, not from Secret objects",
    "NetworkPolicy, PodDisruptionBudget, ServiceAccount": "dropped: no controller enforces "
                                                          "them in podman (the kind suite does)",
    "containers[].ports": "removed: podman refuses port mappings with host networking; nothing "
                          "is published, the test enters the node's namespace",
    "livenessProbe.httpGet": "the same URL (scheme, port resolved from the container's named "
                             "port, path) probed by the images' own `gunicorn-prometheus-exporter "
                             "healthcheck --url` as an exec probe, timings kept: kube play 4.3 "
                             "turns httpGet into `curl -f http://localhost:<port>` with a named "
                             "port read as 0, and the images have no curl",
    "Deployment.spec.replicas": "1: one pod per port on one node",
    "emptyDir volume names": "prefixed with the node's and the pod's name (mounts follow), and "
                             "removed with the pod: podman 4.3 makes an emptyDir a named volume "
                             "that every pod with a volume of that name shares, and keeps it",
    "pod annotations longer than 63 characters": "dropped (the chart's checksum/* annotations, "
                                                 "which only trigger rollouts): podman 4.3 "
                                                 "applies the label value limit to annotations",
    "fieldRef spec.nodeName": "becomes the node's name as a value: kube play 4.3 refuses it "
                              "(\"fieldPath spec.nodeName is either not valid or not "
                              "supported\")",
    "exporter container restart": "the test SIGTERMs the container's main process from the node "
                                  "and podman's restart policy (the pod's restartPolicy: Always) "
                                  "starts it in the same pod, as the kubelet restarts an ended "
                                  "container; not `podman restart`: kube play 4.3 gives every pod "
                                  "the exit policy \"stop\", and the cleanup of the stopped "
                                  "container (`podman container cleanup`, run by conmon while "
                                  "`podman restart` waits) then stops the pod when no other "
                                  "container than the infra one runs, which the DaemonSet's "
                                  "one-container pod always is: the restart fails (\"cannot get "
                                  "namespace path unless container <infra> is running\") or the "
                                  "restarted exporter gets SIGTERM with the pod, by timing",
    "image (raw k8s/ manifests only)": "localhost/NAME:TAG, where podman finds the images "
                                       "`make image` built (the chart renders take "
                                       "app.image.registry=localhost instead)",
}

_DROPPED = {"NetworkPolicy", "PodDisruptionBudget", "ServiceAccount", "Service",
                        "Secret"}


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


class Node:
    """A network namespace standing for one Kubernetes node (root only, like rootful podman)."""

    def __init__(self, name: Optional[str] = None):
        self.name = name or f"gpe-kube-{uuid.uuid4().hex[:8]}"
        self.path = f"/run/netns/{self.name}"

    def create(self) -> "Node":
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True)
        subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True,
                       capture_output=True)
        return self

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "delete", self.name], check=False, capture_output=True)

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Run the body with this thread in the node's network namespace (sockets made inside
        stay there)."""
        libc = _libc()
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(self.path, os.O_RDONLY)
        try:
            if libc.setns(target, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns({self.path}): {os.strerror(err)}")
            try:
                yield
            finally:
                if libc.setns(own, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns back to the test's namespace: {os.strerror(err)}")
        finally:
            os.close(target)
            os.close(own)

    def request(self, url: str, method: str = "GET", body: Optional[bytes] = None,
                timeout: float = 5.0) -> tuple[int, str]:
        """(status, body) of one HTTP request made from inside the node."""
        req = urllib.request.Request(url, data=body, method=method)
        with self.entered():
            try:
                with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
                    return resp.status, resp.read().decode("utf-8", "replace")
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read().decode("utf-8", "replace")


def render(values: dict, release: str, tmp: Path) -> list[dict]:
    """The chart's objects as `helm template` renders them with these values."""
    import chartlib

    values_file = tmp / f"{release}-values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    text = chartlib.render_text(str(values_file), release=release, namespace="default",
                                skip_tests=True)
    return [d for d in yaml.safe_load_all(text) if d]


def load_manifests(*paths: Path) -> list[dict]:
    return [d for p in paths for d in yaml.safe_load_all(p.read_text()) if d]


def _pod_spec(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"] if obj["kind"] == "Deployment" else obj["spec"]


def for_kube_play(objects: list[dict], node: Node,
                  images: Optional[dict[str, str]] = None) -> tuple[list[dict], list[dict]]:
    """(objects to play, Secrets to create as podman secrets), adapted as ADAPTATIONS says.

    ``images`` maps a rendered image reference to the local one (raw manifests only)."""
    services = [o["metadata"]["name"] for o in objects if o["kind"] == "Service"]
    secrets = [o for o in objects if o["kind"] == "Secret"]
    play = []
    for obj in objects:
        kind = obj["kind"]
        if kind in _DROPPED:
            continue
        obj = copy.deepcopy(obj)
        if kind == "DaemonSet":
            template = obj["spec"]["template"]
            meta = dict(template.get("metadata") or {}, name=obj["metadata"]["name"])
            obj = {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template["spec"]}
        elif kind == "Deployment":
            obj["spec"]["replicas"] = 1
        elif kind != "Pod":
            raise AssertionError(f"kube play cannot play a {kind} and the tests do not adapt it")
        spec = _pod_spec(obj)
        meta = obj["spec"]["template"]["metadata"] if kind == "Deployment" else obj["metadata"]
        annotations = meta.get("annotations") or {}
        for key in [k for k, v in annotations.items() if len(str(v)) > 63]:
            del annotations[key]
        _own_empty_dirs(spec, f"{node.name}-{obj['metadata']['name']}")
        for c in spec["containers"]:
            _exec_liveness_probe(c)
            c.pop("ports", None)
            if images and c["image"] in images:
                c["image"] = images[c["image"]]
            _expand_references(c, secrets)
            for env in c.get("env", []):
                if env["name"].endswith("_HOST") and env.get("value") in services:
                    env["value"] = "127.0.0.1"
                field = (env.get("valueFrom") or {}).get("fieldRef", {}).get("fieldPath")
                if field == "spec.nodeName":
                    env.pop("valueFrom")
                    env["value"] = node.name
        play.append(obj)
    return play, secrets


def _own_empty_dirs(spec: dict, prefix: str) -> None:
    renamed = {}
    for volume in spec.get("volumes", []):
        if "emptyDir" in volume:
            renamed[volume["name"]] = volume["name"] = f"{prefix}-{volume['name']}"
    for c in spec["containers"]:
        for mount in c.get("volumeMounts", []):
            mount["name"] = renamed.get(mount["name"], mount["name"])


def empty_dirs(obj: dict) -> list[str]:
    return [v["name"] for v in _pod_spec(obj).get("volumes", []) if "emptyDir" in v]


def _secret_value(secrets: list[dict], ref: dict) -> Optional[str]:
    for obj in secrets:
        if obj["metadata"]["name"] == ref["name"]:
            if ref["key"] in (obj.get("stringData") or {}):
                return obj["stringData"][ref["key"]]
            if ref["key"] in (obj.get("data") or {}):
                return base64.b64decode(obj["data"][ref["key"]]).decode()
    return None


def _expand_references(c: dict, secrets: list[dict]) -> None:
    """$(NAME) in command and args -> the value of env NAME (Kubernetes' expansion rule; an
    unknown name stays as written, as it does in Kubernetes)."""
    env: dict[str, str] = {}
    for e in c.get("env", []):
        ref = (e.get("valueFrom") or {}).get("secretKeyRef")
        value = e.get("value") if ref is None else _secret_value(secrets, ref)
        if value is not None:
            env[e["name"]] = value

    def expand(arg: str) -> str:
        return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), arg)

    for key in ("command", "args"):
        if key in c:
            c[key] = [expand(str(a)) for a in c[key]]


def _exec_liveness_probe(c: dict) -> None:
    probe = c.get("livenessProbe") or {}
    get = probe.pop("httpGet", None)
    if get is None:
        return
    port = get["port"]
    if isinstance(port, str):
        named = [p["containerPort"] for p in c.get("ports", []) if p.get("name") == port]
        assert named, f"probe port {port!r} is not a port of container {c['name']}"
        port = named[0]
    scheme = get.get("scheme", "HTTP").lower()
    url = f"{scheme}://{get.get('host') or '127.0.0.1'}:{port}{get.get('path', '/')}"
    probe["exec"] = {"command": ["gunicorn-prometheus-exporter", "healthcheck", "--url", url]}


class Played:
    """Objects played into a node; ``down`` removes the pods and the secrets."""

    def __init__(self, runtime: Runtime, node: Node, workdir: Path):
        self.runtime = runtime
        self.node = node
        self.workdir = workdir
        self.files: list[Path] = []
        self.secrets: list[str] = []
        self.volumes: list[str] = []

    def run(self, *args: str, check: bool = True, timeout: float = 120):
        """podman inside the node: `--network host` containers belong to the namespace podman
        runs in, for `exec`, `healthcheck run` and `restart` too."""
        return self.runtime.run(*args, check=check, timeout=timeout, netns=self.node.path)

    def secret(self, obj: dict) -> None:
        """A rendered Secret as a podman secret (JSON of key -> base64 data, as kube play reads)."""
        data = dict(obj.get("data") or {})
        for key, value in (obj.get("stringData") or {}).items():
            data[key] = base64.b64encode(value.encode()).decode()
        name = obj["metadata"]["name"]
        path = self.workdir / f"secret-{name}.json"
        path.write_text(json.dumps(data))
        self.runtime.run("secret", "rm", name, check=False)
        self.runtime.run("secret", "create", name, str(path))
        self.secrets.append(name)

    def play(self, obj: dict) -> None:
        path = self.workdir / f"{len(self.files)}-{obj['metadata']['name']}.yaml"
        path.write_text(yaml.safe_dump(obj, sort_keys=False))
        self.files.append(path)
        self.volumes += empty_dirs(obj)
        # --replace: a pod of the same name left by an interrupted run is removed first
        self.run("kube", "play", "--replace", "--network", "host", str(path), timeout=180)

    def down(self) -> None:
        for path in reversed(self.files):
            self.run("kube", "down", str(path), check=False, timeout=120)
        for name in self.secrets:
            self.runtime.run("secret", "rm", name, check=False)
        for name in self.volumes:
            self.runtime.run("volume", "rm", "-f", name, check=False)

    def container(self, pod: str, name: str) -> str:
        """podman's name of container ``name`` of the played pod or Deployment ``pod``."""
        out = self.runtime.run("ps", "-a", "--format", "{{.Names}}").stdout.split()
        found = [n for n in out if n.startswith(f"{pod}-") and n.endswith(f"-{name}")]
        assert len(found) == 1, f"container {name} of {pod}: {found} in {out}"
        return found[0]

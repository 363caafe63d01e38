"""The chart's rendered pods run under `podman kube play` and count every request exactly.

Each topology is rendered by `helm template` (values a user would set: one replica, images from
`localhost/`), adapted the least kube play needs (kubeplay.ADAPTATIONS says what and why) and
played on a node of its own (a network namespace). Requests go to the app container; every
assertion reads the exporter container's /metrics, or inspects the containers podman runs.
"""

from __future__ import annotations

import os
import re
import signal
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import pytest

from kubeplay import Node, Played, for_kube_play, load_manifests, render
from support.containers import Runtime, container_marks
from support.scrape import Scrape
from support.wait import until
from traffic import MIX, Ledger  # e2e/traffic.py: the demo's request mix and the ledger

pytestmark = container_marks()

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
APP_PORT, METRICS_PORT = 8000, 9091  # the chart's defaults, as rendered
ROUNDS = 3  # rounds of the demo's request mix (9 requests, 2 of them 5xx) per step
ROOT = next(req for req in MIX if req.path == "/")
LOCAL = {"image": {"registry": "localhost"}}
SIDECAR_VALUES = {"topology": "sidecar", "app": {"replicaCount": 1, **LOCAL}, "exporter": LOCAL}
DAEMONSET_VALUES = {"topology": "daemonset", "app": {"replicaCount": 1, **LOCAL},
                    "exporter": LOCAL}


class Topology:
    """Rendered objects played on one node, with a ledger of the requests sent to the app."""

    def __init__(self, runtime: Runtime, node: Node, played: Played, objects: list[dict]):
        self.runtime, self.node, self.played, self.objects = runtime, node, played, objects
        self.ledger = Ledger()
        self.pods: dict[str, str] = {}  # container name -> podman's pod name

    def play(self, images: Optional[dict[str, str]] = None) -> "Topology":
        play, secrets = for_kube_play(self.objects, self.node, images)
        for secret in secrets:
            self.played.secret(secret)
        # Redis first: the app and the exporter find it up (they would retry; this is faster).
        play.sort(key=lambda o: o["metadata"]["name"].endswith("redis"), reverse=True)
        for obj in play:
            self.played.play(obj)
            pod = obj["metadata"]["name"] + ("-pod-0" if obj["kind"] == "Deployment" else "")
            spec = obj["spec"]["template"]["spec"] if obj["kind"] == "Deployment" else obj["spec"]
            for c in spec["containers"]:
                self.pods[c["name"]] = pod
        for name in ("app", "exporter"):
            until(lambda n=name: self._answers(n), timeout=90, interval=0.2,
                  message=f"{name} container answers",
                  abort=lambda n=name: self.runtime.exited(self.container(n)))
        return self

    def _answers(self, name: str) -> bool:
        if name == "exporter":
            return self.node.request(f"http://127.0.0.1:{METRICS_PORT}/metrics")[0] == 200
        status = self.node.request(f"http://127.0.0.1:{APP_PORT}/")[0]
        self.ledger.record(ROOT, status, APP_PORT)  # the app counts it: so does the ledger
        return status == 200

    def container(self, name: str) -> str:
        return f"{self.pods[name]}-{name}"

    def rendered_container(self, name: str) -> dict:
        for obj in self.objects:
            if obj["kind"] in ("Deployment", "DaemonSet"):
                for c in obj["spec"]["template"]["spec"]["containers"]:
                    if c["name"] == name:
                        return c
        raise AssertionError(f"no rendered container {name}")

    def send(self, rounds: int = ROUNDS) -> None:
        for _ in range(rounds):
            for req in MIX:
                status, _ = self.node.request(f"http://127.0.0.1:{APP_PORT}{req.path}",
                                              req.method, req.body)
                self.ledger.record(req, status, APP_PORT)
        assert not self.ledger.failures, self.ledger.failures

    def scrape(self) -> Scrape:
        status, body = self.node.request(f"http://127.0.0.1:{METRICS_PORT}/metrics")
        assert status == 200, body
        return Scrape(body)

    def counted(self) -> dict[tuple[str, str, str], float]:
        series = self.scrape().series("gunicorn_http_requests_total")
        return {(d["method"], d["route"], d["status"]): v
                for d, v in ((dict(labels), v) for labels, v in series.items())}

    def assert_counted_exactly(self, timeout: float = 20) -> None:
        """The exporter serves exactly the ledger per (method, route, status) (polled: the
        Redis topology flushes off the request path)."""
        want = self.ledger.by_key()
        try:
            until(lambda: self.counted() == want, timeout=timeout, interval=0.2,
                  message="exact counts")
        except TimeoutError:
            assert self.counted() == want


@contextmanager
def _node_played(runtime: Runtime, directory: Path) -> Iterator[tuple[Node, Played]]:
    """A node of its own and what is played on it, both removed afterwards."""
    node = Node().create()
    played = Played(runtime, node, directory)
    try:
        yield node, played
    finally:
        played.down()
        node.delete()


@pytest.fixture
def played(runtime: Runtime, tmp_path: Path) -> Iterator[tuple[Node, Played]]:
    with _node_played(runtime, tmp_path) as node_played:
        yield node_played


@pytest.fixture(scope="module")
def module_played(runtime: Runtime, images: dict, tmp_path_factory) -> Iterator[tuple[Node, Played]]:
    with _node_played(runtime, tmp_path_factory.mktemp("kube")) as node_played:
        yield node_played


@pytest.fixture(scope="module")
def sidecar(runtime: Runtime, module_played, tmp_path_factory) -> Topology:
    """The sidecar topology's Deployment as rendered: app + exporter sharing the emptyDir."""
    node, played = module_played
    objects = render(SIDECAR_VALUES, "sidecar", tmp_path_factory.mktemp("render"))
    return Topology(runtime, node, played, objects).play()


@pytest.fixture(scope="module")
def daemonset(runtime: Runtime, redis_image: str, tmp_path_factory) -> Iterator[Topology]:
    """The DaemonSet topology: the app Deployment, the exporter DaemonSet's pod template as a
    Pod, the bundled Redis Deployment and its Secret."""
    node = Node().create()
    tmp = tmp_path_factory.mktemp("daemonset")
    played = Played(runtime, node, tmp)
    repo, tag = redis_image.split(":")
    # the bundled Redis needs a password given in values (the chart never makes one up)
    values = dict(DAEMONSET_VALUES, redis={"bundled": {
        "auth": {"password": uuid.uuid4().hex},
        "image": {"registry": repo.split("/")[0], "repository": repo.split("/", 1)[1], "tag": tag}}})
    try:
        yield Topology(runtime, node, played, render(values, "daemonset", tmp)).play()
    finally:
        played.down()
        node.delete()


def _security(runtime: Runtime, topology: Topology, name: str) -> None:
    """Container ``name`` runs as the chart's UID/GID, read-only root, no capabilities, no
    privilege escalation: as podman configured it (inspect) and as its PID 1 really is."""
    ctx = topology.rendered_container(name)["securityContext"]
    ctr = topology.container(name)
    info = runtime.inspect(ctr)
    assert info["Config"]["User"] == f"{ctx['runAsUser']}:{ctx['runAsGroup']}"
    assert info["HostConfig"]["ReadonlyRootfs"] is True
    assert "EffectiveCaps" in info and not info["EffectiveCaps"], info["EffectiveCaps"]
    assert "BoundingCaps" in info and not info["BoundingCaps"], info["BoundingCaps"]
    assert "no-new-privileges" in info["HostConfig"]["SecurityOpt"]
    status = dict(line.split(":", 1) for line in
                  Path(f"/proc/{info['State']['Pid']}/status").read_text().splitlines())
    assert status["Uid"].split() == [str(ctx["runAsUser"])] * 4
    assert status["Gid"].split() == [str(ctx["runAsGroup"])] * 4
    assert int(status["CapEff"], 16) == 0 and int(status["CapBnd"], 16) == 0
    assert int(status["NoNewPrivs"]) == 1
    touch = topology.played.run("exec", ctr, "sh", "-c", "touch /probe-root", check=False)
    assert touch.returncode != 0 and "Read-only file system" in touch.stderr, touch


def _liveness(runtime: Runtime, topology: Topology, name: str) -> None:
    """The rendered liveness probe became the container's health check and passes."""
    probe = topology.rendered_container(name)["livenessProbe"]
    ctr = topology.container(name)
    check = runtime.inspect(ctr)["Config"]["Healthcheck"]
    assert check["Interval"] == probe["periodSeconds"] * 10**9
    assert check["Timeout"] == probe["timeoutSeconds"] * 10**9
    assert check["Retries"] == probe["failureThreshold"]
    assert any(probe["httpGet"]["path"] in part for part in check["Test"]), check["Test"]
    run = topology.played.run("healthcheck", "run", ctr, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    if name == "app":  # the probe's GET / was a request like any other
        assert probe["httpGet"]["path"] == ROOT.path
        topology.ledger.record(ROOT, 200, APP_PORT)


# -- sidecar -----------------------------------------------------------------------------------

def test_sidecar_counts_every_request_exactly(sidecar: Topology) -> None:
    sidecar.send()
    sidecar.assert_counted_exactly()
    scrape = sidecar.scrape()
    assert scrape.total("gunicorn_http_request_duration_seconds_count") == sidecar.ledger.total
    assert scrape.series("gunicorn_exporter_source_up") == {
        frozenset({("source", "directory")}): 1.0}, scrape.series("gunicorn_exporter_source_up")


@pytest.mark.parametrize("name", ["app", "exporter"])
def test_sidecar_runs_as_the_chart_says(runtime: Runtime, sidecar: Topology, name: str) -> None:
    _security(runtime, sidecar, name)


@pytest.mark.parametrize("name", ["app", "exporter"])
def test_sidecar_liveness_probe_passes(runtime: Runtime, sidecar: Topology, name: str) -> None:
    _liveness(runtime, sidecar, name)


def _workers(runtime: Runtime, ctr: str) -> set[int]:
    """PIDs of the gunicorn workers alive in the app container: the children of the master
    that gunicorn logged booting (the master has another child, the plugin's metrics process)."""
    rows = [line.split() for line in
            runtime.run("top", ctr, "pid", "ppid").stdout.splitlines()[1:] if line.strip()]
    master = [int(pid) for pid, ppid in rows if ppid == "0"]
    assert len(master) == 1, rows
    children = {int(pid) for pid, ppid in rows if int(ppid) == master[0]}
    booted = {int(pid) for pid in re.findall(r"Booting worker with pid: (\d+)", runtime.logs(ctr))}
    return children & booted


def _killed(topology: Topology) -> float:
    """Worker restarts the exporter serves with reason killed, by how the worker ended."""
    series = topology.scrape().series("gunicorn_worker_restart_count_total")
    return sum(v for labels, v in series.items()
               if dict(labels)["reason"] == "killed" and dict(labels)["restart_type"] == "SIGKILL")


def _restart_exporter(runtime: Runtime, topology: Topology) -> None:
    """Restart the exporter container as the kubelet does when its process ends: SIGTERM to its
    main process from the node, and the pod's restartPolicy (Always: podman's restart policy
    "always") starts it again in the same pod. Not `podman restart`: kubeplay.ADAPTATIONS
    ("exporter container restart") says why."""
    exporter = topology.container("exporter")
    before = runtime.inspect(exporter)
    assert before["HostConfig"]["RestartPolicy"]["Name"] == "always", before["HostConfig"]
    os.kill(before["State"]["Pid"], signal.SIGTERM)

    def restarted() -> bool:
        now = runtime.inspect(exporter)
        return now["RestartCount"] == before["RestartCount"] + 1 and now["State"]["Running"]

    until(restarted, timeout=30, interval=0.2, message="exporter container restarted")
    assert runtime.inspect(exporter)["State"]["StartedAt"] != before["State"]["StartedAt"]
    until(lambda: topology.node.request(f"http://127.0.0.1:{METRICS_PORT}/metrics")[0] == 200,
          timeout=30, interval=0.2, message="restarted exporter answers",
          abort=lambda: runtime.exited(exporter))
    # the pod around it stayed up (podman stops a kube-played pod whose last container ends)
    pod = runtime.run("pod", "inspect", "--format", "{{.State}}", topology.pods["exporter"])
    assert pod.stdout.strip() == "Running", pod.stdout


def test_sidecar_sigkilled_worker_and_restarted_exporter_lose_nothing(
        runtime: Runtime, sidecar: Topology) -> None:
    sidecar.send()
    sidecar.assert_counted_exactly()
    app = sidecar.container("app")
    before = _workers(runtime, app)
    victim = min(before)
    sidecar.played.run("exec", app, "sh", "-c", f"kill -KILL {victim}")
    after = until(lambda: (w := _workers(runtime, app)) and victim not in w
                  and len(w) == len(before) and w, timeout=30, interval=0.2,
                  message="the killed worker replaced")
    assert len(after - before) == 1
    sidecar.send()
    sidecar.assert_counted_exactly()
    # the master saw it: one restart with reason killed, by SIGKILL
    until(lambda: _killed(sidecar) == 1, timeout=10, interval=0.2, message="restart counted")

    _restart_exporter(runtime, sidecar)
    sidecar.assert_counted_exactly(timeout=1)
    sidecar.send()
    sidecar.assert_counted_exactly()
    assert _killed(sidecar) == 1


# -- daemonset ---------------------------------------------------------------------------------

def test_daemonset_pod_counts_every_request_exactly_through_redis(
        runtime: Runtime, daemonset: Topology) -> None:
    daemonset.send()
    daemonset.assert_counted_exactly()
    scrape = daemonset.scrape()
    assert scrape.value("gunicorn_exporter_source_up", source="redis") == 1.0
    # the node's exporter restarted: Redis still holds every count
    _restart_exporter(runtime, daemonset)
    daemonset.send()
    daemonset.assert_counted_exactly()


@pytest.mark.parametrize("name", ["app", "exporter", "redis"])
def test_daemonset_runs_as_the_chart_says(runtime: Runtime, daemonset: Topology, name: str) -> None:
    _security(runtime, daemonset, name)


@pytest.mark.parametrize("name", ["app", "exporter"])
def test_daemonset_liveness_probe_passes(runtime: Runtime, daemonset: Topology, name: str) -> None:
    _liveness(runtime, daemonset, name)


# -- raw manifests (k8s/) ----------------------------------------------------------------------

def _local_images(objects: list[dict], images: dict[str, str],
                  redis_image: Optional[str] = None) -> dict[str, str]:
    """The raw manifests' image references -> where podman finds them."""
    found = {ref: f"localhost/{ref}" for ref in images.values()}
    for obj in objects:
        for c in obj.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            if c["name"] == "redis" and redis_image:
                found[c["image"]] = redis_image
    return found


def test_raw_sidecar_manifest_counts_exactly(runtime: Runtime, images: dict, played) -> None:
    node, play = played
    objects = load_manifests(K8S / "sidecar-deployment.yaml")
    topology = Topology(runtime, node, play, objects).play(_local_images(objects, images))
    topology.send()
    topology.assert_counted_exactly()


def test_raw_daemonset_manifests_count_exactly(runtime: Runtime, images: dict, redis_image: str,
                                               played) -> None:
    node, play = played
    files = ["redis.yaml", "sidecar-daemonset.yaml", "daemonset-service.yaml",
             "daemonset-metrics-service.yaml", "daemonset-netpol.yaml"]
    # The Secret k8s/README.md tells the user to create first.
    secret = {"kind": "Secret", "metadata": {"name": "gunicorn-redis-auth"},
              "stringData": {"redis-password": uuid.uuid4().hex}}
    objects = [secret, *load_manifests(*(K8S / f for f in files))]
    topology = Topology(runtime, node, play, objects).play(
        _local_images(objects, images, redis_image))
    topology.send()
    topology.assert_counted_exactly()

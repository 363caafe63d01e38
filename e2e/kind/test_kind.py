"""The whole stack in a kind cluster (`make e2e-kind`).

1. `kind create cluster --config kind-config.yaml` (a control plane and two workers), build the
   exporter and demo images with image/build.sh and `kind load docker-image` them.
2. `helm install` the sidecar topology; send a known mix of requests to the app Service through a
   port-forward; scrape every pod's exporter through its own port-forward; the sums per (method,
   route, status) equal what was sent, exactly.
3. `helm install` the DaemonSet topology (bundled Redis, NetworkPolicies on); the same exact
   counts, read from the exporter of every node. A pod outside the allowed selectors cannot
   reach the metrics port nor Redis, while an allowed Prometheus-like pod reaches the metrics
   port and an app pod reaches Redis (so the probe itself works).
4. `kubectl apply` the raw manifests of k8s/ (both setups) and repeat the exact scrape.

Every command is logged before it runs (`make e2e-kind` shows the log live). Without Docker,
kind, kubectl or helm the module skips with one line naming what is missing.
"""
from __future__ import annotations

import collections
import json
import time

import pytest

import kindlib

_missing = kindlib.missing_tools()
if _missing:
    pytest.skip(kindlib.skip_reason(_missing), allow_module_level=True)

import traffic  # noqa: E402  (after the skip: imports test support)
from support.scrape import scrape  # noqa: E402
from support.wait import until  # noqa: E402

pytestmark = pytest.mark.kind

NAME = "app.kubernetes.io/name=gunicorn-prometheus-exporter"
APP_PODS = f"{NAME},app.kubernetes.io/component=app"
EXPORTER_PODS = f"{NAME},app.kubernetes.io/component=exporter"
REQUESTS = 270  # 30 rounds of the mix


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = kindlib.Cluster(tmp_path_factory.mktemp("kind")).create()
    yield c
    c.delete()


@pytest.fixture(scope="module")
def images(cluster):
    built = kindlib.build_images()
    for image in built.values():
        cluster.load(image)
    return built


# -- traffic and exact counts ---------------------------------------------------------------------

def drive(cluster, namespace: str, service: str, ledger: traffic.Ledger, count: int = REQUESTS):
    """``count`` requests of the mix to the app Service, through a port-forward."""
    with kindlib.port_forward(cluster, namespace, f"service/{service}", 8000) as port:
        traffic.burst([port], ledger, count, threads=2, deadline=180)
    assert not ledger.failures, ledger.failures[:10]
    kindlib.log.info("sent %d requests to %s/%s: %s", ledger.total, namespace, service,
                     dict(ledger.counts))


def scrape_pods(cluster, namespace: str, selector: str) -> dict:
    """Sum of gunicorn_http_requests_total per (method, route, status) over every pod matched
    by ``selector``, each scraped through its own port-forward of the metrics port."""
    totals: dict = collections.Counter()
    for pod in kindlib.pod_names(cluster, namespace, selector):
        with kindlib.port_forward(cluster, namespace, f"pod/{pod}", 9091) as port:
            s = scrape(port)
        for labels, value in s.series("gunicorn_http_requests_total").items():
            d = dict(labels)
            totals[(d["method"], d["route"], d["status"])] += value
    return dict(totals)


def assert_exact(cluster, namespace: str, selector: str, ledger: traffic.Ledger,
                 timeout: float = 60) -> None:
    want = ledger.by_key()
    last = {}

    def matches():
        last["got"] = scrape_pods(cluster, namespace, selector)
        return last["got"] == want
    try:
        until(matches, timeout=timeout, interval=2, message=f"exact counts in {namespace}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n want {want}\n got  {last.get('got')}") from None


# -- the chart --------------------------------------------------------------------------------------

def redis_password_secret(cluster, namespace: str, name: str) -> str:
    """A Secret with a Redis password under the key `redis-password` (the chart's and k8s/'s)."""
    secret = {"apiVersion": "v1", "kind": "Secret",
              "metadata": {"name": name, "namespace": namespace},
              "stringData": {"redis-password": "e2e-" + str(int(time.time()))}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(secret))
    return name


def helm_install(cluster, images, release: str, namespace: str, *values: str) -> None:
    cluster.helm("upgrade", "--install", release, kindlib.CHART, "--namespace", namespace,
                 "--create-namespace", "--set", f"fullnameOverride={release}",
                 *kindlib.image_values(images), *values, "--wait", "--timeout", "5m",
                 timeout=400)


def test_sidecar_topology_exact_counts(cluster, images):
    ns, release = "e2e-sidecar", "gpe"
    helm_install(cluster, images, release, ns, "--set", "topology=sidecar")
    kindlib.wait_rollout(cluster, ns, f"deployment/{release}")
    cluster.helm("test", release, "--namespace", ns, "--logs", timeout=300)
    ledger = traffic.Ledger()
    drive(cluster, ns, release, ledger)
    # each pod's sidecar serves only its own workers: the pods' sum is the total
    assert_exact(cluster, ns, APP_PODS, ledger)


def test_daemonset_topology_redis_exact_counts_and_network_policies(cluster, images):
    ns, release = "e2e-daemonset", "gpe"
    cluster.namespace("monitoring")
    # the bundled Redis's password from a Secret of our own, as docs/kubernetes.md says
    redis_auth = redis_password_secret(cluster, cluster.namespace(ns), f"{release}-redis-auth")
    helm_install(cluster, images, release, ns, "--set", "topology=daemonset",
                 "--set", "app.replicaCount=2",
                 "--set", f"redis.bundled.auth.existingSecret={redis_auth}")
    kindlib.wait_rollout(cluster, ns, f"deployment/{release}", f"daemonset/{release}-exporter",
                         f"deployment/{release}-redis")
    ledger = traffic.Ledger()
    drive(cluster, ns, release, ledger)
    # one exporter per node, each serving the instances of its node (REDIS_SCOPE=node)
    exporters = kindlib.pod_names(cluster, ns, EXPORTER_PODS)
    assert len(exporters) == 2, exporters  # the two worker nodes
    assert_exact(cluster, ns, EXPORTER_PODS, ledger)

    demo = images["demo"]
    metrics = f"{release}-metrics.{ns}.svc.cluster.local"
    redis = f"{release}-redis.{ns}.svc.cluster.local"
    # an allowed scraper (namespace monitoring, app.kubernetes.io/name=prometheus) gets in ...
    assert kindlib.tcp_probe(cluster, "monitoring", "prometheus-probe",
                             {"app.kubernetes.io/name": "prometheus"}, demo, metrics,
                             9091) == "open"
    # ... and the app reaches Redis ...
    app_pod = kindlib.pod_names(cluster, ns, APP_PODS)[0]
    assert kindlib.exec_probe(cluster, ns, app_pod, "app", redis, 6379) == "open"
    # ... but a pod outside the allowed selectors reaches neither, in the release's namespace
    # or in the monitoring namespace without the prometheus label
    for probe_ns in (ns, "monitoring"):
        for host, port in ((metrics, 9091), (redis, 6379)):
            got = kindlib.tcp_probe(cluster, probe_ns, f"intruder-{port}", {"app": "intruder"},
                                    demo, host, port)
            assert got == "blocked", (probe_ns, host, port, got)


# -- the raw manifests ------------------------------------------------------------------------------

def retag(path, images) -> str:
    """A raw manifest with its image lines pointing at the images built here."""
    text = path.read_text()
    text = text.replace("image: gunicorn-prometheus-exporter-demo:0.3.0",
                        f"image: {images['demo']}")
    text = text.replace("image: gunicorn-prometheus-exporter:0.3.0",
                        f"image: {images['exporter']}")
    return text


def test_raw_manifests_sidecar(cluster, images):
    ns = cluster.namespace("e2e-raw-sidecar")
    cluster.kubectl("apply", "-n", ns, "-f", "-",
                    input=retag(kindlib.ROOT / "k8s" / "sidecar-deployment.yaml", images))
    kindlib.wait_rollout(cluster, ns, "deployment/gunicorn-sidecar")
    ledger = traffic.Ledger()
    drive(cluster, ns, "gunicorn-sidecar", ledger)
    assert_exact(cluster, ns, APP_PODS, ledger)


def test_raw_manifests_daemonset(cluster, images):
    ns = cluster.namespace("e2e-raw-daemonset")
    redis_password_secret(cluster, ns, "gunicorn-redis-auth")
    k8s = kindlib.ROOT / "k8s"
    manifests = "\n---\n".join(retag(k8s / f, images) for f in (
        "redis.yaml", "sidecar-daemonset.yaml", "daemonset-service.yaml",
        "daemonset-metrics-service.yaml", "daemonset-netpol.yaml"))
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=manifests)
    kindlib.wait_rollout(cluster, ns, "deployment/gunicorn-redis", "deployment/gunicorn",
                         "daemonset/gunicorn-exporter")
    ledger = traffic.Ledger()
    drive(cluster, ns, "gunicorn", ledger)
    assert_exact(cluster, ns, EXPORTER_PODS, ledger)

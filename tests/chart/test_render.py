"""Unit tests over the rendered objects of every CI values file (helm template)."""
from __future__ import annotations

import base64
import json
import re

import pytest
import yaml

import chartlib
from chartlib import CI_FILES, container, env_of, labels, render, selector_matches

pytestmark = pytest.mark.needs_helm

FULL = "gpe-gunicorn-prometheus-exporter"
CONTRACT_IMAGES = {"app": "gunicorn-prometheus-exporter-demo:0.3.0", "exporter": "gunicorn-prometheus-exporter:0.3.0"}
MULTIPROC = "/var/run/gunicorn-prometheus"


def values_of(values_file: str) -> dict:
    return yaml.safe_load((chartlib.CI_DIR / values_file).read_text()) or {}


def existing_secrets(values) -> set[str]:
    """Names of the Secrets a values file says exist already (every *existingSecret* key)."""
    found = set()
    if isinstance(values, dict):
        for k, v in values.items():
            if k == "existingSecret" and v:
                found.add(v)
            found |= existing_secrets(v)
    elif isinstance(values, list):
        for v in values:
            found |= existing_secrets(v)
    return found


def pods_of(objs, component):
    return [(o, meta, spec) for o, meta, spec in objs.pod_specs()
            if meta.get("labels", {}).get("app.kubernetes.io/component") == component]


def one_pod(objs, component):
    pods = pods_of(objs, component)
    assert len(pods) == 1, f"{len(pods)} workloads of component {component}"
    return pods[0]


def container_ports(spec) -> dict:
    return {p["name"]: p["containerPort"] for c in spec["containers"] for p in c.get("ports", [])}


# ---- every values file ------------------------------------------------------------------------

@pytest.mark.parametrize("values_file", CI_FILES)
def test_workload_selectors_match_their_pod_labels(values_file):
    objs = render(values_file)
    assert objs.workloads()
    for o in objs.workloads():
        sel = o["spec"]["selector"]["matchLabels"]
        assert selector_matches(sel, o["spec"]["template"]["metadata"]["labels"]), o["metadata"]["name"]
        # selectors are immutable: only stable labels in them
        assert set(sel) == {"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component"}
    # no two workloads share a selector
    sels = [json.dumps(o["spec"]["selector"], sort_keys=True) for o in objs.workloads()]
    assert len(sels) == len(set(sels))


@pytest.mark.parametrize("values_file", CI_FILES)
def test_services_select_pods_that_have_their_target_ports(values_file):
    objs = render(values_file)
    for svc in objs.kind("Service"):
        pods = [(o, meta, spec) for o, meta, spec in objs.pod_specs()
                if o["kind"] != "Pod" and selector_matches(svc["spec"]["selector"], meta["labels"])]
        assert pods, f"Service {svc['metadata']['name']} selects no pod"
        for _, _, spec in pods:
            ports = container_ports(spec)
            for p in svc["spec"]["ports"]:
                assert p["targetPort"] in ports, (svc["metadata"]["name"], p, ports)
                assert p["name"] == p["targetPort"]


@pytest.mark.parametrize("values_file", CI_FILES)
def test_restricted_pod_security(values_file):
    objs = render(values_file)
    for o, meta, spec in objs.pod_specs():
        name = f"{o['kind']}/{o['metadata']['name']}"
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True, name
        assert psc["runAsUser"] == 65532, name
        assert psc["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec["automountServiceAccountToken"] is False, name
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(key), (name, key)
        for vol in spec.get("volumes", []):
            assert "hostPath" not in vol, (name, vol)
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, (name, c["name"])
            assert sc["capabilities"]["drop"] == ["ALL"], (name, c["name"])
            assert not sc["capabilities"].get("add"), (name, c["name"])
            assert sc["readOnlyRootFilesystem"] is True, (name, c["name"])
            assert sc["runAsNonRoot"] is True, (name, c["name"])
            assert not sc.get("privileged"), (name, c["name"])
            # a read-only root filesystem needs a writable /tmp
            tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            assert tmp and "emptyDir" in volumes[tmp[0]["name"]], (name, c["name"])


@pytest.mark.parametrize("values_file", CI_FILES)
def test_volume_mounts_refer_to_pod_volumes(values_file):
    for o, _, spec in render(values_file).pod_specs():
        names = {v["name"] for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            for m in c.get("volumeMounts", []):
                assert m["name"] in names, (o["metadata"]["name"], c["name"], m)


@pytest.mark.parametrize("values_file", CI_FILES)
def test_secret_references_exist(values_file):
    """Every Secret a pod reads is rendered by the chart (with that key) or named in the values."""
    objs = render(values_file)
    rendered = {s["metadata"]["name"]: s for s in objs.kind("Secret")}
    existing = existing_secrets(values_of(values_file))
    refs = []
    for o, _, spec in objs.pod_specs():
        for c in spec["containers"]:
            for e in c.get("env", []):
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    refs.append((ref["name"], ref["key"]))
        for v in spec.get("volumes", []):
            if "secret" in v:
                refs.append((v["secret"]["secretName"], None))
    for name, key in refs:
        if name in rendered:
            if key:
                assert key in rendered[name]["data"], (name, key)
        else:
            assert name in existing, f"Secret {name} is neither rendered nor an existingSecret of {values_file}"
    for s in rendered.values():
        for v in s["data"].values():
            assert base64.b64decode(v), s["metadata"]["name"]


@pytest.mark.parametrize("values_file", CI_FILES)
def test_probes_use_declared_ports_and_contract_paths(values_file):
    objs = render(values_file)
    for _, _, spec in objs.pod_specs():
        for c in spec["containers"]:
            ports = {p["name"] for p in c.get("ports", [])}
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                p = c.get(probe)
                if p and "httpGet" in p:
                    assert p["httpGet"]["port"] in ports, (c["name"], probe)
                if p and "tcpSocket" in p:
                    assert p["tcpSocket"]["port"] in ports, (c["name"], probe)
            if c["name"] == "exporter":
                assert c["livenessProbe"]["httpGet"]["path"] == "/-/healthy"
                if "readinessProbe" in c:
                    assert c["readinessProbe"]["httpGet"]["path"] == "/-/ready"


@pytest.mark.parametrize("values_file", CI_FILES)
def test_exporter_runs_serve_on_the_contract_port(values_file):
    objs = render(values_file)
    exporters = [c for _, _, spec in objs.pod_specs() for c in spec["containers"] if c["name"] == "exporter"]
    assert len(exporters) == 1
    c = exporters[0]
    assert c["command"] == ["gunicorn-prometheus-exporter", "serve"]
    assert c["ports"] == [{"name": "metrics", "containerPort": 9091, "protocol": "TCP"}]
    env = env_of(c)
    assert env["PROMETHEUS_METRICS_PORT"] == "9091"
    assert env["PROMETHEUS_BIND_ADDRESS"] == "0.0.0.0"


@pytest.mark.parametrize("values_file", CI_FILES)
def test_only_one_workload_serves_metrics(values_file):
    """No series is served twice: the metrics port exists on exactly one kind of pod, the app
    plugin never serves (PROMETHEUS_METRICS_SERVER=false), and in the daemonset topology each
    exporter reads only its own node's instances."""
    objs = render(values_file)
    values = values_of(values_file)
    serving = [o for o, _, spec in objs.pod_specs() if o["kind"] != "Pod" and "metrics" in container_ports(spec)]
    assert len(serving) == 1
    app = container(one_pod(objs, "app")[2], "app")
    assert env_of(app)["PROMETHEUS_METRICS_SERVER"] == "false"
    if values.get("topology") == "daemonset":
        assert serving[0]["kind"] == "DaemonSet"
        exporter = env_of(container(serving[0]["spec"]["template"]["spec"], "exporter"))
        assert exporter["REDIS_SCOPE"] == "node"
        assert exporter["NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
        assert env_of(app)["NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
        assert "REDIS_SCOPE" not in env_of(app)
    else:
        assert serving[0]["kind"] == "Deployment"
    metrics_svcs = [s for s in objs.kind("Service") if s["spec"]["ports"][0]["name"] == "metrics"]
    assert len(metrics_svcs) == 1
    assert selector_matches(metrics_svcs[0]["spec"]["selector"], serving[0]["spec"]["template"]["metadata"]["labels"])


@pytest.mark.parametrize("values_file", CI_FILES)
def test_images_default_to_the_contract(values_file):
    values = values_of(values_file)
    objs = render(values_file)
    exporter = next(c for _, _, s in objs.pod_specs() for c in s["containers"] if c["name"] == "exporter")
    assert exporter["image"] == CONTRACT_IMAGES["exporter"]
    app = container(one_pod(objs, "app")[2], "app")
    if "image" not in values.get("app", {}):
        assert app["image"] == CONTRACT_IMAGES["app"]


@pytest.mark.parametrize("values_file", CI_FILES)
def test_pdb_selects_the_app_pods(values_file):
    objs = render(values_file)
    pdb = objs.get("PodDisruptionBudget")
    _, meta, _ = one_pod(objs, "app")
    assert selector_matches(pdb["spec"]["selector"]["matchLabels"], meta["labels"])
    assert ("minAvailable" in pdb["spec"]) != ("maxUnavailable" in pdb["spec"])


@pytest.mark.parametrize("values_file", CI_FILES)
def test_helm_test_pod_fetches_healthy_and_metrics(values_file):
    objs = render(values_file)
    pod = objs.get("Pod", component="test")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = pod["spec"]["containers"][0]["command"][-1]
    svc = [s for s in objs.kind("Service") if labels(s)["app.kubernetes.io/component"] == "metrics"][0]
    base = f"://{svc['metadata']['name']}:{svc['spec']['ports'][0]['port']}"
    assert f"{base}/-/healthy" in script and f"{base}/metrics" in script
    assert pod["spec"]["containers"][0]["image"].startswith("busybox:")


# ---- sidecar topology --------------------------------------------------------------------------

def test_sidecar_shares_an_emptydir_multiprocess_directory():
    objs = render("sidecar-values.yaml")
    assert not objs.kind("DaemonSet")
    assert not objs.find("Deployment", "redis") and not objs.kind("Secret")
    assert not objs.kind("NetworkPolicy"), "NetworkPolicies are off by default in the sidecar topology"
    dep, _, spec = one_pod(objs, "app")
    assert dep["kind"] == "Deployment" and dep["spec"]["replicas"] == 2
    assert [c["name"] for c in spec["containers"]] == ["app", "exporter"]
    app, exporter = container(spec, "app"), container(spec, "exporter")
    volumes = {v["name"]: v for v in spec["volumes"]}
    for c in (app, exporter):
        assert env_of(c)["PROMETHEUS_MULTIPROC_DIR"] == MULTIPROC
        mount = [m for m in c["volumeMounts"] if m["mountPath"] == MULTIPROC]
        assert len(mount) == 1 and mount[0]["name"] == "multiproc"
    assert "emptyDir" in volumes["multiproc"]
    assert env_of(app)["PROMETHEUS_METRICS_SERVER"] == "false"
    assert "REDIS_ENABLED" not in env_of(app) and "REDIS_ENABLED" not in env_of(exporter)
    assert app["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    # a sidecar's readiness would take the app out of its Service
    assert "readinessProbe" not in exporter
    assert app["readinessProbe"]["httpGet"]["port"] == "http"


def test_sidecar_readiness_can_be_turned_on():
    objs = render("sidecar-values.yaml", sets=("exporter.sidecarReadiness=true",))
    exporter = container(one_pod(objs, "app")[2], "exporter")
    assert exporter["readinessProbe"]["httpGet"] == {"path": "/-/ready", "port": "metrics"}


def test_sidecar_with_redis_keeps_each_pod_in_its_own_prefix():
    objs = render("sidecar-redis-values.yaml")
    _, _, spec = one_pod(objs, "app")
    prefixes = set()
    for name in ("app", "exporter"):
        c = container(spec, name)
        env = env_of(c)
        names = [e["name"] for e in c["env"]]
        assert env["REDIS_ENABLED"] == "true"
        assert env["REDIS_HOST"] == f"{FULL}-redis"
        assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
        # $(POD_NAME) expands only when POD_NAME comes first
        assert names.index("POD_NAME") < names.index("REDIS_KEY_PREFIX")
        assert env["REDIS_KEY_PREFIX"] == f"{FULL}:$(POD_NAME)"
        assert "PROMETHEUS_MULTIPROC_DIR" not in env
        prefixes.add(env["REDIS_KEY_PREFIX"])
    assert env_of(container(spec, "exporter"))["REDIS_SCOPE"] == "all"
    assert len(prefixes) == 1
    assert "multiproc" not in {v["name"] for v in spec["volumes"]}


# ---- daemonset topology ------------------------------------------------------------------------

def test_daemonset_topology():
    objs = render("daemonset-values.yaml")
    ds = objs.get("DaemonSet")
    assert ds["metadata"]["name"] == f"{FULL}-exporter"
    spec = ds["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["containers"]] == ["exporter"]
    env = env_of(spec["containers"][0])
    assert env["REDIS_ENABLED"] == "true"
    assert env["REDIS_SCOPE"] == "node"
    assert env["REDIS_HOST"] == f"{FULL}-redis" and env["REDIS_PORT"] == "6379"
    assert env["REDIS_PASSWORD"] == {"secretKeyRef": {"name": f"{FULL}-redis", "key": "redis-password"}}
    assert "PROMETHEUS_MULTIPROC_DIR" not in env
    # DaemonSet pods are ready only when their source is
    assert spec["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/-/ready"
    _, _, app_spec = one_pod(objs, "app")
    assert [c["name"] for c in app_spec["containers"]] == ["app"]
    app_env = env_of(app_spec["containers"][0])
    assert app_env["REDIS_KEY_PREFIX"] == env["REDIS_KEY_PREFIX"] == FULL
    for key in ("REDIS_HOST", "REDIS_PORT", "REDIS_DB", "REDIS_PASSWORD", "REDIS_TTL_SECONDS"):
        assert app_env[key] == env[key], key
    assert len(objs.kind("NetworkPolicy")) == 3, "NetworkPolicies are on by default in the daemonset topology"
    svc = objs.get("Service", component="metrics")
    assert svc["metadata"]["name"] == f"{FULL}-metrics"
    assert svc["spec"]["selector"]["app.kubernetes.io/component"] == "exporter"


def test_daemonset_refuses_redis_disabled():
    with pytest.raises(chartlib.RenderError, match="topology=daemonset needs Redis"):
        render("daemonset-values.yaml", sets=("redis.enabled=false",))


def test_unknown_topology_is_refused_by_the_schema():
    with pytest.raises(chartlib.RenderError, match="topology"):
        render(None, sets=("topology=statefulset",))


# ---- Redis -------------------------------------------------------------------------------------

def test_bundled_redis_password_from_values():
    objs = render("daemonset-values.yaml")
    secret = objs.get("Secret", component="redis")
    password = base64.b64decode(secret["data"]["redis-password"]).decode()
    assert password == values_of("daemonset-values.yaml")["redis"]["bundled"]["auth"]["password"]
    assert "annotations" not in secret["metadata"]  # the chart's own: removed on uninstall
    dep = objs.get("Deployment", component="redis")
    c = container(dep["spec"]["template"]["spec"], "redis")
    assert c["image"] == "redis:7.4.2-alpine"
    assert c["command"] == ["redis-server"]
    args = c["args"]
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    assert args[args.index("--save") + 1] == ""  # no persistence: no snapshots
    assert env_of(c)["REDIS_PASSWORD"] == {"secretKeyRef": {"name": secret["metadata"]["name"], "key": "redis-password"}}
    assert c["readinessProbe"]["exec"]["command"][-1].startswith("redis-cli")
    assert dep["spec"]["strategy"]["type"] == "Recreate"
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"] == {"name": "data", "emptyDir": {}}
    svc = objs.get("Service", name=f"{FULL}-redis")
    assert svc["spec"]["ports"][0]["port"] == 6379
    assert not objs.kind("PersistentVolumeClaim")
    # the pods restart when the password changes, and only then
    checksums = {comp: one_pod(objs, comp)[1]["annotations"]["checksum/redis-secret"]
                 for comp in ("app", "exporter", "redis")}
    assert len(set(checksums.values())) == 1 and len(checksums["app"]) == 64
    changed = render("daemonset-values.yaml", sets=("redis.bundled.auth.password=another",))
    for comp in ("app", "exporter", "redis"):
        assert one_pod(changed, comp)[1]["annotations"]["checksum/redis-secret"] != checksums[comp]


@pytest.mark.parametrize("topology", ["daemonset", "sidecar"])
def test_bundled_redis_without_a_password_is_refused(topology):
    """The chart generates no password (a random one would differ at every render): without
    existingSecret or password the render stops with one line saying what to set."""
    with pytest.raises(chartlib.RenderError) as info:
        render(None, sets=(f"topology={topology}", "redis.enabled=true"))
    message = str(info.value).splitlines()[0]
    assert message.endswith("redis.bundled.auth: the bundled Redis needs a password: set "
                            "redis.bundled.auth.existingSecret (a Secret you create, see "
                            'docs/kubernetes.md "Redis password") or redis.bundled.auth.password')


def test_bundled_redis_password_from_existing_secret():
    objs = render("daemonset-values.yaml", sets=("redis.bundled.auth.existingSecret=my-redis",
                                                 "redis.bundled.auth.existingSecretPasswordKey=pw"))
    assert not objs.kind("Secret")
    for comp in ("app", "exporter", "redis"):
        _, _, spec = one_pod(objs, comp)
        env = env_of(spec["containers"][0])
        assert env["REDIS_PASSWORD"] == {"secretKeyRef": {"name": "my-redis", "key": "pw"}}


def test_bundled_redis_persistence():
    objs = render("sidecar-redis-values.yaml")
    pvc = objs.get("PersistentVolumeClaim")
    assert pvc["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    dep = objs.get("Deployment", component="redis")
    spec = dep["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    args = container(spec, "redis")["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    objs2 = render("sidecar-redis-values.yaml", sets=("redis.bundled.persistence.existingClaim=data-claim",))
    assert not objs2.kind("PersistentVolumeClaim")
    spec2 = objs2.get("Deployment", component="redis")["spec"]["template"]["spec"]
    assert {v["name"]: v for v in spec2["volumes"]}["data"]["persistentVolumeClaim"]["claimName"] == "data-claim"


def test_external_redis():
    objs = render("external-redis-values.yaml")
    assert not objs.find("Deployment", "redis") and not objs.kind("Secret")
    assert not objs.find("NetworkPolicy", "redis")
    for comp in ("app", "exporter"):
        env = env_of(one_pod(objs, comp)[2]["containers"][0])
        assert env["REDIS_HOST"] == "redis.data.svc.cluster.local"
        assert env["REDIS_PORT"] == "6380"
        assert env["REDIS_DB"] == "2"
        assert env["REDIS_USERNAME"] == "gunicorn"
        assert env["REDIS_KEY_PREFIX"] == "shop"
        assert env["REDIS_PASSWORD"] == {"secretKeyRef": {"name": "shop-redis", "key": "password"}}
        assert "REDIS_URL" not in env


def test_external_redis_needs_an_address():
    with pytest.raises(chartlib.RenderError, match="needs redis.external.url or redis.external.host"):
        render("daemonset-values.yaml", sets=("redis.bundled.enabled=false",))


def test_external_redis_url_must_not_hold_credentials():
    with pytest.raises(chartlib.RenderError, match="must not hold credentials"):
        render("daemonset-values.yaml", sets=("redis.bundled.enabled=false",
                                              "redis.external.url=redis://user:pw@redis:6379/0"))


def test_tls_redis_and_https_metrics():
    objs = render("tls-values.yaml")
    for comp in ("app", "exporter"):
        _, _, spec = one_pod(objs, comp)
        c = spec["containers"][0]
        env = env_of(c)
        assert env["REDIS_URL"] == "rediss://redis.example.internal:6390/0"
        assert "REDIS_HOST" not in env
        assert env["REDIS_SSL_CA_CERTS"] == "/etc/gunicorn-prometheus/redis-tls/ca.crt"
        assert env["REDIS_SSL_CERTFILE"] == "/etc/gunicorn-prometheus/redis-tls/tls.crt"
        assert env["REDIS_SSL_KEYFILE"] == "/etc/gunicorn-prometheus/redis-tls/tls.key"
        assert env["REDIS_PASSWORD"] == {"secretKeyRef": {"name": "redis-auth", "key": "redis-password"}}
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["redis-tls"]["secret"]["secretName"] == "redis-tls"
        assert {"name": "redis-tls", "mountPath": "/etc/gunicorn-prometheus/redis-tls", "readOnly": True} in c["volumeMounts"]
    exporter = one_pod(objs, "exporter")[2]["containers"][0]
    env = env_of(exporter)
    assert env["PROMETHEUS_SSL_CERTFILE"] == "/etc/gunicorn-prometheus/tls/tls.crt"
    assert env["PROMETHEUS_SSL_KEYFILE"] == "/etc/gunicorn-prometheus/tls/tls.key"
    assert env["PROMETHEUS_SSL_CLIENT_CAFILE"] == "/etc/gunicorn-prometheus/tls/ca.crt"
    for probe in ("livenessProbe", "readinessProbe"):
        assert exporter[probe]["httpGet"]["scheme"] == "HTTPS"
    sm = objs.get("ServiceMonitor")
    ep = sm["spec"]["endpoints"][0]
    assert ep["scheme"] == "https"
    assert ep["tlsConfig"] == {"insecureSkipVerify": False, "serverName": "metrics.example.internal"}
    script = objs.get("Pod", component="test")["spec"]["containers"][0]["command"][-1]
    assert "https://" in script and "--no-check-certificate" in script


def test_tls_redis_with_host_builds_a_rediss_url():
    objs = render("external-redis-values.yaml", sets=("redis.external.tls.enabled=true",
                                                      "redis.external.tls.existingSecret=ca"))
    env = env_of(one_pod(objs, "exporter")[2]["containers"][0])
    assert env["REDIS_URL"] == "rediss://redis.data.svc.cluster.local:6380/2"
    assert env["REDIS_SSL_CA_CERTS"].endswith("/ca.crt")


def test_tls_needs_a_secret():
    with pytest.raises(chartlib.RenderError, match="exporter.tls.existingSecret"):
        render("sidecar-values.yaml", sets=("exporter.tls.enabled=true",))
    with pytest.raises(chartlib.RenderError, match="redis.external.tls.existingSecret"):
        render("external-redis-values.yaml", sets=("redis.external.tls.enabled=true",))


# ---- NetworkPolicies ---------------------------------------------------------------------------

def netpols(objs):
    return {labels(n)["app.kubernetes.io/component"]: n for n in objs.kind("NetworkPolicy")}


def rule_ports(rule):
    return {(p["port"], p.get("protocol", "TCP")) for p in rule.get("ports", [])}


@pytest.mark.parametrize("values_file", CI_FILES)
def test_networkpolicies_select_rendered_pods(values_file):
    objs = render(values_file)
    for np in objs.kind("NetworkPolicy"):
        pods = [m for o, m, _ in objs.pod_specs() if o["kind"] != "Pod"
                and selector_matches(np["spec"]["podSelector"]["matchLabels"], m["labels"])]
        assert len(pods) == 1, np["metadata"]["name"]
        assert np["spec"]["policyTypes"] == ["Ingress", "Egress"]


def test_networkpolicy_defaults_by_topology():
    assert not render("sidecar-values.yaml").kind("NetworkPolicy")
    assert set(netpols(render("daemonset-values.yaml"))) == {"app", "exporter", "redis"}
    assert not render("netpol-off-values.yaml").kind("NetworkPolicy")
    assert set(netpols(render("sidecar-redis-values.yaml"))) == {"app", "redis"}
    assert set(netpols(render("sidecar-values.yaml", sets=("networkPolicy.enabled=true",)))) == {"app"}


@pytest.mark.parametrize("values_file", ["daemonset-values.yaml", "sidecar-redis-values.yaml"])
def test_networkpolicy_bundled_redis(values_file):
    objs = render(values_file)
    nps = netpols(objs)
    values = chartlib.yaml.safe_load((chartlib.CHART / "values.yaml").read_text())
    dns_peers = values["networkPolicy"]["dns"]["to"]
    prometheus_peers = values["networkPolicy"]["metricsFrom"]
    redis_labels = one_pod(objs, "redis")[1]["labels"]
    test_labels = objs.get("Pod", component="test")["metadata"]["labels"]
    metrics_np = nps["exporter"] if "exporter" in nps else nps["app"]

    # egress of app and exporter: DNS and Redis, nothing else
    for comp in ("app", "exporter"):
        if comp not in nps:
            continue
        egress = nps[comp]["spec"]["egress"]
        assert len(egress) == 2, egress
        dns, redis = egress
        assert rule_ports(dns) == {(53, "UDP"), (53, "TCP")}
        assert dns["to"] == dns_peers
        assert rule_ports(redis) == {(6379, "TCP")}
        assert len(redis["to"]) == 1
        assert selector_matches(redis["to"][0]["podSelector"]["matchLabels"], redis_labels)
        assert "namespaceSelector" not in redis["to"][0]

    # metrics: only Prometheus and the helm test pod
    metrics_rules = [r for r in metrics_np["spec"]["ingress"] if rule_ports(r) == {("metrics", "TCP")}]
    assert len(metrics_rules) == 1
    peers = metrics_rules[0]["from"]
    assert peers[:-1] == prometheus_peers
    assert selector_matches(peers[-1]["podSelector"]["matchLabels"], test_labels)
    # no rule opens every port
    for np in nps.values():
        for r in np["spec"]["ingress"] + np["spec"]["egress"]:
            assert r.get("ports"), (np["metadata"]["name"], r)

    # the app's own port stays open (no peers configured)
    app_rules = [r for r in nps["app"]["spec"]["ingress"] if rule_ports(r) == {("http", "TCP")}]
    assert app_rules == [{"ports": [{"port": "http", "protocol": "TCP"}]}]

    # Redis: reached only by app and exporter pods, reaches nothing
    rnp = nps["redis"]["spec"]
    assert rnp["egress"] == []
    assert len(rnp["ingress"]) == 1 and rule_ports(rnp["ingress"][0]) == {("redis", "TCP")}
    clients = [one_pod(objs, "app")[1]["labels"]]
    if "exporter" in nps:
        clients.append(one_pod(objs, "exporter")[1]["labels"])
    peers = rnp["ingress"][0]["from"]
    assert len(peers) == len(clients)
    for peer, client in zip(peers, clients):
        assert set(peer) == {"podSelector"}
        assert selector_matches(peer["podSelector"]["matchLabels"], client)


def test_networkpolicy_external_redis_egress():
    nps = netpols(render("external-redis-values.yaml"))
    for comp in ("app", "exporter"):
        _, redis = nps[comp]["spec"]["egress"]
        assert rule_ports(redis) == {(6380, "TCP")}
        assert redis["to"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "data"}
    nps = netpols(render("tls-values.yaml"))
    _, redis = nps["exporter"]["spec"]["egress"]
    assert rule_ports(redis) == {(6390, "TCP")}  # port taken from the rediss:// URL
    assert redis["to"] == [{"ipBlock": {"cidr": "10.20.0.0/16"}}]


def test_networkpolicy_sidecar_extras():
    nps = netpols(render("extras-values.yaml"))
    spec = nps["app"]["spec"]
    http = [r for r in spec["ingress"] if rule_ports(r) == {("http", "TCP")}][0]
    assert http["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}]
    assert any(rule_ports(r) == {("metrics", "TCP")} for r in spec["ingress"])
    # DNS, then the extra rule; no Redis since the sidecar reads the shared directory
    assert [rule_ports(r) for r in spec["egress"]] == [{(53, "UDP"), (53, "TCP")}, {(5432, "TCP")}]


# ---- prometheus-operator objects, dashboard ----------------------------------------------------

def test_monitors_are_gated_on_the_api():
    sets = ("serviceMonitor.enabled=true", "prometheusRule.enabled=true")
    assert not render("sidecar-values.yaml", sets=sets).kind("ServiceMonitor")
    assert not render("sidecar-values.yaml", sets=sets).kind("PrometheusRule")
    objs = render("sidecar-values.yaml", sets=sets, api_versions=(chartlib.MONITORING_API,))
    assert objs.kind("ServiceMonitor") and objs.kind("PrometheusRule")
    objs = render("daemonset-values.yaml", sets=("podMonitor.enabled=true",))
    assert not objs.kind("PodMonitor")
    objs = render("daemonset-values.yaml", sets=("podMonitor.enabled=true",), api_versions=(chartlib.MONITORING_API,))
    assert objs.kind("PodMonitor")


def test_both_monitors_are_refused():
    with pytest.raises(chartlib.RenderError, match="both true"):
        render("monitors-values.yaml", sets=("podMonitor.enabled=true",))
    with pytest.raises(chartlib.RenderError, match="both true"):
        render("sidecar-values.yaml", sets=("podMonitor.enabled=true", "serviceMonitor.enabled=true"))


def test_servicemonitor_selects_the_metrics_service():
    objs = render("monitors-values.yaml")
    sm = objs.get("ServiceMonitor")
    svc = objs.get("Service", component="metrics")
    assert selector_matches(sm["spec"]["selector"]["matchLabels"], labels(svc))
    assert not any(selector_matches(sm["spec"]["selector"]["matchLabels"], labels(s))
                   for s in objs.kind("Service") if s is not svc)
    ep = sm["spec"]["endpoints"][0]
    assert ep["port"] == "metrics" and ep["path"] == "/metrics" and ep["scheme"] == "http"
    assert ep["metricRelabelings"][0]["action"] == "drop"
    assert labels(sm)["release"] == "kube-prometheus-stack"
    assert "namespaceSelector" not in sm["spec"]


def test_podmonitor_selects_the_exporter_pods():
    objs = render("podmonitor-values.yaml")
    pm = objs.get("PodMonitor")
    assert pm["metadata"]["namespace"] == "monitoring"
    assert pm["spec"]["namespaceSelector"] == {"matchNames": [chartlib.NAMESPACE]}
    pods = [m for o, m, _ in objs.pod_specs() if o["kind"] != "Pod"
            and selector_matches(pm["spec"]["selector"]["matchLabels"], m["labels"])]
    assert len(pods) == 1 and pods[0]["labels"]["app.kubernetes.io/component"] == "exporter"
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"


def alerts_of(objs):
    """The alerts of the chart's first rule group (the SLO group's are tested in test_alerts.py)."""
    group = objs.get("PrometheusRule")["spec"]["groups"][0]
    return {r["alert"]: r for r in group["rules"] if "alert" in r}


def test_prometheusrule_alerts():
    alerts = alerts_of(render("monitors-values.yaml"))
    assert set(alerts) == {"GunicornHighErrorRatio", "GunicornWorkersSaturated", "GunicornListenBacklog",
                           "GunicornWorkerRestarts", "GunicornExporterDown", "GunicornExporterSourceDown"}
    job = f'job="{FULL}-metrics"'  # the job a ServiceMonitor gives: the Service's name
    for a in alerts.values():
        assert job in a["expr"], a["alert"]
        assert a["labels"]["severity"] in ("warning", "critical")
        assert a["annotations"]["summary"] and a["annotations"]["description"]
    assert 'status=~"5.."' in alerts["GunicornHighErrorRatio"]["expr"]
    assert "gunicorn_worker_in_flight_requests" in alerts["GunicornWorkersSaturated"]["expr"]
    assert "gunicorn_worker_capacity" in alerts["GunicornWorkersSaturated"]["expr"]
    assert alerts["GunicornWorkersSaturated"]["expr"].rstrip().endswith("> 0.9")
    assert 'reason=~"killed|timeout"' in alerts["GunicornWorkerRestarts"]["expr"]
    assert "gunicorn_worker_restart_total" in alerts["GunicornWorkerRestarts"]["expr"]
    assert alerts["GunicornExporterDown"]["expr"].startswith("up{")


def test_prometheusrule_follows_the_podmonitor_job_and_thresholds():
    alerts = alerts_of(render("podmonitor-values.yaml", sets=(
        "prometheusRule.alerts.saturation.threshold=0.75", "prometheusRule.alerts.backlog.enabled=false")))
    assert f'job="monitoring/{FULL}"' in alerts["GunicornExporterDown"]["expr"]
    assert alerts["GunicornWorkersSaturated"]["expr"].rstrip().endswith("> 0.75")
    assert "GunicornListenBacklog" not in alerts
    alerts = alerts_of(render("monitors-values.yaml", sets=('prometheusRule.selector=service="web"',)))
    assert 'up{service="web"}' in alerts["GunicornExporterDown"]["expr"]


def test_dashboard_configmap():
    objs = render("monitors-values.yaml")
    cm = objs.get("ConfigMap", component="dashboard")
    assert labels(cm)["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"]["grafana_folder"] == "Gunicorn"
    (name, text), = cm["data"].items()
    assert name.endswith(".json")
    dash = json.loads(text)
    titles = " | ".join(p["title"] for p in dash["panels"]).lower()
    for topic in ("request rate per route", "error ratio (5xx) per route", "latency", "saturation",
                  "listen backlog", "memory per worker", "cpu per worker", "worker restarts by reason"):
        assert topic in titles, topic
    assert {v["name"] for v in dash["templating"]["list"]} == {"datasource", "trace_datasource",
                                                              "namespace", "job"}
    # the latency panel shows exemplars and links them to the trace data source
    latency, native = (p for p in dash["panels"] if p["title"].lower().startswith("latency"))
    # beside it, the same quantiles from the native histogram (no `le`, no `_bucket`)
    assert "native" in native["title"] and native["gridPos"]["y"] == latency["gridPos"]["y"]
    assert all("(rate(gunicorn_http_request_duration_seconds{" in t["expr"]
               for t in native["targets"])
    assert all(t["exemplar"] for t in latency["targets"])
    link, = latency["fieldConfig"]["defaults"]["links"]
    assert "${trace_datasource}" in link["url"] and "${__data.fields.trace_id}" in link["url"]
    assert not render("sidecar-values.yaml").kind("ConfigMap")


def test_dashboard_rows_of_queue_time_protocols_websockets_and_the_dirty_pool():
    """What only some users turn on (queue time needs a proxy's stamp, WebSockets an ASGI
    worker, the dirty pool gunicorn 27's dirty_workers) has panels in collapsed rows of its
    own: one line each on the dashboard of who does not use it."""
    cm = render("monitors-values.yaml").get("ConfigMap", component="dashboard")
    (text,) = cm["data"].values()
    dash = json.loads(text)
    rows = {p["title"].split(" (")[0]: p for p in dash["panels"]
            if p["type"] == "row" and p["collapsed"]}
    assert {row: [p["title"] for p in r["panels"]] for row, r in rows.items()} == {
        "Queue time": ["Queue time p50 / p90 / p99", "Queue stamps not observed, by reason"],
        "Protocols and WebSockets": ["Requests by protocol", "Open WebSocket connections",
                                     "WebSocket connection duration p50 / p90 / p99"],
        "Dirty workers": ["Dirty workers busy / idle", "Dirty tasks per app",
                          "Dirty task duration p50 / p90 / p99 per app",
                          "Dirty task failures by app and error type",
                          "Dirty worker exits by reason"]}
    exprs = [t["expr"] for r in rows.values() for p in r["panels"] for t in p["targets"]]
    # every series read is the dashboard's job and namespace
    reads = re.findall(r"\b(gunicorn_\w+)(\{[^}]*\})?", " ".join(exprs))
    assert len(reads) == 20
    assert all(sel.startswith('{job=~"$job", namespace=~"$namespace"') for _, sel in reads), reads
    assert ('histogram_quantile(0.99, sum by (le, namespace, job) (rate('
            'gunicorn_http_request_queue_duration_seconds_bucket{job=~"$job", '
            'namespace=~"$namespace"}[$__rate_interval])))') in exprs


def test_monitors_scrape_openmetrics_first_for_exemplars():
    for values, kind in (("monitors-values.yaml", "ServiceMonitor"),
                         ("podmonitor-values.yaml", "PodMonitor")):
        monitor, = render(values).kind(kind)
        assert monitor["spec"]["scrapeProtocols"][0] == "OpenMetricsText1.0.0"
    monitor, = render("monitors-values.yaml",
                      sets=("serviceMonitor.scrapeProtocols=null",)).kind("ServiceMonitor")
    assert "scrapeProtocols" not in monitor["spec"]


# ---- extras ------------------------------------------------------------------------------------

def test_extras_are_passed_through():
    objs = render("extras-values.yaml")
    dep, meta, spec = one_pod(objs, "app")
    app = container(spec, "app")
    assert app["image"] == "registry.example.com/shop/web:1.4.2"
    assert app["command"] == ["gunicorn"]
    assert app["args"] == ["--config", "python:shop.gunicorn_conf", "shop.wsgi:application"]
    assert app["ports"][0]["containerPort"] == 8080
    assert env_of(app)["GUNICORN_WORKERS"] == "4"
    assert app["resources"]["requests"] == {"cpu": "200m", "memory": "256Mi"}
    assert app["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert {"name": "config", "mountPath": "/etc/shop", "readOnly": True} in app["volumeMounts"]
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert spec["tolerations"][0]["key"] == "dedicated"
    assert "podAntiAffinity" in spec["affinity"]
    assert spec["topologySpreadConstraints"][0]["topologyKey"] == "topology.kubernetes.io/zone"
    assert spec["priorityClassName"] == "web-critical"
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert dep["spec"]["replicas"] == 3
    exporter = container(spec, "exporter")
    assert exporter["args"] == ["--config", "/etc/gpe/config.yaml"]
    assert env_of(exporter)["REDIS_TTL_SECONDS"] == "600"
    assert {v["name"] for v in spec["volumes"]} >= {"config", "gpe-config", "tmp", "multiproc", "exporter-tmp"}
    assert objs.get("PodDisruptionBudget")["spec"] == {
        "selector": {"matchLabels": dep["spec"]["selector"]["matchLabels"]}, "minAvailable": 2}
    svc = objs.get("Service", component="app")
    assert svc["spec"]["ports"][0]["port"] == 80
    for o in objs:
        assert labels(o)["team"] == "web", o["kind"]


def test_daemonset_scheduling_values():
    objs = render("daemonset-values.yaml", sets=(
        "exporter.tolerations[0].operator=Exists", "exporter.priorityClassName=system-node-critical",
        "exporter.nodeSelector.role=web"))
    spec = objs.get("DaemonSet")["spec"]["template"]["spec"]
    assert spec["tolerations"] == [{"operator": "Exists"}]
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["nodeSelector"] == {"role": "web"}


def test_security_context_overrides_merge():
    objs = render("sidecar-values.yaml", sets=("app.securityContext.runAsUser=1000",
                                               "app.podSecurityContext.fsGroup=2000"))
    _, _, spec = one_pod(objs, "app")
    assert spec["securityContext"]["fsGroup"] == 2000
    assert spec["securityContext"]["runAsNonRoot"] is True
    app = container(spec, "app")
    assert app["securityContext"]["runAsUser"] == 1000
    assert app["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container(spec, "exporter")["securityContext"]["runAsUser"] == 65532


def test_notes_tell_how_to_reach_metrics():
    helm_python = pytest.importorskip("helm_python", reason="pip install helm-python-sdk")
    chart = helm_python.Chart.load(str(chartlib.CHART))
    for topology in ("sidecar", "daemonset"):
        out = chart.render({"topology": topology, "serviceMonitor": {"enabled": True},
                            "redis": {"bundled": {"auth": {"existingSecret": "redis-auth"}}}},
                           name=chartlib.RELEASE, namespace=chartlib.NAMESPACE)
        notes = next(v for k, v in out.items() if k.endswith("NOTES.txt"))
        assert f"port-forward service/{FULL}-metrics 9091:9091" in notes
        assert "curl http://127.0.0.1:9091/metrics" in notes
        assert "no\nServiceMonitor was rendered" in notes  # no CRD API offline
        assert f"helm test {chartlib.RELEASE}" in notes


def test_helm4_engine_renders_the_same_objects():
    """helm 3.10 (CLI) and the Helm v4 engine (helm-python-sdk) render the same objects."""
    helm_python = pytest.importorskip("helm_python", reason="pip install helm-python-sdk")
    chart = helm_python.Chart.load(str(chartlib.CHART))
    for values_file in ("external-redis-values.yaml", "tls-values.yaml", "extras-values.yaml"):
        out = chart.render(values_of(values_file), name=chartlib.RELEASE, namespace=chartlib.NAMESPACE)
        v4 = [d for k, text in sorted(out.items()) if not k.endswith("NOTES.txt")
              for d in yaml.safe_load_all(text) if d]
        key = lambda o: (o["kind"], o["metadata"]["name"])  # noqa: E731
        assert sorted(v4, key=key) == sorted(render(values_file), key=key), values_file


def test_scaled_object_on_saturation():
    objs = render("monitors-values.yaml")
    so = objs.get("ScaledObject")
    deployment = objs.get("Deployment", component="app")
    assert so["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                            "name": deployment["metadata"]["name"]}
    assert "replicas" not in deployment["spec"]  # the HPA KEDA creates owns it
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "Value"
    job = f'job="{FULL}-metrics"'
    assert trigger["metadata"]["query"] == (f"sum(gunicorn_worker_in_flight_requests{{{job}}}) / "
                                            f"sum(gunicorn_worker_capacity{{{job}}})")
    assert trigger["metadata"]["threshold"] == "0.7"
    assert (so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]) == (2, 10)
    assert "authenticationRef" not in trigger


def test_scaled_object_is_off_by_default_and_needs_the_keda_api():
    default = render()
    assert not default.kind("ScaledObject")
    assert default.get("Deployment", component="app")["spec"]["replicas"] == 2
    assert not render(sets=("autoscaling.enabled=true",)).kind("ScaledObject")
    assert render(sets=("autoscaling.enabled=true",), api_versions=("keda.sh/v1alpha1",)).kind("ScaledObject")
    so = render(sets=("autoscaling.enabled=true", "autoscaling.force=true",
                      "autoscaling.prometheus.authenticationRef=prom-auth",
                      "autoscaling.prometheus.authModes=bearer",
                      "autoscaling.query=sum(x)")).get("ScaledObject")
    trigger = so["spec"]["triggers"][0]
    assert trigger["authenticationRef"] == {"name": "prom-auth"}
    assert trigger["metadata"]["authModes"] == "bearer" and trigger["metadata"]["query"] == "sum(x)"


def test_monitors_switch_native_histogram_scraping_on():
    """Off by default; on, the protobuf format comes first and the configured protocols
    (OpenMetrics first, for exemplars) follow; classic buckets are kept unless told
    otherwise; scrapeNativeHistograms only when set."""
    protocols = ["OpenMetricsText1.0.0", "OpenMetricsText0.0.1", "PrometheusText0.0.4"]
    spec = render("monitors-values.yaml").get("ServiceMonitor")["spec"]
    assert spec["scrapeProtocols"] == protocols
    assert not {"scrapeClassicHistograms", "scrapeNativeHistograms"} & set(spec)
    spec = render("monitors-values.yaml", sets=("serviceMonitor.nativeHistograms.enabled=true",)
                  ).get("ServiceMonitor")["spec"]
    assert spec["scrapeProtocols"] == ["PrometheusProto"] + protocols
    assert spec["scrapeClassicHistograms"] is True and "scrapeNativeHistograms" not in spec
    spec = render("podmonitor-values.yaml", sets=(
        "podMonitor.nativeHistograms.enabled=true", "podMonitor.nativeHistograms.keepClassic=false",
        "podMonitor.nativeHistograms.scrapeNativeHistograms=true",
        "podMonitor.scrapeProtocols=null")).get("PodMonitor")["spec"]
    assert spec["scrapeProtocols"] == ["PrometheusProto"] + protocols
    assert spec["scrapeClassicHistograms"] is False and spec["scrapeNativeHistograms"] is True

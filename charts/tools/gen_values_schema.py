#!/usr/bin/env python3
"""Generate charts/gunicorn-prometheus-exporter/values.schema.json.

The chart's own keys are described below; the Kubernetes types that values pass through to the
manifests (env, probes, resources, security contexts, volumes, affinity, NetworkPolicy peers...)
are copied from the strict JSON schemas of `kubernetes-validate` (newest Kubernetes version it
ships), so that an unknown key is rejected at every level, inside those types too.

    python charts/tools/gen_values_schema.py            # rewrite the file
    python charts/tools/gen_values_schema.py --check    # exit 1 when the file is stale
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

CHART = Path(__file__).resolve().parent.parent / "gunicorn-prometheus-exporter"
OUT = CHART / "values.schema.json"
# Pinned so that the generated file does not change with the installed kubernetes-validate.
K8S_VERSION = "1.33.0"

K8S_TYPES = {
    "EnvVar": "io.k8s.api.core.v1.EnvVar",
    "EnvFromSource": "io.k8s.api.core.v1.EnvFromSource",
    "ResourceRequirements": "io.k8s.api.core.v1.ResourceRequirements",
    "Probe": "io.k8s.api.core.v1.Probe",
    "PodSecurityContext": "io.k8s.api.core.v1.PodSecurityContext",
    "SecurityContext": "io.k8s.api.core.v1.SecurityContext",
    "Volume": "io.k8s.api.core.v1.Volume",
    "VolumeMount": "io.k8s.api.core.v1.VolumeMount",
    "Toleration": "io.k8s.api.core.v1.Toleration",
    "Affinity": "io.k8s.api.core.v1.Affinity",
    "TopologySpreadConstraint": "io.k8s.api.core.v1.TopologySpreadConstraint",
    "LocalObjectReference": "io.k8s.api.core.v1.LocalObjectReference",
    "NetworkPolicyPeer": "io.k8s.api.networking.v1.NetworkPolicyPeer",
    "NetworkPolicyEgressRule": "io.k8s.api.networking.v1.NetworkPolicyEgressRule",
    "NetworkPolicyIngressRule": "io.k8s.api.networking.v1.NetworkPolicyIngressRule",
    "DaemonSetUpdateStrategy": "io.k8s.api.apps.v1.DaemonSetUpdateStrategy",
}

DROP_KEYS = {"description", "format"}


def k8s_definitions() -> dict:
    import kubernetes_validate

    base = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    path = base / f"v{K8S_VERSION}-local-strict" / "_definitions.json"
    if not path.exists():
        sys.exit(f"kubernetes-validate has no schemas for {K8S_VERSION} ({path})")
    defs = json.loads(path.read_text())["$defs"]

    out: dict = {}

    def clean(node):
        if isinstance(node, dict):
            res = {}
            for k, v in node.items():
                if k in DROP_KEYS or k.startswith("x-kubernetes-"):
                    continue
                if k == "$ref":
                    name = v.split("/")[-1]
                    visit(name)
                    res[k] = "#/definitions/" + name
                    continue
                res[k] = clean(v)
            return res
        if isinstance(node, list):
            return [clean(v) for v in node]
        return node

    def visit(name):
        if name in out:
            return
        out[name] = None  # mark before recursing (recursive types, e.g. JSONSchemaProps)
        d = defs[name]
        if name == "io.k8s.apimachinery.pkg.util.intstr.IntOrString":
            out[name] = {"type": ["string", "integer"]}
        elif name == "io.k8s.apimachinery.pkg.api.resource.Quantity":
            out[name] = {"type": ["string", "number"]}
        else:
            out[name] = clean(d)

    for full in K8S_TYPES.values():
        visit(full)
    return dict(sorted(out.items()))


# ---- the chart's own keys -------------------------------------------------------------------

def obj(props: dict, **extra) -> dict:
    return {"type": "object", "additionalProperties": False, "properties": props, **extra}


def k8s(name: str, nullable: bool = False) -> dict:
    return {"$ref": f"#/definitions/{K8S_TYPES[name]}"}


def arr(items: dict) -> dict:
    return {"type": "array", "items": items}


STR = {"type": "string"}
BOOL = {"type": "boolean"}
INT = {"type": "integer"}
# `helm --set x=0.5` passes a float as a string: accept numeric strings too.
NUM = {"type": ["number", "string"], "minimum": 0, "pattern": "^[0-9]*\\.?[0-9]+$"}
PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
STRMAP = {"type": "object", "additionalProperties": {"type": "string"}}
DURATION = {"type": "string", "pattern": "^(0|([0-9]+(ms|s|m|h|d|w|y))+)$"}
QUANTITY = {"type": ["string", "number"]}
PULL = {"type": "string", "enum": ["Always", "IfNotPresent", "Never"]}
SERVICE_TYPE = {"type": "string", "enum": ["ClusterIP", "NodePort", "LoadBalancer"]}
ABS_PATH = {"type": "string", "pattern": "^/"}


def image(repo_default_desc: str) -> dict:
    return obj({
        "registry": {"type": "string", "description": "Registry host, prepended to the repository."},
        "repository": {"type": "string", "minLength": 1, "description": repo_default_desc},
        "tag": {"type": ["string", "number"], "description": "Image tag (default: the chart's appVersion)."},
        "digest": {"type": "string", "pattern": "^(|sha256:[a-f0-9]{64})$"},
        "pullPolicy": PULL,
    }, required=["repository"])


SCHEDULING = {
    "nodeSelector": STRMAP,
    "tolerations": arr(k8s("Toleration")),
    "affinity": k8s("Affinity"),
    "priorityClassName": STR,
}

POD_EXTRAS = {
    "podAnnotations": STRMAP,
    "podLabels": STRMAP,
    "podSecurityContext": k8s("PodSecurityContext"),
    "securityContext": k8s("SecurityContext"),
}

EMPTYDIR = obj({"medium": {"type": "string", "enum": ["", "Memory"]}, "sizeLimit": QUANTITY})

RELABEL = obj({
    "sourceLabels": arr({"type": "string"}),
    "separator": STR,
    "targetLabel": STR,
    "regex": STR,
    "modulus": {"type": "integer", "minimum": 0},
    "replacement": STR,
    "action": {"type": "string", "enum": [
        "replace", "Replace", "keep", "Keep", "drop", "Drop", "hashmod", "HashMod",
        "labelmap", "LabelMap", "labeldrop", "LabelDrop", "labelkeep", "LabelKeep",
        "lowercase", "Lowercase", "uppercase", "Uppercase", "keepequal", "KeepEqual",
        "dropequal", "DropEqual"]},
})


def monitor(kind: str) -> dict:
    return obj({
        "enabled": {"type": "boolean", "description": f"Render a {kind} (prometheus-operator)."},
        "force": {"type": "boolean", "description": "Render even when the monitoring.coreos.com/v1 API is not reported."},
        "namespace": {"type": "string", "description": "Namespace of the object (default: the release's)."},
        "labels": STRMAP,
        "annotations": STRMAP,
        "interval": DURATION,
        "scrapeTimeout": DURATION,
        "honorLabels": BOOL,
        "scrapeProtocols": arr({"type": "string", "enum": [
            "PrometheusProto", "OpenMetricsText0.0.1", "OpenMetricsText1.0.0",
            "PrometheusText0.0.4", "PrometheusText1.0.0"]}),
        "relabelings": arr(RELABEL),
        "metricRelabelings": arr(RELABEL),
        "tlsConfig": obj({"insecureSkipVerify": BOOL, "serverName": STR}),
        "nativeHistograms": obj({
            "enabled": {"type": "boolean", "description": "Ask for the protobuf format first "
                        "(scrapeProtocols): native histograms."},
            "keepClassic": {"type": "boolean", "description": "scrapeClassicHistograms."},
            "scrapeNativeHistograms": {"type": ["boolean", "null"],
                                       "description": "Prometheus >= 3.8; unset when null."},
        }),
    })


def alert(extra: dict | None = None, threshold: bool = True) -> dict:
    props = {
        "enabled": BOOL,
        "for": DURATION,
        "severity": {"type": "string", "minLength": 1},
    }
    if threshold:
        props["threshold"] = NUM
    props.update(extra or {})
    return obj(props)


PERCENT = {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 100}


def burn(description: str) -> dict:
    return obj({
        "factor": {"type": "number", "exclusiveMinimum": 0, "description": description},
        "longWindow": DURATION,
        "shortWindow": DURATION,
        "for": DURATION,
        "severity": {"type": "string", "minLength": 1},
    })


SLO = obj({
    "enabled": {"type": "boolean", "description": "Render the SLO recording rules and alerts (needs prometheusRule.enabled)."},
    "period": DURATION,
    "byRoute": BOOL,
    "availability": obj({"enabled": BOOL, "objective": PERCENT}),
    "latency": obj({"enabled": BOOL, "objective": PERCENT,
                    "threshold": dict(NUM, description="Seconds; one of the duration buckets.")}),
    "fastBurn": burn("Multiple of the error budget's rate (14.4: 2% of a 30-day budget in 1 hour)."),
    "slowBurn": burn("Multiple of the error budget's rate (6: 5% of a 30-day budget in 6 hours)."),
})

AUTOSCALING = obj({
    "enabled": {"type": "boolean", "description": "Render a KEDA ScaledObject for the app Deployment (needs KEDA)."},
    "force": {"type": "boolean", "description": "Render even when the keda.sh/v1alpha1 API is not reported."},
    "minReplicas": {"type": "integer", "minimum": 0},
    "maxReplicas": {"type": "integer", "minimum": 1},
    "targetSaturation": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
    "activationSaturation": {"type": "number", "minimum": 0, "maximum": 1},
    "pollingInterval": {"type": "integer", "minimum": 1},
    "cooldownPeriod": {"type": "integer", "minimum": 0},
    "query": STR,
    "prometheus": obj({
        "serverAddress": {"type": "string", "pattern": "^https?://"},
        "authenticationRef": STR,
        "authModes": STR,
    }, required=["serverAddress"]),
})


def values_schema() -> dict:
    return obj({
        "topology": {"type": "string", "enum": ["sidecar", "daemonset"],
                     "description": "sidecar: exporter container in every app pod; daemonset: one exporter per node reading Redis."},
        "nameOverride": STR,
        "fullnameOverride": STR,
        "commonLabels": STRMAP,
        "imagePullSecrets": arr(k8s("LocalObjectReference")),
        "serviceAccount": obj({
            "create": BOOL,
            "name": STR,
            "annotations": STRMAP,
            "automountServiceAccountToken": BOOL,
        }),
        "podSecurityContext": k8s("PodSecurityContext"),
        "securityContext": k8s("SecurityContext"),
        "app": obj({
            "enabled": BOOL,
            "replicaCount": {"type": "integer", "minimum": 0},
            "image": image("App image (default: the demo app image)."),
            "command": arr(STR),
            "args": arr(STR),
            "port": PORT,
            "env": arr(k8s("EnvVar")),
            "envFrom": arr(k8s("EnvFromSource")),
            "resources": k8s("ResourceRequirements"),
            "livenessProbe": k8s("Probe"),
            "readinessProbe": k8s("Probe"),
            "startupProbe": k8s("Probe"),
            "tmpDir": EMPTYDIR,
            **POD_EXTRAS,
            "terminationGracePeriodSeconds": {"type": "integer", "minimum": 0},
            "extraVolumes": arr(k8s("Volume")),
            "extraVolumeMounts": arr(k8s("VolumeMount")),
            **SCHEDULING,
            "topologySpreadConstraints": arr(k8s("TopologySpreadConstraint")),
            "service": obj({
                "enabled": BOOL,
                "type": SERVICE_TYPE,
                "port": PORT,
                "annotations": STRMAP,
            }),
            "pdb": obj({
                "enabled": BOOL,
                "minAvailable": {"type": ["integer", "string", "null"]},
                "maxUnavailable": {"type": ["integer", "string", "null"]},
            }),
        }),
        "exporter": obj({
            "image": image("Exporter image."),
            "port": PORT,
            "bindAddress": {"type": "string", "minLength": 1},
            "multiprocDir": ABS_PATH,
            "multiprocVolume": EMPTYDIR,
            "extraArgs": arr(STR),
            "env": arr(k8s("EnvVar")),
            "envFrom": arr(k8s("EnvFromSource")),
            "resources": k8s("ResourceRequirements"),
            "livenessProbe": k8s("Probe"),
            "readinessProbe": k8s("Probe"),
            "sidecarReadiness": BOOL,
            "tls": obj({
                "enabled": BOOL,
                "existingSecret": STR,
                "certKey": {"type": "string", "minLength": 1},
                "keyKey": {"type": "string", "minLength": 1},
                "clientCAKey": STR,
                "clientAuthRequired": BOOL,
            }),
            "extraVolumes": arr(k8s("Volume")),
            "extraVolumeMounts": arr(k8s("VolumeMount")),
            **POD_EXTRAS,
            "terminationGracePeriodSeconds": {"type": "integer", "minimum": 0},
            "updateStrategy": k8s("DaemonSetUpdateStrategy"),
            **SCHEDULING,
        }),
        "metricsService": obj({
            "enabled": BOOL,
            "type": SERVICE_TYPE,
            "port": PORT,
            "annotations": STRMAP,
            "internalTrafficPolicy": {"type": "string", "enum": ["Cluster", "Local"]},
        }),
        "redis": obj({
            "enabled": {"type": ["boolean", "null"]},
            "keyPrefix": STR,
            "ttlSeconds": {"type": "integer", "minimum": 1},
            "db": {"type": "integer", "minimum": 0},
            "bundled": obj({
                "enabled": BOOL,
                "image": image("Redis image (the official `redis` image)."),
                "port": PORT,
                "auth": obj({
                    "password": STR,
                    "existingSecret": STR,
                    "existingSecretPasswordKey": {"type": "string", "minLength": 1},
                }),
                "persistence": obj({
                    "enabled": BOOL,
                    "existingClaim": STR,
                    "storageClass": STR,
                    "accessModes": arr({"type": "string", "enum": [
                        "ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"]}),
                    "size": QUANTITY,
                }),
                "extraArgs": arr(STR),
                "resources": k8s("ResourceRequirements"),
                **POD_EXTRAS,
                **SCHEDULING,
            }),
            "external": obj({
                "url": {"type": "string", "pattern": "^(|rediss?://.*)$"},
                "host": STR,
                "port": PORT,
                "username": STR,
                "existingSecret": STR,
                "existingSecretPasswordKey": {"type": "string", "minLength": 1},
                "tls": obj({
                    "enabled": BOOL,
                    "existingSecret": STR,
                    "caKey": {"type": "string", "minLength": 1},
                    "certKey": STR,
                    "keyKey": STR,
                }),
            }),
        }),
        "networkPolicy": obj({
            "enabled": {"type": ["boolean", "null"]},
            "metricsFrom": arr(k8s("NetworkPolicyPeer")),
            "appFrom": arr(k8s("NetworkPolicyPeer")),
            "dns": obj({"to": arr(k8s("NetworkPolicyPeer"))}),
            "externalRedisTo": arr(k8s("NetworkPolicyPeer")),
            "appExtraEgress": arr(k8s("NetworkPolicyEgressRule")),
            "exporterExtraEgress": arr(k8s("NetworkPolicyEgressRule")),
            "appExtraIngress": arr(k8s("NetworkPolicyIngressRule")),
        }),
        "serviceMonitor": monitor("ServiceMonitor"),
        "podMonitor": monitor("PodMonitor"),
        "prometheusRule": obj({
            "enabled": BOOL,
            "force": BOOL,
            "namespace": STR,
            "labels": STRMAP,
            "annotations": STRMAP,
            "selector": STR,
            "groupBy": arr({"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"}),
            "alerts": obj({
                "errorRatio": alert(),
                "saturation": alert(),
                "backlog": alert(),
                "workerRestarts": alert({"window": DURATION}),
                "exporterDown": alert(threshold=False),
                "sourceDown": alert(threshold=False),
            }),
            "additionalRules": arr(obj({
                "alert": STR,
                "record": STR,
                "expr": {"type": ["string", "integer"]},
                "for": DURATION,
                "keep_firing_for": DURATION,
                "labels": STRMAP,
                "annotations": STRMAP,
            }, required=["expr"])),
            "slo": SLO,
        }),
        "autoscaling": AUTOSCALING,
        "dashboard": obj({
            "enabled": BOOL,
            "namespace": STR,
            "labels": STRMAP,
            "annotations": STRMAP,
        }),
        "test": obj({
            "enabled": BOOL,
            "image": image("Image with sh and wget (busybox)."),
        }),
    })


def build() -> str:
    schema = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "gunicorn-prometheus-exporter chart values",
        "$comment": "Generated by charts/tools/gen_values_schema.py; Kubernetes types from "
                    f"kubernetes-validate's strict schemas of Kubernetes {K8S_VERSION}.",
        **values_schema(),
        "definitions": k8s_definitions(),
    }
    return json.dumps(schema, indent=1, sort_keys=False) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true", help="fail when the file is stale")
    args = ap.parse_args()
    text = build()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is stale: run python {os.path.relpath(__file__)}", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT} ({len(text)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""JSON schemas of custom resources (ServiceMonitor, PodMonitor, PrometheusRule, ...) for
validating rendered objects, taken from packages installed at test time, never from files
outside the repository.

kubernetes-validate knows only the built-in kinds. For a custom resource the schema comes from
the `cloudcoil-models-*` package of its project (installed by `make chart-tools`): pydantic
models generated from the project's CRDs, which keep the CRDs' field names, types, required
fields, enums and patterns, so that `model_json_schema()` is the CRD's schema as JSON Schema.
Another API group is one more line in MODEL_PACKAGES (and its package in mk/chart.mk).
"""
from __future__ import annotations

import functools
import importlib

import jsonschema

# API group -> the cloudcoil models package generated from its CRDs (pip name: dots -> dashes).
# The prometheus-operator models are pinned to 0.80.1.0 in mk/chart.mk: the 0.93 releases need
# Python >= 3.14.
MODEL_PACKAGES = {
    "monitoring.coreos.com": "cloudcoil.models.prometheus_operator",
    "keda.sh": "cloudcoil.models.keda",
}


class MissingModels(RuntimeError):
    """The models package of an API group is not installed (a failure, never a skip)."""


def is_custom(api_version: str) -> bool:
    """Whether objects of this apiVersion are validated here rather than by kubernetes-validate."""
    return api_version.rpartition("/")[0] in MODEL_PACKAGES


def _strict(node):
    """The models' schema made as strict as the CRD: additionalProperties: false wherever it lists
    properties (the models ignore unknown fields, as the API server's pruning drops a misspelt
    field silently), and an optional field is its type, not "its type or null" (pydantic's
    Optional; a CRD field is optional by being left out)."""
    if isinstance(node, dict):
        node = {k: _strict(v) for k, v in node.items()}
        if ("properties" in node and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")):
            node["additionalProperties"] = False
        options = node.get("anyOf", ())
        if {"type": "null"} in options:
            rest = [o for o in options if o != {"type": "null"}]
            node.pop("anyOf")
            node.update(rest[0] if len(rest) == 1 else {"anyOf": rest})
        return node
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


@functools.lru_cache(maxsize=None)
def crd_schema(api_version: str, kind: str) -> dict:
    """The JSON Schema of `kind` in `api_version` ("group/version"), unknown fields refused."""
    group, _, version = api_version.rpartition("/")
    if group not in MODEL_PACKAGES:
        raise KeyError(f"no models package known for API group {group!r}: add it to MODEL_PACKAGES")
    package = MODEL_PACKAGES[group]
    try:
        module = importlib.import_module(f"{package}.{version}")
    except ModuleNotFoundError as exc:
        raise MissingModels(f"{package} is not installed ({exc}): run `make chart-tools` "
                            f"(pip install {package.replace('.', '-')})") from None
    model = getattr(module, kind, None)
    if model is None:
        raise KeyError(f"{package}.{version} has no kind {kind!r}")
    return _strict(model.model_json_schema(by_alias=True))


@functools.lru_cache(maxsize=None)
def crd_validator(api_version: str, kind: str) -> jsonschema.protocols.Validator:
    return jsonschema.Draft202012Validator(crd_schema(api_version, kind))


def crd_errors(obj: dict) -> list[str]:
    """Every schema violation of a rendered custom resource, as `path: message` lines."""
    validator = crd_validator(obj["apiVersion"], obj["kind"])
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.path))
    return [f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors]

"""Strict JSON schemas of custom resources, for validating rendered objects the Kubernetes
schemas of kubernetes-validate do not know.

``model_validator(kind)`` builds one from the resource's model in a cloudcoil models package
(pydantic models generated from the project's CRDs, e.g. PyPI `cloudcoil-models-keda`); the
package missing skips the test with the pip command. ``strict`` makes any schema refuse unknown
fields, as the API server's pruning would otherwise drop a misspelt one silently.
"""
from __future__ import annotations

import functools
import importlib

import pytest

# kind -> (module, class, PyPI package)
MODELS = {
    "ScaledObject": ("cloudcoil.models.keda.v1alpha1", "ScaledObject", "cloudcoil-models-keda"),
}


def strict(node):
    """additionalProperties: false wherever a schema lists properties."""
    if isinstance(node, dict):
        node = {k: strict(v) for k, v in node.items()}
        if ("properties" in node and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")):
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [strict(v) for v in node]
    return node


@functools.lru_cache(maxsize=None)
def model_validator(kind: str):
    jsonschema = pytest.importorskip("jsonschema", reason="pip install jsonschema")
    module, name, package = MODELS[kind]
    try:
        model = getattr(importlib.import_module(module), name)
    except ImportError:
        pytest.skip(f"{module} not installed: pip install {package}")
    schema = strict(model.model_json_schema(by_alias=True))
    return jsonschema.Draft202012Validator(schema)


def errors(obj: dict) -> list[str]:
    """Schema errors of a rendered custom resource (a kind of MODELS), as path: message."""
    found = sorted(model_validator(obj["kind"]).iter_errors(obj), key=lambda e: list(e.path))
    return [f"{'.'.join(map(str, e.path))}: {e.message}" for e in found]

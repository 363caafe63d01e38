"""values.schema.json: wrong values fail rendering with the schema's message; the schema is strict
at every level, generated, and matches values.yaml."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

import chartlib

SCHEMA = json.loads((chartlib.CHART / "values.schema.json").read_text())
DEFAULTS = yaml.safe_load((chartlib.CHART / "values.yaml").read_text())


@pytest.mark.needs_helm
@pytest.mark.parametrize("args, message", [
    (["--set", "unknownKey=1"], "Additional property unknownKey is not allowed"),
    (["--set", "app.replicas=3"], "app: Additional property replicas is not allowed"),
    (["--set", "redis.bundled.auth.passwrd=x"], "redis.bundled.auth: Additional property passwrd is not allowed"),
    (["--set", "app.port=http"], "app.port: Invalid type. Expected: integer, given: string"),
    (["--set-string", "exporter.port=9091"], "exporter.port: Invalid type. Expected: integer, given: string"),
    (["--set", "metricsService.port=70000"], "metricsService.port: Must be less than or equal to 65535"),
    (["--set", "topology=statefulset"], "topology: topology must be one of the following"),
    (["--set", "serviceMonitor.enabled=yes"], "serviceMonitor.enabled: Invalid type. Expected: boolean, given: string"),
    (["--set", "serviceMonitor.interval=30"], "serviceMonitor.interval: Invalid type. Expected: string, given: integer"),
    (["--set", "redis.external.url=http://redis:6379"], "redis.external.url: Does not match pattern"),
    # inside Kubernetes types passed through to the manifests
    (["--set", "app.securityContext.privilegedd=true"], "Additional property privilegedd is not allowed"),
    (["--set-json", 'networkPolicy.metricsFrom=[{"podSelectr":{}}]'], "Additional property podSelectr is not allowed"),
    (["--set-json", 'app.env=[{"name":"A","valu":"1"}]'], "Additional property valu is not allowed"),
    (["--set-json", 'app.resources={"limits":{"cpu":true}}'], "app.resources"),
    (["--set", "app.tolerations[0].tolerationSeconds=soon"], "app.tolerations.0.tolerationSeconds: Invalid type. Expected: [integer,null], given: string"),
])
def test_wrong_values_fail_with_the_schema_message(args, message):
    proc = chartlib.helm("template", "x", str(chartlib.CHART), *args)
    assert proc.returncode != 0, f"{args} rendered"
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert message in proc.stderr, proc.stderr


def walk(node, path="#"):
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, f"{path}/{i}")


def test_every_object_level_rejects_unknown_keys():
    # FieldsV1 (managedFields inside an ephemeral volume's claim template) is free-form by design.
    free_form = {"#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.FieldsV1"}
    checked = 0
    for path, node in walk(SCHEMA):
        if not isinstance(node, dict) or path in free_form or path.rsplit("/", 1)[-1] == "properties":
            continue
        t = node.get("type")
        if t == "object" or (isinstance(t, list) and "object" in t):
            checked += 1
            assert "additionalProperties" in node, path
            ap = node["additionalProperties"]
            # false, or a typed map (labels, annotations, resource quantities)
            assert ap is False or (isinstance(ap, dict) and ("type" in ap or "$ref" in ap)), path
            if ap is not False:
                assert "properties" not in node, path
    assert checked > 100


def chart_paths(schema, values, prefix=""):
    """Pairs (path, schema) of the chart's own keys, not following $ref into Kubernetes types."""
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}{key}"
        yield path, sub, values
        if "properties" in sub:
            yield from chart_paths(sub, (values or {}).get(key) or {}, path + ".")


def test_schema_and_values_yaml_have_the_same_keys():
    for path, _, parent in chart_paths(SCHEMA, DEFAULTS):
        assert path.rsplit(".", 1)[-1] in parent, f"{path} is in the schema but not in values.yaml"

    def keys(values, schema, prefix=""):
        for k, v in values.items():
            sub = schema.get("properties", {}).get(k)
            assert sub is not None, f"{prefix}{k} is in values.yaml but not in the schema"
            if isinstance(v, dict) and "properties" in sub:
                keys(v, sub, f"{prefix}{k}.")
    keys(DEFAULTS, SCHEMA)


def test_schema_is_generated_and_up_to_date():
    pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    proc = subprocess.run([sys.executable, str(chartlib.ROOT / "charts" / "tools" / "gen_values_schema.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_defaults_are_valid_for_the_schema():
    jsonschema = pytest.importorskip("jsonschema", reason="pip install jsonschema")
    jsonschema.Draft7Validator(SCHEMA).validate(DEFAULTS)


def test_docs_values_table_is_up_to_date():
    proc = subprocess.run([sys.executable, str(chartlib.ROOT / "charts" / "tools" / "gen_values_table.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    doc = (chartlib.ROOT / "docs" / "kubernetes.md").read_text()
    for path, sub, _ in chart_paths(SCHEMA, DEFAULTS):
        if "properties" not in sub:
            assert f"| `{path}` |" in doc, path

#!/usr/bin/env python3
"""Write the values table of docs/kubernetes.md from values.yaml and values.schema.json.

Descriptions come from the `# --` comments above a key in values.yaml (helm-docs style), else from
the schema's description; types from the schema. The table sits between the markers
<!-- values-table:start --> and <!-- values-table:end -->.

    python charts/tools/gen_values_table.py            # rewrite the table
    python charts/tools/gen_values_table.py --check    # exit 1 when it is stale
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "gunicorn-prometheus-exporter"
DOC = ROOT / "docs" / "kubernetes.md"
START, END = "<!-- values-table:start -->", "<!-- values-table:end -->"
KEY = re.compile(r"^(\s*)([A-Za-z_][A-Za-z0-9_]*):(.*)$")


def schema_at(schema: dict, path: list[str]) -> dict:
    node = schema
    for key in path:
        node = node.get("properties", {}).get(key, {})
    return node


def type_of(node: dict) -> str:
    if "$ref" in node:
        return node["$ref"].rsplit(".", 1)[-1]
    if node.get("type") == "array" and "items" in node:
        return f"list of {type_of(node['items'])}"
    if node.get("type") == "object" and isinstance(node.get("additionalProperties"), dict):
        return "map of string"
    if "enum" in node:
        return " \\| ".join(f"`{v}`" if v else '`""`' for v in node["enum"])
    t = node.get("type", "")
    return " or ".join(t) if isinstance(t, list) else t


def value_at(values, path):
    for key in path:
        values = values[key]
    return values


def rows() -> list[str]:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    out = []
    stack: list[tuple[int, str]] = []
    comment: list[str] = []
    in_doc_comment = False
    for line in (CHART / "values.yaml").read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            comment = [stripped[4:].strip()]
            in_doc_comment = True
            continue
        if stripped.startswith("#"):
            if in_doc_comment:
                comment.append(stripped[1:].strip())
            continue
        in_doc_comment = False
        m = KEY.match(line)
        if not m:
            continue
        indent, key = len(m.group(1)), m.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = [k for _, k in stack] + [key]
        stack.append((indent, key))
        node = schema_at(schema, path)
        parent_is_leaf = any("properties" not in schema_at(schema, path[:i]) for i in range(1, len(path)))
        desc = " ".join(comment) or node.get("description", "")
        comment = []
        if parent_is_leaf or not node:
            continue
        if "properties" in node:
            continue
        default = json.dumps(value_at(values, path))
        if len(default) > 60:
            default = "see values.yaml"
        else:
            default = f"`{default}`"
        desc = desc.replace("|", "\\|")
        out.append(f"| `{'.'.join(path)}` | {type_of(node)} | {default} | {desc} |")
    return out


def table() -> str:
    return "\n".join(["| key | type | default | description |", "|---|---|---|---|", *rows()])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    doc = DOC.read_text()
    if START not in doc or END not in doc:
        print(f"{DOC} lacks the markers {START} / {END}", file=sys.stderr)
        return 1
    head, rest = doc.split(START, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{START}\n{table()}\n{END}{tail}"
    if args.check:
        if new != doc:
            print(f"the values table of {DOC} is stale: run python charts/tools/gen_values_table.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(new)
    print(f"wrote the values table of {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

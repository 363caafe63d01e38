"""Render the settings table of docs/configuration.md from the settings table in
``exporter/gunicorn_prometheus_exporter/config/schema.py``.

Run: ``python docs/gen_config_reference.py`` (``--check`` exits 1 when the file is stale).
Only the part between the ``settings-table`` markers is generated; the prose around it is
written by hand."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, List

from gunicorn_prometheus_exporter.config.schema import CONFIG_FILE_ENV, SETTINGS, Setting

DOC = Path(__file__).with_name("configuration.md")
START = "<!-- settings-table:start -->"
END = "<!-- settings-table:end -->"
SECTIONS = [
    ("prometheus", "The metrics server and storage (`exporter.prometheus`)"),
    ("metrics", "What is recorded (`exporter.metrics`)"),
    ("gunicorn", "Gunicorn values of the original YAML (`exporter.gunicorn`)"),
    ("redis", "Redis storage (`exporter.redis`)"),
    ("cleanup", "Housekeeping (`exporter.cleanup`)"),
]


def default(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, tuple):
        if not value:
            return "`[]`"
        return "`[" + ", ".join(number(v) for v in value) + "]`"
    return f"`{value}`"


def number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def row(s: Setting) -> str:
    env = ", ".join(f"`{name}`" for name in s.env) or "— (YAML only)"
    meaning = s.doc + (" **Secret**: never logged; masked by `check-config`." if s.secret
                       else "")
    return (f"| `{s.yaml_key}` | {env} | {default(s.default)} | {cell(s.kind.expected)} | "
            f"{cell(meaning)} |")


def table() -> str:
    out: List[str] = [f"{len(SETTINGS)} settings; the YAML file can also be named by "
                      f"`{CONFIG_FILE_ENV}`."]
    for prefix, title in SECTIONS:
        out += ["", f"#### {title}", "",
                "| YAML key | environment variable | default | accepted values | meaning |",
                "|---|---|---|---|---|"]
        out += [row(s) for s in SETTINGS if s.path.split(".")[0] == prefix]
    missing = [s.path for s in SETTINGS if s.path.split(".")[0] not in dict(SECTIONS)]
    if missing:
        raise SystemExit(f"settings without a section in {__file__}: {missing}")
    return "\n".join(out)


def main() -> int:
    doc = DOC.read_text()
    if START not in doc or END not in doc:
        print(f"{DOC} lacks the markers {START} / {END}", file=sys.stderr)
        return 1
    head, rest = doc.split(START, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{START}\n{table()}\n{END}{tail}"
    if "--check" in sys.argv[1:]:
        if new != doc:
            print(f"the settings table of {DOC} is stale: run python docs/gen_config_reference.py",
                  file=sys.stderr)
            return 1
        return 0
    DOC.write_text(new)
    print(f"wrote the settings table of {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

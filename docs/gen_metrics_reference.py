"""Render docs/metrics.md from the metric catalogue (``families.py``).

Run: ``python docs/gen_metrics_reference.py`` (``--check`` exits 1 when the file is stale)."""
from __future__ import annotations

import sys
from pathlib import Path

from gunicorn_prometheus_exporter import families

OUT = Path(__file__).with_name("metrics.md")
ORIGINS = [
    ("request", "Request metrics (recorded on every request)"),
    ("worker", "Worker metrics (per worker slot; `worker_id` is the slot number)"),
    ("master", "Master metrics"),
    ("exporter", "The exporter's own metrics"),
]
INTRO = """# Metric reference

Generated from `exporter/gunicorn_prometheus_exporter/families.py` by
`docs/gen_metrics_reference.py`; `tests/test_docs.py` checks that this list and a real scrape
of gunicorn with the plugin hold exactly the same families.

Conventions: counters end in `_total`; durations are in seconds and sizes in bytes;
`route` is a route template, never a raw path (see the README, "Bounded labels");
`worker_id` is a small stable slot number reused by the worker that replaces a dead one, so
per-worker counters continue across restarts and the series count does not grow with
churn. Histograms use the buckets of `exporter.metrics.duration_buckets` (default 5 ms to
60 s) and `exporter.metrics.size_buckets` (default 64 B to 64 MiB).
"""


def labels(family: families.Family) -> str:
    names = list(family.labels)
    if family.per_worker:
        names = ["worker_id", *names]
    if family.derived_from and family.typ != "gauge":
        names = ["worker_id"]
    return ", ".join(f"`{n}`" for n in names) or "—"


def render() -> str:
    lines = [INTRO]
    for origin, title in ORIGINS:
        lines += [f"\n## {title}\n", "| metric | type | labels | meaning |", "|---|---|---|---|"]
        for family in families.ALL:
            if family.origin == origin:
                lines.append(f"| `{family.sample}` | {family.typ} | {labels(family)} | "
                             f"{family.help} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    text = render()
    if "--check" in sys.argv:
        if OUT.read_text() != text:
            print(f"{OUT} is out of date: run python docs/gen_metrics_reference.py")
            return 1
        return 0
    OUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

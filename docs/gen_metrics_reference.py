"""Render docs/metrics.md from the metric catalogue (``families.py``).

Run: ``python docs/gen_metrics_reference.py`` (``--check`` exits 1 when the file is stale)."""
from __future__ import annotations

import sys
from pathlib import Path

from gunicorn_prometheus_exporter import families
from gunicorn_prometheus_exporter.config.schema import BY_PATH
from gunicorn_prometheus_exporter.storage import native

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


def native_section() -> str:
    """How the native duration histogram is laid out, from the settings' defaults."""
    d = {k: BY_PATH[f"metrics.{k}"].default
         for k in ("native_schema", "native_min_seconds", "native_max_seconds")}
    layout = native.Layout.for_range(d["native_schema"], d["native_min_seconds"],
                                     d["native_max_seconds"])
    s = layout.schema
    return f"""
## Native histogram (`{families.HTTP_DURATION.name}`)

Besides its classic buckets, the request duration is recorded as a Prometheus *native
histogram* (sparse exponential buckets), on by default (`exporter.metrics.native_histograms`,
`PROMETHEUS_NATIVE_HISTOGRAMS`). It is served only in the Prometheus protobuf exposition,
which Prometheus asks for when it runs with `--enable-feature=native-histograms` (2.40 and
later; in Prometheus 3, where native histograms became stable, see its documentation for the
setting of your version); text and OpenMetrics scrapes are unchanged. In the same protobuf message the classic buckets
come along: Prometheus 2.42 with the feature flag ingests the native part only (from 2.45,
`scrape_classic_histograms: true` keeps both), so queries on `_bucket` series of this family
need `histogram_quantile(0.99, sum by (route) (rate({families.HTTP_DURATION.name}[5m])))`
on the native series instead. The request and response size histograms stay classic (a
second and third bucket search per request for little use).

- **Buckets**: schema `{s}` (`exporter.metrics.native_schema`, 0 to 8): bucket `i` holds
  `(2^((i-1)/2^{s}), 2^(i/2^{s})]`, each {2 ** (2 ** -s):.4f} times the previous one; the
  index of a value is `ceil(log2(v) * 2^{s})`, computed exactly from `frexp` as client_golang
  does. A quantile is off by at most {native.relative_error(s):.2%} when read at a bucket's
  geometric middle; Prometheus's `histogram_quantile` interpolates inside the bucket, so its
  answer is within one bucket ({2 ** (2 ** -s) - 1:.2%}) of the true value.
- **Range**: {d["native_min_seconds"]:g} s to {d["native_max_seconds"]:g} s
  (`native_min_seconds`, `native_max_seconds`): buckets {layout.lo} to {layout.hi}, up to
  {layout.top:.0f} s. A duration at or below the zero threshold {layout.zero_threshold:.4g} s
  (the lowest bucket's lower bound; zero and negative durations too) is counted in the zero
  bucket; one above {layout.top:.0f} s is counted in the highest bucket (its true value still
  counts in the sum; the classic `+Inf` bucket tells how many there were).
- **Storage**: a fixed array per `(method, route)` series in each worker slot's file
  `histogram_native_w<N>.nh`: {layout.doubles} doubles ({layout.doubles * 8} bytes, zero
  bucket included) plus the key. One float store per request. Merged at scrape like the
  classic buckets: across workers and slots (a dead worker's replacement continues its
  counts), across instances in Redis mode (only the span of buckets between the lowest and
  the highest ever used is read and shipped).
  Slots written under another schema or range are merged at the coarsest schema and widest
  zero bucket among them.
"""


def render() -> str:
    lines = [INTRO]
    for origin, title in ORIGINS:
        lines += [f"\n## {title}\n", "| metric | type | labels | meaning |", "|---|---|---|---|"]
        for family in families.ALL:
            if family.origin == origin:
                lines.append(f"| `{family.sample}` | {family.typ} | {labels(family)} | "
                             f"{family.help} |")
    return "\n".join(lines) + "\n" + native_section()


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

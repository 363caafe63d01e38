"""Metric names used by the chart's dashboard, its alert rules and docs/kubernetes.md.

For the plugin's tests, which scrape a real gunicorn and check that every name exists:

    from chart.metric_names import metric_names      # (tests/ is on pythonpath)
    for name in metric_names(): ...                   # metric family names, e.g.
                                                      # gunicorn_http_request_duration_seconds

`series_names()` gives the names exactly as the queries write them (with `_bucket`, `_sum`,
`_count` suffixes); `metric_names()` maps those to their families. Only sources in the
repository are read (no helm needed). `up` (made by Prometheus) is not included.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "gunicorn-prometheus-exporter"
DASHBOARD = CHART / "dashboards" / "gunicorn.json"
RULES_TEMPLATE = CHART / "templates" / "prometheusrule.yaml"
DOCS = ROOT / "docs" / "kubernetes.md"
CONTRACT = ROOT / "docs" / "interface-contract.md"

NAME = re.compile(r"\bgunicorn_[a-z0-9_]*[a-z0-9]\b")
# series the chart's recording rules make (level:metric:operations), e.g. the SLO rules'
RECORDED = re.compile(r"\bgunicorn:[a-z0-9_:]*[a-z0-9]\b")
SUFFIXES = ("_bucket", "_sum", "_count")


def dashboard_panels(dash: dict) -> list[dict]:
    """Every panel of the dashboard, those inside collapsed rows included (Grafana keeps a
    collapsed row's panels in the row's own ``panels``)."""
    return [p for top in dash["panels"] for p in [top, *top.get("panels", [])]]


def _dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = []
    for panel in dashboard_panels(dash):
        exprs += [t["expr"] for t in panel.get("targets", [])]
    for var in dash["templating"]["list"]:
        q = var.get("query")
        exprs.append(q["query"] if isinstance(q, dict) else str(q or ""))
    return exprs


def _rule_exprs() -> list[str]:
    # the `expr: |-` blocks of the template
    text = RULES_TEMPLATE.read_text()
    return re.findall(r"expr: \|-\n((?:\s{12}.*\n)+)", text)


def _doc_queries() -> list[str]:
    if not DOCS.exists():
        return []
    return re.findall(r"```promql\n(.*?)```", DOCS.read_text(), flags=re.S)


def series_names_by_source() -> dict[str, set[str]]:
    return {
        "dashboard": {n for e in _dashboard_exprs() for n in NAME.findall(e)},
        "alerts": {n for e in _rule_exprs() for n in NAME.findall(e)},
        "docs": {n for e in _doc_queries() for n in NAME.findall(e)},
    }


def dashboard_recorded_names() -> set[str]:
    """Recorded series (gunicorn:...) the dashboard reads: the SLO row's."""
    return {n for e in _dashboard_exprs() for n in RECORDED.findall(e)}


def series_names() -> set[str]:
    return set().union(*series_names_by_source().values())


def contract_names() -> set[str]:
    """Metric family names listed in docs/interface-contract.md."""
    text = CONTRACT.read_text()
    section = text.split("## Metric names", 1)[1]
    return {m.split("{")[0] for m in re.findall(r"`(gunicorn_[a-z0-9_]+)", section)}


def family(name: str, families: set[str] | None = None) -> str:
    families = contract_names() if families is None else families
    if name in families:
        return name
    for suffix in SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in families:
            return name[: -len(suffix)]
    return name


def metric_names() -> list[str]:
    """Sorted metric family names used by the dashboard, the alert rules and docs/kubernetes.md."""
    families = contract_names()
    return sorted({family(n, families) for n in series_names()})


if __name__ == "__main__":
    print("\n".join(metric_names()))

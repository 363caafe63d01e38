"""The chart's alert rules for the end-to-end suite: the PrometheusRule rendered (helm, or
the helm-python-sdk) as a Prometheus rule file, and ``promtool test rules`` run on the
samples a live Prometheus stored."""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Iterable, List, Sequence, Tuple

from promapi import JOB, Prometheus, escape_label
from support.helm import ROOT, find_helm, helm_env

CHART = ROOT / "charts" / "gunicorn-prometheus-exporter"
# The chart's alerts, rendered with `for:` short enough for a test run, aggregated per
# scenario so that one scenario's traffic never raises another's alert.
RULE_SETS = (
    "prometheusRule.enabled=true",
    "prometheusRule.force=true",
    f'prometheusRule.selector=job="{JOB}"',
    "prometheusRule.groupBy={job,scenario}",
    "prometheusRule.alerts.errorRatio.for=2s",
    "prometheusRule.alerts.saturation.for=2s",
    "prometheusRule.slo.enabled=true",
)


def render_object(template: str, kind: str, sets: Iterable[str]) -> dict:
    """The object of ``kind`` that ``templates/<template>`` of the chart renders with these
    ``--set`` values (helm template, or the helm-python-sdk). Raises LookupError when neither
    is available."""
    import yaml

    sets = list(sets)
    helm = find_helm()
    if helm:
        args = [helm, "template", "gpe", str(CHART), "--namespace", "e2e",
                "--show-only", f"templates/{template}"]
        for s in sets:
            args += ["--set", s]
        proc = subprocess.run(args, capture_output=True, text=True, env=helm_env(), timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: {proc.stderr}")
        text = proc.stdout
    else:
        try:
            import helm_python  # helm-python-sdk: the Helm engine as a library
        except ImportError:
            raise LookupError("neither helm (make chart-tools) nor helm-python-sdk is "
                              "installed") from None
        rendered = helm_python.Chart.load(str(CHART)).render(values=_values_from_sets(sets))
        text = next(v for k, v in rendered.items() if k.endswith(template))
    return next(d for d in yaml.safe_load_all(text) if d and d.get("kind") == kind)


def render_rules(directory: Path, sets: Iterable[str] = RULE_SETS) -> Path:
    """The chart's PrometheusRule's ``spec`` as a Prometheus rule file."""
    import yaml

    rule = render_object("prometheusrule.yaml", "PrometheusRule", sets)
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"], sort_keys=False))
    return path


def saturation_query(selector: str) -> str:
    """The PromQL the chart's KEDA ScaledObject scales on, for series matching ``selector``."""
    obj = render_object("scaledobject.yaml", "ScaledObject", (
        "autoscaling.enabled=true", "autoscaling.force=true",
        "prometheusRule.selector=" + selector.replace(",", "\\,")))  # --set splits on commas
    return obj["spec"]["triggers"][0]["metadata"]["query"]


def _values_from_sets(sets: Iterable[str]) -> dict:
    """The few ``--set a.b.c=v`` forms used here, as a nested values dict."""
    values: dict = {}
    for item in sets:
        key, _, raw = item.partition("=")
        node = values
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        if raw.startswith("{") and raw.endswith("}"):
            value = raw[1:-1].split(",")
        elif raw in ("true", "false"):
            value = raw == "true"
        else:
            value = raw.replace("\\,", ",")  # helm's escaped comma
        node[leaf] = value
    return values


def _series_text(metric: dict) -> str:
    labels = {k: v for k, v in metric.items() if k != "__name__"}
    inner = ",".join(f'{k}="{escape_label(v)}"' for k, v in sorted(labels.items()))
    return f"{metric['__name__']}{{{inner}}}"


def live_input_series(prom: Prometheus, selectors: Sequence[str], start: float,
                      end: float) -> List[dict]:
    """The samples Prometheus stored for ``selectors`` between ``start`` and ``end``, on a 1 s
    grid (the value each series had at each second; ``_`` before it existed), as promtool
    ``input_series``."""
    steps = int(round(end - start))
    out = []
    for selector in selectors:
        for r in prom.query_range(selector, start, start + steps, step=1.0):
            by_t = {int(round(t - start)): v for t, v in r["values"]}
            values = " ".join(repr(by_t[i]) if i in by_t else "_" for i in range(steps + 1))
            out.append({"series": _series_text(r["metric"]), "values": values})
    assert out, f"no samples for {selectors}"
    return out


def promtool_test(promtool: str, rule_file: Path, directory: Path, input_series: List[dict],
                  alertname: str, cases: Sequence[Tuple[int, List[dict]]]) -> str:
    """Run ``promtool test rules`` with the rule file the live Prometheus loaded and the live
    samples as input; ``cases`` are (eval seconds, alerts firing then as ``exp_labels`` /
    ``exp_annotations`` dicts). Returns promtool's output; fails with it."""
    import yaml

    test = {
        "rule_files": [str(rule_file)],
        "evaluation_interval": "1s",
        "tests": [{
            "interval": "1s",
            "input_series": input_series,
            "alert_rule_test": [{"eval_time": f"{seconds}s", "alertname": alertname,
                                 "exp_alerts": expected} for seconds, expected in cases],
        }],
    }
    path = directory / f"{alertname}-test.yaml"
    path.write_text(yaml.safe_dump(test, sort_keys=False, width=1 << 20))
    proc = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True,
                          text=True, timeout=120)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"promtool test rules {path}:\n{output}"
    assert "SUCCESS" in output, output
    return output


def as_expected(alert: dict) -> dict:
    """A live alert of /api/v1/alerts as a promtool ``exp_alerts`` entry."""
    return {"exp_labels": {k: v for k, v in alert["labels"].items() if k != "alertname"},
            "exp_annotations": dict(alert["annotations"])}

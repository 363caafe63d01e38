"""PromQL assertions of the end-to-end suite: what Prometheus stored equals what the
clients sent, and no counter ever went backwards."""
from __future__ import annotations

import time
from typing import Dict, Optional

from promapi import JOB, Prometheus, escape_label
from traffic import Ledger


COUNTER_SERIES = '{__name__=~"gunicorn_.+(_total|_bucket|_count|_sum)",%s}'


def assert_totals(prom: Prometheus, scenario: str, ledger: Ledger, since: float,
                  timeout: float = 20.0) -> None:
    """What Prometheus stored equals what the clients sent, exactly:

    * the last value of every ``gunicorn_http_requests_total`` series, summed per (method,
      route, status), once the last scrape has caught up;
    * the largest value Prometheus ever stored for each series over the whole scenario
      (``max_over_time``): no scrape ever overshot;
    * the duration histogram's ``_count`` and the per-worker-slot request counter agree.

    ``increase()`` is not used for exact totals: it extrapolates to the window's edges and
    misses what a series had at its first scrape."""
    assert not ledger.failures, ledger.failures[:10]
    sel = f'job="{JOB}",scenario="{scenario}"'
    want = ledger.by_key()
    prom.wait_for(f"sum by (method, route, status) (gunicorn_http_requests_total{{{sel}}})",
                  want, labels=("method", "route", "status"), timeout=timeout,
                  message=f"{scenario}: requests per method, route and status")
    window = f"{max(2, int(time.time() - since) + 2)}s"
    peak = prom.by(f"sum by (method, route, status) "
                   f"(max_over_time(gunicorn_http_requests_total{{{sel}}}[{window}]))",
                   "method", "route", "status")
    assert peak == want, f"max_over_time differs from the requests sent:\n{peak}\n{want}"
    total = float(ledger.total)
    prom.wait_for(f"sum(gunicorn_http_request_duration_seconds_count{{{sel}}})", total)
    prom.wait_for(f"sum(gunicorn_worker_requests_total{{{sel}}})", total)


def assert_no_resets(prom: Prometheus, scenario: str, since: float,
                     end: Optional[float] = None) -> int:
    """``resets()`` from ``since`` to ``end`` (default: now) is 0 for every counter and
    histogram series of the scenario (one query per metric name: resets() drops the name, and
    the series of two names would clash); returns the number of series checked."""
    end = time.time() if end is None else end
    window = f"{max(2, int(end - since) + 2)}s"
    at = f" @ {end:.3f}"
    labels = f'job="{JOB}",scenario="{scenario}"'
    names = sorted(r["metric"]["__name__"] for r in
                   prom.query(f"group by (__name__) ({COUNTER_SERIES % labels}{at})"))
    assert names, f"no counter series for {scenario}"
    checked, reset = 0, []
    for name in names:
        for r in prom.query(f"resets({name}{{{labels}}}[{window}]{at})"):
            checked += 1
            if r["value"] != 0:
                reset.append((name, r["metric"], r["value"]))
    if reset:
        detail = []
        for name, metric, value in reset:
            matchers = ",".join(f'{k}="{escape_label(v)}"' for k, v in metric.items())
            raw = prom.api("query", query=f"{name}{{{matchers}}}[{window}]{at}")["result"]
            samples = [(round(float(t), 3), float(v)) for r in raw for t, v in r["values"]]
            drops = [(a, b) for a, b in zip(samples, samples[1:]) if b[1] < a[1]]
            detail.append(f"{name}{metric}: {value} reset(s); drops {drops}; samples {samples}")
        raise AssertionError(f"{scenario}: counters reset:\n" + "\n".join(detail))
    return checked


def counters_by(prom: Prometheus, metric: str, scenario: str, *labels: str) -> Dict[tuple, float]:
    return prom.by(f'sum by ({", ".join(labels)}) ({metric}{{job="{JOB}",scenario="{scenario}"}})',
                   *labels)

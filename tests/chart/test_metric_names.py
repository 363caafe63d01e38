"""The dashboard, alert rules and docs use only metric names from the interface contract, and
the dashboard only recorded series that the chart's rules record."""
import pytest

import chartlib
import metric_names


def test_sources_are_found():
    by_source = metric_names.series_names_by_source()
    assert len(by_source["dashboard"]) >= 15
    assert len(by_source["alerts"]) >= 6
    assert by_source["docs"], "docs/kubernetes.md has no ```promql example"


def test_every_name_is_in_the_contract():
    contract = metric_names.contract_names()
    assert "gunicorn_worker_restart_total" in contract and len(contract) > 25
    unknown = sorted(set(metric_names.metric_names()) - contract)
    assert not unknown, f"not in docs/interface-contract.md: {unknown}"


def test_dashboard_reads_queue_time_protocols_websockets_and_the_dirty_pool():
    """Every family of what gunicorn 27 serves (WebSockets, the dirty pool) and of the
    queue time and protocols has a dashboard query."""
    from gunicorn_prometheus_exporter import families

    wanted = {f.sample for f in families.ALL if f.servers != "any"} | {
        f.sample for f in (families.HTTP_QUEUE, families.HTTP_QUEUE_INVALID,
                           families.HTTP_PROTOCOL)}
    assert len(wanted) == 11
    used = {metric_names.family(n) for n in metric_names.series_names_by_source()["dashboard"]}
    assert sorted(wanted - used) == []


def test_histogram_suffixes_map_to_families():
    assert metric_names.family("gunicorn_http_request_duration_seconds_bucket") == "gunicorn_http_request_duration_seconds"
    assert metric_names.family("gunicorn_http_requests_total") == "gunicorn_http_requests_total"
    names = metric_names.metric_names()
    assert "gunicorn_http_request_duration_seconds" in names
    assert not any(n.endswith("_bucket") for n in names)


def test_alert_names_cover_the_issue():
    alerts = metric_names.series_names_by_source()["alerts"]
    assert {"gunicorn_http_requests_total", "gunicorn_worker_in_flight_requests", "gunicorn_worker_capacity",
            "gunicorn_listen_backlog", "gunicorn_worker_restart_total", "gunicorn_exporter_source_up"} <= alerts


@pytest.mark.needs_helm
def test_dashboard_reads_only_series_the_rules_record():
    used = metric_names.dashboard_recorded_names()
    assert {"gunicorn:slo_availability:error_budget_remaining",
            "gunicorn:slo_latency:burn_rate1h"} <= used
    rule = chartlib.render("monitors-values.yaml").get("PrometheusRule")
    recorded = {r["record"] for g in rule["spec"]["groups"] for r in g["rules"] if "record" in r}
    assert used <= recorded, sorted(used - recorded)

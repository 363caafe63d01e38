"""Two gunicorn instances, one Redis prefix, one exporter: exact sums, per-instance gauges,
graceful stop folding, node scoping."""
import pytest

from support.wait import until

from redis_procs import (exporter, log_of, prefix, redis_env, redis_server,  # noqa: F401
                         requests_total,
                         send)

pytestmark = pytest.mark.redis


def _instances(s):
    return {dict(ls)["instance"] for ls in s.series("gunicorn_worker_capacity")}


def test_two_instances_sum_exactly_and_fold_on_graceful_stop(start_gunicorn, redis_server,
                                                               exporter, prefix):
    server = redis_server()
    a = start_gunicorn(env=redis_env(server, prefix, REDIS_INSTANCE_ID="alpha")).wait_ready(2)
    b = start_gunicorn(env=redis_env(server, prefix, REDIS_INSTANCE_ID="beta")).wait_ready(2)
    n, m = 7, 5
    send(a, n)
    send(b, m, "/users/3")
    e = exporter(redis_env(server, prefix))
    s = e.scrape_until(lambda s: requests_total(s) == n + m
                       and len(s.series("gunicorn_worker_capacity")) == 4)
    assert s.value("gunicorn_http_requests_total", method="GET", route="/", status="200") == n
    assert s.value("gunicorn_http_requests_total", method="GET", route="/users/{id}",
                   status="200") == m
    assert s.total("gunicorn_http_request_duration_seconds_count") == n + m
    assert s.total("gunicorn_worker_requests_total") == n + m
    # the plugin's gauges are per instance: 2 workers in each of two instances
    names = _instances(s)
    assert len(names) == 2 and {x.split("-")[0] for x in names} == {"alpha", "beta"}
    assert s.value("gunicorn_workers", state="idle") == 4
    assert s.value("gunicorn_exporter_source_up", source="redis") == 1
    assert s.value("gunicorn_exporter_redis_instances") == 2
    # one script call per scrape (two on the very first: the server learns the script)
    assert e.scrape().value("gunicorn_exporter_redis_read_round_trips") == 1

    # a graceful stop folds alpha's counts into the durable total: nothing goes down
    assert a.stop() == 0
    assert "folded instance alpha-" in log_of(a), log_of(a)
    s = e.scrape_until(lambda s: len(_instances(s)) == 1)
    assert requests_total(s) == n + m
    assert s.total("gunicorn_http_request_duration_seconds_count") == n + m
    assert {x.split("-")[0] for x in _instances(s)} == {"beta"}
    assert s.value("gunicorn_workers", state="idle") == 2
    send(b, 3)
    s = e.scrape_until(lambda s: requests_total(s) == n + m + 3)
    r = server.client()
    gone = r.zrange("{%s}:gone" % prefix, 0, -1)
    assert len(gone) == 1, (gone, log_of(a), b.output())
    live = r.zrange("{%s}:hb" % prefix, 0, -1)
    assert len(live) == 1, (live, log_of(a))


def test_scope_node_serves_only_its_node(start_gunicorn, redis_server, exporter, prefix):
    server = redis_server()
    a = start_gunicorn(env=redis_env(server, prefix, NODE_NAME="node-a")).wait_ready(2)
    b = start_gunicorn(env=redis_env(server, prefix, NODE_NAME="node-b")).wait_ready(2)
    send(a, 4)
    send(b, 6)
    on_a = exporter(redis_env(server, prefix, REDIS_SCOPE="node", NODE_NAME="node-a"))
    on_b = exporter(redis_env(server, prefix, REDIS_SCOPE="node", NODE_NAME="node-b"))
    every = exporter(redis_env(server, prefix))
    assert requests_total(on_a.scrape_until(lambda s: requests_total(s) == 4)) == 4
    assert requests_total(on_b.scrape_until(lambda s: requests_total(s) == 6)) == 6
    every.scrape_until(lambda s: requests_total(s) == 10)
    # the folded totals of an ended instance stay with its node's exporter
    a.stop()
    sa = on_a.scrape_until(lambda s: not s.series("gunicorn_worker_capacity"))
    assert requests_total(sa) == 4
    assert requests_total(on_b.scrape()) == 6
    assert requests_total(every.scrape()) == 10


def test_original_config_with_redis_when_ready(start_gunicorn, redis_server, exporter, prefix,
                                               tmp_path):
    server = redis_server()
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(
        "from gunicorn_prometheus_exporter.hooks import (default_on_starting, "
        "default_worker_int, default_on_exit, redis_when_ready)\n"
        "on_starting = default_on_starting\n"
        "when_ready = redis_when_ready\n"
        "worker_int = default_worker_int\n"
        "on_exit = default_on_exit\n")
    g = start_gunicorn(config=str(conf), env=redis_env(server, prefix)).wait_ready(2)
    send(g, 4)
    e = exporter(redis_env(server, prefix))
    e.scrape_until(lambda s: requests_total(s) == 4)
    assert g.output().count("serving metrics at") == 1  # one metrics process, not two
    assert "Redis storage is off" not in g.output()


def test_exemplars_ship_through_redis_and_the_newest_wins(start_gunicorn, redis_server,
                                                          exporter, prefix):
    """Each instance's flusher ships its newest exemplar per sample; the reader serves the
    newest across instances, exactly as the instance has it, in OpenMetrics only."""
    from support.scrape import exemplars, fetch

    server = redis_server()
    a = start_gunicorn(env=redis_env(server, prefix, REDIS_INSTANCE_ID="alpha")).wait_ready(2)
    b = start_gunicorn(env=redis_env(server, prefix, REDIS_INSTANCE_ID="beta")).wait_ready(2)
    first, second = "1" * 32, "2" * 32
    counter = ("gunicorn_http_requests_total",
               frozenset({"method": "GET", "route": "/", "status": "200"}.items()))
    own = {}
    for g, trace_id in ((a, first), (b, second)):
        assert g.request("/", headers={"traceparent": f"00-{trace_id}-{'3' * 16}-01"})[0] == 200
        # a request ends in gunicorn's post_request, after its answer was sent: beta's is
        # surely the newer only once alpha's was recorded (alpha's worker can take longer
        # to get to post_request than a whole request to beta takes)
        own[trace_id] = until(lambda: exemplars(g.metrics_port).get(counter),
                              message=f"the exemplar of {trace_id} in its own instance")
    assert own[first][2] < own[second][2]
    e = exporter(redis_env(server, prefix))
    served: list = []  # the counter's exemplar at each try: what a timeout reports

    def beta_served() -> bool:
        served[:] = [exemplars(e.port).get(counter)]
        return served[0] == own[second]  # trace, value and timestamp as beta has them

    try:
        until(beta_served, message="beta's exemplar through Redis")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the counter's exemplar last served: {served}, "
                             f"the instances': {own}") from None
    found = exemplars(e.port)
    buckets = [k for k in found if k[0] == "gunicorn_http_request_duration_seconds_bucket"]
    assert [found[k][0]["trace_id"] for k in buckets] in ([second], [first, second],
                                                          [second, first])
    assert "trace_id" not in fetch(f"http://127.0.0.1:{e.port}/metrics")

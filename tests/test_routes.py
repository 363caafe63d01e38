"""Route labels stay bounded: ids collapse, unknown 404s are one series, and no more than
the cap of distinct routes is ever admitted across all workers."""
import os
import random
import string

import pytest

from gunicorn_prometheus_exporter.routes import OVERFLOW, UNMATCHED, RouteTable, normalise

HERE = os.path.dirname(__file__)


@pytest.mark.parametrize("path,route", [
    ("/users/42", "/users/{id}"),
    ("/users/42/orders/7", "/users/{id}/orders/{id}"),
    ("/o/3fa85f64-5717-4562-b3fc-2c963f66afa6", "/o/{uuid}"),
    ("/blob/deadbeef1234", "/blob/{hex}"),
    ("/t/AbCdEf0123456789xyzQRS", "/t/{token}"),
    ("/static/app.css", "/static/app.css"),
    ("/", "/"),
])
def test_ids_collapse(path, route):
    assert normalise(path) == route


def _random_path(rng):
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 9)))
             for _ in range(rng.randint(1, 4))]
    return "/" + "/".join(words)


def test_scan_of_100000_paths_adds_at_most_the_cap(tmp_path):
    rng = random.Random(7)
    cap = 200
    tables = [RouteTable(str(tmp_path), cap) for _ in range(4)]  # four workers, one table
    seen_ok, seen_404 = set(), set()
    for i in range(100_000):
        path = _random_path(rng)
        table = tables[i % 4]
        seen_ok.add(table.route(path, "200"))
        seen_404.add(table.route(path + "/x", "404"))
    assert len(seen_ok) == cap + 1 and OVERFLOW in seen_ok
    assert seen_404 <= {UNMATCHED} | seen_ok
    with open(tmp_path / "routes") as fh:
        assert len(fh.read().split()) == cap


def test_unknown_404s_are_one_series_known_routes_keep_their_name(tmp_path):
    table = RouteTable(str(tmp_path), 10)
    assert table.route("/users/1", "404") == UNMATCHED
    assert table.route("/users/2", "200") == "/users/{id}"
    assert table.route("/users/3", "404") == "/users/{id}"


def test_cap_holds_across_real_workers(start_gunicorn):
    cap = 25
    g = start_gunicorn(app="apps.catch_all:app", workers=2,
                       env={"PROMETHEUS_ROUTE_CAP": str(cap)},
                       extra_args=["--chdir", HERE]).wait_ready(workers=2)
    rng = random.Random(11)
    sent = 300
    for _ in range(sent):
        assert g.request(_random_path(rng))[0] == 200
    s = g.scrape_until(lambda s: s.total("gunicorn_http_requests_total") == sent)
    routes = {dict(ls)["route"] for ls in s.series("gunicorn_http_requests_total")}
    assert len(routes) == cap + 1 and OVERFLOW in routes


def test_a_worker_remembers_only_answers_that_cannot_change(start_gunicorn):
    """One worker: the label of a request like an earlier one comes from the worker's own
    cache; a 404 on an unknown path must not stay `unmatched` once a 200 made its route
    known, an empty template means the path, and a non-string template its text."""
    g = start_gunicorn(app="apps.routed:app", workers=1,
                       extra_args=["--chdir", HERE]).wait_ready(workers=1)
    sent = [("/users/1?status=404", 404), ("/users/1?status=404", 404),
            ("/users/2", 200),
            ("/users/1?status=404", 404), ("/users/3?status=404", 404),
            ("/a/1?template=", 200), ("/b/2?template=", 200),
            ("/c/3?template=object", 200), ("/c/4?template=object", 200)]
    for path, status in sent:
        assert g.request(path)[0] == status
    s = g.scrape_until(lambda s: s.total("gunicorn_http_requests_total") == len(sent))
    assert s.series("gunicorn_http_requests_total") == {
        frozenset({("method", "GET"), ("route", UNMATCHED), ("status", "404")}): 2,
        frozenset({("method", "GET"), ("route", "/users/{id}"), ("status", "200")}): 1,
        frozenset({("method", "GET"), ("route", "/users/{id}"), ("status", "404")}): 2,
        frozenset({("method", "GET"), ("route", "/a/{id}"), ("status", "200")}): 1,
        frozenset({("method", "GET"), ("route", "/b/{id}"), ("status", "200")}): 1,
        frozenset({("method", "GET"), ("route", "/rule/<id>"), ("status", "200")}): 2,
    }

"""The flusher and the reader in this process against a real redis-server: URL parsing,
revival after being folded while alive, Redis losing its data, commands per flush."""
import logging
import os

import pytest

from gunicorn_prometheus_exporter import families as catalogue
from gunicorn_prometheus_exporter.config.loader import build
from gunicorn_prometheus_exporter.recorder import Writer
from gunicorn_prometheus_exporter.redis_storage import connection, keys
from gunicorn_prometheus_exporter.redis_storage.flusher import Flusher
from gunicorn_prometheus_exporter.redis_storage.source import RedisSource
from gunicorn_prometheus_exporter.storage import directory as storage_dir
from gunicorn_prometheus_exporter.storage.store import ProcessStore
from redis_procs import bounded_wait, prefix, redis_server  # noqa: F401

pytestmark = pytest.mark.redis
LOG = logging.getLogger("test-redis")


@pytest.mark.parametrize("url,expected", [
    ("redis://localhost", ("localhost", 6379, 0, None, None, False)),
    ("rediss://h:6380/2", ("h", 6380, 2, None, None, True)),
    ("redis://u:p%40ss%231%2Fx%3A%25@h:1/3", ("h", 1, 3, "u", "p@ss#1/x:%", False)),
    ("redis://u:p@ss#1/x:%@h:1/3", ("h", 1, 3, "u", "p@ss#1/x:%", False)),
    ("redis://:only@h", ("h", 6379, 0, None, "only", False)),
    ("redis://[::1]:7000", ("::1", 7000, 0, None, None, False)),
    ("redis://h?db=4", ("h", 6379, 4, None, None, False)),
])
def test_parse_url(url, expected):
    t = connection.parse_url(url)
    assert (t.host, t.port, t.db, t.username, t.password, t.tls) == expected


def test_describe_has_no_secret():
    s = build(None, {"REDIS_URL": "rediss://user:p@ss#1/x:%@cache:6390/1",
                     "REDIS_PASSWORD": "other-secret"})
    text = connection.describe(s)
    assert text == "rediss://cache:6390/1"
    assert connection.target(s).password == "other-secret"


def test_hash_tag():
    assert keys.base("app") == "{app}:"
    assert keys.base("{app}:x") == "{app}:x:"


def _settings(server, prefix, **extra):
    env = {"REDIS_ENABLED": "true", "REDIS_PORT": str(server.port), "REDIS_KEY_PREFIX": prefix,
           "REDIS_FLUSH_INTERVAL": "0.05", "REDIS_SOCKET_TIMEOUT": "0.1",
           "REDIS_INSTANCE_ID": "solo"}
    env.update(extra)
    return build(None, env)


def _requests(source):
    return sum(s.value for f in source.read() if f.name == "gunicorn_http_requests"
               for s in f.samples)


@pytest.fixture
def worker(tmp_path):
    directory = str(tmp_path / "mp")
    storage_dir.prepare(directory, cleanup=True)
    claim = storage_dir.claim(directory, "w")
    writer = Writer(ProcessStore(directory, claim.identity))
    yield directory, writer
    claim.release()


def test_folded_while_alive_revives_without_double_counting(redis_server, prefix, worker):
    directory, writer = worker
    server = redis_server()
    settings = _settings(server, prefix)
    flusher = Flusher(settings, directory, LOG)
    source = RedisSource(settings, LOG)
    writer.count(catalogue.HTTP_REQUESTS, ("GET", "/", "200"), 5)
    flusher.run()
    assert _requests(source) == 5
    # the flusher stalls for longer than the heartbeat timeout: the reader folds it
    bounded_wait(flusher.timing.dead_after + 0.2)
    assert _requests(source) == 5 and source.folded == 1
    assert source.instances == {}
    writer.count(catalogue.HTTP_REQUESTS, ("GET", "/", "200"), 2)
    flusher.run()  # finds itself folded: next incarnation, baseline = what was folded
    assert flusher.incarnation.endswith(".r1")
    assert _requests(source) == 7
    # a new metrics process (same directory) goes on with the same incarnation and baseline
    again = Flusher(settings, directory, LOG)
    assert again.incarnation == flusher.incarnation and again.baseline == flusher.baseline
    writer.count(catalogue.HTTP_REQUESTS, ("GET", "/", "200"))
    again.run()
    assert _requests(source) == 8


def test_redis_losing_data_is_repaired_and_flushes_are_cheap(redis_server, prefix, worker):
    directory, writer = worker
    server = redis_server()
    settings = _settings(server, prefix)
    flusher = Flusher(settings, directory, LOG)
    source = RedisSource(settings, LOG)
    writer.count(catalogue.HTTP_REQUESTS, ("GET", "/", "200"), 3)
    writer.set_gauge(catalogue.WORKER_CAPACITY, 1.0)
    flusher.run()
    assert _requests(source) == 3
    server.client().flushall()  # as a restart without persistence
    writer.count(catalogue.HTTP_REQUESTS, ("GET", "/", "200"))
    flusher.run()
    assert _requests(source) == 4
    # steady state: one script call and a few commands per flush, changes only
    r = server.client()
    flusher.run()
    before = server.commands()
    for i in range(20):
        writer.count(catalogue.HTTP_REQUESTS, ("GET", "/", "200"))
        flusher.run()
    per_flush = (server.commands() - before) / 20
    assert per_flush <= 7, r.info("commandstats")  # EVALSHA, ZSCORE, EXISTS, HSET, ZADD (+reap)
    assert _requests(source) == 24
    # a dead worker's live gauges are removed from Redis too
    caps = [f for f in source.read() if f.name == catalogue.WORKER_CAPACITY.name]
    assert len(caps[0].samples) == 1
    storage_dir.remove_live_gauges(directory, "w0")
    flusher.run()
    assert not [f for f in source.read() if f.name == catalogue.WORKER_CAPACITY.name]


def test_ttl_bounds_an_abandoned_prefix_only(redis_server, prefix, worker):
    directory, writer = worker
    server = redis_server()
    settings = _settings(server, prefix, REDIS_TTL_SECONDS="5")
    flusher = Flusher(settings, directory, LOG)
    writer.count(catalogue.HTTP_REQUESTS, ("GET", "/", "200"))
    flusher.run()
    r = server.client()
    ttl = flusher.timing.ttl
    assert ttl >= 3 * flusher.timing.dead_after
    for key in r.keys("*"):
        assert 0 < r.ttl(key) <= ttl, key
    # with expiry disabled, the shared keys and the writer's own data never expire
    no_ttl = _settings(server, prefix, REDIS_TTL_DISABLED="true", REDIS_INSTANCE_ID="other")
    other = Flusher(no_ttl, directory + "-2", LOG)
    other.run()
    own = keys.Layout(prefix).data(other.incarnation)
    shared = [k for k in r.keys("*") if ":i:" not in k]
    assert shared and all(r.ttl(k) == -1 for k in shared + [own])


def test_native_buckets_are_shipped_folded_and_revived_exactly(redis_server, prefix, worker):
    """Native histogram buckets travel like classic bucket values: shipped, summed, folded
    into the totals while the flusher stalls, and continued without double counting."""
    from gunicorn_prometheus_exporter.recorder import Recorder
    from gunicorn_prometheus_exporter.storage.native import Layout

    directory, _ = worker
    server = redis_server()
    settings = _settings(server, prefix)
    flusher = Flusher(settings, directory, LOG)
    source = RedisSource(settings, LOG)
    layout = Layout.for_range(3, 1e-6, 3600.0)
    rec = Recorder(ProcessStore(directory, "w0"), [1.0], [100.0], threaded=False,
                   native_layout=layout)
    series = rec.series("GET", "/n", "200")

    def native_of():
        family = next(f for f in source.read() if f.name == catalogue.HTTP_DURATION.name)
        merged = family.native[(("method", "GET"), ("route", "/n"))]
        return merged.zero_count, {i: c for i, c in merged.buckets.items() if c}

    for d in (0.0, 0.01, 0.01, 2.0):
        rec.add(series, d, 0, 0)
    flusher.run()
    ten_ms, two_s = (layout.lo + layout.slot(d) - 1 for d in (0.01, 2.0))
    assert native_of() == (1, {ten_ms: 2, two_s: 1})
    bounded_wait(flusher.timing.dead_after + 0.2)  # stalled: the reader folds it
    assert native_of() == (1, {ten_ms: 2, two_s: 1}) and source.folded == 1
    rec.add(series, 0.01, 0, 0)
    flusher.run()  # revived under the next incarnation, minus what was folded
    assert flusher.incarnation.endswith(".r1")
    assert native_of() == (1, {ten_ms: 3, two_s: 1})


def _counters(directory: str, identity: str, family: str, values: dict) -> None:
    """An app process's counter file, removed and written again with ``values`` by label
    ``k`` (the entries in that order)."""
    from gunicorn_prometheus_exporter.storage.mmap_file import sample_key

    path = storage_dir.db_path(directory, "counter", identity)
    if os.path.exists(path):
        os.unlink(path)
    store = ProcessStore(directory, identity)
    counters = store.file("counter")
    for label, value in values.items():
        counters.values[counters.index(sample_key(family, family + "_total", {"k": label},
                                                  "Help."))] = value
    store.close()


def test_a_flusher_starting_afresh_ships_each_file_under_its_own_keys(redis_server, prefix,
                                                                     worker):
    """The flusher's reader of the directory starts afresh when its key table outgrows the
    files (an app file replaced every round by 600 keys never seen before), and makes its
    readers anew. A file replaced at that very read by another of as many entries and the
    same values, under other keys, is shipped under its own keys: the flusher keeps each
    file's field names, and skips a file whose values it shipped last, by the reader's
    generation, which a reader made anew never repeats (the skip compared values only:
    the new keys were never shipped). Redis serves exactly the directory's values in every
    round."""
    directory, _ = worker
    server = redis_server()
    settings = _settings(server, prefix)
    flusher = Flusher(settings, directory, LOG)
    source = RedisSource(settings, LOG)
    fixed = {"a": 1.0, "b": 2.0}
    _counters(directory, "p1", "app_fixed", fixed)
    replaced = 0
    for round_ in range(1, 12):
        churned = {f"{round_}-{i}": float(round_ * 1000 + i) for i in range(600)}
        _counters(directory, "p0", "app_churn", churned)
        if flusher.collector._outgrown():  # this flush starts afresh: p1 replaced too
            replaced += 1
            fixed = {f"{round_}a": 1.0, f"{round_}b": 2.0}
            _counters(directory, "p1", "app_fixed", fixed)
        flusher.run()
        served = {(f.name, s.labels["k"]): s.value for f in source.read()
                  if f.name in ("app_churn", "app_fixed") for s in f.samples}
        assert served == {**{("app_churn", k): v for k, v in churned.items()},
                          **{("app_fixed", k): v for k, v in fixed.items()}}
    assert replaced >= 2 and flusher.collector.resets == replaced

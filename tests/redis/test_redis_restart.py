"""Redis restarted empty (no persistence): the reader never serves a partial aggregate (a
counter going backwards until the last instance has flushed again), never counts anything
twice when the data comes back, and the durable totals of instances folded before the
outage are put back exactly once, however many readers find the loss."""
import logging
import os
import signal
import socket
import threading
import time

import pytest

from gunicorn_prometheus_exporter import families as catalogue
from gunicorn_prometheus_exporter.config.loader import build
from gunicorn_prometheus_exporter.recorder import Writer
from gunicorn_prometheus_exporter.redis_storage.flusher import Flusher
from gunicorn_prometheus_exporter.redis_storage.source import RedisSource
from gunicorn_prometheus_exporter.storage import directory as storage_dir
from gunicorn_prometheus_exporter.storage.store import ProcessStore
from redis_procs import (exporter, log_of, prefix, redis_env, redis_server,  # noqa: F401
                         requests_total, send)
from support.procs import free_port
from support.wait import until

pytestmark = pytest.mark.redis
LOG = logging.getLogger("test-redis-restart")
REQUESTS = '"gunicorn_http_requests_total"'


class Link:
    """A TCP forwarder to a redis-server on its own loopback port, to cut one instance off
    Redis (refused connections) and let it through again. (Not SIGSTOP of the instance's
    metrics process: continuing it makes the process end, see the report of this change.)"""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.port = free_port()
        self.listener = None
        self.conns = []
        self.lock = threading.Lock()
        self.open()

    def open(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        until(lambda: listener.bind(("127.0.0.1", self.port)) or True, timeout=5,
              interval=0.02, message=f"port {self.port} to be free again")
        listener.listen(16)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def close(self) -> None:
        listener, self.listener = self.listener, None
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
            except OSError:
                pass
            listener.close()
        with self.lock:
            conns, self.conns = self.conns, []
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def _accept(self, listener) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=1)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b) -> None:
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


def durable_requests(r, prefix: str) -> float:
    """Requests in the durable totals (folded instances) of the prefix, all nodes."""
    total = 0.0
    for node in r.smembers("{%s}:tn" % prefix):
        total += sum(float(v) for f, v in r.hgetall("{%s}:t:%s" % (prefix, node)).items()
                     if f.startswith("counter_") and REQUESTS in f)
    return total


def incarnation(r, prefix: str, name: str) -> str:
    found = [i for i in r.zrange("{%s}:hb" % prefix, 0, -1) if i.startswith(name + "-")]
    assert len(found) == 1, found
    return found[0]


def check_scrape(s, expected: float) -> bool:
    """A scrape after the restart: exactly ``expected``, or (Redis unreadable for this one
    read) no request series at all, which Prometheus takes as absent, not as a reset.
    Returns whether the source was up."""
    if s.value("gunicorn_exporter_source_up", source="redis") == 0:
        assert not s.series("gunicorn_http_requests_total"), s.text
        return False
    assert requests_total(s) == expected, s.text
    assert s.total("gunicorn_http_request_duration_seconds_count") == expected, s.text
    return True


def test_restart_empty_never_serves_less_and_restores_folded_totals(
        start_gunicorn, redis_server, exporter, prefix):
    server = redis_server()
    names = ("doomed", "live", "slow", "lost")
    sent = dict(zip(names, (5, 7, 4, 3)))
    link = Link(server.port)  # the way of "slow" to Redis

    class Via:
        port = link.port
    gs = {n: start_gunicorn(env=redis_env(Via if n == "slow" else server, prefix,
                                          REDIS_INSTANCE_ID=n), workers=1)
          for n in names}
    for n in names:
        gs[n].wait_ready(1)
        send(gs[n], sent[n])
    before = sum(sent.values())
    e = exporter(redis_env(server, prefix))
    e.scrape_until(lambda s: requests_total(s) == before
                   and s.value("gunicorn_exporter_redis_instances") == 4)
    r = server.client()
    ids = {n: incarnation(r, prefix, n) for n in names}

    # one instance is SIGKILLed and folded (after 3 s here) before the outage
    os.killpg(gs["doomed"].pid, signal.SIGKILL)
    e.scrape_until(lambda s: requests_total(s) == before
                   and s.value("gunicorn_exporter_redis_instances") == 3, timeout=30)
    assert r.zrange("{%s}:gone" % prefix, 0, -1) == [ids["doomed"]]
    assert durable_requests(r, prefix) == sent["doomed"]

    server.stop()
    e.scrape_until(lambda s: s.value("gunicorn_exporter_source_up", source="redis") == 0)
    # during the outage one instance vanishes (its last values are in the reader's memory
    # only), and another one stays cut off from Redis for 1 s after the restart (less than
    # dead_after, 3 s here): the reader serves what it last read of both meanwhile
    os.killpg(gs["lost"].pid, signal.SIGKILL)
    link.close()
    server.start()  # same port, empty
    restarted = time.monotonic()
    deadline = restarted + 25
    scrapes = up = during_cut = 0
    cut = True
    try:
        while time.monotonic() < deadline:  # bounded: every 20 ms until all is repaired
            s = e.scrape()
            scrapes += 1
            up += check_scrape(s, before)
            during_cut += cut
            if cut and time.monotonic() - restarted > 1.0:
                link.open()
                cut = False
            if (not cut and r.zscore("{%s}:gone" % prefix, ids["lost"]) is not None
                    and r.hget("{%s}:i:%s" % (prefix, ids["slow"]), "@r") is None
                    and r.zscore("{%s}:hb" % prefix, ids["slow"]) is not None
                    and s.value("gunicorn_exporter_redis_instances") == 2):
                break
            time.sleep(0.02)
        else:
            raise AssertionError(f"never repaired: {ids} hb {r.zrange('{%s}:hb' % prefix, 0, -1)}"
                                 f" gone {r.zrange('{%s}:gone' % prefix, 0, -1)} last scrape:\n"
                                 f"{s.text}\n{e.output()}\n{gs['slow'].output()[-3000:]}")
    finally:
        link.close() if cut else None
    # scrapes went on through the second of the cut and after it until all was repaired
    # (how many fit in that second is the machine's business), and served what they must
    assert during_cut >= 2 and scrapes > during_cut and up >= scrapes - 2, \
        (during_cut, up, scrapes)
    # the instance that vanished during the outage was folded once, from the values the
    # reader remembered; the durable total of the one folded before it was put back; its
    # tombstone too
    assert durable_requests(r, prefix) == sent["doomed"] + sent["lost"]
    assert sorted(r.zrange("{%s}:gone" % prefix, 0, -1)) == sorted([ids["doomed"],
                                                                    ids["lost"]])
    assert log_of(e).count("lost data") == 1
    # and afterwards exactly what was sent
    send(gs["live"], 2)
    send(gs["slow"], 3)
    e.scrape_until(lambda s: requests_total(s) == before + 5
                   and s.total("gunicorn_http_request_duration_seconds_count") == before + 5)
    assert durable_requests(r, prefix) == sent["doomed"] + sent["lost"]
    assert r.zcard("{%s}:gone" % prefix) == 2  # nobody else was folded
    link.close()


def test_two_readers_at_once_restore_the_totals_once(start_gunicorn, redis_server, exporter,
                                                     prefix):
    server = redis_server()
    doomed = start_gunicorn(env=redis_env(server, prefix, REDIS_INSTANCE_ID="doomed"),
                            workers=1)
    link = Link(server.port)

    class Via:
        port = link.port
    kept = start_gunicorn(env=redis_env(Via, prefix, REDIS_INSTANCE_ID="kept"), workers=1)
    doomed.wait_ready(1)
    kept.wait_ready(1)
    n, m = 6, 4
    send(doomed, n)
    send(kept, m)
    readers = [exporter(redis_env(server, prefix)) for _ in range(2)]
    for e in readers:
        e.scrape_until(lambda s: requests_total(s) == n + m
                       and s.value("gunicorn_exporter_redis_instances") == 2)
    r = server.client()
    os.killpg(doomed.pid, signal.SIGKILL)
    until(lambda: durable_requests(r, prefix) == n, timeout=30, interval=0.1,
          message="the killed instance to be folded")
    for e in readers:
        e.scrape_until(lambda s: requests_total(s) == n + m
                       and s.value("gunicorn_exporter_redis_instances") == 1)

    server.stop()
    for e in readers:
        e.scrape_until(lambda s: s.value("gunicorn_exporter_source_up", source="redis") == 0)
    link.close()  # nothing writes: the readers find Redis empty
    try:
        server.start()
        barrier = threading.Barrier(len(readers))
        served = [[] for _ in readers]
        errors = []

        def read(k):
            try:
                barrier.wait(10)
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    s = readers[k].scrape()
                    if check_scrape(s, n + m):
                        served[k].append(requests_total(s))
                        if len(served[k]) >= 5:
                            return
                    time.sleep(0.02)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
        threads = [threading.Thread(target=read, args=(k,)) for k in range(len(readers))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors, errors
        assert served == [[n + m] * 5] * 2
        assert durable_requests(r, prefix) == n  # once, not 2n
        assert r.zcard("{%s}:gone" % prefix) == 1
    finally:
        link.open()
    logs = [log_of(e) for e in readers]
    assert sorted(x.count("restored 1 node(s)") for x in logs) == [0, 1], logs
    assert sum(x.count("restored 0 node(s)") for x in logs) == 1, logs
    send(kept, 2)
    for e in readers:
        e.scrape_until(lambda s: requests_total(s) == n + m + 2)
    assert durable_requests(r, prefix) == n
    assert r.zcard("{%s}:gone" % prefix) == 1
    link.close()


# -- in this process: readers whose memories were taken at different moments ----------------

def _settings(server, prefix, name):
    return build(None, {"REDIS_ENABLED": "true", "REDIS_PORT": str(server.port),
                        "REDIS_KEY_PREFIX": prefix, "REDIS_FLUSH_INTERVAL": "0.05",
                        "REDIS_SOCKET_TIMEOUT": "0.1", "REDIS_INSTANCE_ID": name})


def _requests(source):
    return sum(s.value for f in source.read() if f.name == "gunicorn_http_requests"
               for s in f.samples)


@pytest.fixture
def directories(tmp_path):
    made = []

    def make(name):
        directory = str(tmp_path / name)
        storage_dir.prepare(directory, cleanup=True)
        claim = storage_dir.claim(directory, "w")
        made.append(claim)
        return directory, Writer(ProcessStore(directory, claim.identity))
    yield make
    for claim in made:
        claim.release()


@pytest.mark.parametrize("first", ["newer", "older"])
def test_readers_with_different_memories_never_count_twice(redis_server, prefix, directories,
                                                            first):
    """Reader ``older`` last read while instance A was live, ``newer`` after A was folded
    (its counts in the durable total). Whichever restores first after Redis lost
    everything, A is counted once: as a total or as a restored instance, never both."""
    server = redis_server()
    (dir_a, writer_a), (dir_b, writer_b) = directories("a"), directories("b")
    a = Flusher(_settings(server, prefix, "a"), dir_a, LOG)
    b = Flusher(_settings(server, prefix, "b"), dir_b, LOG)
    older = RedisSource(_settings(server, prefix, "reader"), LOG)
    newer = RedisSource(_settings(server, prefix, "reader"), LOG)
    writer_a.count(catalogue.HTTP_REQUESTS, ("GET", "/", "200"), 5)
    writer_b.count(catalogue.HTTP_REQUESTS, ("GET", "/", "200"), 3)
    a.run()
    b.run()
    assert _requests(older) == 8
    a.close()  # graceful stop: folded
    assert _requests(newer) == 8
    r = server.client()
    assert durable_requests(r, prefix) == 5

    r.flushall()  # as a restart without persistence
    readers = [newer, older] if first == "newer" else [older, newer]
    for source in readers:
        assert _requests(source) == 8
        assert source.restores == 1
    assert _requests(readers[0]) == 8 and readers[0].restores == 1  # once per loss
    b.run()  # b finds its data is not of its epoch: sends everything
    writer_b.count(catalogue.HTTP_REQUESTS, ("GET", "/", "200"))
    b.run()
    assert _requests(older) == _requests(newer) == 9
    if first == "older":
        # the older memory restored A as live: folded from those values after dead_after
        def folded():
            b.run()  # b stays alive
            return _requests(newer) == 9 and not any(i.startswith("a-")
                                                     for i in newer.instances)
        until(folded, timeout=10, interval=0.1, message="A to be folded again")
        b.run()
    assert durable_requests(r, prefix) == 5
    assert _requests(older) == _requests(newer) == 9

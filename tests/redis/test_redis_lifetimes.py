"""A whole instance SIGKILLed: its counts stay, folded exactly once by whichever reader or
writer sees its heartbeat age first, with every scrape exact throughout."""
import os
import re
import signal
import time

import pytest

from redis_procs import (exporter, prefix, redis_env, redis_server,  # noqa: F401
                         requests_total, send)

pytestmark = pytest.mark.redis


def test_sigkill_of_whole_instance_is_folded_once(start_gunicorn, redis_server, exporter,
                                                  prefix):
    server = redis_server()
    a = start_gunicorn(env=redis_env(server, prefix, REDIS_INSTANCE_ID="doomed")).wait_ready(2)
    b = start_gunicorn(env=redis_env(server, prefix, REDIS_INSTANCE_ID="survivor")).wait_ready(2)
    n, m = 9, 4
    send(a, n)
    send(b, m)
    readers = [exporter(redis_env(server, prefix)) for _ in range(2)]
    for e in readers:
        e.scrape_until(lambda s: requests_total(s) == n + m
                       and len(s.series("gunicorn_worker_capacity")) == 4)
    r = server.client()
    doomed = [i for i in r.zrange("{%s}:hb" % prefix, 0, -1) if i.startswith("doomed-")]
    assert len(doomed) == 1

    os.killpg(a.pid, signal.SIGKILL)  # master, workers and metrics process at once
    # until someone folds it (heartbeat older than 3 s here), and after: every scrape of
    # both readers is exact, never missing nor doubling the dead instance's counts
    deadline = time.monotonic() + 30
    scrapes = 0
    while time.monotonic() < deadline:
        for e in readers:
            s = e.scrape()
            scrapes += 1
            assert requests_total(s) == n + m, s.text
            assert s.total("gunicorn_http_request_duration_seconds_count") == n + m
        if all(len(e.scrape().series("gunicorn_worker_capacity")) == 2 for e in readers):
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the killed instance was never folded")
    assert scrapes > 10

    assert r.zrange("{%s}:gone" % prefix, 0, -1) == doomed
    assert not r.exists("{%s}:i:%s" % (prefix, doomed[0]))
    total = r.hgetall("{%s}:t:" % prefix)
    counted = sum(float(v) for f, v in total.items()
                  if f.startswith("counter_") and '"gunicorn_http_requests_total"' in f)
    assert counted == n
    # exactly one fold, by one of the three that could do it
    by_readers = sum(e.scrape().value("gunicorn_exporter_redis_folded_instances_total")
                     for e in readers)
    by_writer = sum(int(x) for x in re.findall(r"folded (\d+) vanished", b.output()))
    assert by_readers + by_writer == 1, (by_readers, by_writer)

    send(b, 3)
    for e in readers:
        e.scrape_until(lambda s: requests_total(s) == n + m + 3)


def test_usr2_upgrade_continues_the_incarnation(start_gunicorn, redis_server, exporter, prefix,
                                                tmp_path):
    import psutil

    from support.wait import until

    server = redis_server()
    pidfile = str(tmp_path / "master.pid")
    g = start_gunicorn(env=redis_env(server, prefix), extra_args=["--pid", pidfile])
    g.wait_ready(2)
    send(g, 10)
    e = exporter(redis_env(server, prefix))
    e.scrape_until(lambda s: requests_total(s) == 10)
    r = server.client()
    before = r.zrange("{%s}:hb" % prefix, 0, -1)
    assert len(before) == 1

    def alive(pid):
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    old = g.pid
    g.signal(signal.SIGUSR2)
    until(lambda: os.path.exists(pidfile + ".2"), message="the new master's pid file")
    new = int(open(pidfile + ".2").read())
    until(lambda: len(psutil.Process(new).children()) >= 3, timeout=30,
          message="the new master's workers and metrics process")
    send(g, 10)
    os.kill(old, signal.SIGQUIT)
    until(lambda: not alive(old), timeout=30, message="the old master to exit")
    send(g, 10)
    s = e.scrape_until(lambda s: requests_total(s) == 30)
    # the new master shares the directory: same incarnation, no fold, nothing doubled
    assert r.zrange("{%s}:hb" % prefix, 0, -1) == before
    assert r.zcard("{%s}:gone" % prefix) == 0
    assert s.value("gunicorn_exporter_redis_instances") == 1
    os.kill(new, signal.SIGTERM)
    until(lambda: r.zcard("{%s}:gone" % prefix) == 1, timeout=20, message="the final fold")
    assert requests_total(e.scrape()) == 30

"""Master and worker lifecycle with real gunicorn: saturation, backlog, exits by reason,
signals, log levels, USR2 upgrade and worker churn."""
import os
import signal
import socket
import threading
import time

import pytest

from support.wait import until

APP = "apps.lifecycle:app"
HERE = os.path.dirname(__file__)


def start(start_gunicorn, workers=2, args=(), **kw):
    g = start_gunicorn(app=APP, workers=workers, extra_args=["--chdir", HERE, *args], **kw)
    return g.wait_ready(workers=workers)


def reasons(scrape):
    return {dict(ls)["reason"]: v for ls, v in
            scrape.series("gunicorn_master_worker_restart_total").items()}


def in_background(g, path, count):
    threads = [threading.Thread(target=lambda: g.request(path, timeout=60), daemon=True)
               for _ in range(count)]
    for t in threads:
        t.start()
    return threads


def test_busy_workers_exact_and_saturation(start_gunicorn):
    g = start(start_gunicorn, workers=3)
    held = in_background(g, "/sleep/3", 2)
    s = g.scrape_until(lambda s: s.value("gunicorn_workers", state="busy") == 2)
    assert s.value("gunicorn_workers", state="idle") == 1
    assert s.total("gunicorn_worker_in_flight_requests") == 2
    assert s.total("gunicorn_worker_capacity") == 3
    for t in held:
        t.join(30)
    s = g.scrape_until(lambda s: s.value("gunicorn_workers", state="busy") == 0)
    assert s.value("gunicorn_workers", state="idle") == 3
    assert s.value("gunicorn_workers_desired") == 3


def test_listen_backlog_fills_and_drains(start_gunicorn):
    g = start(start_gunicorn, workers=1, args=["--backlog", "64"])
    held = in_background(g, "/sleep/4", 1)
    g.scrape_until(lambda s: s.value("gunicorn_workers", state="busy") == 1)
    waiting = []
    for _ in range(5):
        c = socket.create_connection(("127.0.0.1", g.port))
        c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        waiting.append(c)
    listener = f"http://127.0.0.1:{g.port}"
    s = g.scrape_until(lambda s: (s.value("gunicorn_listen_backlog", listener=listener) or 0)
                       >= 4)
    assert s.value("gunicorn_listen_backlog_max", listener=listener) == 64
    for t in held:
        t.join(30)
    g.scrape_until(lambda s: s.value("gunicorn_listen_backlog", listener=listener) == 0,
                   timeout=20)
    for c in waiting:
        c.close()


def test_max_requests_restarts_counted_once_each(start_gunicorn):
    g = start(start_gunicorn, workers=1, args=["--max-requests", "5"])
    for _ in range(20):
        assert g.request("/")[0] == 200
    s = g.scrape_until(lambda s: reasons(s).get("max_requests") == 4)
    assert reasons(s) == {"max_requests": 4}
    assert s.value("gunicorn_worker_restart_total", worker_id="0", reason="max_requests") == 4
    assert s.total("gunicorn_http_requests_total") == 20


def test_killed_crashed_and_timeout_reasons(start_gunicorn):
    g = start(start_gunicorn, workers=2, args=["--timeout", "2"])
    victim = g.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    g.scrape_until(lambda s: reasons(s).get("killed") == 1)
    g.wait_ready(workers=2)
    try:
        g.request("/exit/7", timeout=10)
    except (ConnectionError, OSError):
        pass  # the worker died mid-request, as asked
    s = g.scrape_until(lambda s: reasons(s).get("crashed") == 1)
    assert s.total("gunicorn_worker_restart_count_total", reason="crashed",
                   restart_type="exit_7") == 1
    g.wait_ready(workers=2)
    try:
        g.request("/sleep/10", timeout=20)
    except (ConnectionError, OSError):
        pass
    s = g.scrape_until(lambda s: reasons(s).get("timeout") == 1, timeout=30)
    assert reasons(s) == {"killed": 1, "crashed": 1, "timeout": 1}


def test_exit_code_3_halts_gunicorn_and_is_counted_once(start_gunicorn):
    """gunicorn treats exit code 3 as a boot failure and halts the whole server; the
    crash is still recorded once, and the other worker's exit is part of the shutdown."""
    from gunicorn_prometheus_exporter.collector import DirectoryCollector

    g = start(start_gunicorn, workers=2)
    try:
        g.request("/exit/3", timeout=10)
    except (ConnectionError, OSError):
        pass
    until(lambda: g.proc.poll() is not None, timeout=30, message="gunicorn to halt")
    families = {f.name: f for f in DirectoryCollector(g.directory).read()}
    got = {(s.labels["reason"], s.labels["restart_type"]): s.value
           for s in families["gunicorn_master_worker_restart_count"].samples}
    assert got == {("crashed", "exit_3"): 1, ("shutdown", "exit_0"): 1} or \
        got == {("crashed", "exit_3"): 1, ("shutdown", "SIGTERM"): 1}, got


def test_hup_ttin_ttou_and_signal_counts(start_gunicorn):
    g = start(start_gunicorn, workers=2)
    g.signal(signal.SIGHUP)
    s = g.scrape_until(lambda s: reasons(s).get("reload") == 2, timeout=30)
    g.signal(signal.SIGTTIN)
    s = g.scrape_until(lambda s: s.value("gunicorn_workers_desired") == 3
                       and len(s.series("gunicorn_worker_capacity")) == 3)
    g.signal(signal.SIGTTOU)
    s = g.scrape_until(lambda s: reasons(s).get("scale_down") == 1, timeout=30)
    assert s.value("gunicorn_workers_desired") == 2
    assert reasons(s) == {"reload": 2, "scale_down": 1}
    signals = {dict(ls)["signal"]: v for ls, v in
               s.series("gunicorn_master_signals_total").items() if v}
    assert signals == {"hup": 1, "ttin": 1, "ttou": 1}


def test_log_messages_by_level_match_gunicorn_log(start_gunicorn):
    g = start(start_gunicorn, workers=1)
    os.kill(g.worker_pids()[0], signal.SIGKILL)
    g.scrape_until(lambda s: reasons(s).get("killed") == 1)
    g.wait_ready(workers=1)
    out = g.output()
    errors = out.count("[ERROR]")
    infos = out.count("[INFO]") - out.count("Booting worker")  # logged before it counts
    s = g.scrape_until(lambda s: s.value("gunicorn_log_messages_total", level="error")
                       == errors and s.value("gunicorn_log_messages_total", level="info")
                       == infos)
    assert errors >= 1 and infos >= 3
    assert s.value("gunicorn_log_messages_total", level="critical") == out.count("[CRITICAL]")


def test_usr2_upgrade_keeps_counters_monotonic_and_port_answering(start_gunicorn, tmp_path):
    pidfile = str(tmp_path / "master.pid")
    g = start(start_gunicorn, workers=2, args=["--pid", pidfile])
    sent = 0
    for _ in range(10):
        assert g.request("/")[0] == 200
        sent += 1
    g.scrape_until(lambda s: s.total("gunicorn_http_requests_total") == sent)
    failures, seen = [], []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            try:
                seen.append(g.scrape().total("gunicorn_http_requests_total"))
            except Exception as exc:  # noqa: BLE001 - every failure is reported
                failures.append(repr(exc))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    old = g.pid
    g.signal(signal.SIGUSR2)
    until(lambda: os.path.exists(pidfile + ".2"), message="new master's pid file")
    new = int(open(pidfile + ".2").read())
    until(lambda: len(_children(new)) >= 3, timeout=30, message="new master's workers")
    for _ in range(10):
        assert g.request("/")[0] == 200
        sent += 1
    os.kill(old, signal.SIGQUIT)
    until(lambda: not _alive(old), timeout=30, message="old master gone")
    for _ in range(10):
        assert g.request("/")[0] == 200
        sent += 1
    final = until(lambda: (lambda s: s if s.total("gunicorn_http_requests_total") == sent
                           else None)(g.scrape()), message="all requests counted")
    stop.set()
    watcher.join(5)
    os.kill(new, signal.SIGTERM)
    assert failures == []
    assert len(seen) > 10
    assert all(a <= b for a, b in zip(seen, seen[1:])), seen
    assert final.total("gunicorn_master_signals_total", signal="usr2") == 1


def _children(pid):
    import psutil
    try:
        return psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return []


def _alive(pid):
    import psutil
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow
# 2,000 worker restarts take about 3 minutes on 2 idle cores and several times that on a busy
# machine: the default 300 s hang detector is too tight for it
@pytest.mark.timeout(1200)
def test_worker_churn_keeps_counts_and_bounded_storage(start_gunicorn):
    restarts = int(os.environ.get("CHURN_RESTARTS", "2000"))
    g = start(start_gunicorn, workers=2, args=["--max-requests", "1"])
    sent = 0
    lock = threading.Lock()

    def client(n):
        nonlocal sent
        for _ in range(n):
            status, _ = g.request("/")
            assert status == 200
            with lock:
                sent += 1

    for _ in range(10):
        client(1)
    g.scrape_until(lambda s: reasons(s).get("max_requests") == 10
                   and s.series("gunicorn_listen_backlog"), timeout=60)
    files_after_10 = _stable_files(g.directory)
    rest = restarts - 10
    threads = [threading.Thread(target=client, args=(rest // 4 + (i < rest % 4),))
               for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    s = g.scrape_until(lambda s: s.total("gunicorn_http_requests_total") == sent
                       and reasons(s).get("max_requests") == sent, timeout=120)
    assert sent == restarts
    assert _stable_files(g.directory) == files_after_10
    live_gauge_files = 2  # one per worker slot
    # what the collector reads: the .db files and the native-histogram .nh file of each slot
    assert s.value("gunicorn_exporter_storage_files") <= \
        len([f for f in files_after_10 if f.endswith((".db", ".nh"))]) + live_gauge_files


def _stable_files(directory):
    """Storage files, less the live gauges a slot's file drops between one worker and the
    next (they are re-created by the replacement)."""
    return sorted(f for f in os.listdir(directory) if not f.startswith("gauge_livesum_w"))


def test_metrics_server_is_restarted_when_it_dies(start_gunicorn):
    g = start(start_gunicorn, workers=1)
    for _ in range(3):
        assert g.request("/")[0] == 200
    g.scrape_until(lambda s: s.total("gunicorn_http_requests_total") == 3)
    first = g.monitor_pid()
    os.kill(first, signal.SIGKILL)
    until(lambda: g.monitor_pid() not in (None, first), message="a new metrics server")
    s = g.scrape_until(lambda s: s.total("gunicorn_http_requests_total") == 3)
    assert s.value("gunicorn_workers", state="idle") == 1


def test_a_restarted_metrics_server_holds_no_worker_slot(start_gunicorn):
    """The metrics process forked again while workers run must not keep their slot locks:
    replacements of those workers then take the same slots, never a new one."""
    g = start(start_gunicorn, workers=2, args=["--max-requests", "1"])
    first = g.monitor_pid()
    os.kill(first, signal.SIGKILL)
    until(lambda: g.monitor_pid() not in (None, first), message="a new metrics server")
    for _ in range(12):
        assert g.request("/")[0] == 200
    g.scrape_until(lambda s: s.total("gunicorn_http_requests_total") == 12
                   and reasons(s).get("max_requests") == 12, timeout=60)
    assert sorted(f for f in os.listdir(g.directory) if f.startswith("w") and
                  f.endswith(".lock")) == ["w0.lock", "w1.lock"]


def test_metrics_server_survives_being_paused(start_gunicorn):
    g = start(start_gunicorn, workers=1)
    monitor = g.monitor_pid()
    os.kill(monitor, signal.SIGSTOP)
    time.sleep(1.5)  # the pause itself is what is tested: longer than the server's waits
    os.kill(monitor, signal.SIGCONT)
    assert g.request("/")[0] == 200
    g.scrape_until(lambda s: s.total("gunicorn_http_requests_total") == 1)
    assert g.monitor_pid() == monitor and _alive(monitor)

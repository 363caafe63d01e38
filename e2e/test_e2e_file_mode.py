"""File mode, end to end: a real Prometheus (scrape interval 1 s) scrapes the demo app under
real gunicorn with the plugin, and every assertion is a PromQL query against Prometheus's HTTP
API, compared exactly with the ledger of the bounded traffic client.

Each test is one scenario: its own gunicorn, scraped with the label scenario=<test name>.
"""
import os
import signal
import time

from promapi import JOB
from promql_checks import assert_no_resets, assert_totals, counters_by
from support.procs import wait_pid_gone
from traffic import MIX, Background, Ledger, Req, burst, send
from support.wait import until


def quiesce(g, ledger: Ledger, timeout: float = 15.0) -> None:
    """Wait until the exporter itself reports every answered request (a request is recorded
    after its last byte is sent): a SIGKILL after that loses nothing that was answered."""
    g.scrape_until(lambda s: s.total("gunicorn_http_requests_total") == ledger.total
                   and s.value("gunicorn_workers", state="busy") == 0, timeout=timeout)


def restarts(prom, scenario, family="gunicorn_master_worker_restart_total"):
    return {k[0]: v for k, v in counters_by(prom, family, scenario, "reason").items()}


def test_routes_statuses_and_duration_histogram(scenario, prometheus):
    """Every route and status of the demo, counted exactly; histogram_quantile over the
    duration histogram places a 200 ms endpoint between 100 and 250 ms."""
    since = time.time()
    g = scenario(workers=2)
    ledger = Ledger()
    burst([g.port], ledger, 270)
    # 200 ms requests: one first, so that Prometheus holds the series before the rest
    # arrive and rate() over it has an increase to see
    slow = Req("/slow?ms=200", "/slow", 200)
    send(g.port, slow, ledger)
    sel = f'job="{JOB}",scenario="{scenario.name}",route="/slow"'
    prometheus.wait_for(f"sum(gunicorn_http_request_duration_seconds_count{{{sel}}})", 1.0)
    burst([g.port], ledger, 19, mix=[slow], threads=2)
    assert_totals(prometheus, scenario.name, ledger, since)
    assert set(ledger.counts) == {r.key() for r in MIX} | {slow.key()}

    prometheus.wait_for(f"sum(gunicorn_http_request_duration_seconds_count{{{sel}}})", 20.0)
    for q in (0.5, 0.9, 0.99):
        # from the cumulative buckets, and as dashboards do, from their rate
        for expr in (f"sum by (le) (gunicorn_http_request_duration_seconds_bucket{{{sel}}})",
                     f"sum by (le) (rate(gunicorn_http_request_duration_seconds_bucket"
                     f"{{{sel}}}[1m]))"):
            value = prometheus.scalar(f"histogram_quantile({q}, {expr})")
            assert value is not None and 0.1 < value <= 0.25, (q, expr, value)
    # the other routes are far faster: their p99 is below 100 ms
    fast = prometheus.scalar(
        f'histogram_quantile(0.99, sum by (le) (gunicorn_http_request_duration_seconds_bucket'
        f'{{job="{JOB}",scenario="{scenario.name}",route="/users/{{id}}"}}))')
    assert fast is not None and fast < 0.1, fast
    # request and response sizes: POST /upload sent 3000 bytes each time
    uploads = ledger.counts[("POST", "/upload", "200")]
    prometheus.wait_for(f'sum(gunicorn_http_request_size_bytes_sum{{job="{JOB}",'
                        f'scenario="{scenario.name}",route="/upload"}})', 3000.0 * uploads)
    assert_no_resets(prometheus, scenario.name, since)


def test_sigkill_of_workers(scenario, prometheus):
    """SIGKILL one worker, then the other: the totals stay exact, the slots' counters go
    on where they were (no reset), and each kill is counted once with reason killed."""
    since = time.time()
    g = scenario(workers=2)
    ledger = Ledger()
    for victim_index in (0, 1):
        burst([g.port], ledger, 90)
        quiesce(g, ledger)
        victim = g.worker_pids()[victim_index]
        os.kill(victim, signal.SIGKILL)
        wait_pid_gone(victim)
        g.scrape_until(lambda s: s.total("gunicorn_master_worker_restart_total",
                                         reason="killed") == victim_index + 1)
        g.wait_ready(workers=2)
    burst([g.port], ledger, 90)
    assert_totals(prometheus, scenario.name, ledger, since)
    prometheus.wait_for(f'sum by (reason) (gunicorn_master_worker_restart_total'
                        f'{{job="{JOB}",scenario="{scenario.name}"}})', {("killed",): 2.0},
                        labels=("reason",))
    assert restarts(prometheus, scenario.name, "gunicorn_worker_restart_total") == {"killed": 2}
    assert_no_resets(prometheus, scenario.name, since)


def test_max_requests_churn(scenario, prometheus):
    """--max-requests 7: workers are replaced every 7 requests while two clients send 160;
    every slot's max_requests restarts are exactly floor(its requests / 7)."""
    since = time.time()
    g = scenario(workers=2, extra_args=["--max-requests", "7", "--max-requests-jitter", "0"])
    ledger = Ledger()
    burst([g.port], ledger, 160, threads=2)
    assert_totals(prometheus, scenario.name, ledger, since)
    sel = f'job="{JOB}",scenario="{scenario.name}"'

    def per_slot_consistent():
        per_slot = prometheus.by(f"gunicorn_worker_requests_total{{{sel}}}", "worker_id")
        slot_restarts = prometheus.by(
            f'gunicorn_worker_restart_total{{{sel},reason="max_requests"}}', "worker_id")
        want = {k: float(int(v) // 7) for k, v in per_slot.items() if int(v) >= 7}
        got = {k: v for k, v in slot_restarts.items()}
        return (per_slot, got) if got == want and sum(per_slot.values()) == 160 else None
    per_slot, slot_restarts = until(per_slot_consistent, timeout=20,
                                    message="restarts per slot = floor(requests / 7)")
    assert sum(slot_restarts.values()) >= 160 // 7 - 1  # both slots churned
    total = sum(slot_restarts.values())
    assert restarts(prometheus, scenario.name) == {"max_requests": total}
    assert_no_resets(prometheus, scenario.name, since)


def test_hup_ttin_ttou_under_traffic(scenario, prometheus):
    """HUP (all workers replaced), TTIN (one more), TTOU (one fewer), each while a client
    keeps sending: no request fails, none is lost, restarts by reason are exact."""
    since = time.time()
    g = scenario(workers=2)
    ledger = Ledger()
    with Background(g.port, ledger) as bg:
        until(lambda: bg.sent >= 30, timeout=20, message="traffic to start")
        g.signal(signal.SIGHUP)
        g.scrape_until(lambda s: s.total("gunicorn_master_worker_restart_total",
                                         reason="reload") == 2, timeout=30)
        g.wait_ready(workers=2)
        mark = bg.sent
        until(lambda: bg.sent >= mark + 30, timeout=20, message="traffic after HUP")
        g.signal(signal.SIGTTIN)
        g.scrape_until(lambda s: s.value("gunicorn_workers_desired") == 3
                       and len(s.series("gunicorn_worker_capacity")) == 3, timeout=30)
        mark = bg.sent
        until(lambda: bg.sent >= mark + 30, timeout=20, message="traffic after TTIN")
        g.signal(signal.SIGTTOU)
        g.scrape_until(lambda s: s.total("gunicorn_master_worker_restart_total",
                                         reason="scale_down") == 1, timeout=30)
        mark = bg.sent
        until(lambda: bg.sent >= mark + 30, timeout=20, message="traffic after TTOU")
    assert_totals(prometheus, scenario.name, ledger, since)
    sel = f'job="{JOB}",scenario="{scenario.name}"'
    prometheus.wait_for(f"sum by (reason) (gunicorn_master_worker_restart_total{{{sel}}})",
                        {("reload",): 2.0, ("scale_down",): 1.0}, labels=("reason",))
    prometheus.wait_for(f"gunicorn_workers_desired{{{sel}}}", 2.0)
    signals = {k[0]: v for k, v in counters_by(prometheus, "gunicorn_master_signals_total",
                                               scenario.name, "signal").items() if v}
    assert signals == {"hup": 1.0, "ttin": 1.0, "ttou": 1.0}
    assert_no_resets(prometheus, scenario.name, since)


def test_usr2_upgrade_under_traffic(scenario, prometheus, tmp_path):
    """USR2 starts a new master beside the old one, then the old one is stopped gracefully
    (TERM: QUIT is gunicorn's quick shutdown, whose workers exit mid-request and answer 500),
    the way a binary upgrade is done; a client sends all along. Prometheus keeps scraping the same
    port: totals exact, no counter ever goes back."""
    import psutil

    since = time.time()
    pidfile = str(tmp_path / "master.pid")
    g = scenario(workers=2, extra_args=["--pid", pidfile])
    ledger = Ledger()
    with Background(g.port, ledger) as bg:
        until(lambda: bg.sent >= 30, timeout=20, message="traffic to start")
        old = g.pid
        g.signal(signal.SIGUSR2)
        until(lambda: os.path.exists(pidfile + ".2"), timeout=30,
              message="the new master's pid file")
        new = int(open(pidfile + ".2").read())

        def new_workers():
            try:
                return len(psutil.Process(new).children()) >= 3  # 2 workers + metrics
            except psutil.NoSuchProcess:
                return False
        until(new_workers, timeout=30, message="the new master's workers")
        mark = bg.sent
        until(lambda: bg.sent >= mark + 30, timeout=20, message="traffic, both masters up")
        os.kill(old, signal.SIGTERM)  # graceful: QUIT would cut requests short
        wait_pid_gone(old)
        mark = bg.sent
        until(lambda: bg.sent >= mark + 30, timeout=20, message="traffic after the old "
              "master left")
    assert_totals(prometheus, scenario.name, ledger, since)
    sel = f'job="{JOB}",scenario="{scenario.name}"'
    prometheus.wait_for(f'sum(gunicorn_master_signals_total{{{sel},signal="usr2"}})', 1.0)
    # every scrape during the upgrade succeeded
    window = f"{int(time.time() - since) + 2}s"
    assert prometheus.scalar(f"min_over_time(up{{{sel}}}[{window}])") == 1.0
    assert_no_resets(prometheus, scenario.name, since)


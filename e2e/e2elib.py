"""Helpers of the local end-to-end suite: a real Prometheus on loopback, the chart's alert
rules, a bounded traffic client with a ledger of what it sent, and PromQL assertions.

Nothing here waits with a bare sleep: every wait is ``until()`` with a deadline, and every
process started here is stopped (its process group killed) by the fixture that started it.
"""
from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from support.procs import Process, free_port
from support.traffic import MIX, Key, Ledger, Req  # noqa: F401 - e2e tests use them through e2elib
from support.wait import until

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "gunicorn-prometheus-exporter"
JOB = "gunicorn-e2e"
SCRAPE_INTERVAL = 1.0
# The chart's alerts, rendered with `for:` short enough for a test run, aggregated per
# scenario so that one scenario's traffic never raises another's alert.
RULE_SETS = (
    "prometheusRule.enabled=true",
    "prometheusRule.force=true",
    f'prometheusRule.selector=job="{JOB}"',
    "prometheusRule.groupBy={job,scenario}",
    "prometheusRule.alerts.errorRatio.for=2s",
    "prometheusRule.alerts.saturation.for=2s",
)



# -- Prometheus --------------------------------------------------------------------------------

class PromError(AssertionError):
    pass


class Prometheus:
    """``prometheus`` on a free loopback port, scrape and evaluation interval 1 s, a temp TSDB.

    Targets come from a file_sd directory: ``add_target(port, scenario)`` writes one JSON file
    per target (labels ``scenario`` and ``job``), ``remove_target`` deletes it; Prometheus picks
    the change up through inotify (and a 1 s refresh)."""

    def __init__(self, binary: str, workdir: Path, rule_file: Optional[Path]) -> None:
        self.binary = binary
        self.workdir = workdir
        self.sd_dir = workdir / "targets"
        self.sd_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.rule_file = rule_file
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "900ms",
                       "evaluation_interval": "1s"},
            "rule_files": [str(rule_file)] if rule_file else [],
            "scrape_configs": [{
                "job_name": JOB,
                "file_sd_configs": [{"files": [str(self.sd_dir / "*.json")],
                                     "refresh_interval": "1s"}],
            }],
        }
        self.config_path = workdir / "prometheus.yml"
        # JSON is YAML: no YAML library needed to write the configuration.
        self.config_path.write_text(json.dumps(config, indent=2))
        args = [binary, f"--config.file={self.config_path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h", "--log.level=warn",
                "--web.enable-lifecycle"]
        self.proc = Process(args, dict(os.environ), cwd=str(workdir))
        until(self._ready, timeout=60, interval=0.2, message="prometheus to be ready")

    def _ready(self) -> bool:
        if self.proc.proc.poll() is not None:
            raise AssertionError(f"prometheus exited:\n{self.proc.output()}")
        with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
            return resp.status == 200

    def stop(self) -> None:
        self.proc.stop(timeout=10)

    # targets

    def add_target(self, port: int, scenario: str, timeout: float = 20.0) -> None:
        """Scrape 127.0.0.1:``port`` with label scenario=``scenario``; return once Prometheus
        has scraped it successfully."""
        path = self.sd_dir / f"{scenario}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps([{"targets": [f"127.0.0.1:{port}"],
                                    "labels": {"scenario": scenario}}]))
        os.replace(tmp, path)  # atomic: Prometheus never reads half a file

        def scraped() -> bool:
            for t in self.api("targets", state="active")["activeTargets"]:
                if t["labels"].get("scenario") == scenario and t["health"] == "up":
                    return True
            return False
        until(scraped, timeout=timeout, interval=0.2,
              message=f"prometheus to scrape target {scenario} (127.0.0.1:{port})")

    def remove_target(self, scenario: str) -> None:
        (self.sd_dir / f"{scenario}.json").unlink(missing_ok=True)

    # HTTP API

    def api(self, endpoint: str, **params) -> dict:
        url = f"{self.url}/api/v1/{endpoint}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as exc:
            raise PromError(f"{url}: {exc.code} {exc.read().decode(errors='replace')}") from None
        if body.get("status") != "success":
            raise PromError(f"{url}: {body}")
        return body["data"]

    def query(self, promql: str, at: Optional[float] = None) -> List[dict]:
        """Instant vector: list of {"metric": labels, "value": float}."""
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("query", **params)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": float(data["result"][1])}]
        return [{"metric": r["metric"], "value": float(r["value"][1])} for r in data["result"]]

    def query_range(self, promql: str, start: float, end: float, step: float = 1.0) -> List[dict]:
        data = self.api("query_range", query=promql, start=f"{start:.3f}", end=f"{end:.3f}",
                        step=str(step))
        return [{"metric": r["metric"], "values": [(float(t), float(v)) for t, v in r["values"]]}
                for r in data["result"]]

    def scalar(self, promql: str) -> Optional[float]:
        """The one value of an expression that yields at most one sample (None: no sample)."""
        result = self.query(promql)
        assert len(result) <= 1, f"{promql} gave {len(result)} samples: {result}"
        return result[0]["value"] if result else None

    def by(self, promql: str, *labels: str) -> Dict[tuple, float]:
        """{(label values...): value} of an instant vector."""
        return {tuple(r["metric"].get(name, "") for name in labels): r["value"]
                for r in self.query(promql)}

    def wait_for(self, promql: str, want, timeout: float = 20.0, labels: Sequence[str] = (),
                 message: str = "") -> object:
        """Poll ``promql`` until it equals ``want``: a number (scalar result) or a dict keyed
        by ``labels`` values. On timeout the last answer and ``want`` are in the message."""
        last: list = []

        def check():
            got = self.by(promql, *labels) if labels else self.scalar(promql)
            last[:] = [got]
            return True if got == want else None
        try:
            until(check, timeout=timeout, interval=0.25, message=message or promql)
        except AssertionError as exc:
            got = last[0] if last else "(no answer)"
            raise AssertionError(f"{exc}\n  query: {promql}\n  want: {_fmt(want)}\n"
                                 f"  got:  {_fmt(got)}") from None
        return last[0]

    def alerts(self) -> List[dict]:
        return self.api("alerts")["alerts"]

    def firing(self, alertname: str, **labels: str) -> List[dict]:
        return [a for a in self.alerts()
                if a["labels"].get("alertname") == alertname and a["state"] == "firing"
                and all(a["labels"].get(k) == v for k, v in labels.items())]


def _fmt(value) -> str:
    if isinstance(value, dict):
        return json.dumps({"|".join(k): v for k, v in sorted(value.items())}, indent=None)
    return repr(value)


# -- the chart's alert rules --------------------------------------------------------------------

def find_helm() -> Optional[str]:
    if os.environ.get("HELM"):
        return os.environ["HELM"]
    cached = ROOT / ".cache" / "helm" / "node_modules" / ".bin" / "helm"
    if cached.exists():
        return str(cached)
    return shutil.which("helm")


def render_rules(directory: Path, sets: Iterable[str] = RULE_SETS) -> Path:
    """Render the chart's PrometheusRule (helm template, or the helm-python-sdk) and write its
    ``spec`` as a Prometheus rule file. Raises LookupError when neither is available."""
    import yaml

    sets = list(sets)
    helm = find_helm()
    if helm:
        home = Path(tempfile.gettempdir()) / "gpe-e2e-helm-home"
        env = {**os.environ}
        for var in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
            env.setdefault(var, str(home / var.lower()))
        args = [helm, "template", "gpe", str(CHART), "--namespace", "e2e",
                "--show-only", "templates/prometheusrule.yaml"]
        for s in sets:
            args += ["--set", s]
        proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
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
        text = next(v for k, v in rendered.items() if k.endswith("prometheusrule.yaml"))
    rule = next(d for d in yaml.safe_load_all(text) if d and d.get("kind") == "PrometheusRule")
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"], sort_keys=False))
    return path


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
            value = raw
        node[leaf] = value
    return values


# -- traffic --------------------------------------------------------------------------------------

def send(port: int, req: Req, ledger: Ledger, timeout: float = 30.0) -> None:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(req.method, req.path, body=req.body)
        resp = conn.getresponse()
        resp.read()
        ledger.record(req, resp.status, port)
    except OSError as exc:
        ledger.fail(req, exc, port)
    finally:
        conn.close()


def burst(ports: Sequence[int], ledger: Ledger, count: int, mix: Sequence[Req] = MIX,
          threads: int = 2, deadline: float = 60.0) -> None:
    """Send exactly ``count`` requests (the ``mix`` in turn, spread over ``ports`` in turn) from
    ``threads`` clients; return when all are answered. Bounded in count and in time."""
    lock = threading.Lock()
    state = {"next": 0}
    stop_at = time.monotonic() + deadline

    def client() -> None:
        while time.monotonic() < stop_at:
            with lock:
                i = state["next"]
                if i >= count:
                    return
                state["next"] = i + 1
            send(ports[i % len(ports)], mix[i % len(mix)], ledger)

    workers = [threading.Thread(target=client, daemon=True) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(deadline + 5)
    assert state["next"] >= count, f"only {state['next']} of {count} requests in {deadline}s"


class Background(threading.Thread):
    """Requests of the mix, one after another, until ``stop()`` (at most ``limit`` requests
    or ``deadline`` seconds, whichever comes first): traffic while a fault is injected."""

    def __init__(self, port: int, ledger: Ledger, mix: Sequence[Req] = MIX,
                 limit: int = 20000, deadline: float = 90.0) -> None:
        super().__init__(daemon=True)
        self.port, self.ledger, self.mix, self.limit, self.deadline = (port, ledger, mix,
                                                                       limit, deadline)
        self._halt = threading.Event()
        self.sent = 0

    def run(self) -> None:
        stop_at = time.monotonic() + self.deadline
        while not self._halt.is_set() and self.sent < self.limit and time.monotonic() < stop_at:
            send(self.port, self.mix[self.sent % len(self.mix)], self.ledger)
            self.sent += 1

    def stop(self) -> int:
        self._halt.set()
        self.join(self.deadline)
        return self.sent

    def __enter__(self) -> "Background":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# -- PromQL assertions ---------------------------------------------------------------------------

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
            matchers = ",".join(f'{k}="{_escape(v)}"' for k, v in metric.items())
            raw = prom.api("query", query=f"{name}{{{matchers}}}[{window}]{at}")["result"]
            samples = [(round(float(t), 3), float(v)) for r in raw for t, v in r["values"]]
            drops = [(a, b) for a, b in zip(samples, samples[1:]) if b[1] < a[1]]
            detail.append(f"{name}{metric}: {value} reset(s); drops {drops}; samples {samples}")
        raise AssertionError(f"{scenario}: counters reset:\n" + "\n".join(detail))
    return checked


def counters_by(prom: Prometheus, metric: str, scenario: str, *labels: str) -> Dict[tuple, float]:
    return prom.by(f'sum by ({", ".join(labels)}) ({metric}{{job="{JOB}",scenario="{scenario}"}})',
                   *labels)


def wait_pid_gone(pid: int, timeout: float = 30.0) -> None:
    import psutil

    def gone() -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True
    until(gone, timeout=timeout, message=f"process {pid} to exit")


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def prometheus_binary() -> Optional[str]:
    return os.environ.get("PROMETHEUS") or shutil.which("prometheus")


def promtool_binary() -> Optional[str]:
    return os.environ.get("PROMTOOL") or shutil.which("promtool")


Condition = Callable[[], object]


# -- promtool on the samples of the live run ------------------------------------------------------

def _series_text(metric: dict) -> str:
    labels = {k: v for k, v in metric.items() if k != "__name__"}
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
    return f"{metric['__name__']}{{{inner}}}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


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


# -- Redis mode -----------------------------------------------------------------------------------

def redis_server_binary() -> Optional[str]:
    return shutil.which("redis-server")


class RedisServer:
    """Our own redis-server on a free loopback port (never the shared 6379), no persistence:
    ``stop()`` then ``start()`` gives an empty server on the same port, as a restarted Redis
    without a volume would be."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.port = free_port()
        self.workdir = workdir
        self.proc: Optional[Process] = None
        self.start()

    def start(self) -> "RedisServer":
        import redis

        self.proc = Process([self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
                             "--protected-mode", "no"], dict(os.environ))
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)
        until(client.ping, timeout=15, message=f"redis-server on port {self.port}")
        client.close()
        return self

    def stop(self) -> None:
        """SIGKILL: Redis vanishes at once, as a crashed or evicted pod does."""
        if self.proc is not None:
            self.proc.signal(signal.SIGKILL)
            self.proc.stop(timeout=5)
            self.proc = None

    def env(self, prefix: str) -> Dict[str, str]:
        """Settings of a gunicorn instance or of the standalone exporter using this server:
        fast flushes and short timeouts, so that the deadlines of the suite stay short."""
        return {"REDIS_ENABLED": "true", "REDIS_HOST": "127.0.0.1",
                "REDIS_PORT": str(self.port), "REDIS_KEY_PREFIX": prefix,
                "REDIS_FLUSH_INTERVAL": "0.2", "REDIS_SOCKET_TIMEOUT": "1"}


class StandaloneExporter(Process):
    """``gunicorn-prometheus-exporter serve`` on a free loopback port."""

    def __init__(self, env: Dict[str, str]) -> None:
        import socket
        import sys

        self.port = free_port()
        binary = str(Path(sys.executable).with_name("gunicorn-prometheus-exporter"))
        super().__init__([binary, "serve", "--port", str(self.port), "--bind", "127.0.0.1"],
                         {**os.environ, "PYTHONUNBUFFERED": "1", **env})

        def answers() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"exporter exited:\n{self.output()}")
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        until(answers, timeout=20, message="the standalone exporter to listen")

"""A real Prometheus for the end-to-end suite: the server on a free loopback port with
file_sd targets, and its HTTP API (instant and range queries, polling a PromQL expression
until it has the wanted value, alerts)."""
from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from support.procs import Process, free_port
from support.wait import until

JOB = "gunicorn-e2e"
SCRAPE_INTERVAL = 1.0


class PromError(AssertionError):
    pass


class Prometheus:
    """``prometheus`` on a free loopback port, scrape and evaluation interval 1 s, a temp TSDB.

    Targets come from a file_sd directory: ``add_target(port, scenario)`` writes one JSON file
    per target (labels ``scenario`` and ``job``), ``remove_target`` deletes it; Prometheus picks
    the change up through inotify (and a 1 s refresh)."""

    def __init__(self, binary: str, workdir: Path, rule_file: Optional[Path],
                 features: Sequence[str] = ()) -> None:
        """``features``: ``--enable-feature`` flags (``native-histograms``: protobuf
        scrapes, histograms with native buckets ingested as native only)."""
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
                "--web.enable-lifecycle",
                # exemplars are kept (test_e2e_exemplars.py); nothing else changes
                "--enable-feature=exemplar-storage"] + [f"--enable-feature={f}" for f in features]
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


def prometheus_binary() -> Optional[str]:
    return os.environ.get("PROMETHEUS") or shutil.which("prometheus")


def promtool_binary() -> Optional[str]:
    return os.environ.get("PROMTOOL") or shutil.which("promtool")


def escape_label(value: str) -> str:
    """A label value as written between double quotes in PromQL and the text format."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

"""Real gunicorn (and exporter) processes for tests, on free loopback ports, always
stopped at the end, with their output kept for failure messages."""
from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

from .ports import free_port
from .scrape import Scrape, scrape
from .wait import until

REPO = Path(__file__).resolve().parents[2]
DEMO_APP = "gunicorn_prometheus_exporter.demo.app:app"
EXE = str(Path(sys.executable).with_name("gunicorn-prometheus-exporter"))


def gunicorn_bin() -> str:
    return str(Path(sys.executable).with_name("gunicorn"))


class Process:
    """A child process whose output goes to a temp file."""

    def __init__(self, args: List[str], env: Dict[str, str], cwd: Optional[str] = None):
        self.args = args
        self.log_path = tempfile.NamedTemporaryFile(prefix="gpe-proc-", suffix=".log",
                                                    delete=False).name
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        self._log.flush()
        return Path(self.log_path).read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> Optional[int]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        try:  # nothing of the process group may outlive the test
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._log.close()
        return self.proc.returncode


class Gunicorn(Process):
    """gunicorn with the plugin, app on ``port``, metrics on ``metrics_port``."""

    def __init__(self, tmp: Path, app: str = DEMO_APP, worker_class: str = "sync",
                 workers: int = 2, extra_args: Optional[List[str]] = None,
                 env: Optional[Dict[str, str]] = None, config: Optional[str] = None,
                 gunicorn: Optional[str] = None) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        self.directory = str(tmp / f"mp-{self.port}")
        classes = {"sync": "gunicorn_prometheus_exporter.PrometheusWorker",
                   "gthread": "gunicorn_prometheus_exporter.PrometheusThreadWorker"}
        full_env = {**os.environ, "PROMETHEUS_METRICS_PORT": str(self.metrics_port),
                    "PROMETHEUS_BIND_ADDRESS": "127.0.0.1",
                    "PROMETHEUS_MULTIPROC_DIR": self.directory,
                    "PYTHONUNBUFFERED": "1", **(env or {})}
        args = [gunicorn or gunicorn_bin(), "--bind", f"127.0.0.1:{self.port}",
                "--workers", str(workers), "--worker-class",
                classes.get(worker_class, worker_class), "--graceful-timeout", "5"]
        if _has_control_socket(gunicorn):
            args += ["--control-socket", str(tmp / f"ctl-{self.port}.sock")]
        if config:
            args += ["--config", config]
        args += (extra_args or []) + [app]
        super().__init__(args, full_env, cwd=str(tmp))

    def wait_ready(self, workers: Optional[int] = None, timeout: float = 30.0) -> "Gunicorn":
        """Wait until the app port accepts connections and ``workers`` workers report to the
        metrics port (no request is sent to the app, so none is counted)."""
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"gunicorn exited: {self.output()}")
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            if workers is None:
                return True
            return len(self.scrape().series("gunicorn_worker_capacity")) == workers
        try:
            until(ready, timeout=timeout, message="gunicorn to be ready")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- gunicorn output ---\n{self.output()}") from None
        return self

    def request(self, path: str, method: str = "GET", body: Optional[bytes] = None,
                headers: Optional[dict] = None, timeout: float = 30.0):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            headers = headers or {}
            chunked = headers.get("Transfer-Encoding") == "chunked"
            conn.request(method, path, body=body, headers=headers, encode_chunked=chunked)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def scrape(self) -> Scrape:
        return scrape(self.metrics_port)

    def scrape_until(self, condition, timeout: float = 10.0) -> Scrape:
        """Requests are recorded after their last byte is sent, so a client can be faster
        than the record: poll the metrics until ``condition(scrape)`` holds."""
        last = []

        def check():
            s = self.scrape()
            last[:] = [s]
            return s if condition(s) else None

        try:
            return until(check, timeout=timeout, message="the expected metrics")
        except AssertionError:
            raise AssertionError("metrics never matched; last scrape:\n"
                                 + (last[0].text if last else "(none)")) from None

    def monitor_pid(self) -> Optional[int]:
        """The metrics server process (from the master's log line)."""
        import re

        found = re.findall(r"(?:serving metrics at \S+|starting it again) \(pid (\d+)\)",
                           self.output())
        return int(found[-1]) if found else None

    def worker_pids(self) -> List[int]:
        """Live worker processes of this master (its children but the metrics server)."""
        import psutil

        try:
            children = psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return []
        monitor = self.monitor_pid()
        return sorted(c.pid for c in children
                      if c.pid != monitor and c.status() != psutil.STATUS_ZOMBIE)


def base_env(port: int, directory: Path, **extra: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PROMETHEUS_", "REDIS_", "GUNICORN_"))}
    return {**env, "PROMETHEUS_METRICS_PORT": str(port), "PROMETHEUS_BIND_ADDRESS": "127.0.0.1",
            "PROMETHEUS_MULTIPROC_DIR": str(directory), "PYTHONUNBUFFERED": "1", **extra}


class Serve(Process):
    """The standalone exporter (``serve``) over ``directory``; ``command`` runs it another
    way than the installed script (it must take the same arguments)."""

    def __init__(self, tmp: Path, directory: Path, args: Optional[List[str]] = None,
                 command: Optional[List[str]] = None, **env: str) -> None:
        self.port = free_port()
        super().__init__([*(command or [EXE]), "serve", *(args or [])],
                         base_env(self.port, directory, **env), cwd=str(tmp))

    def wait_listening(self, timeout: float = 20.0) -> "Serve":
        def up():
            if self.proc.poll() is not None:
                return "exited"
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return "up"
        if until(up, timeout=timeout, message="serve to listen") == "exited":
            raise AssertionError(f"serve exited {self.proc.returncode}:\n{self.output()}")
        return self


def _has_control_socket(gunicorn: Optional[str]) -> bool:
    """gunicorn >= 25.1 opens a control socket in the home directory by default; tests
    give each instance its own path instead."""
    from importlib import metadata

    if gunicorn is not None:
        return False
    try:
        major, minor = (int(x) for x in metadata.version("gunicorn").split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (25, 1)

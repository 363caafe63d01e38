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

from .gunicorn_flags import control_socket_args
from .ports import free_port
from .scrape import Scrape, scrape, scrape_until
from .wait import until

REPO = Path(__file__).resolve().parents[2]
DEMO_APP = "gunicorn_prometheus_exporter.demo.app:app"


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
        if gunicorn is None:  # the flag fits the installed gunicorn, not another binary
            args += control_socket_args(str(tmp / f"ctl-{self.port}.sock"))
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

    def scrape_until(self, condition, timeout: float = 10.0, message: str = "") -> Scrape:
        return scrape_until(self.metrics_port, condition, timeout, message, self.output)

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


    def dirty_pids(self) -> List[int]:
        """gunicorn 27's dirty workers: the children of the dirty arbiter, the one child of
        the master that has children (HTTP workers and the metrics process have none)."""
        import psutil

        return sorted(p.pid for child in psutil.Process(self.pid).children()
                      for p in child.children() if p.status() != psutil.STATUS_ZOMBIE)


class Exporter(Process):
    """``gunicorn-prometheus-exporter serve`` on a free loopback port (Redis storage: the
    tests give it ``REDIS_*`` in ``env``)."""

    def __init__(self, env: Dict[str, str]) -> None:
        self.port = free_port()
        full = {**os.environ, "PYTHONUNBUFFERED": "1", "REDIS_ENABLED": "true", **env}
        super().__init__([exporter_bin(), "serve", "--port", str(self.port),
                          "--bind", "127.0.0.1"], full)
        until(self._answers, timeout=20, message="the exporter to listen")

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"exporter exited: {self.output()}")
        socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        return True

    def scrape(self) -> Scrape:
        return scrape(self.port)

    def scrape_until(self, condition, timeout: float = 20.0, message: str = "") -> Scrape:
        return scrape_until(self.port, condition, timeout, message, self.output)


def exporter_bin() -> str:
    return str(Path(sys.executable).with_name("gunicorn-prometheus-exporter"))


def base_env(port: int, directory: Path, **extra: str) -> Dict[str, str]:
    """The environment of a standalone exporter on ``port`` reading ``directory``, free of
    the caller's own exporter settings."""
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
        super().__init__([*(command or [exporter_bin()]), "serve", *(args or [])],
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


def wait_pid_gone(pid: int, timeout: float = 30.0) -> None:
    """Until process ``pid`` has exited (a zombie counts as exited)."""
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

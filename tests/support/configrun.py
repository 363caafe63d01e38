"""Running gunicorn and ``check-config`` on configurations that must fail: each stops
with one line, before any worker."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .gunicorn_flags import control_socket_args
from .procs import DEMO_APP, free_port, gunicorn_bin

EXE = str(Path(sys.executable).with_name("gunicorn-prometheus-exporter"))
PREFIX = "gunicorn-prometheus-exporter: config error: "
WORKER = "gunicorn_prometheus_exporter.PrometheusWorker"


def ctl(path: Path) -> List[str]:
    return control_socket_args(str(path))


def clean_env(**extra: str) -> Dict[str, str]:
    """The test's environment without any setting of ours, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PROMETHEUS_", "REDIS_", "GUNICORN_", "CLEANUP_", "NODE_NAME"))}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def run_gunicorn(tmp: Path, env: Dict[str, str], conf: Optional[str] = None,
                 timeout: float = 30.0, port: Optional[int] = None) -> Tuple[int, str]:
    """Run gunicorn to its end (a config error ends it); returns (status, output)."""
    args = [gunicorn_bin(), "--bind", f"127.0.0.1:{port or free_port()}", "--worker-class", WORKER,
            "--workers", "1", *ctl(tmp / "ctl.sock")]
    if conf:
        args += ["--config", conf]
    proc = subprocess.Popen(args + [DEMO_APP], env=env, cwd=str(tmp), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"gunicorn did not stop on its own:\n{out}") from None
    return proc.returncode, out


def yaml_conf(tmp: Path, text: str) -> Tuple[Path, Path]:
    """A YAML file and a gunicorn.conf.py that loads it the original's way."""
    config = tmp / "exporter.yml"
    config.write_text(text)
    conf = tmp / "gunicorn.conf.py"
    conf.write_text("from gunicorn_prometheus_exporter import load_yaml_config\n"
                    f"load_yaml_config({str(config)!r})\n"
                    f"worker_class = {WORKER!r}\n")
    return config, conf


def assert_one_line_and_no_worker(status: int, output: str, expected: str) -> None:
    assert status != 0
    assert "Booting worker" not in output
    assert "Listening at" not in output
    assert output.strip().splitlines() == [PREFIX + expected], output

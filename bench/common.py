"""Plumbing shared by the benchmarks: ports, readiness, gunicorn, a client of bounded
concurrency, wrk, CPU time of a process tree."""
from __future__ import annotations

import importlib.util
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Dict, List, Optional, Sequence, Tuple, Union

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.gunicorn_flags import control_socket_args  # noqa: E402
from support.ports import free_port  # noqa: E402  (re-exported to the benchmarks)


def wait_port(port: int, timeout: float = 20.0,
              proc: Optional[subprocess.Popen] = None) -> None:
    """Until something accepts on ``port``; fails early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc is not None and proc.poll() is not None:
                break
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def send_requests(port: int, count: int, keep_alive: bool, request: bytes,
                  clients: int) -> None:
    """``count`` requests over ``clients`` connections at once (threads; the sync worker
    gets a new connection per request), each request read to the end of its body."""
    shares = [count // clients + (i < count % clients) for i in range(clients)]
    with ThreadPoolExecutor(clients) as pool:
        done = [pool.submit(_serial, port, n, keep_alive, request) for n in shares if n]
        for future in done:
            future.result()


def _serial(port: int, count: int, keep_alive: bool, request: bytes) -> None:
    """``count`` requests one after another on one connection (or one each)."""
    sock = None
    try:
        for _ in range(count):
            if sock is None:
                sock = socket.create_connection(("127.0.0.1", port), timeout=300)
            sock.sendall(request % (b"" if keep_alive else b"Connection: close\r\n"))
            _read_response(sock)
            if not keep_alive:
                sock.close()
                sock = None
    finally:
        if sock is not None:
            sock.close()


def _read_response(sock: socket.socket) -> None:
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += _recv(sock, buf)
    head, _, body = buf.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))
    while len(body) < length:
        body += _recv(sock, head + body)


def _recv(sock: socket.socket, so_far: bytes) -> bytes:
    chunk = sock.recv(65536)
    if not chunk:
        raise RuntimeError(f"connection closed after {so_far!r}")
    return chunk


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of a process and all its descendants."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


#: the environment of the plugin's Python path (its compiled module switched off)
PYTHON_PATH_ENV = {"GUNICORN_PROMETHEUS_NO_SPEEDUPS": "1"}


def tree_environments(compare_to: Optional[str]) -> Dict[str, Dict[str, str]]:
    """The environment to run each plugin tree in: this checkout's, and with ``--compare-to
    DIR`` the package found in DIR first on PYTHONPATH ("compared")."""
    trees: Dict[str, Dict[str, str]] = {"this tree": {}}
    if compare_to:
        trees["compared"] = {"PYTHONPATH": os.path.abspath(compare_to)}
    return trees


def wrk(port: int, duration: int, connections: int, threads: int = 1,
        stagger_ms: int = 0) -> Dict[str, object]:
    """One wrk run against ``http://127.0.0.1:port/``. ``stagger_ms``: open the connections
    one at a time, that many milliseconds apart (one wrk thread per connection, each thread
    started after the previous one's ``setup`` slept), as clients arriving over time do,
    instead of all within the first millisecond."""
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s"]
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        if stagger_ms:
            script.write(f'function setup(thread)\n  os.execute("sleep {stagger_ms / 1000}")\n'
                         f'end\n')
            script.flush()
            command = ["wrk", f"-t{connections}", f"-c{connections}", f"-d{duration}s",
                       "-s", script.name]
        out = subprocess.run([*command, f"http://127.0.0.1:{port}/"], capture_output=True,
                             text=True, timeout=duration + 60).stdout
    errors = re.search(r"Socket errors: (.*)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "requests": int(re.search(r"(\d+) requests in", out).group(1)),
            "errors": errors.group(1) if errors else "",
            "non2xx": int(non2xx.group(1)) if non2xx else 0}


def start_gunicorn(worker_class: str, app: str, tmp: str, *, workers: int = 1,
                   chdir: Optional[str] = None, args: Sequence[str] = (),
                   env: Optional[Dict[str, str]] = None, prefix: Sequence[str] = (),
                   output: Union[int, IO] = subprocess.DEVNULL,
                   new_session: bool = False) -> Tuple[subprocess.Popen, int]:
    """gunicorn serving ``app`` on a free loopback port, the plugin's metrics on another and
    its directory (and gunicorn's control socket) under ``tmp``; ``prefix`` runs it under
    another command (valgrind). Returns the process and the app's port."""
    port = free_port()
    full_env = {**os.environ, "PROMETHEUS_METRICS_PORT": str(free_port()),
                "PROMETHEUS_BIND_ADDRESS": "127.0.0.1",
                "PROMETHEUS_MULTIPROC_DIR": os.path.join(tmp, f"mp-{port}"), **(env or {})}
    gunicorn = str(Path(sys.executable).with_name("gunicorn"))
    command = [*prefix, sys.executable, gunicorn, "-b", f"127.0.0.1:{port}",
               "-w", str(workers), "-k", worker_class, "--chdir", chdir or tmp,
               *control_socket_args(os.path.join(tmp, f"ctl-{port}")), *args, app]
    proc = subprocess.Popen(command, env=full_env, stdout=output, stderr=subprocess.STDOUT,
                            start_new_session=new_session)
    return proc, port


def wrk_cpu(proc: subprocess.Popen, port: int, duration: int, connections: int,
            threads: int = 1, stagger_ms: int = 0) -> Tuple[float, float]:
    """One wrk run after a one-second warm-up at the same concurrency: requests/s, and µs
    of CPU per request of ``proc`` and all its children (steadier than requests/s on a busy
    machine)."""
    wrk(port, 1, connections, threads=threads, stagger_ms=stagger_ms)
    before = cpu_seconds(proc.pid)
    run = wrk(port, duration, connections, threads=threads, stagger_ms=stagger_ms)
    cpu = cpu_seconds(proc.pid) - before
    return run["rps"], cpu / run["requests"] * 1e6


def runnable(cases: Dict[str, Sequence[str]]) -> List[str]:
    """The benchmark cases (name -> the modules each needs) that can run, in order; one
    line for each case skipped, naming the first of its modules that cannot be imported
    (an ``asgi`` worker needs gunicorn 24 or later, which the oldest supported lacks)."""
    found = []
    for case, modules in cases.items():
        missing = next((m for m in modules if not _importable(m)), None)
        if missing is None:
            found.append(case)
        else:
            print(f"{case}: skipped, {missing} is not installed")
    return found


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False

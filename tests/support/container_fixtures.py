"""Fixtures and hooks of the container tests (tests/image, tests/kube), imported by their
conftest.py files.

* The images are built once per session by ``image/build.sh`` (``build_images``: once even when
  both folders ask; podman's or docker's layer cache makes a rebuild of unchanged sources take
  seconds). ``IMAGE_TEST_NO_BUILD=1`` uses the images
  as they are.
* Where no container runtime can be started, every container test skips with one reason (the
  same text, so ``pytest -rs`` shows one line); the Dockerfile lint and the static checks still run.
* Containers publish their ports on 127.0.0.1 only, on ports the runtime picks, and are always
  removed. Waiting is bounded polling with a deadline.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path
from typing import Iterator, Optional

import pytest

from support.containers import BUILD_SH, EXIT_MISSING, REPO, Runtime
from support.wait import until


def _build_sh(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(BUILD_SH), *args], capture_output=True, text=True, timeout=timeout
    )


def _one_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else "no output").removeprefix("build.sh: error: ")


# Why the container tests cannot run here (None: they can). Decided once per session, and
# reported by pytest_runtest_setup from this one place, so that `pytest -rs` folds every skip
# into a single line.
_UNAVAILABLE: dict[str, Optional[str]] = {}
_RUNTIME: list[Runtime] = []


def _probe_runtime() -> Optional[str]:
    proc = _build_sh("env")
    if proc.returncode != 0:
        message = _one_line(proc.stderr)
        return message if "runtime" in message else f"no container runtime: {message}"
    info = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    rt = Runtime(info)
    try:
        probe = rt.run("info", check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{rt.name} cannot be started: {exc}"
    if probe.returncode != 0:
        return f"{rt.name} cannot be started: {_one_line(probe.stderr)}"
    if not (REPO / "exporter" / "pyproject.toml").is_file():
        return "exporter/pyproject.toml missing: the package is not there to build yet"
    _RUNTIME.append(rt)
    return None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "container: needs a container runtime (podman or docker) and the built images"
    )


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("container") is None:
        return
    if "reason" not in _UNAVAILABLE:
        _UNAVAILABLE["reason"] = _probe_runtime()
    if _UNAVAILABLE["reason"]:
        pytest.skip(_UNAVAILABLE["reason"])


@pytest.fixture(scope="session")
def runtime() -> Runtime:
    """The container runtime (container tests only: pytest_runtest_setup checked it)."""
    if not _RUNTIME:
        pytest.skip(_UNAVAILABLE.get("reason") or "no container runtime")
    return _RUNTIME[0]


_BUILT: dict[str, dict[str, str]] = {}


def build_images(runtime: Runtime) -> dict[str, str]:
    """Build both images (once per session, whichever test folder asks first) and check that
    the runtime can start a container; skips the container tests when it cannot."""
    if "images" in _BUILT:
        return _BUILT["images"]
    if _UNAVAILABLE.get("reason"):
        pytest.skip(_UNAVAILABLE["reason"])
    if os.environ.get("IMAGE_TEST_NO_BUILD") != "1":
        started = time.monotonic()
        proc = _build_sh("build", timeout=1800)
        if proc.returncode == EXIT_MISSING:
            _UNAVAILABLE["reason"] = f"cannot build the images: {_one_line(proc.stderr)}"
            pytest.skip(_UNAVAILABLE["reason"])
        assert proc.returncode == 0, f"image/build.sh failed:\n{proc.stderr[-4000:]}"
        print(f"\nimage/build.sh build: {time.monotonic() - started:.0f}s")
    found = {"exporter": runtime.info["IMAGE"], "demo": runtime.info["DEMO_IMAGE"]}
    for ref in found.values():
        assert runtime.run("image", "inspect", ref, check=False).returncode == 0, f"{ref} missing"
    # Can this runtime start a container at all (OCI runtime, cgroups, network)?
    probe = runtime.run(
        "run", "--rm", "--entrypoint", "/bin/true", found["exporter"], check=False, timeout=120
    )
    if probe.returncode != 0:
        _UNAVAILABLE["reason"] = (
            f"{runtime.name} cannot start containers: {_one_line(probe.stderr)}"
        )
        pytest.skip(_UNAVAILABLE["reason"])
    _BUILT["images"] = found
    return found


@pytest.fixture(scope="session")
def images(runtime: Runtime) -> dict[str, str]:
    """Both images, built once per session (a missing build tool skips the container tests)."""
    return build_images(runtime)


@pytest.fixture(scope="session")
def docker_host(
    runtime: Runtime, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Optional[str]]:
    """A Docker-compatible API for testcontainers: the docker engine, or `podman system service`."""
    if not runtime.is_podman:
        yield os.environ.get("DOCKER_HOST")
        return
    docker = pytest.importorskip("docker", reason="python docker library not installed")
    state = Path(runtime.info.get("PODMAN_STATE") or tmp_path_factory.mktemp("podman"))
    sock = state / "api.sock"
    with contextlib.suppress(FileNotFoundError):
        sock.unlink()
    url = f"unix://{sock}"
    log = open(state / "api.log", "w")  # noqa: SIM115 - closed below
    service = subprocess.Popen(
        ["podman", "system", "service", "--time=0", url],
        env=runtime.env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def ping() -> bool:
        if service.poll() is not None:
            raise RuntimeError(f"podman system service exited {service.returncode}")
        client = docker.DockerClient(base_url=url, timeout=5)
        try:
            return bool(client.ping())
        finally:
            client.close()

    try:
        try:
            until(ping, timeout=30, message="podman system service answers")
        except (TimeoutError, RuntimeError) as exc:
            pytest.skip(f"podman system service cannot be started: {exc}")
        yield url
    finally:
        service.terminate()
        try:
            service.wait(timeout=15)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait(timeout=15)
        log.close()

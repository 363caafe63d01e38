"""The exporter image through the python `testcontainers` library.

Against podman's Docker-compatible API (`podman system service`, see conftest.docker_host) or a
docker engine. Ryuk (the reaper container) is disabled: its image cannot be pulled here and every
container is removed by the context manager anyway.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support.containers import (  # noqa: E402
    Runtime,
    container_marks,
    http_get,
    package_version,
    samples,
)
from support.wait import until  # noqa: E402

pytestmark = container_marks()


@pytest.fixture()
def tc_env(docker_host: Optional[str], monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("testcontainers", reason="testcontainers not installed")
    if docker_host:
        monkeypatch.setenv("DOCKER_HOST", docker_host)
    monkeypatch.setenv("TESTCONTAINERS_RYUK_DISABLED", "true")
    monkeypatch.setenv("TESTCONTAINERS_CONNECTION_MODE", "docker_host")
    from testcontainers.core.config import testcontainers_config

    # The config object reads the environment when first imported: set it as well.
    monkeypatch.setattr(testcontainers_config, "_ryuk_disabled", True, raising=False)


def test_exporter_through_testcontainers(
    runtime: Runtime, images: dict[str, str], tc_env: None
) -> None:
    from testcontainers.core.container import DockerContainer

    container = DockerContainer(images["exporter"]).with_kwargs(read_only=True)
    # Published on loopback only, on a port the runtime picks (docker-py: (host_ip, host_port)).
    container.ports["9091/tcp"] = ("127.0.0.1", None)  # type: ignore[assignment]
    with container:
        port = int(container.get_exposed_port(9091))

        def scrape() -> str:
            status, body = http_get(f"http://127.0.0.1:{port}/metrics")
            return body if status == 200 else ""

        body = until(scrape, timeout=30, message="exporter /metrics through testcontainers")
        assert any(
            f'version="{package_version()}"' in labels
            for labels, _ in samples(body, "gunicorn_exporter_build_info")
        ), body[:2000]
        result = container.exec(["id", "-u"])
        assert result.exit_code == 0 and result.output.decode().strip() == "65532"
        attrs = container.get_wrapped_container().attrs
        assert attrs["Config"]["User"] == "65532:65532"
        assert attrs["HostConfig"]["ReadonlyRootfs"] is True
        bindings = attrs["HostConfig"]["PortBindings"]["9091/tcp"]
        assert all(b["HostIp"] == "127.0.0.1" for b in bindings), bindings

"""The exporter image run from the host with the runtime's CLI (podman or docker)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support.containers import (  # noqa: E402
    Runtime,
    container_marks,
    http_get,
    package_version,
    samples,
    fail_if_feature_missing,
)
from support.wait import until  # noqa: E402

pytestmark = container_marks()

UID = "65532"
MB = 1_000_000
# Paths the runtime itself manages (bind-mounted hosts/resolv.conf, .containerenv).
RUNTIME_PATHS = {
    "/etc",
    "/etc/hosts",
    "/etc/hostname",
    "/etc/resolv.conf",
    "/run",
    "/var/run",
    "/run/.containerenv",
    "/run/secrets",
    "/dev",
    "/proc",
    "/sys",
}


def metrics_ready(port: int) -> str:
    status, body = http_get(f"http://127.0.0.1:{port}/metrics")
    return body if status == 200 else ""


def wait_metrics(runtime: Runtime, cid: str, port: int, what: str) -> str:
    """The body of the first 200 from /metrics; fails at once if the container exits."""
    return until(lambda: metrics_ready(port), timeout=20, message=what,
                 abort=lambda: runtime.exited(cid))


def test_default_run_serves_metrics(runtime: Runtime, images: dict[str, str]) -> None:
    """`run -p 9091:9091 IMAGE` with no other argument serves /metrics within seconds."""
    started = time.monotonic()
    with runtime.container(images["exporter"], "-p", "127.0.0.1::9091") as cid:
        port = runtime.port(cid, 9091)
        body = wait_metrics(runtime, cid, port, "exporter /metrics answers 200")
        elapsed = time.monotonic() - started
        assert elapsed < 15, f"/metrics took {elapsed:.1f}s"
        build_info = samples(body, "gunicorn_exporter_build_info")
        assert build_info, body[:2000]
        assert any(f'version="{package_version()}"' in labels for labels, _ in build_info), (
            build_info
        )
        assert http_get(f"http://127.0.0.1:{port}/-/healthy")[0] == 200
        # Nothing written outside the volume (podman/docker diff of the root filesystem).
        changed = runtime.run("diff", cid).stdout.split()
        paths = {p for p in changed if p.startswith("/")} - RUNTIME_PATHS
        assert not paths, f"files written in the container's root filesystem: {sorted(paths)}"


def test_runs_as_uid_65532(runtime: Runtime, images: dict[str, str]) -> None:
    assert runtime.inspect(images["exporter"], "image")["Config"]["User"] == f"{UID}:{UID}"
    with runtime.container(images["exporter"], "-p", "127.0.0.1::9091") as cid:
        wait_metrics(runtime, cid, runtime.port(cid, 9091), "exporter /metrics")
        assert runtime.run("exec", cid, "id", "-u").stdout.strip() == UID
        status = runtime.run("exec", cid, "cat", "/proc/1/status").stdout
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
        assert uids == [UID] * 4, f"PID 1 (the exporter) runs as {uids}"


def test_read_only_root_filesystem(runtime: Runtime, images: dict[str, str]) -> None:
    with runtime.container(
        images["exporter"],
        *runtime.read_only_args(),
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "-p",
        "127.0.0.1::9091",
    ) as cid:
        port = runtime.port(cid, 9091)
        body = wait_metrics(runtime, cid, port, "read-only exporter /metrics")
        assert samples(body, "gunicorn_exporter_build_info")
        # Still serving after a few more scrapes; the root filesystem refuses writes.
        for _ in range(3):
            assert metrics_ready(port)
        probe = runtime.run("exec", cid, "sh", "-c", "touch /opt/venv/x", check=False)
        assert probe.returncode != 0 and "Read-only file system" in probe.stderr
        assert runtime.inspect(cid)["State"]["Running"] is True


def test_missing_directory_is_a_metric(runtime: Runtime, images: dict[str, str]) -> None:
    """A multiprocess directory that does not exist is reported, not a crash loop."""
    with runtime.container(
        images["exporter"],
        "-e",
        "PROMETHEUS_MULTIPROC_DIR=/nonexistent/gpe",
        "-p",
        "127.0.0.1::9091",
    ) as cid:
        port = runtime.port(cid, 9091)
        body = wait_metrics(runtime, cid, port, "exporter /metrics")
        up = samples(body, "gunicorn_exporter_source_up")
        assert up and all(value == 0 for _, value in up), up
        assert runtime.inspect(cid)["State"]["Running"] is True


def test_unreachable_redis_is_a_metric(runtime: Runtime, images: dict[str, str]) -> None:
    """REDIS_ENABLED=true with no Redis: /metrics answers at once (no wait for Redis)."""
    with runtime.container(
        images["exporter"],
        *runtime.read_only_args(),
        "-e",
        "REDIS_ENABLED=true",
        "-e",
        "REDIS_URL=redis://127.0.0.1:1/0",
        "-p",
        "127.0.0.1::9091",
    ) as cid:
        port = runtime.port(cid, 9091)
        try:
            body = wait_metrics(runtime, cid, port, "exporter /metrics without Redis")
        except (TimeoutError, AssertionError):
            fail_if_feature_missing(runtime, cid, "Redis")
            raise
        up = [
            value
            for labels, value in samples(body, "gunicorn_exporter_source_up")
            if 'source="redis"' in labels
        ]
        assert up == [0], samples(body, "gunicorn_exporter_source_up")
        assert runtime.inspect(cid)["State"]["Running"] is True


def test_port_variable_is_honoured(runtime: Runtime, images: dict[str, str]) -> None:
    with runtime.container(
        images["exporter"], "-e", "PROMETHEUS_METRICS_PORT=9200", "-p", "127.0.0.1::9200"
    ) as cid:
        port = runtime.port(cid, 9200)
        wait_metrics(runtime, cid, port, "exporter /metrics on 9200")


def test_healthcheck(runtime: Runtime, images: dict[str, str]) -> None:
    cfg = runtime.inspect(images["exporter"], "image")
    health = cfg.get("Healthcheck") or cfg["Config"].get("Healthcheck") or {}
    assert health.get("Test") == ["CMD", "gunicorn-prometheus-exporter", "healthcheck"], cfg
    with runtime.container(images["exporter"], *runtime.read_only_args()) as cid:
        until(
            lambda: runtime.healthcheck_passes(cid, images["exporter"]),
            timeout=20,
            message="healthcheck passes",
            abort=lambda: runtime.exited(cid),
        )


def test_sigterm_stops_quickly(runtime: Runtime, images: dict[str, str]) -> None:
    with runtime.container(images["exporter"], "-p", "127.0.0.1::9091") as cid:
        wait_metrics(runtime, cid, runtime.port(cid, 9091), "exporter /metrics")
        started = time.monotonic()
        runtime.run("stop", "-t", "10", cid)
        elapsed = time.monotonic() - started
        state = runtime.inspect(cid)["State"]
        assert elapsed < 5, f"stop took {elapsed:.1f}s (SIGTERM ignored?)"
        assert state["ExitCode"] in (0, 143), f"exit code {state['ExitCode']} after SIGTERM"


def test_image_has_no_compiler_pip_or_caches(runtime: Runtime, images: dict[str, str]) -> None:
    script = (
        "for c in gcc cc c++ g++ clang make; do command -v $c; done; "
        "ls -d /opt/venv/bin/pip* /root/.cache /nonexistent /wheels /src /opt/build-venv "
        "2>/dev/null; "
        # (the base's own ensurepip wheels under /usr are the base's business)
        "find /opt /root /tmp /var /home -xdev \\( -name '*.whl' -o -path '*/.cache/pip' \\) "
        "2>/dev/null; true"
    )
    proc = runtime.run("run", "--rm", "--entrypoint", "/bin/sh", images["exporter"], "-c", script)
    assert proc.stdout.strip() == "", f"found in the final image:\n{proc.stdout}"


def test_oci_labels(runtime: Runtime, images: dict[str, str]) -> None:
    labels = runtime.inspect(images["exporter"], "image")["Config"]["Labels"]
    assert labels["org.opencontainers.image.title"] == "gunicorn-prometheus-exporter"
    assert labels["org.opencontainers.image.version"] == package_version()
    for key in ("description", "revision", "created", "licenses", "source", "base.name"):
        assert labels.get(f"org.opencontainers.image.{key}"), key


def test_size_over_base(runtime: Runtime, images: dict[str, str]) -> None:
    """Target: the exporter adds at most 25 MB to its (slim Python) base."""
    labels = runtime.inspect(images["exporter"], "image")["Config"]["Labels"]
    base = labels["org.opencontainers.image.base.name"]
    if runtime.run("image", "inspect", base, check=False).returncode != 0:
        pytest.skip(f"base image {base} not in local storage")
    size, base_size = runtime.image_size(images["exporter"]), runtime.image_size(base)
    added = size - base_size
    print(
        f"\n{images['exporter']}: {size / MB:.1f} MB; base {base}: {base_size / MB:.1f} MB; "
        f"adds {added / MB:.1f} MB"
    )
    assert added <= 25 * MB, f"adds {added / MB:.1f} MB to {base}"

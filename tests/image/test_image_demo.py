"""The demo image (gunicorn + the plugin), alone and with the exporter image as a sidecar."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support.ports import free_port  # noqa: E402
from support.redis import RedisServer  # noqa: E402
from support.containers import (  # noqa: E402
    Runtime,
    container_marks,
    http_get,
    samples,
    fail_if_feature_missing,
)
from support.wait import until  # noqa: E402

pytestmark = container_marks()

REQUESTS = 5


def get_ok(port: int, path: str) -> bool:
    try:
        return http_get(f"http://127.0.0.1:{port}{path}")[0] == 200
    except OSError:
        return False


def wait_for_app(port: int, abort: Callable[[], Optional[str]]) -> int:
    """Poll the app until it answers; return how many requests it served meanwhile."""
    served = 0

    def ready() -> bool:
        nonlocal served
        if get_ok(port, "/users/1"):
            served += 1
            return True
        return False

    until(ready, timeout=30, message="demo app answers on :8000", abort=abort)
    return served


def get_200_count(port: int) -> float:
    status, body = http_get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200, body[:500]
    return sum(
        value
        for labels, value in samples(body, "gunicorn_http_requests_total")
        # only the test's own requests (/users/<id>), not a HEALTHCHECK's GET /
        if 'method="GET"' in labels and 'status="200"' in labels and "/users" in labels
    )


def send_and_count(runtime: Runtime, app_port: int, metrics_port: int, *cids: str) -> None:
    """Requests to the app are counted exactly on the metrics port; fails at once if one of
    the containers ``cids`` exits."""

    def abort() -> Optional[str]:
        for cid in cids:
            reason = runtime.exited(cid)
            if reason:
                return reason
        return None

    served = wait_for_app(app_port, abort)
    for i in range(REQUESTS):
        assert get_ok(app_port, f"/users/{i + 2}")
    expected = served + REQUESTS
    # The count reaches exactly what was sent (bounded wait, then exact).
    try:
        until(
            lambda: get_200_count(metrics_port) >= expected,
            timeout=20,
            message="requests counted on :9091",
            abort=abort,
        )
    except TimeoutError as exc:
        try:
            counted = str(get_200_count(metrics_port))
        except Exception as error:  # noqa: BLE001 - only for the message
            counted = f"nothing ({error!r})"
        raise AssertionError(f"counted {counted} GET 200 requests, sent {expected}") from exc
    assert get_200_count(metrics_port) == expected


def test_demo_request_is_counted(runtime: Runtime, images: dict[str, str]) -> None:
    with runtime.container(
        images["demo"],
        *runtime.read_only_args(),
        "-p",
        "127.0.0.1::8000",
        "-p",
        "127.0.0.1::9091",
    ) as cid:
        app_port, metrics_port = runtime.port(cid, 8000), runtime.port(cid, 9091)
        send_and_count(runtime, app_port, metrics_port, cid)
        status = runtime.run("exec", cid, "cat", "/proc/1/status").stdout
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
        assert uids == ["65532"] * 4, f"gunicorn master runs as {uids}"


def test_sidecar_exporter_reads_demo_directory(runtime: Runtime, images: dict[str, str]) -> None:
    """Sidecar topology: the app records into a shared volume, the exporter image serves it."""
    volume = f"gpe-test-{uuid.uuid4().hex[:12]}"
    runtime.run("volume", "create", volume)
    mount = "/var/run/gunicorn-prometheus"
    try:
        with (
            runtime.container(
                images["demo"],
                *runtime.read_only_args(),
                "-v",
                f"{volume}:{mount}",
                "-e",
                "PROMETHEUS_METRICS_SERVER=false",
                "-p",
                "127.0.0.1::8000",
            ) as app,
            runtime.container(
                images["exporter"],
                *runtime.read_only_args(),
                "-v",
                f"{volume}:{mount}:ro",
                "-p",
                "127.0.0.1::9091",
            ) as exporter,
        ):
            send_and_count(
                runtime, runtime.port(app, 8000), runtime.port(exporter, 9091), app, exporter
            )
            # Both images' HEALTHCHECKs hold in this topology (the demo's probes the app).
            assert runtime.healthcheck_passes(app, images["demo"])
            assert runtime.healthcheck_passes(exporter, images["exporter"])
    finally:
        runtime.run("volume", "rm", "-f", volume, check=False)


def test_daemonset_topology_with_redis(
    runtime: Runtime, images: dict[str, str], tmp_path: Path
) -> None:
    """DaemonSet topology: the demo writes to Redis, the exporter image serves it from Redis.

    A redis-server of the test's own on a loopback port; both containers use the host's network
    namespace and bind 127.0.0.1 only.
    """
    redis = RedisServer(tmp_path)
    redis_port, app_port, metrics_port = redis.port, free_port(), free_port()
    redis_env = [
        "-e",
        "REDIS_ENABLED=true",
        "-e",
        f"REDIS_URL=redis://127.0.0.1:{redis_port}/0",
        "-e",
        f"REDIS_KEY_PREFIX=gpe-image-test-{uuid.uuid4().hex[:8]}",
        "-e",
        "NODE_NAME=node-a",
    ]
    try:
        with (
            runtime.container(
                images["demo"],
                *runtime.read_only_args(),
                "--network",
                "host",
                *redis_env,
                "-e",
                f"GUNICORN_BIND=127.0.0.1:{app_port}",
                "-e",
                "PROMETHEUS_METRICS_SERVER=false",
            ) as app,
            runtime.container(
                images["exporter"],
                *runtime.read_only_args(),
                "--network",
                "host",
                *redis_env,
                "-e",
                "PROMETHEUS_BIND_ADDRESS=127.0.0.1",
                "-e",
                f"PROMETHEUS_METRICS_PORT={metrics_port}",
            ) as exporter,
        ):
            try:
                send_and_count(runtime, app_port, metrics_port, app, exporter)
            except Exception:
                fail_if_feature_missing(runtime, exporter, "Redis")
                fail_if_feature_missing(runtime, app, "Redis")
                raise
    finally:
        redis.stop()

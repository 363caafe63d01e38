"""``check-config`` prints bucket bounds exactly: its printed lists, copied back into a YAML
file, load as the same floats (they were once printed rounded, ``4.1943e+06``)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict

import yaml

EXE = str(Path(sys.executable).with_name("gunicorn-prometheus-exporter"))
KEYS = ("exporter.metrics.duration_buckets", "exporter.metrics.size_buckets")


def _printed(config: Path) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PROMETHEUS_", "REDIS_", "GUNICORN_", "CLEANUP_"))}
    result = subprocess.run([EXE, "check-config", "--config", str(config)],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    out = {}
    for line in result.stdout.splitlines():
        key, sep, rest = line.partition(" = ")
        if key in KEYS:
            out[key] = rest.rsplit("  (", 1)[0]  # the value without its origin
    return out


def _yaml(path: Path, duration: str, size: str) -> Path:
    path.write_text(f"exporter:\n  metrics:\n    duration_buckets: {duration}\n"
                    f"    size_buckets: {size}\n")
    return path


def test_printed_buckets_round_trip_through_the_loader(tmp_path):
    from gunicorn_prometheus_exporter.config.loader import build
    from gunicorn_prometheus_exporter.config.schema import (DEFAULT_DURATION_BUCKETS,
                                                            DEFAULT_SIZE_BUCKETS)

    cases = {
        "defaults": (list(DEFAULT_DURATION_BUCKETS), list(DEFAULT_SIZE_BUCKETS)),
        "awkward": ([1e-05, 0.1, 0.30000000000000004, 1.0000001, 2500.0, 123456.789012345],
                    [1000, 4194304, 4194305, 67108864.5, 1e15 + 1]),
    }
    for name, (duration, size) in cases.items():
        first = _yaml(tmp_path / f"{name}.yml", repr(duration), repr(size))
        expected = build(str(first), {})
        printed = _printed(first)
        again = _yaml(tmp_path / f"{name}-again.yml", printed[KEYS[0]], printed[KEYS[1]])
        loaded = build(str(again), {})
        for key in KEYS:
            path = key[len("exporter."):]
            assert loaded.get(path) == expected.get(path), (name, key, printed[key])
            assert [float(x) for x in yaml.safe_load(printed[key])] == \
                list(expected.get(path)), (name, key)
        assert expected.get("metrics.size_buckets") == tuple(float(x) for x in size)

"""Configuration that must fail fast and in one line (issue 13): a corpus of malformed
configurations generated from the schema (every setting x wrong type, range, encoding and
structure, in YAML and in the environment) and from the web config's keys, plus whole-file
faults: alias bombs, 5,000-deep nesting, 5,000-digit integers, non-UTF-8, UTF-16 and NUL
bytes. Each is refused by ``check-config`` with exactly one line naming its input, exit 1;
through real gunicorn, before any worker."""
from __future__ import annotations

import os
import re
import resource
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from support.badconfig import Case, corpus
from support.configrun import (EXE, PREFIX, assert_one_line_and_no_worker, clean_env,
                               run_gunicorn, yaml_conf)

#: a case slower than this is a hang (the measured slowest is far below; see
#: docs/reliability.md), never a timing claim
HANG = 30.0
OUR_VARIABLES = ("PROMETHEUS_", "REDIS_", "GUNICORN_", "CLEANUP_", "NODE_NAME")


def _files(case: Case, tmp: Path) -> Tuple[List[str], Dict[str, str], Dict[str, str]]:
    """(check-config arguments, environment additions, {kind: path written})."""
    args, env, paths = ["check-config"], dict(case.env), {}
    if case.yaml is not None:
        path = tmp / "exporter.yml"
        path.write_bytes(case.yaml)
        args += ["--config", str(path)]
        paths["yaml"] = str(path)
    if case.web is not None:
        path = tmp / "web.yml"
        path.write_bytes(case.web)
        env["PROMETHEUS_WEB_CONFIG_FILE"] = str(path)
        paths["web"] = str(path)
    return args, env, paths


def _names_its_input(case: Case, line: str, paths: Dict[str, str]) -> bool:
    if case.names == "yaml":  # the file and a line
        return re.search(re.escape(paths["yaml"]) + r":\d+", line) is not None
    if case.names == "web":
        return paths["web"] in line
    return case.names in line  # the variable


def test_bad_config_corpus_each_refused_in_one_line(tmp_path, monkeypatch, capsys):
    """Every case of the corpus, through ``check-config`` in this process: exit status 1,
    nothing on stdout, exactly one line on stderr naming the input. The slowest case of
    each class is printed (figures in docs/reliability.md)."""
    from gunicorn_prometheus_exporter import cli

    for name in list(os.environ):
        if name.startswith(OUR_VARIABLES):
            monkeypatch.delenv(name)
    monkeypatch.delenv("GUNICORN_PROMETHEUS_CONFIG", raising=False)
    cases = corpus()
    assert len(cases) >= 325
    failures, timings = [], []
    for i, case in enumerate(cases):
        folder = tmp_path / str(i)
        folder.mkdir()
        args, env, paths = _files(case, folder)
        with monkeypatch.context() as m:
            for key, value in env.items():
                m.setenv(key, value)
            started = time.perf_counter()
            try:
                status = cli.main(args)
            except BaseException as exc:  # noqa: BLE001 - a traceback is the failure we look for
                status = f"raised {exc!r}"[:300]
            elapsed = time.perf_counter() - started
        out, err = capsys.readouterr()
        timings.append((elapsed, case.name))
        lines = err.splitlines()
        if (status != 1 or out or len(lines) != 1 or not lines[0].startswith(PREFIX)
                or not _names_its_input(case, lines[0], paths) or elapsed > HANG):
            failures.append((case.name, status, lines[:3], out[:200]))
    timings.sort(reverse=True)
    print(f"\n{len(cases)} malformed configurations; slowest: "
          + "; ".join(f"{name} {t * 1000:.1f} ms" for t, name in timings[:5]))
    assert failures == [], f"{len(failures)} of {len(cases)} not one clear line: {failures}"


#: one case of each class that used to hang or print a traceback
CLASSES = {
    "yaml metrics.duration_buckets alias bomb", "yaml prometheus.bind_address alias bomb",
    "yaml prometheus.metrics_port alias bomb", "yaml prometheus.metrics_port deep nesting",
    "yaml prometheus.metrics_port 5000 digits", "yaml metrics.sample_interval 5000 digits",
    "yaml metrics.duration_buckets 19999 bounds", "yaml file not UTF-8", "yaml file UTF-16 LE",
    "yaml file NUL byte", "yaml file deep nesting at the top",
    "env PROMETHEUS_BIND_ADDRESS not UTF-8", "env PROMETHEUS_METRICS_PORT 5000 digits",
    "web header alias bomb", "web header with CR LF", "web duplicate user",
    "web client_auth_type list", "web min_version list", "web file not UTF-8",
}


def _class_cases() -> List[Case]:
    cases = [c for c in corpus() if c.name in CLASSES]
    assert {c.name for c in cases} == CLASSES
    return cases


def _limit_memory() -> None:  # an alias bomb must fail, not take the machine's memory
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


@pytest.mark.parametrize("case", _class_cases(), ids=lambda c: c.name)
def test_bad_config_check_config_command_one_line(tmp_path, case):
    """The installed command, as a user runs it (1 GiB of address space at most)."""
    args, env, paths = _files(case, tmp_path)
    started = time.monotonic()
    result = subprocess.run([EXE, *args], capture_output=True, timeout=HANG,
                            env=clean_env(**env), preexec_fn=_limit_memory)
    elapsed = time.monotonic() - started
    lines = result.stderr.decode(errors="replace").splitlines()
    print(f"\n{case.name}: refused in {elapsed * 1000:.0f} ms (process included)")
    assert (result.returncode, result.stdout) == (1, b"")
    assert len(lines) == 1 and lines[0].startswith(PREFIX), lines
    assert _names_its_input(case, lines[0], paths), lines


@pytest.mark.parametrize("case", _class_cases(), ids=lambda c: c.name)
def test_bad_config_stops_gunicorn_before_any_worker(tmp_path, case):
    """Real gunicorn start-up (the YAML through load_yaml_config in gunicorn.conf.py, the
    web config and variables through the environment): one line, exit 1, no worker."""
    _, env, paths = _files(case, tmp_path)
    conf = None
    if case.yaml is not None:
        config, conf_path = yaml_conf(tmp_path, "")
        config.write_bytes(case.yaml)
        paths["yaml"], conf = str(config), str(conf_path)
    status, output = run_gunicorn(tmp_path, clean_env(**env), conf)
    line = output.strip().splitlines()[-1] if output.strip() else ""
    assert status == 1, output[-2000:]
    assert_one_line_and_no_worker(status, output, line[len(PREFIX):])
    assert _names_its_input(case, line, paths), line

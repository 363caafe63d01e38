"""Every worker type runs its example config and app under real gunicorn and records the
fixed mix exactly (tests/frameworks/mix.py)."""
import pytest

from frameworks.mix import (FASTAPI, FLASK, Example, eventlet_gunicorn, exporter_path_env,
                            require, run_mix)
from gunicorn_prometheus_exporter import speedups

WSGI = [
    ("sync", "gunicorn_simple.conf.py", ()),
    ("gthread", "gunicorn_thread_worker.conf.py", ()),
    ("gevent", "gunicorn_gevent_async.conf.py", ("gevent",)),
]
ASGI = [
    ("asgi", "gunicorn_asgi.conf.py", ()),
    ("uvicorn", "gunicorn_uvicorn.conf.py", ("uvicorn", "uvicorn_worker")),
]


@pytest.mark.parametrize("name,config,packages", WSGI, ids=[w[0] for w in WSGI])
def test_wsgi_worker_records_the_mix(tmp_path, name, config, packages):
    require("flask", *packages)
    g = Example(tmp_path, config, FLASK.module, workers=2)
    try:
        g.wait_ready(workers=2)
        run_mix(g, FLASK)
    finally:
        g.stop()


@pytest.mark.parametrize("name,config,packages", ASGI, ids=[w[0] for w in ASGI])
def test_asgi_worker_records_the_mix(tmp_path, name, config, packages):
    require("fastapi", *packages)
    g = Example(tmp_path, config, FASTAPI.module, workers=2)
    try:
        g.wait_ready(workers=2)
        run_mix(g, FASTAPI)
        if speedups.load() is not None:  # this process and the workers load the same module
            assert "request path compiled (C speedups)" in g.output()
    finally:
        g.stop()


def test_eventlet_worker_records_the_mix(tmp_path):
    gunicorn = eventlet_gunicorn()
    g = Example(tmp_path, "gunicorn_eventlet_async.conf.py", FLASK.module, workers=2,
                gunicorn=gunicorn, env=exporter_path_env())
    try:
        g.wait_ready(workers=2)
        run_mix(g, FLASK)
    finally:
        g.stop()


@pytest.mark.parametrize("name,config,mix,packages", [
    ("gthread", "gunicorn_thread_worker.conf.py", FLASK, ("flask",)),
    ("asgi", "gunicorn_asgi.conf.py", FASTAPI, ("fastapi",)),
], ids=["gthread", "asgi"])
def test_the_python_request_path_records_the_mix_too(tmp_path, name, config, mix, packages):
    """The tests above run the compiled request path where it is built; switched off, the
    Python path records the same mix exactly."""
    require(*packages)
    g = Example(tmp_path, config, mix.module, workers=2, env={speedups.SWITCH_ENV: "1"})
    try:
        g.wait_ready(workers=2)
        run_mix(g, mix)
        assert f"request path Python ({speedups.SWITCH_ENV} is set)" in g.output()
    finally:
        g.stop()

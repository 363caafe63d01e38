"""Every worker type runs its example config and app under real gunicorn and records the
fixed mix exactly (tests/frameworks/mix.py)."""
import pytest

from frameworks.mix import (FASTAPI, FLASK, Example, eventlet_gunicorn, exporter_path_env,
                            require, run_mix)

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

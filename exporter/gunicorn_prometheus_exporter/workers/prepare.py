"""What a process needs before the application is imported, done when gunicorn imports a
Prometheus worker class (``mixin``): prometheus_client's multiprocess values routed to the
plugin's directory and worker identities, the web config checked, gunicorn's error log counted by level, and
secrets masked in gunicorn's log."""
from __future__ import annotations

from .. import config, identity, logcount, redact
from ..server import webconfig


def process() -> None:
    settings = config.settings()
    # gunicorn imports the worker class before it listens: a bad web config (like a bad
    # setting) stops it here with one line, before anything is started
    webconfig.from_settings(settings)
    identity.route_prometheus_client(settings.multiproc_dir)
    logcount.counter()
    redact.install()

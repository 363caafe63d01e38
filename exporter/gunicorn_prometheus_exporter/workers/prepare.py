"""What a process needs before the application is imported, done when gunicorn imports a
Prometheus worker class (``mixin``): prometheus_client's multiprocess values routed to the
plugin's directory and worker identities, gunicorn's error log counted by level, and
secrets masked in gunicorn's log."""
from __future__ import annotations

from .. import config, identity, logcount, redact


def process() -> None:
    identity.route_prometheus_client(config.settings().multiproc_dir)
    logcount.counter()
    redact.install()

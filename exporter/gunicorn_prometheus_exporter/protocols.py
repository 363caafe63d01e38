"""What a request came over, beyond HTTP/1.1: the ``protocol`` label of
``gunicorn_http_protocol_requests_total``.

Most requests are HTTP/1.1, and those pay one comparison: only the others are counted
(HTTP/1.0, HTTP/2, WebSocket upgrades), so the request families keep their series and the
HTTP/1.1 share is the rest of ``gunicorn_http_requests_total``."""
from __future__ import annotations

from typing import Optional

#: the usual request's WSGI SERVER_PROTOCOL, and ASGI scope key and value
USUAL = "HTTP/1.1"
ASGI_USUAL = ("http_version", "1.1")
WEBSOCKET = "websocket"
#: the series every worker has from the start, at zero
PREPARED = ("HTTP/1.0", "HTTP/2")

_LABELS = {
    "HTTP/1.0": "HTTP/1.0", "HTTP/2.0": "HTTP/2", "HTTP/2": "HTTP/2", "HTTP/3": "HTTP/3",
    "HTTP/3.0": "HTTP/3",
    # the ASGI scope's http_version
    "1.0": "HTTP/1.0", "2": "HTTP/2", "2.0": "HTTP/2", "3": "HTTP/3",
}


def label(version: Optional[str]) -> str:
    """The label of a SERVER_PROTOCOL or http_version; anything unknown is ``other`` (a
    client cannot add series)."""
    return _LABELS.get(version, "other") if version else "other"

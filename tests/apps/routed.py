"""Answers with the status the query asks for (``?status=404``) and, with ``?template=...``,
reports that route template in the environ the way framework adapters do (``?template=``
empty: an empty template; ``?template=object``: a non-string object)."""
from urllib.parse import parse_qs

from gunicorn_prometheus_exporter.frameworks import ROUTE_ENVIRON_KEY


class _Rule:
    """A framework's route object that is not a string (and not hashable)."""

    __hash__ = None  # type: ignore[assignment]

    def __str__(self) -> str:
        return "/rule/<id>"


def app(environ, start_response):
    query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    status = query.get("status", ["200"])[0]
    if "template" in query:
        template = query["template"][0]
        environ[ROUTE_ENVIRON_KEY] = _Rule() if template == "object" else template
    start_response(f"{status} X", [("Content-Type", "text/plain"), ("Content-Length", "3")])
    return [b"ok\n"]

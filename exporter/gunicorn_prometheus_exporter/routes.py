"""Bounded ``route`` label values.

Until a framework reports the matched route template (an app or adapter puts it in the WSGI
environ under ``ROUTE_ENVIRON_KEY``), the route is the path with ids collapsed: numbers,
UUIDs, long hex strings and long random tokens become ``{id}``-style placeholders, after the
user's own regex rules. Two further bounds keep a scan from exploding the series count:

* a path answered with 404 that no earlier non-404 response made known is recorded as
  ``unmatched``: scanners' random paths add one series, not one per path;
* at most ``cap`` distinct routes are admitted across all workers of the directory (a shared
  table under a lock, consulted only the first time a worker meets a route); later routes
  are recorded as ``other``.
"""
from __future__ import annotations

import fcntl
import os
import re
from typing import Dict, Optional, Pattern, Sequence, Set, Tuple

from .storage.mmap_file import cannot_store

ROUTE_ENVIRON_KEY = "gunicorn_prometheus_exporter.route"
UNMATCHED = "unmatched"
OVERFLOW = "other"
MAX_ROUTE_LENGTH = 200
_CACHE_LIMIT = 8192

_UUID = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?"
                   r"[0-9a-fA-F]{12}$")
_HEX = re.compile(r"^(?=.*\d)[0-9a-fA-F]{8,}$")
_TOKEN = re.compile(r"^(?=.*\d)(?=.*[A-Za-z])[A-Za-z0-9_\-=.~]{20,}$")

METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS",
                     "TRACE", "PATCH"))


_STATUS = {code: str(code) for code in range(100, 600)}


def status_label(code: Optional[int]) -> str:
    """The ``status`` label of a response code (500 when none was sent), without building
    a new string per request."""
    return _STATUS.get(code) or str(code or 500)  # type: ignore[arg-type]


def method_label(method: Optional[str]) -> str:
    return method if method in METHODS else "other"


def _segment(segment: str) -> str:
    if segment.isdigit():
        return "{id}"
    if _UUID.match(segment):
        return "{uuid}"
    if _HEX.match(segment):
        return "{hex}"
    if _TOKEN.match(segment):
        return "{token}"
    return segment


def normalise(path: str, rules: Sequence[Tuple[Pattern, str]] = ()) -> str:
    for pattern, replacement in rules:
        path = pattern.sub(replacement, path)
    route = "/".join(_segment(s) for s in path.split("/"))
    route = route.replace("\n", " ").replace("\r", " ")
    if not route.startswith("/"):
        route = "/" + route
    return route[:MAX_ROUTE_LENGTH]


class RouteTable:
    """Admits routes up to a cap shared by every process using the directory."""

    def __init__(self, directory: str, cap: int,
                 rules: Sequence[Tuple[Pattern, str]] = ()) -> None:
        self._path = os.path.join(directory, "routes")
        self._cap = cap
        self._rules = tuple(rules)
        self._normalised: Dict[str, str] = {}
        self._admitted: Set[str] = set()
        self._refused: Set[str] = set()

    def route(self, path: str, status: str) -> str:
        route = self._normalised.get(path)
        if route is None:
            if len(self._normalised) >= _CACHE_LIMIT:
                self._normalised.clear()
            route = self._normalised[path] = normalise(path, self._rules)
        if route in self._admitted:
            return route
        if status == "404":
            return UNMATCHED
        if route in self._refused:
            return OVERFLOW
        return route if self._admit(route) else OVERFLOW

    def template(self, route: str) -> str:
        """A route template a framework matched: trusted to be bounded, still capped."""
        if route in self._admitted:
            return route
        if route in self._refused:
            return OVERFLOW
        return route if self._admit(route) else OVERFLOW

    def _admit(self, route: str) -> bool:
        """Consult (and extend) the shared table: a rare, first-sight event per worker."""
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_APPEND
                     | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            known = _read_lines(fd)
            self._admitted.update(known)
            if route in self._admitted:
                return True
            if len(known) >= self._cap:
                if len(self._refused) < _CACHE_LIMIT:
                    self._refused.add(route)
                return False
            try:
                os.write(fd, route.encode("utf-8", "replace") + b"\n")
            except OSError as exc:  # a full disk: the request is not recorded
                raise cannot_store(exc, self._path) from None
            self._admitted.add(route)
            return True
        finally:
            os.close(fd)


def _read_lines(fd: int) -> Set[str]:
    chunks = []
    offset = 0
    while True:
        chunk = os.pread(fd, 65536, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return {line for line in b"".join(chunks).decode("utf-8", "replace").split("\n") if line}

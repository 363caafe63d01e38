"""The grammar of a Redis URL setting (``REDIS_URL``): parsed leniently, so the user part
ends at the *last* ``@`` of the address and an unencoded ``@``, ``#`` or ``/`` in the
password still works; percent-escapes in it are decoded. The setting's check, the
connection, the masked display and the log redaction all read a URL with this one parser."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple
from urllib.parse import parse_qs, unquote


@dataclass
class Target:
    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    username: Optional[str] = None
    password: Optional[str] = None
    tls: bool = False


def parse_url(url: str) -> Target:
    """``redis://[[user]:password@]host[:port][/db]`` (``rediss://`` for TLS)."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("redis", "rediss", "unix"):
        raise ValueError("expected a redis:// or rediss:// URL")
    if scheme == "unix":
        raise ValueError("unix socket URLs are not supported; use host and port")
    userinfo, at, address = rest.rpartition("@")
    if not at:
        userinfo, address = "", rest
    target = Target(tls=scheme == "rediss")
    if userinfo:
        user, colon, password = userinfo.partition(":")
        if colon:
            target.username = unquote(user) or None
            target.password = unquote(password)
        else:  # redis://secret@host: a bare password, as redis-cli takes it
            target.password = unquote(user)
    hostport, _, tail = _split_path(address)
    path, _, query = tail.partition("?")
    if hostport.startswith("["):  # [::1]:6379
        host, _, port = hostport[1:].partition("]")
        port = port.lstrip(":")
    else:
        host, _, port = hostport.rpartition(":") if ":" in hostport else (hostport, "", "")
    if host:
        target.host = host
    if port:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("the URL's port is not a number from 1 to 65535")
        target.port = int(port)
    path = path.strip("/")
    db = parse_qs(query).get("db", [path])[0] if (path or query) else ""
    if db:
        if not db.isdigit():
            raise ValueError("the URL's database (path) is not a number")
        target.db = int(db)
    return target


def _split_path(address: str) -> Tuple[str, str, str]:
    for i, ch in enumerate(address):
        if ch in "/?":
            return address[:i], ch, address[i:]
    return address, "", ""

"""A redis-py client from the settings: plain, TLS, ACL user, Cluster or Sentinel.

Credentials go to redis-py as arguments, never through a URL we build or the environment,
so a password may hold any character (``p@ss#1/x:%``). A ``REDIS_URL`` is parsed here
leniently: the user part ends at the *last* ``@`` of the address, so an unencoded ``@``,
``#`` or ``/`` in the password still works; percent-escapes in it are decoded. Nothing here
logs or returns a secret: ``describe`` gives a location safe for log lines.

redis-py's own retries are turned off: the flusher and the reader have their own backoff,
and a retry loop inside one call would hold the flusher far longer than one timeout."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple
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


def target(settings: Any) -> Target:
    r = settings.redis
    t = parse_url(r.url) if r.url else Target(host=r.host, port=r.port, db=r.db)
    if r.username:
        t.username = r.username
    if r.password is not None:
        t.password = r.password
    if r.ssl:
        t.tls = True
    return t


def sentinels(settings: Any) -> List[Tuple[str, int]]:
    out = []
    for item in (settings.redis.sentinels or "").split(","):
        item = item.strip()
        if not item:
            continue
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"REDIS_SENTINELS: expected host:port, got {item!r}")
        out.append((host.strip("[]"), int(port)))
    return out


def describe(settings: Any) -> str:
    """Where we connect, for log lines: no user name, no password."""
    r = settings.redis
    t = target(settings)
    scheme = "rediss" if t.tls else "redis"
    if r.sentinels:
        nodes = ",".join(f"{h}:{p}" for h, p in sentinels(settings))
        return f"Redis Sentinel master {r.sentinel_master!r} via {nodes}"
    if r.cluster:
        return f"Redis Cluster {scheme}://{_hostport(t)}"
    return f"{scheme}://{_hostport(t)}/{t.db}"


def _hostport(t: Target) -> str:
    host = f"[{t.host}]" if ":" in t.host else t.host
    return f"{host}:{t.port}"


def _common(settings: Any, t: Target, timeout: Optional[float]) -> Dict[str, Any]:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    r = settings.redis
    timeout = r.socket_timeout if timeout is None else timeout
    kwargs: Dict[str, Any] = {
        "username": t.username, "password": t.password,
        "socket_timeout": timeout, "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0), "decode_responses": True,
        "client_name": "gunicorn-prometheus-exporter",
    }
    if t.tls:
        kwargs.update(ssl=True, ssl_cert_reqs=r.ssl_cert_reqs,
                      ssl_check_hostname=r.ssl_cert_reqs == "required",
                      ssl_ca_certs=r.ssl_ca_certs, ssl_certfile=r.ssl_certfile,
                      ssl_keyfile=r.ssl_keyfile)
    return kwargs


def connect(settings: Any, timeout: Optional[float] = None) -> Any:
    """A client for the settings (no command is sent, except the Cluster client's slot
    discovery, which may raise ``redis.RedisError``)."""
    import redis

    r = settings.redis
    t = target(settings)
    kwargs = _common(settings, t, timeout)
    if r.sentinels:
        from redis.sentinel import Sentinel

        side = {k: v for k, v in kwargs.items() if k not in ("username", "password", "db")}
        sentinel = Sentinel(sentinels(settings), sentinel_kwargs=side, **kwargs)
        return sentinel.master_for(r.sentinel_master, db=t.db)
    if r.cluster:
        from redis.cluster import RedisCluster

        return RedisCluster(host=t.host, port=t.port, require_full_coverage=False,
                            cluster_error_retry_attempts=1, **kwargs)
    return redis.Redis(host=t.host, port=t.port, db=t.db, **kwargs)


def errors() -> Tuple[type, ...]:
    """What a failed Redis call raises (connection, timeout, auth, TLS, cluster state)."""
    import redis

    return (redis.RedisError, OSError)

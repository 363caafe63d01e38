"""A redis-py client from the settings: plain, TLS, ACL user, Cluster or Sentinel.

Credentials go to redis-py as arguments, never through a URL we build or the environment,
so a password may hold any character (``p@ss#1/x:%``; ``REDIS_URL`` is parsed by
``config.redis_url``, the setting's own grammar). Nothing here logs or returns a secret:
``describe`` gives a location safe for log lines.

redis-py's own retries are turned off: the flusher and the reader have their own backoff,
and a retry loop inside one call would hold the flusher far longer than one timeout."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from ..config.redis_url import Target, parse_url


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

"""The one table of settings. YAML keys (under ``exporter:``), environment variables,
defaults, kinds and secrecy are declared once here and serve the loader, ``check-config``
and the configuration reference alike."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Tuple

from .kinds import (Bool, Buckets, Choice, Float, HeaderName, Int, Kind, RedisUrl, RouteRules,
                    Str)

#: Request duration buckets: 5 ms to 60 s, finer where web latencies live.
DEFAULT_DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)
#: Queue time buckets: 1 ms to 30 s (a healthy queue is a few milliseconds).
DEFAULT_QUEUE_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)
#: WebSocket connection duration buckets: 1 s to 1 day.
DEFAULT_WEBSOCKET_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0,
                             21600.0, 86400.0)
#: Body size buckets: 64 B to 64 MiB in powers of four.
DEFAULT_SIZE_BUCKETS = tuple(float(64 * 4**i) for i in range(11))


@dataclass(frozen=True)
class Setting:
    path: str  # dotted path below ``exporter``
    kind: Kind
    default: Any = None
    env: Tuple[str, ...] = ()
    secret: bool = False
    doc: str = ""

    @property
    def yaml_key(self) -> str:
        return "exporter." + self.path


def _s(path: str, kind: Kind, default: Any = None, env: Optional[str] = None, *,
       secret: bool = False, doc: str = "") -> Setting:
    return Setting(path, kind, default, (env,) if env else (), secret, doc)


PORT = Int(1, 65535)

SETTINGS: Tuple[Setting, ...] = (
    # -- the metrics server ---------------------------------------------------------------
    _s("prometheus.metrics_port", PORT, 9091, "PROMETHEUS_METRICS_PORT",
       doc="Port of the metrics server; never one of gunicorn's own (start-up stops)."),
    _s("prometheus.bind_address", Str(), "0.0.0.0", "PROMETHEUS_BIND_ADDRESS",
       doc="Address of the metrics server."),
    _s("prometheus.multiproc_dir", Str(), None, "PROMETHEUS_MULTIPROC_DIR",
       doc="Shared multiprocess directory; default $TMPDIR/gunicorn-prometheus-exporter-<port>."),
    _s("prometheus.server", Bool(), True, "PROMETHEUS_METRICS_SERVER",
       doc="Serve /metrics from gunicorn; false when a sidecar or DaemonSet exporter serves."),
    _s("prometheus.web_config_file", Str(), None, "PROMETHEUS_WEB_CONFIG_FILE",
       doc="Exporter-toolkit web config file (tls_server_config, basic_auth_users)."),
    _s("prometheus.ssl.enabled", Bool(), None, "PROMETHEUS_SSL_ENABLED",
       doc="Serve metrics over TLS; on by default when a certificate file is set."),
    _s("prometheus.ssl.certfile", Str(), None, "PROMETHEUS_SSL_CERTFILE",
       doc="PEM certificate (chain) of the metrics server."),
    _s("prometheus.ssl.keyfile", Str(), None, "PROMETHEUS_SSL_KEYFILE",
       doc="PEM private key of the metrics server."),
    _s("prometheus.ssl.client_cafile", Str(), None, "PROMETHEUS_SSL_CLIENT_CAFILE",
       doc="CA file used to verify client certificates."),
    _s("prometheus.ssl.client_capath", Str(), None, "PROMETHEUS_SSL_CLIENT_CAPATH",
       doc="CA directory used to verify client certificates."),
    _s("prometheus.ssl.client_auth_required", Bool(), None,
       "PROMETHEUS_SSL_CLIENT_AUTH_REQUIRED",
       doc="Require a client certificate; on by default when a client CA is set."),
    # -- what is recorded -----------------------------------------------------------------
    _s("metrics.duration_buckets", Buckets(), DEFAULT_DURATION_BUCKETS,
       "PROMETHEUS_DURATION_BUCKETS", doc="Request duration histogram bounds, seconds."),
    _s("metrics.size_buckets", Buckets(), DEFAULT_SIZE_BUCKETS, "PROMETHEUS_SIZE_BUCKETS",
       doc="Request and response size histogram bounds, bytes."),
    _s("metrics.native_histograms", Bool(), True, "PROMETHEUS_NATIVE_HISTOGRAMS",
       doc="Also record request durations as a native histogram (served to protobuf scrapes)."),
    _s("metrics.native_schema", Int(0, 8), 3, "PROMETHEUS_NATIVE_SCHEMA",
       doc="Native histogram resolution: buckets grow by 2^(2^-schema); 3 is 4.3% error."),
    _s("metrics.native_min_seconds", Float(1e-9, 60.0), 1e-6, "PROMETHEUS_NATIVE_MIN_SECONDS",
       doc="Lowest duration with a native bucket of its own; below it, the zero bucket."),
    _s("metrics.native_max_seconds", Float(1e-3, 1e6), 3600.0, "PROMETHEUS_NATIVE_MAX_SECONDS",
       doc="Highest duration with a native bucket of its own; above it, the top bucket."),
    _s("metrics.route_cap", Int(1, 100000), 200, "PROMETHEUS_ROUTE_CAP",
       doc="Most distinct route label values; further routes are recorded as 'other'."),
    _s("metrics.route_rules", RouteRules(), (),
       doc="Regex rules applied to the path before the built-in id collapsing."),
    _s("metrics.queue_time", Bool(), True, "PROMETHEUS_QUEUE_TIME",
       doc="Record the time a request waited before a worker took it, from the proxy's "
           "X-Request-Start or X-Queue-Start header (nothing is done without one)."),
    _s("metrics.queue_buckets", Buckets(), DEFAULT_QUEUE_BUCKETS, "PROMETHEUS_QUEUE_BUCKETS",
       doc="Queue time histogram bounds, seconds."),
    _s("metrics.queue_max_seconds", Float(0.001, 86400), 600.0,
       "PROMETHEUS_QUEUE_MAX_SECONDS",
       doc="Longer waits are clock errors: dropped and counted as too_large."),
    _s("metrics.websocket_buckets", Buckets(), DEFAULT_WEBSOCKET_BUCKETS,
       "PROMETHEUS_WEBSOCKET_BUCKETS",
       doc="WebSocket connection duration histogram bounds, seconds (ASGI workers)."),
    _s("metrics.exemplars", Bool(), True, "PROMETHEUS_EXEMPLARS",
       doc="Attach the trace of a recent request to each duration bucket and request counter "
           "(served in OpenMetrics only)."),
    _s("metrics.trace_header", HeaderName(), "traceparent", "PROMETHEUS_TRACE_HEADER",
       doc="Request header carrying the W3C trace context of exemplars (sampled ones only)."),
    _s("metrics.opentelemetry", Choice(("auto", "on", "off")), "auto",
       "PROMETHEUS_OPENTELEMETRY",
       doc="Without a trace header, take exemplars from the OpenTelemetry span current when "
           "the application starts its response: auto (when the application set a tracer "
           "provider), on, off."),
    _s("metrics.sample_interval", Float(0.1, 3600), 5.0, "PROMETHEUS_SAMPLE_INTERVAL",
       doc="Seconds between samples of worker memory, CPU and uptime."),
    # -- gunicorn values of the original YAML -----------------------------------------------
    _s("gunicorn.workers", Int(1, 4096), None, "GUNICORN_WORKERS",
       doc="Number of workers; applied when gunicorn's own config leaves the default."),
    _s("gunicorn.timeout", Int(0, 86400), None, "GUNICORN_TIMEOUT",
       doc="Worker timeout; applied when gunicorn's own config leaves the default."),
    _s("gunicorn.keepalive", Int(0, 3600), None, "GUNICORN_KEEPALIVE",
       doc="Keep-alive seconds; applied when gunicorn's own config leaves the default."),
    # -- Redis storage ---------------------------------------------------------------------
    _s("redis.enabled", Bool(), False, "REDIS_ENABLED", doc="Ship metrics to Redis."),
    _s("redis.url", RedisUrl(), None, "REDIS_URL", secret=True,
       doc="redis:// or rediss:// URL; overrides host, port and db."),
    _s("redis.host", Str(), "127.0.0.1", "REDIS_HOST", doc="Redis host."),
    _s("redis.port", PORT, 6379, "REDIS_PORT", doc="Redis port."),
    _s("redis.db", Int(0, 1 << 16), 0, "REDIS_DB", doc="Redis database number."),
    _s("redis.username", Str(), None, "REDIS_USERNAME", doc="Redis ACL user."),
    _s("redis.password", Str(allow_empty=True), None, "REDIS_PASSWORD", secret=True,
       doc="Redis password; any characters."),
    _s("redis.key_prefix", Str(), "gunicorn", "REDIS_KEY_PREFIX",
       doc="Key prefix shared by the instances of one application."),
    _s("redis.ttl_seconds", Int(1, 10 * 365 * 86400), 300, "REDIS_TTL_SECONDS",
       doc="Expiry of data that no live instance refreshes."),
    _s("redis.ttl_disabled", Bool(), False, "REDIS_TTL_DISABLED",
       doc="Never expire abandoned data."),
    _s("redis.instance_id", Str(), None, "REDIS_INSTANCE_ID",
       doc="Identity of this gunicorn instance; default host name and master start time."),
    _s("redis.scope", Choice(("all", "node")), "all", "REDIS_SCOPE",
       doc="Instances a reader serves: all under the prefix, or those of NODE_NAME."),
    _s("redis.node_name", Str(), None, "NODE_NAME", doc="Node of this instance or reader."),
    _s("redis.flush_interval", Float(0.05, 3600), 1.0, "REDIS_FLUSH_INTERVAL",
       doc="Seconds between flushes to Redis."),
    _s("redis.socket_timeout", Float(0.05, 600), 2.0, "REDIS_SOCKET_TIMEOUT",
       doc="Seconds a Redis command may take."),
    _s("redis.ssl", Bool(), False, "REDIS_SSL", doc="Connect with TLS."),
    _s("redis.ssl_ca_certs", Str(), None, "REDIS_SSL_CA_CERTS", doc="CA of the Redis server."),
    _s("redis.ssl_certfile", Str(), None, "REDIS_SSL_CERTFILE", doc="Client certificate."),
    _s("redis.ssl_keyfile", Str(), None, "REDIS_SSL_KEYFILE", doc="Client key."),
    _s("redis.ssl_cert_reqs", Choice(("required", "optional", "none")), "required",
       "REDIS_SSL_CERT_REQS", doc="Verification of the server certificate."),
    _s("redis.cluster", Bool(), False, "REDIS_CLUSTER", doc="Use the Redis Cluster client."),
    _s("redis.sentinels", Str(), None, "REDIS_SENTINELS",
       doc="Comma-separated host:port list of Sentinels."),
    _s("redis.sentinel_master", Str(), "mymaster", "REDIS_SENTINEL_MASTER",
       doc="Name of the master the Sentinels watch."),
    # -- housekeeping ------------------------------------------------------------------------
    _s("cleanup.db_files", Bool(), True, "CLEANUP_DB_FILES",
       doc="Empty the multiprocess directory at start when no other gunicorn uses it."),
)

BY_PATH = {s.path: s for s in SETTINGS}

#: Sections the original project (0.2.4) documented at another place, and the section they
#: are: its README and YAML guide put ``ssl:`` beside ``prometheus:``. Both places are
#: accepted; giving one setting at both with different values stops start-up.
ALIASES = {"ssl": "prometheus.ssl"}

#: Environment variable that names a YAML file to load, so that the standalone exporter and
#: a plugin without ``load_yaml_config`` read the same file.
CONFIG_FILE_ENV = "GUNICORN_PROMETHEUS_CONFIG"


def canonical(path: str) -> str:
    """The setting path of a path as written (``ssl.certfile`` is ``prometheus.ssl.certfile``)."""
    for alias, target in ALIASES.items():
        if path == alias or path.startswith(alias + "."):
            return target + path[len(alias):]
    return path


def children(prefix: str) -> Tuple[str, ...]:
    """Keys directly below ``prefix`` (``''`` for the top of ``exporter``)."""
    depth = prefix.count(".") + 1 if prefix else 0
    out = []
    for path in BY_PATH:
        if prefix and not path.startswith(prefix + "."):
            continue
        key = path.split(".")[depth]
        if key not in out:
            out.append(key)
    return tuple(out)

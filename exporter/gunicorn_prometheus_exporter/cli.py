"""``gunicorn-prometheus-exporter``: the standalone exporter.

``serve`` runs the same metrics server as the plugin, outside gunicorn: next to the app as
a sidecar reading the shared multiprocess directory, or as a DaemonSet reading Redis.
Configuration is the plugin's (environment, YAML via ``--config`` or
``GUNICORN_PROMETHEUS_CONFIG``), with command-line flags on top."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import Any, Dict, List, Optional

from . import config
from .config.loader import build
from .config.schema import CONFIG_FILE_ENV
from .version import __version__

_FLAGS = {  # flag dest -> the environment variable it stands for
    "port": "PROMETHEUS_METRICS_PORT",
    "bind": "PROMETHEUS_BIND_ADDRESS",
    "multiproc_dir": "PROMETHEUS_MULTIPROC_DIR",
    "web_config_file": "PROMETHEUS_WEB_CONFIG_FILE",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gunicorn-prometheus-exporter",
        description="Serve Prometheus metrics of gunicorn applications instrumented with "
                    "gunicorn_prometheus_exporter, from a shared multiprocess directory "
                    "(sidecar) or from Redis (REDIS_ENABLED=true).",
        epilog="Settings come from environment variables (PROMETHEUS_METRICS_PORT, "
               "PROMETHEUS_BIND_ADDRESS, PROMETHEUS_MULTIPROC_DIR, REDIS_*, ...) and an "
               "optional YAML file; flags override both. See docs/configuration.md.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser("serve", help="serve /metrics (the default command)")
    _config_flag(serve)
    serve.add_argument("--port", type=int, help="metrics port (PROMETHEUS_METRICS_PORT)")
    serve.add_argument("--bind", help="bind address (PROMETHEUS_BIND_ADDRESS)")
    serve.add_argument("--multiproc-dir", help="directory to read (PROMETHEUS_MULTIPROC_DIR)")
    serve.add_argument("--web-config-file",
                       help="exporter-toolkit web config: TLS and basic auth")
    serve.add_argument("--log-level", default="info",
                       choices=("debug", "info", "warning", "error"))
    check = sub.add_parser("check-config",
                           help="validate the configuration and print it, secrets masked")
    _config_flag(check)
    sub.add_parser("version", help="print the version")
    health = sub.add_parser("healthcheck",
                            help="exit 0 if the local metrics server answers /-/ready "
                                 "(it serves, and reads of its storage finish)")
    _config_flag(health)
    health.add_argument("--url", help="URL to probe (default: this config's address)")
    health.add_argument("--timeout", type=float, default=3.0)
    health.add_argument("--cert", metavar="FILE",
                        help="client certificate (PEM, may hold the key too) for a server "
                             "that requires one; without it such a server counts as alive "
                             "when it refuses the connection for lack of a certificate")
    health.add_argument("--key", metavar="FILE", help="private key of --cert")
    return parser


def _config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE",
                        help=f"YAML config file (default: ${CONFIG_FILE_ENV} if set)")


def effective(args: argparse.Namespace) -> config.Settings:
    """Settings from the environment and YAML, with the flags given on top."""
    environ: Dict[str, str] = dict(os.environ)
    for dest, name in _FLAGS.items():
        value = getattr(args, dest, None)
        if value is not None:
            environ[name] = str(value)
    return build(args.config or environ.get(CONFIG_FILE_ENV) or None, environ)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["serve", *argv]  # serve is the default command, flags and all
    args = _parser().parse_args(argv)
    command = args.command
    try:
        if command == "version":
            return _version()
        if command == "check-config":
            return _check_config(args)
        if command == "healthcheck":
            return _healthcheck(args)
        return _serve(args)
    except config.ConfigError as exc:
        print(f"gunicorn-prometheus-exporter: config error: {exc}", file=sys.stderr)
        return 1


def _version() -> int:
    import gunicorn
    import prometheus_client  # noqa: F401

    from .collector import _distribution_version

    print(f"gunicorn-prometheus-exporter {__version__} (gunicorn {gunicorn.__version__}, "
          f"prometheus_client {_distribution_version('prometheus_client')}, "
          f"python {sys.version.split()[0]})")
    return 0


def _check_config(args: argparse.Namespace) -> int:
    from .server import webconfig

    settings = effective(args)
    webconfig.from_settings(settings).tls_context()
    print(settings.describe())
    print("configuration OK")
    return 0


def _healthcheck(args: argparse.Namespace) -> int:
    import ssl
    import urllib.error
    import urllib.request

    from .server import webconfig

    url = args.url
    if url is None:
        settings = effective(args)
        p = settings.prometheus
        host = "127.0.0.1" if p.bind_address in ("0.0.0.0", "::", "") else p.bind_address
        if ":" in host:
            host = f"[{host}]"
        # TLS may come from PROMETHEUS_SSL_* or from the web config file
        scheme = "https" if webconfig.from_settings(settings).cert_file else "http"
        url = f"{scheme}://{host}:{p.metrics_port}/-/ready"  # 503: reads do not finish
    context = ssl._create_unverified_context()  # a local liveness probe of our own server
    if args.cert:
        try:
            context.load_cert_chain(args.cert, args.key)
        except (OSError, ssl.SSLError) as exc:
            print(f"gunicorn-prometheus-exporter: healthcheck: cannot load --cert/--key: "
                  f"{exc}", file=sys.stderr)
            return 1
    try:
        with urllib.request.urlopen(url, timeout=args.timeout, context=context) as resp:
            return 0 if resp.status == 200 else 1
    except urllib.error.HTTPError as exc:
        return 0 if exc.code == 401 else 1  # alive, behind basic auth
    except (OSError, ValueError):
        if args.cert is None and url.startswith("https:"):
            return 0 if _refuses_without_certificate(url, context, args.timeout) else 1
        return 1


def _refuses_without_certificate(url: str, context: Any, timeout: float) -> bool:
    """Whether the server completes a TLS 1.3 handshake and then refuses us with the
    ``certificate_required`` alert: alive, behind mutual TLS (as a 401 is behind basic
    auth). Probed on a connection that sends nothing, so the alert is read before any
    reset (a request written first can race it)."""
    import socket
    import ssl
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port or 443), timeout) as raw, \
                context.wrap_socket(raw, server_hostname=parts.hostname) as tls:
            tls.recv(1)
    except ssl.SSLError as exc:
        return exc.reason == "TLSV13_ALERT_CERTIFICATE_REQUIRED"
    except (OSError, ValueError):
        return False
    return False


def _serve(args: argparse.Namespace) -> int:
    from .server import metrics_process, webconfig

    # first: threads inherit the mask, and a signal during start-up waits for the loop
    stop_signals = metrics_process.block_stop_signals(signal.SIGTERM, signal.SIGINT)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s")
    log = logging.getLogger("gunicorn_prometheus_exporter")
    settings = effective(args)
    web = webconfig.from_settings(settings)
    web.tls_context()  # a bad certificate or key is a config error, before anything starts
    return metrics_process.standalone(settings, web, log, stop_signals)


if __name__ == "__main__":
    sys.exit(main())

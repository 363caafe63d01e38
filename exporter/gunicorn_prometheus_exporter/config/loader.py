"""Build the effective settings: defaults, then a YAML file, then the environment.

YAML is read through PyYAML's node graph rather than ``safe_load`` so that every error can
name the file and line of the offending key; nothing read here is copied into
``os.environ`` except the ``exporter.gunicorn`` values that user config files read back."""
from __future__ import annotations

import math
import os
import tempfile
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import yaml

from . import yamldoc
from .kinds import RedisUrl
from .kinds import shown as show_raw
from .redis_url import parse_url
from .schema import (ALIASES, BY_PATH, CONFIG_FILE_ENV, SETTINGS, Setting, canonical,
                     children)


class ConfigError(SystemExit):
    """A bad setting. A ``SystemExit`` so that, raised while gunicorn reads its config file,
    it stops start-up with exactly its one-line message and exit status 1."""

    def __init__(self, message: str) -> None:
        super().__init__(f"gunicorn-prometheus-exporter: config error: {message}")
        self.message = message

    def __str__(self) -> str:
        return self.message


Origin = str  # "default", "FILE:LINE" or "env NAME"


class Section:
    """Read-only attribute view of one level of the settings tree."""

    def __init__(self, values: Mapping[str, Any], prefix: str = "") -> None:
        self._values = values
        self._prefix = prefix

    def __getattr__(self, name: str) -> Any:
        path = f"{self._prefix}.{name}" if self._prefix else name
        if path in self._values:
            return self._values[path]
        if children(path):
            return Section(self._values, path)
        raise AttributeError(f"no setting exporter.{path}")


class Settings(Section):
    """The effective configuration with the origin of every value."""

    def __init__(self, values: Dict[str, Any], origins: Dict[str, Origin]) -> None:
        super().__init__(values)
        self.values = values
        self.origins = origins

    def get(self, path: str) -> Any:
        return self.values[path]

    @property
    def multiproc_dir(self) -> str:
        configured = self.values["prometheus.multiproc_dir"]
        if configured:
            return configured
        port = self.values["prometheus.metrics_port"]
        return os.path.join(tempfile.gettempdir(), f"gunicorn-prometheus-exporter-{port}")

    @property
    def tls_enabled(self) -> bool:
        enabled = self.values["prometheus.ssl.enabled"]
        return bool(self.values["prometheus.ssl.certfile"]) if enabled is None else enabled

    def describe(self) -> str:
        """Every setting with its value and origin, secrets masked (for ``check-config``)."""
        lines = []
        for s in SETTINGS:
            value = self.values[s.path]
            if s.secret and value:
                shown = mask_url(value) if isinstance(s.kind, RedisUrl) else mask(value)
            else:
                shown = _show(value)
            lines.append(f"{s.yaml_key} = {shown}  ({self.origins[s.path]})")
        lines.append(f"(effective multiprocess directory: {self.multiproc_dir})")
        return "\n".join(lines)


def mask(value: Any) -> str:
    return "********" if value else "''"


def mask_url(url: str) -> str:
    """A Redis URL with its password masked: ``rediss://user:********@host:6379/0``."""
    t = parse_url(url)
    userinfo = ""
    if t.password is not None:
        userinfo = f"{t.username or ''}:********@"
    elif t.username:
        userinfo = f"{t.username}@"
    host = f"[{t.host}]" if ":" in t.host else t.host
    return repr(f"{'rediss' if t.tls else 'redis'}://{userinfo}{host}:{t.port}/{t.db}")


def _show(value: Any) -> str:
    if isinstance(value, tuple) and value and isinstance(value[0], tuple):
        return "[" + ", ".join(f"{p.pattern!r} -> {r!r}" for p, r in value) + "]"
    if isinstance(value, tuple):  # bucket bounds, exact: they can be copied back into YAML
        return "[" + ", ".join(repr(v) for v in value) + "]"
    return repr(value)


# -- YAML ---------------------------------------------------------------------------------

def read_yaml(path: str) -> Dict[str, Tuple[Any, int]]:
    """Parse and check a YAML file; returns {setting path: (value, line)}."""
    loader, root = yamldoc.compose(path, ConfigError)
    try:
        if root is None:
            return {}
        if not isinstance(root, yaml.MappingNode):
            raise ConfigError(f"{path}:{_line(root)}: expected a mapping with an 'exporter' key")
        found: Dict[str, Tuple[Any, int]] = {}
        for key_node, value_node in _pairs(path, root):
            if key_node.value != "exporter":
                raise ConfigError(
                    f"{path}:{_line(key_node)}: {key_node.value}: unknown key; "
                    "expected 'exporter' at the top level")
            _walk(path, loader, value_node, "", found)
        return _merge_aliases(path, found)
    finally:
        loader.dispose()


def _yaml_text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else repr(value)


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _pairs(path: str, node: yaml.MappingNode):
    """Key and value nodes of a mapping (yamldoc has refused repeated keys already)."""
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            raise ConfigError(f"{path}:{_line(key_node)}: keys must be plain strings")
        yield key_node, value_node


def _walk(path: str, loader: yaml.SafeLoader, node: yaml.Node, prefix: str,
          found: Dict[str, Tuple[Any, int]]) -> None:
    """Collect the settings below ``prefix`` (the path as written: it may be an alias of
    ``ALIASES``) into ``found``, keyed by the path as written."""
    where = f"exporter.{prefix}" if prefix else "exporter"
    if isinstance(node, yaml.ScalarNode) and yamldoc.construct(loader, node, where,
                                                                ConfigError) is None:
        return  # an empty section
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{path}:{_line(node)}: {where}: expected a mapping of settings")
    for key_node, value_node in _pairs(path, node):
        sub = f"{prefix}.{key_node.value}" if prefix else key_node.value
        setting = BY_PATH.get(canonical(sub))
        if setting is not None:
            where = f"{path}:{_line(value_node)}: exporter.{sub}"
            raw = yamldoc.construct(loader, value_node, where, ConfigError)
            found[sub] = (_parse(setting, raw, where), _line(value_node))
        elif children(canonical(sub)):
            _walk(path, loader, value_node, sub, found)
        else:
            keys = children(canonical(prefix)) + (tuple(ALIASES) if not prefix else ())
            raise ConfigError(f"{path}:{_line(key_node)}: exporter.{sub}: unknown key; "
                              f"expected one of: {', '.join(keys)}")


def _merge_aliases(path: str, found: Dict[str, Tuple[Any, int]]
                   ) -> Dict[str, Tuple[Any, int]]:
    """Settings written at an alias (``exporter.ssl``) under their own path; the same
    setting at both places must have the same value."""
    merged: Dict[str, Tuple[Any, int]] = {}
    written: Dict[str, str] = {}
    for sub, (value, line) in found.items():
        real = canonical(sub)
        if real in merged and merged[real][0] != value:
            shown = mask if BY_PATH[real].secret else _yaml_text
            raise ConfigError(
                f"{path}:{line}: exporter.{sub} is {shown(value)} but exporter.{written[real]} "
                f"(line {merged[real][1]}) is {shown(merged[real][0])}; both name "
                f"exporter.{real}: give it once")
        merged.setdefault(real, (value, line))
        written.setdefault(real, sub)
    return merged


def _parse(setting: Setting, raw: Any, where: str) -> Any:
    if raw is None:
        return setting.default
    try:
        return setting.kind.parse(raw)
    except ValueError as exc:
        message = str(exc)
        if setting.secret:
            message = f"expected {setting.kind.expected}"
        raise ConfigError(f"{where}: {message}") from None


# -- the environment ----------------------------------------------------------------------

def read_environment(environ: Mapping[str, str]) -> Dict[str, Tuple[Any, str]]:
    found: Dict[str, Tuple[Any, str]] = {}
    for setting in SETTINGS:
        for name in setting.env:
            raw = environ.get(name)
            if raw is None or raw == "":
                continue
            if not _is_utf8(raw):
                raise ConfigError(f"environment variable {name}: not valid UTF-8; expected "
                                  f"{setting.kind.expected}")
            value = _parse(setting, raw, f"environment variable {name}="
                                         f"{mask(raw) if setting.secret else show_raw(raw)}")
            found[setting.path] = (value, name)
    return found


def _is_utf8(value: str) -> bool:
    """Whether an environment value was valid UTF-8 (Python keeps undecodable bytes as
    lone surrogates, which fail later, far from the variable that held them)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# -- assembly -------------------------------------------------------------------------------

def build(yaml_path: Optional[str], environ: Mapping[str, str]) -> Settings:
    values = {s.path: s.default for s in SETTINGS}
    origins: Dict[str, Origin] = {s.path: "default" for s in SETTINGS}
    if yaml_path:
        for path, (value, line) in read_yaml(yaml_path).items():
            values[path], origins[path] = value, f"{yaml_path}:{line}"
    for path, (value, name) in read_environment(environ).items():
        values[path], origins[path] = value, f"env {name}"
    settings = Settings(values, origins)
    _check_consistency(settings)
    return settings


def _check_consistency(settings: Settings) -> None:
    """Checks that involve several settings or the file system."""
    def where(path: str) -> str:
        return f"exporter.{path} ({settings.origins[path]})"

    for path in ("prometheus.ssl.certfile", "prometheus.ssl.keyfile",
                 "prometheus.ssl.client_cafile", "prometheus.web_config_file",
                 "redis.ssl_ca_certs", "redis.ssl_certfile", "redis.ssl_keyfile"):
        value = settings.values[path]
        if value and not os.path.isfile(value):
            raise ConfigError(f"{where(path)}: file not found: {value}")
    capath = settings.values["prometheus.ssl.client_capath"]
    if capath and not os.path.isdir(capath):
        raise ConfigError(f"{where('prometheus.ssl.client_capath')}: directory not found: {capath}")
    if settings.values["prometheus.ssl.enabled"] and not settings.values["prometheus.ssl.certfile"]:
        raise ConfigError(f"{where('prometheus.ssl.enabled')}: TLS is enabled but "
                          "exporter.prometheus.ssl.certfile is not set")
    if settings.values["prometheus.ssl.client_auth_required"] and not (
            settings.values["prometheus.ssl.client_cafile"]
            or settings.values["prometheus.ssl.client_capath"]):
        raise ConfigError(f"{where('prometheus.ssl.client_auth_required')}: client "
                          "certificates are required but no client CA file or path is set")
    _check_native_range(settings, where)
    if settings.values["redis.scope"] == "node" and not settings.values["redis.node_name"]:
        raise ConfigError(f"{where('redis.scope')}: scope 'node' needs NODE_NAME "
                          "(exporter.redis.node_name)")


#: most native histogram buckets per series (32 KiB a series); schema 3 from 1 µs to 1 h
#: needs 255 (storage/native.py lays them out)
MAX_NATIVE_BUCKETS = 4096


def _check_native_range(settings: Settings, where: Callable[[str], str]) -> None:
    """The native histogram's range must be a range, and its buckets few enough that one
    series' entry stays small. Buckets ``ceil(log2(v) * 2^schema)`` of both ends, counted
    with a float ``log2`` (the storage's exact count differs by one at most)."""
    v = settings.values
    low, high = v["metrics.native_min_seconds"], v["metrics.native_max_seconds"]
    if low >= high:
        raise ConfigError(f"{where('metrics.native_min_seconds')}: {low:g} must be below "
                          f"exporter.metrics.native_max_seconds ({high:g})")
    schema = v["metrics.native_schema"]
    buckets = (math.ceil(math.log2(high) * 2 ** schema)
               - math.ceil(math.log2(low) * 2 ** schema) + 1)
    if buckets > MAX_NATIVE_BUCKETS:
        raise ConfigError(f"{where('metrics.native_schema')}: schema {schema} needs "
                          f"{buckets} buckets from {low:g}s to {high:g}s; at most "
                          f"{MAX_NATIVE_BUCKETS} (lower the schema or narrow the range)")


#: the file ``load_yaml_config`` was given: the one piece of process state here, since the
#: original's public call returns no handle that gunicorn would pass on. Settings are built
#: by whoever needs them (the master, once, then handed down) from it and the environment.
_yaml_path: Optional[str] = None


def load_yaml_config(path: str) -> Settings:
    """Load and validate a YAML file (the original's entry point; call it from
    gunicorn.conf.py). Environment variables still override the file. A bad file stops
    start-up with one line naming the file, line and key."""
    global _yaml_path
    _yaml_path = os.fspath(path)
    current = settings()
    for name, path_ in (("GUNICORN_WORKERS", "gunicorn.workers"),
                        ("GUNICORN_TIMEOUT", "gunicorn.timeout"),
                        ("GUNICORN_KEEPALIVE", "gunicorn.keepalive")):
        value = current.values[path_]
        if value is not None:
            os.environ.setdefault(name, str(value))
    return current


def settings() -> Settings:
    """The effective settings of this process: the file given to ``load_yaml_config`` (else
    ``GUNICORN_PROMETHEUS_CONFIG``) under the environment."""
    return build(_yaml_path or os.environ.get(CONFIG_FILE_ENV) or None, os.environ)


def reset() -> None:
    """Forget the file given to ``load_yaml_config`` (tests)."""
    global _yaml_path
    _yaml_path = None

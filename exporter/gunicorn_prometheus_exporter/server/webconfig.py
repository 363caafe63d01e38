"""TLS and basic-auth settings of the metrics server.

Accepts the Prometheus exporter-toolkit web config file (``tls_server_config``,
``basic_auth_users`` with bcrypt hashes, ``http_server_config.headers``) and the original
project's ``PROMETHEUS_SSL_*`` settings. Password hashes and keys are never logged."""
from __future__ import annotations

import hashlib
import hmac
import re
import ssl
import threading
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from ..config import ConfigError, Settings, yamldoc
from ..config.kinds import shown

# Python's ssl module cannot accept a client certificate without verifying it, so
# RequireAnyClientCert is served as RequireAndVerifyClientCert: stricter, never weaker.
_CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_NONE,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_BCRYPT = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
#: RFC 9110 5.1 field name (token) and 5.5 field value (no CR, LF or NUL: a value with a
#: line break would be sent as a second, injected header)
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\U0010ffff]*")
_TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                 "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
_KEYS = {
    "": {"tls_server_config", "basic_auth_users", "http_server_config"},
    "tls_server_config": {"cert_file", "key_file", "client_auth_type", "client_ca_file",
                          "min_version", "max_version", "cipher_suites",
                          "prefer_server_cipher_suites", "curve_preferences"},
    "http_server_config": {"headers", "http2"},
}


@dataclass
class WebConfig:
    cert_file: Optional[str] = None
    key_file: Optional[str] = None
    client_ca_file: Optional[str] = None
    client_ca_path: Optional[str] = None
    client_verify: int = ssl.CERT_NONE
    min_version: Optional[ssl.TLSVersion] = None
    max_version: Optional[ssl.TLSVersion] = None
    users: Dict[str, bytes] = field(default_factory=dict)
    headers: Dict[str, str] = field(default_factory=dict)

    def tls_context(self) -> Optional[ssl.SSLContext]:
        if not self.cert_file:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = self.min_version or ssl.TLSVersion.TLSv1_2
        if self.max_version:
            context.maximum_version = self.max_version
        try:
            context.load_cert_chain(self.cert_file, self.key_file)
            if self.client_ca_file or self.client_ca_path:
                context.load_verify_locations(cafile=self.client_ca_file,
                                              capath=self.client_ca_path)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"metrics server TLS: cannot load certificate, key or CA "
                              f"({self.cert_file}): {exc}") from None
        context.verify_mode = self.client_verify
        return context


def from_settings(settings: Settings) -> WebConfig:
    ssl_settings = settings.prometheus.ssl
    web = WebConfig()
    if settings.tls_enabled:
        web.cert_file = ssl_settings.certfile
        web.key_file = ssl_settings.keyfile
        web.client_ca_file = ssl_settings.client_cafile
        web.client_ca_path = ssl_settings.client_capath
        required = ssl_settings.client_auth_required
        if required is None:
            required = bool(web.client_ca_file or web.client_ca_path)
        if web.client_ca_file or web.client_ca_path:
            web.client_verify = ssl.CERT_REQUIRED if required else ssl.CERT_OPTIONAL
    path = settings.prometheus.web_config_file
    if path:
        _apply_file(web, path)
    return web


def _apply_file(web: WebConfig, path: str) -> None:
    loader, root = yamldoc.compose(path, ConfigError, "web config file")
    try:
        data = (yamldoc.construct(loader, root, path, ConfigError) if root is not None
                else None) or {}
    finally:
        loader.dispose()
    _check_keys(path, data, "")
    tls = data.get("tls_server_config") or {}
    _check_keys(path, tls, "tls_server_config")
    if tls:
        if not tls.get("cert_file") or not tls.get("key_file"):
            raise ConfigError(f"{path}: tls_server_config needs cert_file and key_file")
        # as in the exporter-toolkit, file names are relative to the web config's folder
        web.cert_file = _relative_to(path, tls["cert_file"])
        web.key_file = _relative_to(path, tls["key_file"])
        web.client_ca_file = (_relative_to(path, tls["client_ca_file"])
                              if tls.get("client_ca_file") else None)
        auth_type = tls.get("client_auth_type", "NoClientCert")
        if not isinstance(auth_type, str) or auth_type not in _CLIENT_AUTH:
            raise ConfigError(f"{path}: tls_server_config.client_auth_type: expected one of "
                              f"{', '.join(_CLIENT_AUTH)}, got {shown(auth_type)}")
        web.client_verify = _CLIENT_AUTH[auth_type]
        if web.client_verify != ssl.CERT_NONE and not web.client_ca_file:
            raise ConfigError(f"{path}: tls_server_config.client_auth_type {auth_type} "
                              "needs client_ca_file")
        for key in ("min_version", "max_version"):
            if key in tls:
                if not isinstance(tls[key], str) or tls[key] not in _TLS_VERSIONS:
                    raise ConfigError(f"{path}: tls_server_config.{key}: expected one of "
                                      f"{', '.join(_TLS_VERSIONS)}, got {shown(tls[key])}")
                setattr(web, key, _TLS_VERSIONS[tls[key]])
    users = data.get("basic_auth_users") or {}
    if not isinstance(users, dict):
        raise ConfigError(f"{path}: basic_auth_users: expected a mapping of user to bcrypt hash")
    for user, hashed in users.items():
        if not isinstance(user, str) or not user or ":" in user:
            raise ConfigError(f"{path}: basic_auth_users: user {shown(user)}: expected a "
                              "non-empty name without ':'")
        if not isinstance(hashed, str) or not _BCRYPT.fullmatch(hashed):
            raise ConfigError(f"{path}: basic_auth_users.{user}: expected a bcrypt hash "
                              "($2a$, $2b$ or $2y$)")
        web.users[user] = hashed.encode()
    http = data.get("http_server_config") or {}
    _check_keys(path, http, "http_server_config")
    headers = http.get("headers") or {}
    if not isinstance(headers, dict):
        raise ConfigError(f"{path}: http_server_config.headers: expected a mapping")
    web.headers = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            raise ConfigError(f"{path}: http_server_config.headers: name {shown(name)}: "
                              "expected an HTTP header name (letters, digits, -)")
        if not isinstance(value, (str, int, float)) or isinstance(value, bool) \
                or not _FIELD_VALUE.fullmatch(str(value)):
            raise ConfigError(f"{path}: http_server_config.headers.{name}: expected one line "
                              "of visible text (no CR, LF or other control character)")
        web.headers[name] = str(value)


def _relative_to(config_path: str, name: Any) -> str:
    import os

    return os.path.join(os.path.dirname(os.path.abspath(config_path)), str(name))


def _check_keys(path: str, data: Any, where: str) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: {where or 'top level'}: expected a mapping")
    unknown = set(data) - _KEYS[where]
    if unknown:
        name = sorted(map(str, unknown))[0]
        full = f"{where}.{name}" if where else name
        raise ConfigError(f"{path}: {full}: unknown key; expected one of: "
                          f"{', '.join(sorted(_KEYS[where]))}")


class BasicAuth:
    """Checks ``Authorization: Basic`` against bcrypt hashes. A bcrypt check costs tens of
    milliseconds by design, so successful checks are remembered (by a keyed digest of the
    credentials, never the password itself) for the life of the process."""

    def __init__(self, users: Dict[str, bytes]) -> None:
        self._users = users
        self._key = hashlib.sha256(repr(sorted(users.items())).encode()).digest()
        self._good: set = set()
        self._lock = threading.Lock()
        self._decoy_hash: Optional[bytes] = None

    @property
    def enabled(self) -> bool:
        return bool(self._users)

    def check(self, header: Optional[str]) -> bool:
        import base64
        import binascii

        if not self._users:
            return True
        scheme, _, credentials = (header or "").strip().partition(" ")
        if scheme.lower() != "basic":  # RFC 7617 (and 9110 11.1): case-insensitive
            return False
        try:
            user, _, password = base64.b64decode(credentials.strip(), validate=True) \
                .decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        hashed = self._users.get(user)
        if hashed is None:
            # as slow as a wrong password, so that timing does not tell which users exist
            hashed, user = self._decoy(), "\0"
        token = hmac.new(self._key, f"{user}:{password}".encode(), "sha256").digest()
        with self._lock:
            if token in self._good:
                return True
        import bcrypt

        try:
            ok = bcrypt.checkpw(password.encode(), hashed)
        except ValueError:
            return False
        if ok and user in self._users:
            with self._lock:
                self._good.add(token)
            return True
        return False

    def _decoy(self) -> bytes:
        """A hash of a random password at the cost of the configured ones."""
        if self._decoy_hash is None:
            import os

            import bcrypt

            cost = max(int(h.split(b"$")[2]) for h in self._users.values())
            self._decoy_hash = bcrypt.hashpw(os.urandom(16).hex().encode(),
                                             bcrypt.gensalt(rounds=min(max(cost, 4), 31)))
        return self._decoy_hash

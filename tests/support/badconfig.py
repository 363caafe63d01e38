"""A corpus of malformed configurations, generated systematically: every setting of the
schema (YAML and environment) and every key of the web config, each with values of the
wrong type, range, encoding and structure, plus whole-file faults (encodings, NUL bytes,
alias bombs, deep nesting). Every case must be refused with one line naming its input."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional

from gunicorn_prometheus_exporter.config import kinds
from gunicorn_prometheus_exporter.config.schema import SETTINGS, Setting

HUGE_INT = "1" * 5000
DEEP = 5000


@dataclass
class Case:
    """One malformed configuration. ``yaml``/``web`` are file contents (bytes), ``env``
    variables (str, possibly holding undecodable bytes as surrogates). ``names`` says what
    the one line must name: "yaml" (the YAML file and a line), "web" (the web config file)
    or an environment variable."""

    name: str
    names: str
    yaml: Optional[bytes] = None
    web: Optional[bytes] = None
    env: Dict[str, str] = field(default_factory=dict)


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """Nested anchors: ``width ** levels`` values once expanded (387 million here)."""
    lines = ["&a0 [" + ", ".join(["x"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"&a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "[" + ", ".join(lines) + "]"


def deep(levels: int = DEEP) -> str:
    return "[" * levels + "]" * levels


def _nest(path: str, value: str) -> str:
    """YAML of ``exporter.<path>: value`` (flow style for the value)."""
    parts = path.split(".")
    lines = ["exporter:"]
    for depth, part in enumerate(parts[:-1], start=1):
        lines.append("  " * depth + f"{part}:")
    lines.append("  " * len(parts) + f"{parts[-1]}: {value}")
    return "\n".join(lines) + "\n"


def _wrong_values(kind: kinds.Kind) -> Dict[str, str]:
    """Wrong YAML values for a kind: name -> flow YAML."""
    common = {"mapping": "{a: 1}", "alias bomb": alias_bomb(), "deep nesting": deep()}
    if isinstance(kind, kinds.Int):
        return {**common, "word": "nine", "fraction": "1.5", "below": str(kind.low - 1),
                "above": str(kind.high + 1), "boolean": "true", "list": "[1]",
                "5000 digits": HUGE_INT, "empty string": "''"}
    if isinstance(kind, kinds.Float):
        return {**common, "word": "fast", "nan": ".nan", "infinite": ".inf",
                "below": "-1", "above": str(kind.high * 10), "boolean": "false",
                "list": "[1]", "5000 digits": HUGE_INT}
    if isinstance(kind, kinds.Bool):
        return {**common, "word": "maybe", "number": "2", "list": "[true]"}
    if isinstance(kind, kinds.Choice):
        return {**common, "word": "planet", "number": "1", "list": f"[{kind.choices[0]}]"}
    if isinstance(kind, kinds.Buckets):
        return {**common, "empty list": "[]", "zero": "[0]", "negative": "[-1, 1]",
                "decreasing": "[2, 1]", "word": "[0.1, x]", "infinite": "[1, .inf]",
                "string": "fast", "too many": "[" + ", ".join(
                    str(i) for i in range(1, kinds.MAX_BUCKETS + 2)) + "]",
                "19999 bounds": "[" + ", ".join(str(i) for i in range(1, 20000)) + "]",
                "5000 digits": f"[{HUGE_INT}]"}
    if isinstance(kind, kinds.RedisUrl):
        return {**common, "scheme": "http://cache", "number": "1", "list": "[a]",
                "bad port": "redis://cache:port"}
    if isinstance(kind, kinds.RouteRules):
        return {**common, "string": "fast", "list of numbers": "[1]",
                "bad regex": "[{pattern: '(', replacement: x}]",
                "missing key": "[{pattern: a}]"}
    return {**common, "list": "[a]", "boolean": "true"}  # Str


def _wrong_env(kind: kinds.Kind) -> Dict[str, str]:
    undecodable = b"\xff\xfe127.0.0.1".decode("utf-8", "surrogateescape")
    values = {"not UTF-8": undecodable}
    if isinstance(kind, kinds.Int):
        values.update({"word": "nine", "below": str(kind.low - 1),
                       "above": str(kind.high + 1), "5000 digits": HUGE_INT, "fraction": "1.5"})
    elif isinstance(kind, kinds.Float):
        values.update({"word": "fast", "nan": "nan", "infinite": "inf",
                       "5000 digits": HUGE_INT, "below": "-1"})
    elif isinstance(kind, kinds.Bool):
        values.update({"word": "maybe", "number": "2"})
    elif isinstance(kind, kinds.Choice):
        values.update({"word": "planet"})
    elif isinstance(kind, kinds.Buckets):
        values.update({"word": "0.1,x", "decreasing": "2,1", "zero": "0",
                       "too many": ",".join(str(i) for i in range(1, kinds.MAX_BUCKETS + 2)),
                       "5000 digits": HUGE_INT + "," + HUGE_INT})
    elif isinstance(kind, kinds.RedisUrl):
        values.update({"scheme": "http://cache", "bad port": "redis://cache:port"})
    return values


def yaml_cases(settings: List[Setting] = list(SETTINGS)) -> Iterator[Case]:
    for setting in settings:
        for wrong, value in _wrong_values(setting.kind).items():
            yield Case(f"yaml {setting.path} {wrong}", "yaml",
                       yaml=_nest(setting.path, value).encode())
        text = _nest(setting.path, "null")
        yield Case(f"yaml {setting.path} twice", "yaml",
                   yaml=(text + text.splitlines()[-1] + "\n").encode())
    sections = sorted({s.path.rsplit(".", 1)[0] for s in SETTINGS if "." in s.path})
    for section in sections:
        yield Case(f"yaml section {section} is a list", "yaml",
                   yaml=_nest(section, "[a, b]").encode())
        yield Case(f"yaml section {section} unknown key", "yaml",
                   yaml=_nest(section + ".no_such_key", "1").encode())
    good = b"exporter:\n  prometheus:\n    metrics_port: 9100\n"
    for name, data in {
        "not UTF-8": b"exporter:\n  prometheus:\n    bind_address: caf\xe9\n",
        "latin-1 file": "exporter:\n  redis:\n    key_prefix: café\n".encode("latin-1"),
        "UTF-16 LE": good.decode().encode("utf-16"),
        "UTF-16 BE": b"\xfe\xff" + good.decode().encode("utf-16-be"),
        "UTF-32": good.decode().encode("utf-32"),
        "NUL byte": good.replace(b"9100", b"91\x0000"),
        "NUL at start": b"\x00" + good,
        "control character": good.replace(b"9100", b"91\x0700"),
        "top-level list": b"- exporter\n",
        "top-level scalar": b"exporter\n",
        "exporter is a list": b"exporter: [1, 2]\n",
        "exporter is a number": b"exporter: 3\n",
        "unknown top-level key": b"prometheus: {}\n",
        "two documents": b"exporter: {}\n---\nexporter: {}\n",
        "unclosed bracket": b"exporter: {prometheus: [9100\n",
        "tab indentation": b"exporter:\n\tprometheus: {}\n",
        "bad indentation": b"exporter:\n  prometheus:\n metrics_port: 1\n  x: 2\n",
        "undefined alias": b"exporter:\n  prometheus:\n    metrics_port: *nope\n",
        "recursive alias": b"exporter: &a\n  prometheus: *a\n",
        "alias bomb at the top": f"exporter: {alias_bomb()}\n".encode(),
        "deep nesting at the top": f"exporter: {deep()}\n".encode(),
        "deep mapping nesting": ("exporter: " + "{a: " * DEEP + "1" + "}" * DEEP + "\n").encode(),
        "key is a list": b"exporter:\n  [a]: 1\n",
        "unknown tag": b"exporter:\n  prometheus:\n    metrics_port: !!python/object:os.system 1\n",
        "bad binary": b"exporter:\n  prometheus:\n    bind_address: !!binary '%%%'\n",
        "bad timestamp": b"exporter:\n  prometheus:\n    bind_address: !!timestamp 2020-13-45\n",
    }.items():
        yield Case(f"yaml file {name}", "yaml", yaml=data)


def env_cases(settings: List[Setting] = list(SETTINGS)) -> Iterator[Case]:
    for setting in settings:
        for variable in setting.env:
            for wrong, value in _wrong_env(setting.kind).items():
                yield Case(f"env {variable} {wrong}", variable, env={variable: value})


def web_cases() -> Iterator[Case]:
    bcrypt_like = "$2b$04$" + "a" * 53
    for name, text in {
        "top-level list": "- a\n",
        "unknown key": "tls_server: {}\n",
        "tls is a list": "tls_server_config: [a]\n",
        "tls without key": "tls_server_config: {cert_file: c.pem}\n",
        "tls unknown key": "tls_server_config: {cert_file: c, key_file: k, ciphers: x}\n",
        "client_auth_type list": "tls_server_config: {cert_file: c, key_file: k, "
                                 "client_auth_type: [RequireAndVerifyClientCert]}\n",
        "client_auth_type mapping": "tls_server_config: {cert_file: c, key_file: k, "
                                    "client_auth_type: {a: 1}}\n",
        "client_auth_type unknown": "tls_server_config: {cert_file: c, key_file: k, "
                                    "client_auth_type: Sometimes}\n",
        "min_version list": "tls_server_config: {cert_file: c, key_file: k, "
                            "min_version: [TLS12]}\n",
        "min_version number": "tls_server_config: {cert_file: c, key_file: k, "
                              "min_version: 12}\n",
        "max_version mapping": "tls_server_config: {cert_file: c, key_file: k, "
                               "max_version: {a: 1}}\n",
        "min_version unknown": "tls_server_config: {cert_file: c, key_file: k, "
                               "min_version: TLS9}\n",
        "users is a list": "basic_auth_users: [a]\n",
        "user hash not bcrypt": "basic_auth_users: {prom: plain}\n",
        "user hash is a list": "basic_auth_users: {prom: [a]}\n",
        "user hash is a number": "basic_auth_users: {prom: 5}\n",
        "duplicate user": f"basic_auth_users:\n  prom: '{bcrypt_like}'\n"
                          f"  prom: '{bcrypt_like}'\n",
        "user with colon": f"basic_auth_users: {{'a:b': '{bcrypt_like}'}}\n",
        "user is a number": f"basic_auth_users: {{5: '{bcrypt_like}'}}\n",
        "http is a list": "http_server_config: [a]\n",
        "http unknown key": "http_server_config: {gzip: true}\n",
        "headers is a list": "http_server_config: {headers: [a]}\n",
        "header with CR LF": "http_server_config: {headers: {X-A: \"ok\\r\\nSet-Cookie: x=1\"}}\n",
        "header with LF": "http_server_config: {headers: {X-A: \"ok\\nX-B: 1\"}}\n",
        "header with NUL": "http_server_config: {headers: {X-A: \"a\\0b\"}}\n",
        "header name with space": "http_server_config: {headers: {'X A': b}}\n",
        "header name with colon": "http_server_config: {headers: {'X:A': b}}\n",
        "header value list": "http_server_config: {headers: {X-A: [a, b]}}\n",
        "header value mapping": "http_server_config: {headers: {X-A: {a: 1}}}\n",
        "header value 5000 digits": f"http_server_config: {{headers: {{X-A: {HUGE_INT}}}}}\n",
        "header alias bomb": f"http_server_config: {{headers: {{X-A: {alias_bomb()}}}}}\n",
        "header deep nesting": f"http_server_config: {{headers: {{X-A: {deep()}}}}}\n",
        "users alias bomb": f"basic_auth_users: {{prom: {alias_bomb()}}}\n",
        "duplicate header": "http_server_config:\n  headers:\n    X-A: a\n    X-A: b\n",
        "invalid YAML": "tls_server_config: {cert_file: [\n",
        "recursive alias": "http_server_config: &a {headers: *a}\n",
    }.items():
        yield Case(f"web {name}", "web", web=text.encode())
    good = b"http_server_config:\n  headers:\n    X-A: b\n"
    for name, data in {
        "not UTF-8": good.replace(b"b\n", b"caf\xe9\n"),
        "UTF-16": good.decode().encode("utf-16"),
        "NUL byte": good.replace(b"X-A", b"X\x00A"),
    }.items():
        yield Case(f"web file {name}", "web", web=data)


def corpus() -> List[Case]:
    return [*yaml_cases(), *env_cases(), *web_cases()]

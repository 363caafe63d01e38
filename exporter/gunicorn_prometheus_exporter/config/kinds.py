"""Value kinds: how one setting's raw value (a YAML scalar or an environment string) is
parsed and checked. Each kind raises ``ValueError`` with the expectation in plain words, which
the loader prefixes with where the value came from (file and line, or variable name)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from .redis_url import parse_url

#: Most bounds of one histogram: each is a series for every label set.
MAX_BUCKETS = 1000
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class Kind:
    """Base of all kinds; ``expected`` is the phrase used in error messages."""

    expected = "a value"

    def parse(self, raw: Any) -> Any:
        raise NotImplementedError

    def fail(self, raw: Any) -> ValueError:
        return ValueError(f"expected {self.expected}, got {shown(raw)}")


def shown(raw: Any, limit: int = 60) -> str:
    """A raw value for an error message: one line, at most ``limit`` characters, whatever
    its size (a 5,000-digit integer cannot even be printed by default)."""
    if isinstance(raw, int) and not isinstance(raw, bool) and raw.bit_length() > 200:
        return f"an integer of about {int(raw.bit_length() * 0.30103)} digits"
    if isinstance(raw, (list, tuple, dict)) and len(raw) > 20:
        return f"a {type(raw).__name__} of {len(raw)} items"
    try:
        text = repr(raw)
    except (ValueError, RecursionError):
        return f"a {type(raw).__name__}"
    return text if len(text) <= limit else text[:limit - 3] + "..."


@dataclass(frozen=True)
class Bool(Kind):
    @property
    def expected(self) -> str:  # type: ignore[override]
        return "true or false"

    def parse(self, raw: Any) -> bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
            return raw.strip().lower() in _TRUE
        raise self.fail(raw)


@dataclass(frozen=True)
class Int(Kind):
    low: int
    high: int

    @property
    def expected(self) -> str:  # type: ignore[override]
        return f"an integer from {self.low} to {self.high}"

    def parse(self, raw: Any) -> int:
        if isinstance(raw, bool):
            raise self.fail(raw)
        if isinstance(raw, int):
            value = raw
        elif (isinstance(raw, str) and raw.strip().lstrip("+-").isdigit()
              and len(raw.strip()) <= 20):
            value = int(raw.strip())
        else:
            raise self.fail(raw)
        if not self.low <= value <= self.high:
            raise self.fail(raw)
        return value


@dataclass(frozen=True)
class Float(Kind):
    low: float
    high: float

    @property
    def expected(self) -> str:  # type: ignore[override]
        return f"a number from {self.low:g} to {self.high:g}"

    def parse(self, raw: Any) -> float:
        if isinstance(raw, bool):
            raise self.fail(raw)
        try:
            value = float(raw)
        except (TypeError, ValueError, OverflowError):
            raise self.fail(raw) from None
        if math.isnan(value) or not self.low <= value <= self.high:
            raise self.fail(raw)
        return value


@dataclass(frozen=True)
class Str(Kind):
    allow_empty: bool = False

    @property
    def expected(self) -> str:  # type: ignore[override]
        return "a string" if self.allow_empty else "a non-empty string"

    def parse(self, raw: Any) -> Optional[str]:
        if raw is None:
            return None
        if isinstance(raw, (dict, list, set, bool, bytes)):
            raise self.fail(raw)
        value = str(raw)
        if not value and not self.allow_empty:
            return None
        return value


@dataclass(frozen=True)
class HeaderName(Kind):
    """An HTTP header name (letters, digits and ``-``), kept in lower case."""

    @property
    def expected(self) -> str:  # type: ignore[override]
        return "an HTTP header name (letters, digits and -)"

    def parse(self, raw: Any) -> str:
        import re

        if isinstance(raw, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]*", raw.strip()):
            return raw.strip().lower()
        raise self.fail(raw)


@dataclass(frozen=True)
class RedisUrl(Kind):
    """``redis://[[user]:password@]host[:port][/db]`` or ``rediss://``, checked by the same
    lenient parser that connects (a raw ``@``, ``#`` or ``/`` in the password is fine)."""

    @property
    def expected(self) -> str:  # type: ignore[override]
        return "a redis:// or rediss:// URL"

    def parse(self, raw: Any) -> Optional[str]:
        if raw is None or raw == "":
            return None
        if not isinstance(raw, str):
            raise self.fail(raw)
        try:
            parse_url(raw.strip())
        except ValueError as exc:
            raise ValueError(f"expected {self.expected}: {exc}") from None
        return raw.strip()


@dataclass(frozen=True)
class Choice(Kind):
    choices: Sequence[str]

    @property
    def expected(self) -> str:  # type: ignore[override]
        return "one of " + ", ".join(self.choices)

    def parse(self, raw: Any) -> str:
        if isinstance(raw, str) and raw.strip().lower() in self.choices:
            return raw.strip().lower()
        raise self.fail(raw)


@dataclass(frozen=True)
class Buckets(Kind):
    """Histogram bounds: strictly increasing positive finite numbers (YAML list or a
    comma-separated environment string), at most MAX_BUCKETS of them (each bound is a
    series per label set); +Inf is always added by the store."""

    @property
    def expected(self) -> str:  # type: ignore[override]
        return f"a list of at most {MAX_BUCKETS} increasing positive numbers"

    def parse(self, raw: Any) -> tuple:
        items = raw.split(",") if isinstance(raw, str) else raw
        if not isinstance(items, (list, tuple)) or not items or len(items) > MAX_BUCKETS:
            raise self.fail(raw)
        try:
            bounds = tuple(float(x) for x in items)
        except (TypeError, ValueError, OverflowError):
            raise self.fail(raw) from None
        if any(not math.isfinite(b) or b <= 0 for b in bounds) or any(
            a >= b for a, b in zip(bounds, bounds[1:])
        ):
            raise self.fail(raw)
        return bounds


@dataclass(frozen=True)
class RouteRules(Kind):
    """A list of ``{pattern: REGEX, replacement: TEXT}`` applied to the path in order."""

    @property
    def expected(self) -> str:  # type: ignore[override]
        return "a list of {pattern, replacement} mappings with valid regular expressions"

    def parse(self, raw: Any) -> tuple:
        import re

        if raw is None:
            return ()
        if not isinstance(raw, list):
            raise self.fail(raw)
        rules = []
        for item in raw:
            if not isinstance(item, dict) or set(item) != {"pattern", "replacement"}:
                raise self.fail(item)
            try:
                rules.append((re.compile(str(item["pattern"])), str(item["replacement"])))
            except re.error as exc:
                raise ValueError(f"invalid regular expression {shown(item['pattern'])}: "
                                 f"{exc}") from None
        return tuple(rules)

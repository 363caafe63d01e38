"""Keep secrets out of gunicorn's log.

Gunicorn's master logs its whole configuration at debug level, ``raw_env`` included, and
any message may quote a Redis URL. A filter on the ``gunicorn.error`` logger, attached when
gunicorn loads the worker class (just before that dump), masks the values of ``raw_env``
entries and every secret setting of this plugin."""
from __future__ import annotations

import logging
import os
import re
from typing import List, Optional

from .config.redis_url import parse_url
from .config.schema import SETTINGS

MASK = "********"
_RAW_ENV = re.compile(r"(raw_env: )(\[.*?\])")
_ENV_ENTRY = re.compile(r"'([^'=]+)=[^']*'")


def secret_values() -> List[str]:
    values = []
    for setting in SETTINGS:
        if not setting.secret:
            continue
        for name in setting.env:
            value = os.environ.get(name)
            if value:
                values.append(value)
                password = _url_password(value) if "://" in value else None
                if password:
                    values.append(password)
    return sorted(set(values), key=len, reverse=True)


def _url_password(url: str) -> Optional[str]:
    """The password of a Redis URL as the connection reads it: with the same lenient
    parser, so a raw ``@``, ``#`` or ``/`` in it is part of the password here too."""
    try:
        return parse_url(url).password
    except ValueError:
        return None


def redact(text: str, secrets: List[str]) -> str:
    text = _RAW_ENV.sub(lambda m: m.group(1) + _ENV_ENTRY.sub(rf"'\1={MASK}'", m.group(2)),
                        text)
    for secret in secrets:
        if len(secret) >= 3:  # a one- or two-character "secret" would mask everything
            text = text.replace(secret, MASK)
    return text


class SecretFilter(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.secrets = secret_values()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
            cleaned = redact(message, self.secrets)
            if cleaned != message:
                record.msg, record.args = cleaned, ()
        except Exception:  # noqa: BLE001 - never lose a log line over this
            pass
        return True


def install() -> None:
    logger = logging.getLogger("gunicorn.error")
    if not any(isinstance(f, SecretFilter) for f in logger.filters):
        logger.addFilter(SecretFilter())

"""structlog setup shared by the API, the worker and the CLI.

Secrets never reach a log line: `mask_secrets` (a structlog processor) replaces the value of
any key named like a secret (password, token, secret, api_key, authorization, ...) and the
password inside any URL (`postgresql://user:pw@host` becomes `postgresql://user:***@host`), in
nested dicts and lists too, and anything shaped like a Fast Brain API key (`fb_` and 40 or
more URL-safe characters, as a client that put its key in a query string would have it in
the access log), any bearer token and any stream ticket (`fastbrain.ticket.<t>`, as the
`websockets` library's DEBUG log of handshake headers shows it). Standard-library records
(uvicorn, SQLAlchemy, arq) get the same text masking through `SecretMaskingFilter` on the
root handler (`fastbrain api` lets uvicorn's loggers propagate there).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

MASK = "***"
# A key is secret when one of its "_"-separated words (lower-cased, "-" read as "_") is one of
# these, or it contains "api_key": `password`, `modal_token_secret`, `access_token`, `x-api-key`,
# `Authorization`. Not `tokens_seen`, `max_new_tokens` or `tokenizer`: counts and names of tokens.
SECRET_KEY_WORDS = frozenset(
    {"password", "passwd", "pwd", "secret", "token", "apikey", "authorization", "auth", "credential", "credentials"}
)
# scheme://user:password@ — the password is whatever lies between the first ":" of the
# userinfo and the last "@" before the host.
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/?#@\s]*:)(?P<pw>[^@\s/]*)@")
_API_KEY = re.compile(r"\bfb_[A-Za-z0-9_\-]{40,}")
# A bearer token or a WebSocket stream ticket, as a library's DEBUG log of request headers shows them.
_BEARER = re.compile(r"(?i)(?P<head>\bbearer\s+|fastbrain\.ticket\.)[^\s,;\"']+")


def is_secret_key(key: str) -> bool:
    name = key.lower().replace("-", "_")
    return "api_key" in name or not SECRET_KEY_WORDS.isdisjoint(name.split("_"))


def mask_text(text: str) -> str:
    """`text` with the password of every URL in it, and every API key, replaced by `***`."""
    if "://" in text:
        text = _URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}@", text)
    if "fb_" in text:
        text = _API_KEY.sub(f"fb_{MASK}", text)
    return _BEARER.sub(lambda m: f"{m['head']}{MASK}", text)


def _mask(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return mask_text(value)
    if depth > 5:
        return value
    if isinstance(value, Mapping):
        return {k: MASK if isinstance(k, str) and is_secret_key(k) else _mask(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_mask(v, depth + 1) for v in value)
    return value


def mask_secrets(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: secret-named keys' values become `***`, URL passwords too (in `event` as well)."""
    for key, value in list(event_dict.items()):
        if value is None:
            continue
        if key != "event" and is_secret_key(key):
            event_dict[key] = MASK
        elif isinstance(value, str | Mapping | list | tuple):
            event_dict[key] = _mask(value)
        elif isinstance(value, BaseException) and key != "exc_info":  # error=exc: its text may hold a URL
            masked = mask_text(str(value))
            if masked != str(value):
                event_dict[key] = f"{type(value).__name__}: {masked}"
    return event_dict


class SecretMaskingFilter(logging.Filter):
    """Masks URL passwords in standard-library log records (their message and exception text)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_text(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            if mask_text(text) != text:
                record.exc_info, record.exc_text = None, None
                record.msg = f"{record.msg}\n{mask_text(text)}"
        return True


def configure_logging(level: str = "INFO", json_lines: bool = False) -> None:
    logging.basicConfig(stream=sys.stderr, level=level.upper(), format="%(message)s")
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, SecretMaskingFilter) for f in handler.filters):
            handler.addFilter(SecretMaskingFilter())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json_lines else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            mask_secrets,  # last before rendering: nothing added after it
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )

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

Every line goes out through one handler on the root logger (structlog's own lines as well, through
`structlog.stdlib.ProcessorFormatter`), so lines from threads never interleave. Two formats
(`FASTBRAIN_LOG_FORMAT`): `console`, structlog's ConsoleRenderer for our lines and library lines as
they are; `json`, one object per line from structlog's JSONRenderer for every line, libraries' too,
with `timestamp`, `level`, `logger`, `event` and whatever is bound with structlog's contextvars
(`job_id`, `skill_id`, `workspace_id`, `attempt` on every line about a job: the worker binds them
when it takes a job, the API when a request names a job or skill). In both, a traceback is plain
text (never a rich one with local variables) and masked like the rest.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

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
    """Masks URL passwords in standard-library log records (their message and exception text).

    structlog's own records (their `msg` is the event dict, already masked by `mask_secrets`) pass as they are.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, dict):
            return True
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


# Job state changes, logged once each where the transition commits (the API: queued and a queued job's
# cancel; the worker: the rest). The dev console (services/dev/console.py) shows exactly these, and warnings.
JOB_STATUS_EVENTS = frozenset(
    {"job_queued", "job_running", "job_requeued", "job_completed", "job_failed", "job_cancelled"}
)
# arq's worker logs its health record whenever its counters change, and the start and end of every run of
# a cron job: with the reaper every 15 s, a few lines every 15 s that say nothing. They are kept at DEBUG.
ARQ_HEALTH_MESSAGE = "recording health: %s"
ARQ_RUN_MESSAGES = ("%6.2fs → %s(%s)%s", "%6.2fs ← %s ● %s")  # a task's start and end; `ref` is the 2nd arg
PERIODIC_TASKS = ("reap_stale_jobs",)


class PeriodicLinesFilter(logging.Filter):
    """Drops arq's health lines and the start/end lines of the periodic reaper unless the level is DEBUG."""

    def __init__(self, keep: bool) -> None:
        super().__init__()
        self.keep = keep

    def filter(self, record: logging.LogRecord) -> bool:
        if self.keep or record.name != "arq.worker":
            return True
        if record.msg == ARQ_HEALTH_MESSAGE:
            return False
        if record.msg in ARQ_RUN_MESSAGES and isinstance(record.args, tuple) and len(record.args) >= 2:
            return not str(record.args[1]).endswith(PERIODIC_TASKS)
        return True


class _RootHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The one handler `configure_logging` puts on the root logger: a given stream, or whatever
    `sys.stderr` is at the time of each line (so a test's captured stderr going away breaks nothing)."""

    def __init__(self, stream: TextIO | None) -> None:
        logging.Handler.__init__(self)
        self._target = stream

    @property
    def stream(self) -> TextIO:
        return self._target if self._target is not None else sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        self._target = value


class _ConsoleFormatter(structlog.stdlib.ProcessorFormatter):
    """Console format: structlog's lines rendered by its ConsoleRenderer, library lines as they are."""

    def format(self, record: logging.LogRecord) -> str:
        if isinstance(record.msg, dict) and hasattr(record, "_logger"):
            return super().format(record)
        return logging.Formatter.format(self, record)


UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


def configure_logging(level: str = "INFO", json_lines: bool = False, stream: TextIO | None = None) -> None:
    """Send every log line (structlog's and the standard library's) to `stream` (default: stderr), at `level`.

    Called again, it replaces its earlier setup (handler, format and level) instead of adding to it.
    """
    level = level.upper()
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _RootHandler)]:
        root.removeHandler(old)
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
    ]
    if json_lines:
        shared += [structlog.stdlib.add_logger_name]
    shared += [
        structlog.processors.TimeStamper(fmt="iso"),
        # The traceback as plain text, masked next (a rich traceback would show locals: URLs, keys).
        structlog.processors.format_exc_info,
        mask_secrets,  # last before rendering: nothing added after it
    ]
    handler = _RootHandler(stream)
    remove_meta = structlog.stdlib.ProcessorFormatter.remove_processors_meta
    formatter: logging.Formatter
    if json_lines:
        formatter = structlog.stdlib.ProcessorFormatter(
            processors=[remove_meta, structlog.processors.JSONRenderer(default=str)], foreign_pre_chain=shared
        )
    else:
        formatter = _ConsoleFormatter(
            processors=[
                remove_meta,
                structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback),
            ]
        )
    handler.setFormatter(formatter)
    handler.addFilter(PeriodicLinesFilter(keep=level == "DEBUG"))
    root.addHandler(handler)
    root.setLevel(level)
    # uvicorn's own logging config (an in-process `uvicorn.Config` without `log_config=None`) gives its
    # loggers handlers of their own and stops them propagating: their lines would skip the masking.
    for name in UVICORN_LOGGERS:
        library = logging.getLogger(name)
        library.handlers.clear()
        library.propagate, library.disabled = True, False
        library.setLevel(logging.NOTSET)
    logging.captureWarnings(True)  # Python warnings too become log lines (JSON ones in `json`), not bare stderr
    for each in root.handlers:
        if not any(isinstance(f, SecretMaskingFilter) for f in each.filters):
            each.addFilter(SecretMaskingFilter())
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )


def reset_logging() -> None:
    """Undo `configure_logging` (tests): its root handler goes, structlog gets its defaults back."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _RootHandler)]:
        root.removeHandler(old)
    logging.captureWarnings(False)
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()

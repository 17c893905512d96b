"""Logging for operators: one line per event, with the logger, the level and the id of the update
or notice being handled; plain text for people or JSON lines for log collectors; optional file
with rotation. Secrets never reach a log line: bot tokens (Telegram puts them in request URLs)
and link codes are masked in every record, and no handler logs message text.

Configured from the environment (see .env.example): ``DOCSACH_LOG_LEVEL``, ``DOCSACH_LOG_FORMAT``
(``text`` or ``json``), ``DOCSACH_LOG_FILE`` (rotated at ``DOCSACH_LOG_MAX_MB``, keeping
``DOCSACH_LOG_BACKUPS`` old files).
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import json
import logging
import logging.handlers
import os
import re
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

# The update or notice this task is handling ("tg-812345", "n-4711"); "-" outside of one.
event_id: contextvars.ContextVar[str] = contextvars.ContextVar("docsach_event_id", default="-")
_counter = itertools.count(1)

# Third-party loggers that talk too much at INFO: httpx logs every request URL, and Telegram's
# URLs carry the bot token; fontTools prints dozens of lines per PDF.
QUIET = {
    "httpx": logging.WARNING, "httpcore": logging.WARNING, "telegram": logging.WARNING,
    "telegram.ext": logging.WARNING, "apscheduler": logging.WARNING, "aiosqlite": logging.WARNING,
    "alembic": logging.WARNING, "asyncio": logging.WARNING, "fontTools": logging.ERROR,
    "fpdf": logging.WARNING, "PIL": logging.WARNING, "aiohttp.access": logging.WARNING,
    "asyncpg": logging.WARNING, "sqlalchemy": logging.WARNING,
}

# 123456789:AA… bot tokens (also inside …/bot<token>/sendMessage URLs); ZaloOA-style long
# access tokens after "access_token="; link codes after the words that introduce them.
_TOKEN = re.compile(r"(?<!\d)\d{5,}:[A-Za-z0-9_-]{20,}")
_QUERY_SECRET = re.compile(r"(?i)((?:access_token|token|secret|key|code)=)[^&\s\"']+")
_LINK_CODE = re.compile(r"(?i)(\b(?:link[ _-]?code|code|mã)\s*[:=]?\s*)[A-HJ-NP-Z2-9]{6,10}\b")
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}")


def redact(text: str) -> str:
    """Mask tokens, secrets in query strings and link codes."""
    text = _TOKEN.sub("<token>", text)
    text = _QUERY_SECRET.sub(r"\1<redacted>", text)
    text = _BEARER.sub(r"\1<redacted>", text)
    return _LINK_CODE.sub(r"\1<redacted>", text)


def new_id(prefix: str) -> str:
    """A short id for an event this process handles (unique per process; the pid tells processes apart)."""
    return f"{prefix}-{os.getpid():x}.{next(_counter)}"


@contextlib.contextmanager
def bound(identifier: str) -> Iterator[str]:
    """Every log line inside the block (and in tasks started from it) carries ``identifier``."""
    token = event_id.set(identifier)
    try:
        yield identifier
    finally:
        event_id.reset(token)


class ContextFilter(logging.Filter):
    """Adds ``record.event_id`` and masks secrets in the message and any traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.event_id = event_id.get()
        try:
            message = record.getMessage()
        except Exception:   # a bad format string must not lose the line
            message = f"{record.msg!r} {record.args!r}"
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(event_id)s] %(message)s")

    def formatException(self, ei) -> str:
        return redact(super().formatException(ei))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, id, msg (and exc when there is one)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "id": getattr(record, "event_id", "-"),
            "msg": record.getMessage(),
        }
        exc = record.exc_text or (self.formatException(record.exc_info) if record.exc_info else None)
        if exc:
            entry["exc"] = redact(exc)
        return json.dumps(entry, ensure_ascii=False)


def setup(level: str = "INFO", *, fmt: str = "text", file: str | None = None, max_mb: float = 20,
          backups: int = 5, quiet: bool = False, stream=None) -> list[logging.Handler]:
    """Replace the root logger's handlers: stderr always, plus a rotating file when asked."""
    numeric = logging.WARNING if quiet else getattr(logging, str(level).upper(), logging.INFO)
    formatter: logging.Formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    handlers: list[logging.Handler] = [logging.StreamHandler(stream or sys.stderr)]
    if file:
        handlers.append(logging.handlers.RotatingFileHandler(
            file, maxBytes=int(max_mb * 1024 * 1024), backupCount=backups, encoding="utf-8"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        with contextlib.suppress(Exception):
            old.close()
    context = ContextFilter()
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(context)
        root.addHandler(handler)
    root.setLevel(numeric)
    for name, floor in QUIET.items():
        logging.getLogger(name).setLevel(max(numeric, floor))
    logging.captureWarnings(True)
    return handlers


def setup_from_env(level: str = "INFO", *, quiet: bool = False) -> list[logging.Handler]:
    fmt = (os.environ.get("DOCSACH_LOG_FORMAT") or "text").strip().lower()
    return setup(level, fmt="json" if fmt == "json" else "text", file=os.environ.get("DOCSACH_LOG_FILE") or None,
                 max_mb=float(os.environ.get("DOCSACH_LOG_MAX_MB") or 20),
                 backups=int(os.environ.get("DOCSACH_LOG_BACKUPS") or 5), quiet=quiet)


def progress_wanted(requested: bool = True, stream=None) -> bool:
    """Progress bars only for a person watching a terminal, never into a log file or a pipe."""
    stream = stream or sys.stderr
    return bool(requested) and hasattr(stream, "isatty") and stream.isatty()

"""Settings, from environment variables and an optional .env file (see .env.example)."""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from dotenv import load_dotenv

log = logging.getLogger(__name__)

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./docsach.db"


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


@dataclass
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    telegram_token: str | None = None
    telegram_api_base_url: str = "https://api.telegram.org/bot"
    telegram_webhook_secret: str | None = None
    telegram_bot_username: str | None = None  # for QR labels printed without a token (else getMe)
    timezone: str = "Asia/Ho_Chi_Minh"
    default_language: str = "vi"
    default_library: str = "demo"
    secret_key: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    secret_key_is_ephemeral: bool = True
    log_level: str = "INFO"
    # Catalog search: how often (seconds) each worker polls the database for catalog changes, and
    # an optional index snapshot file that makes a 1M-title restart fast.
    search_refresh_seconds: float = 5.0
    search_snapshot: str | None = None
    reminders_enabled: bool = True
    reminder_interval_minutes: float = 5.0
    # The one HTTP server (webhooks, web chat, landing pages): HOST:PORT, and the public https
    # address it is reached at (QR codes then open …/b/<payload> in any phone's browser).
    listen: str = "127.0.0.1:8080"
    public_url: str | None = None
    # Photos people send: kept in the database, or in this directory when set.
    files_dir: str | None = None
    # Zalo (issue 11): a token turns the channel on; a webhook secret switches it from long polling
    # to the webhook (which needs public_url). Zalo publishes no rate limits: pace conservatively.
    zalo_token: str | None = None
    zalo_api_base_url: str = "https://bot-api.zaloplatforms.com/bot"
    zalo_webhook_secret: str | None = None
    zalo_messages_per_second: float = 5.0
    zalo_bot_link: str | None = None   # the bot's share link from Zalo Bot Manager ("open in Zalo")
    # Sites allowed to show the web chat in an iframe (the school's website), e.g. https://school.edu.vn
    embed_origins: list[str] = field(default_factory=list)

    @classmethod
    def from_env(cls, env_file: str | Path | None = ".env") -> Settings:
        """Read the environment (a .env file fills in only what is not already set)."""
        if env_file and Path(env_file).is_file():
            load_dotenv(env_file, override=False)
        secret = _env("DOCSACH_SECRET_KEY")
        settings = cls(
            database_url=_env("DOCSACH_DATABASE_URL", DEFAULT_DATABASE_URL),
            telegram_token=_env("TELEGRAM_BOT_TOKEN"),
            telegram_api_base_url=_env("TELEGRAM_API_BASE_URL", "https://api.telegram.org/bot"),
            telegram_webhook_secret=_env("TELEGRAM_WEBHOOK_SECRET"),
            telegram_bot_username=_env("TELEGRAM_BOT_USERNAME"),
            timezone=_env("DOCSACH_TIMEZONE", "Asia/Ho_Chi_Minh"),
            default_language=_env("DOCSACH_DEFAULT_LANGUAGE", "vi"),
            default_library=_env("DOCSACH_DEFAULT_LIBRARY", "demo"),
            log_level=_env("DOCSACH_LOG_LEVEL", "INFO"),
            search_refresh_seconds=float(_env("DOCSACH_SEARCH_REFRESH_SECONDS", "5")),
            search_snapshot=_env("DOCSACH_SEARCH_SNAPSHOT"),
            reminders_enabled=(_env("DOCSACH_REMINDERS", "on") or "on").lower() not in ("off", "0", "false", "no"),
            reminder_interval_minutes=float(_env("DOCSACH_REMINDER_INTERVAL_MINUTES", "5") or 5),
            listen=_env("DOCSACH_LISTEN", "127.0.0.1:8080"),
            public_url=(_env("DOCSACH_PUBLIC_URL") or "").rstrip("/") or None,
            files_dir=_env("DOCSACH_FILES_DIR"),
            zalo_token=_env("ZALO_BOT_TOKEN"),
            zalo_api_base_url=_env("ZALO_API_BASE_URL", "https://bot-api.zaloplatforms.com/bot"),
            zalo_webhook_secret=_env("ZALO_WEBHOOK_SECRET"),
            zalo_messages_per_second=_positive_float("ZALO_MESSAGES_PER_SECOND", 5.0),
            zalo_bot_link=_env("ZALO_BOT_LINK"),
            embed_origins=[o for o in (_env("DOCSACH_EMBED_ORIGINS") or "").split()
                           if o.startswith(("https://", "http://")) and "'" not in o and ";" not in o],
        )
        if secret:
            settings.secret_key = secret.encode()
            settings.secret_key_is_ephemeral = False
        return settings

    def redacted(self) -> dict[str, str]:
        """For logs: never print secrets."""
        return {
            "database": _redact_url(self.database_url),
            "telegram": "configured" if self.telegram_token else "off",
            "zalo": ("webhook" if self.zalo_webhook_secret else "polling") if self.zalo_token else "off",
            "listen": self.listen,
            "public_url": self.public_url or "-",
            "timezone": self.timezone,
            "language": self.default_language,
        }


def _positive_float(name: str, default: float) -> float:
    """A positive number from the environment; a typo falls back to the default, loudly."""
    raw = _env(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        log.warning("%s=%r is not a positive number; using %s", name, raw, default)
        return default
    return value


def _redact_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable url>"


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6) → (host, port); ValueError with a plain message."""
    host, _, port = (value or "").strip().rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--listen wants HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)

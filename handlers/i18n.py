"""Translations: every user-facing string lives in locales/<lang>/LC_MESSAGES/<domain>.po.

Message ids are stable keys (``help.student``); each feature has its own domain (file) so
features grow without stepping on each other. The Makefile compiles .po → .mo; when a .mo is
missing (a checkout that skipped ``make``) the .po is read directly, so text never goes blank.
"""

from __future__ import annotations

import logging
import string
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from babel.dates import format_date, format_datetime
from babel.messages.mofile import read_mo
from babel.messages.pofile import read_po

log = logging.getLogger(__name__)

LOCALES_DIR = Path(__file__).resolve().parent.parent / "locales"
LANGUAGES = ("vi", "en")


def N_(key: str) -> str:
    """Mark a message id for the catalog check without translating it here."""
    return key


class Catalogs:
    """All languages' messages, loaded once at start-up."""

    def __init__(self, directory: Path = LOCALES_DIR, languages: tuple[str, ...] = LANGUAGES) -> None:
        self.directory = directory
        self.messages: dict[str, dict[str, str]] = {lang: self._load(lang) for lang in languages}

    def _load(self, lang: str) -> dict[str, str]:
        folder = self.directory / lang / "LC_MESSAGES"
        merged: dict[str, str] = {}
        for po in sorted(folder.glob("*.po")):
            mo = po.with_suffix(".mo")
            if mo.exists() and mo.stat().st_mtime >= po.stat().st_mtime:
                with mo.open("rb") as fh:
                    catalog = read_mo(fh)
            else:
                log.info("reading %s directly (run `make locales` to compile)", po)
                with po.open("rb") as fh:
                    catalog = read_po(fh, locale=lang)
            for message in catalog:
                if message.id and message.string and not message.fuzzy:
                    merged[str(message.id)] = str(message.string)
        return merged

    def translator(self, lang: str, timezone: str = "Asia/Ho_Chi_Minh") -> Translator:
        return Translator(self, lang if lang in self.messages else LANGUAGES[0], timezone)

    def keys(self, lang: str) -> set[str]:
        return set(self.messages.get(lang, {}))


class Translator:
    """``t("key", name=...)`` in one language, plus dates in that language and the school's zone."""

    def __init__(self, catalogs: Catalogs, lang: str, timezone: str = "Asia/Ho_Chi_Minh") -> None:
        self.catalogs = catalogs
        self.lang = lang
        self.zone = ZoneInfo(timezone)

    def __call__(self, key: str, **params: object) -> str:
        text = self.catalogs.messages[self.lang].get(key)
        if text is None:
            text = self.catalogs.messages.get("en", {}).get(key, key)
            log.warning("missing message %r in %s", key, self.lang)
        if not params:
            return text
        try:
            return text.format_map(_Params(params))
        except (ValueError, IndexError):
            log.exception("bad placeholders in %r", key)
            return text

    def date(self, value: date | datetime, fmt: str = "medium") -> str:
        if isinstance(value, datetime):
            value = value.astimezone(self.zone).date()
        return format_date(value, format=fmt, locale=self.lang)

    def datetime(self, value: datetime, fmt: str = "short") -> str:
        return format_datetime(value, format=fmt, tzinfo=self.zone, locale=self.lang)


class _Params(dict):
    """Missing placeholders stay visible instead of raising KeyError in front of a user."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}

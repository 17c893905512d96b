"""Translations: every user-facing string lives in locales/<lang>/LC_MESSAGES/<domain>.po.

Message ids are stable keys (``help.student``); each feature has its own domain (file) so
features grow without stepping on each other. The Makefile compiles .po → .mo; when a .mo is
missing (a checkout that skipped ``make``) the .po is read directly, so text never goes blank.

Voice: one register per audience. Students are "em"; teachers and staff are never "em" (they get
"thầy/cô" or a neutral sentence); anonymous visitors are "bạn". A message may exist in audience
variants: ``key@staff`` (teachers, librarians, admins) and ``key@guest`` (not linked), chosen by the
translator from the reader's role (guests fall back to ``@staff``, the neutral wording); without a
variant everyone gets ``key``, which must then fit every audience (tests/test_voice.py renders
every message for each and checks).

Plurals and dates follow Babel's rules for the language: ``{count:one#book|other#books}`` picks
the plural category of ``count`` (Vietnamese has none, English "one"/"other"); dates are
unambiguous ("2 Dec 2026", "02/12/2026").
"""

from __future__ import annotations

import logging
import string
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from babel import Locale
from babel.dates import format_date, format_datetime
from babel.messages.mofile import read_mo
from babel.messages.pofile import read_po

log = logging.getLogger(__name__)

LOCALES_DIR = Path(__file__).resolve().parent.parent / "locales"
LANGUAGES = ("vi", "en")
AUDIENCES = ("student", "staff", "guest")
# Unambiguous everywhere: never "12/2/26" for 2 December. "short" is kept for callers that ask
# for a compact date; it is still day-month-year.
DATE_FORMATS = {
    "en": {"medium": "d MMM y", "short": "d MMM y", "long": "d MMMM y", "day": "d MMM"},
    "vi": {"medium": "dd/MM/y", "short": "dd/MM/y", "long": "'ngày' d 'tháng' M 'năm' y", "day": "dd/MM"},
}


def audience_for(role: object) -> str:
    """The register a reader gets: students "em", teachers and staff "thầy/cô"/neutral, guests "bạn"."""
    value = getattr(role, "value", role)
    if value is None:
        return "guest"
    return "student" if value == "student" else "staff"


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

    def translator(self, lang: str, timezone: str = "Asia/Ho_Chi_Minh", audience: str = "student") -> Translator:
        return Translator(self, lang if lang in self.messages else LANGUAGES[0], timezone, audience)

    def keys(self, lang: str) -> set[str]:
        return set(self.messages.get(lang, {}))


class Translator:
    """``t("key", name=...)`` in one language and one audience's register, plus dates in that
    language and the school's zone."""

    def __init__(self, catalogs: Catalogs, lang: str, timezone: str = "Asia/Ho_Chi_Minh",
                 audience: str = "student") -> None:
        self.catalogs = catalogs
        self.lang = lang
        self.zone = ZoneInfo(timezone)
        self.audience = audience if audience in AUDIENCES else "student"
        self.locale = Locale.parse(lang)

    def lookup(self, key: str) -> str | None:
        messages = self.catalogs.messages[self.lang]
        # Guests fall back to the neutral staff wording before the students' "em".
        for audience in {"staff": ("staff",), "guest": ("guest", "staff")}.get(self.audience, ()):
            variant = messages.get(f"{key}@{audience}")
            if variant is not None:
                return variant
        return messages.get(key)

    def __call__(self, key: str, **params: object) -> str:
        text = self.lookup(key)
        if text is None:
            text = self.catalogs.messages.get("en", {}).get(key, key)
            log.warning("missing message %r in %s", key, self.lang)
        if not params:
            return text
        values = {k: _Number(v, self.locale) if isinstance(v, int) and not isinstance(v, bool) else v
                  for k, v in params.items()}
        try:
            return text.format_map(_Params(values))
        except (ValueError, IndexError):
            log.exception("bad placeholders in %r", key)
            return text

    def date(self, value: date | datetime, fmt: str = "medium") -> str:
        if isinstance(value, datetime):
            value = value.astimezone(self.zone).date()
        pattern = DATE_FORMATS.get(self.lang, {}).get(fmt, fmt)
        return format_date(value, format=pattern, locale=self.lang)

    def datetime(self, value: datetime, fmt: str = "short") -> str:
        return format_datetime(value, format=fmt, tzinfo=self.zone, locale=self.lang)


class _Number(int):
    """An int that also knows its plural forms: ``{n:one#book|other#books}`` → "book"/"books"
    by Babel's plural rule for the language; any other format spec works as for int."""

    def __new__(cls, value: int, locale: Locale) -> _Number:
        number = super().__new__(cls, value)
        number.locale = locale
        return number

    def __format__(self, spec: str) -> str:
        if "#" not in spec:
            return format(int(self), spec)
        forms = dict(part.split("#", 1) for part in spec.split("|") if "#" in part)
        category = self.locale.plural_form(int(self))
        return forms.get(category, forms.get("other", next(iter(forms.values()))))


class _Params(dict):
    """Missing placeholders stay visible instead of raising KeyError in front of a user."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}

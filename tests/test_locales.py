"""Every message id used in code exists in both catalogs, with the same placeholders."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from handlers.i18n import LANGUAGES, Catalogs, placeholders

ROOT = Path(__file__).resolve().parents[1]
# t("area.key"), N_("area.key"), DomainError("area.key"), PermissionDenied("area.key"), help_key="area.key", …
USE = re.compile(
    r"""(?:\bt|\bN_|Error|Denied|NotFound|_key|\.t)\s*[(=]\s*["']([a-z][a-z0-9_]*\.[a-z0-9_.]+)["']"""
)


def used_keys() -> dict[str, str]:
    found: dict[str, str] = {}
    for folder in ("bot", "handlers", "services"):
        for path in (ROOT / folder).rglob("*.py"):
            for key in USE.findall(path.read_text(encoding="utf-8")):
                found.setdefault(key, str(path.relative_to(ROOT)))
    return found


def test_the_scanner_sees_the_code():
    keys = used_keys()
    assert "error.button_expired" in keys and "help.cmd_help" in keys and "link.required" in keys


@pytest.mark.parametrize("lang", LANGUAGES)
def test_every_used_key_is_translated(lang: str):
    catalog = Catalogs().keys(lang)
    missing = {k: where for k, where in used_keys().items() if k not in catalog}
    assert not missing, f"missing from locales/{lang}: {missing}"


def test_languages_have_the_same_keys_and_placeholders():
    catalogs = Catalogs()
    vi, en = catalogs.messages["vi"], catalogs.messages["en"]
    # Audience variants (``key@staff``, ``key@guest``) exist where a language needs them (Vietnamese
    # pronouns differ by audience, English "you" does not); their base message exists in both.
    base_vi = {k for k in vi if "@" not in k}
    base_en = {k for k in en if "@" not in k}
    assert base_vi == base_en, base_vi ^ base_en
    for key in base_vi:
        assert placeholders(vi[key]) == placeholders(en[key]), key
    for lang, messages in (("vi", vi), ("en", en)):
        for key in (k for k in messages if "@" in k):
            base, _, audience = key.partition("@")
            assert base in messages and audience in ("staff", "guest"), (lang, key)
            assert placeholders(messages[key]) == placeholders(messages[base]), (lang, key)

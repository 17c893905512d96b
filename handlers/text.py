"""Small text helpers shared by the chat features."""

from __future__ import annotations

_TRIM = " \t\n,;:.-–—·"


def short(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` characters for a button label, a list line or a toast: cut
    at a word boundary with "…" (mid-word only when one word fills most of the space)."""
    if len(text) <= limit:
        return text
    cut = text[: max(1, limit - 1)]
    if not text[len(cut)].isspace():          # the cut falls inside a word: back up to its start
        space = max(cut.rfind(" "), cut.rfind("\n"), cut.rfind("\t"))
        if space >= len(cut) // 2:
            cut = cut[:space]
    return cut.rstrip(_TRIM) + "…"

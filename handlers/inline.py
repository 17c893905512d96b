"""Inline mode (``@bot QUERY`` in any chat): matching books as shareable results.

The result type is platform-neutral; the Telegram adapter turns it into an inline article.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from handlers.messages import Button


@dataclass(frozen=True)
class InlineResult:
    """One inline result: shown as ``title``/``description``; choosing it posts ``text`` with
    ``buttons`` (URL buttons only: a message posted into someone else's chat has no chat of ours
    to bind a callback payload to)."""

    id: str
    title: str
    description: str
    text: str
    buttons: list[list[Button]] = field(default_factory=list)

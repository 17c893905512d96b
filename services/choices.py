"""Numbered choices for chats without buttons (Zalo): what "2" means in a given chat.

A reply's buttons are shown as "1. Gia hạn", "2. Dừng nhắc"…; the person answers with the
number or the label. The choices live in the database (one row per chat), so a restarted
process or a second worker understands the answer. A reply the person asked for starts the
numbering afresh; a pushed notice (a reminder arriving mid-conversation) continues it, so the
numbers already on the screen keep their meaning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select

from services.common import aware
from services.db import Database, insert_for
from services.models import ChatChoice
from services.textfold import fold

# A reminder may be answered days later; after this the numbers no longer mean anything.
TTL = timedelta(days=7)
# A notice pushed into a chat quiet for this long starts its own numbering: the conversation the
# older numbers belonged to is over, and the notice is what the person will answer.
IDLE = timedelta(minutes=30)
MAX_CHOICES = 60          # a chat never accumulates more; the oldest numbers are forgotten first
_NUMBER = re.compile(r"^(\d{1,3})\s*[.)]?$")      # not "#12": that is a title id
_OWN_NUMBER = re.compile(r"^(\d{1,3})[.)]\s+(\S.*)$", re.DOTALL)


@dataclass(frozen=True)
class Choice:
    n: int
    label: str
    payload: str


@dataclass(frozen=True)
class Pick:
    """What a message means against the chat's choices.

    ``kind``: "choice" (``choice`` is set), "unknown_number" (a number that is not on the list;
    ``highest`` is the largest one that is), "stale" (a number, but the list has expired),
    "no_list" (a number, and the chat has no list) or "text" (not an answer at all).
    """

    kind: str
    choice: Choice | None = None
    number: int | None = None
    highest: int = 0
    context: str | None = None       # the question open when the list was shown


def as_number(text: str) -> int | None:
    """"2", "2.", "2)" → 2; anything else (an ISBN, "#2", a sentence) → None."""
    match = _NUMBER.match((text or "").strip())
    return int(match.group(1)) if match else None


def numbered_label(label: str) -> tuple[int | None, str]:
    """A label that carries its own number ("6. Nỗi cô đơn…", a search result on page 2) keeps
    it, so the number typed matches the one in the text: (6, "Nỗi cô đơn…")."""
    match = _OWN_NUMBER.match(label)
    return (int(match.group(1)), match.group(2)) if match else (None, label)


async def remember(db: Database, channel: str, chat_id: str, items: list[tuple[str, str]], *,
                   now: datetime, fresh: bool, context: str | None = None) -> list[Choice]:
    """Number ``items`` ((label, payload) pairs) for this chat and store them.

    ``fresh`` replaces the chat's list; otherwise (a pushed notice) the numbers continue after
    the ones of a conversation still going on (active within :data:`IDLE`). A label's own number is kept when it is free; the others count on from the highest
    number in use. ``context`` names the question open as the list is shown (see :func:`pick`).
    Returns the numbered choices, in the order given.
    """
    async with db.transaction() as s:
        insert = insert_for(s)
        await s.execute(insert(ChatChoice).values(channel=channel, chat_id=chat_id, choices=[], updated_at=now)
                        .on_conflict_do_nothing(index_elements=["channel", "chat_id"]))
        query = select(ChatChoice).where(ChatChoice.channel == channel, ChatChoice.chat_id == chat_id)
        if not db.is_sqlite:
            query = query.with_for_update()   # a reminder and a reply racing must not lose numbers
        row = (await s.execute(query)).scalar_one()
        kept: list[dict[str, Any]] = []
        if not fresh and now - aware(row.updated_at) <= IDLE:
            kept = list(row.choices or [])
        if max((int(c["n"]) for c in kept), default=0) + len(items) > 999:
            kept = []                     # numbers stay short: start over when they grow long
        added = _number(items, {int(c["n"]) for c in kept})
        merged = kept + [{"n": c.n, "label": c.label, "payload": c.payload} for c in added]
        row.choices = merged[-MAX_CHOICES:]
        row.context = context[:80] if context else None
        row.updated_at = now
    return added


def _number(items: list[tuple[str, str]], used: set[int]) -> list[Choice]:
    own = [numbered_label(label) for label, _ in items]
    taken = set(used)
    numbers: list[int | None] = []
    for wanted, _ in own:
        ok = wanted is not None and 1 <= wanted <= 999 and wanted not in taken
        numbers.append(wanted if ok else None)
        if ok:
            taken.add(wanted)
    following = max(taken, default=0)
    out = []
    for (_, label), (_, payload), n in zip(own, items, numbers, strict=True):
        if n is None:
            following += 1
            n = following
        out.append(Choice(n, label, payload))
    return out


async def pick(db: Database, channel: str, chat_id: str, text: str, *, now: datetime) -> Pick:
    """Read ``text`` as an answer to the chat's numbered choices (a number or a label)."""
    number = as_number(text)
    async with db.session() as s:
        row = await s.get(ChatChoice, (channel, chat_id))
    items = [Choice(int(c["n"]), str(c["label"]), str(c["payload"])) for c in (row.choices if row else [])]
    if row is None or not items:
        return Pick("no_list", number=number) if number is not None else Pick("text")
    if now - aware(row.updated_at) > TTL:
        return Pick("stale", number=number) if number is not None else Pick("text")
    if number is not None:
        found = next((c for c in items if c.n == number), None)
        if found is None:
            return Pick("unknown_number", number=number, highest=max(c.n for c in items), context=row.context)
        return Pick("choice", choice=found, number=number, context=row.context)
    folded = fold(text)
    if folded:
        found = next((c for c in items if fold(c.label) == folded), None)
        if found is not None:
            return Pick("choice", choice=found, context=row.context)
    return Pick("text")


async def forget(db: Database, channel: str, chat_id: str) -> None:
    async with db.transaction() as s:
        await s.execute(delete(ChatChoice).where(ChatChoice.channel == channel, ChatChoice.chat_id == chat_id))


async def prune(db: Database, *, now: datetime) -> int:
    """Drop lists nobody can answer any more."""
    async with db.transaction() as s:
        result = await s.execute(delete(ChatChoice).where(ChatChoice.updated_at < now - TTL))
        return result.rowcount or 0

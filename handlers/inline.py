"""Inline mode (``@bot QUERY`` in any chat): matching books as shareable results.

A student types ``@bot truyen kieu`` in a class group and picks a book; a short card is posted
there with a button that opens the book in the bot (the channel profile's deep link). The result
type is platform-neutral; the Telegram adapter turns it into an inline article.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from handlers.core import Context, Router, deep_link_payload
from handlers.messages import Button
from handlers.search import engine, query_problem
from handlers.text import short

PAGE = 10
MAX_OFFSET = 400      # the search service pages no deeper


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


async def inline_books(ctx: Context, query: str, offset: str) -> tuple[list[InlineResult], str]:
    """A page of books for ``query`` (availability in the asker's library), and the next offset."""
    t = ctx.t
    query = " ".join(query.split())
    start = int(offset) if offset.isdigit() and int(offset) <= MAX_OFFSET else 0
    if query_problem(query) is not None:
        return ([] if start else [_hint(ctx)]), ""
    results = await engine(ctx).search(query, limit=PAGE, offset=start, library_id=ctx.actor.library_id)
    items = []
    for hit in results.hits:
        if hit.copies == 0:
            state = t("inline.none_here")
        elif hit.available:
            state = t("inline.available", available=hit.available, copies=hit.copies)
        else:
            state = t("inline.all_out", copies=hit.copies)
        byline = " · ".join(x for x in (short(hit.authors, 60), str(hit.year) if hit.year else "") if x)
        text = [f"📖 {short(hit.title, 300)}"]
        if byline:
            text.append(byline)
        if hit.call_number:
            text.append(t("inline.call_number", call_number=hit.call_number))
        items.append(InlineResult(
            id=f"t{hit.id}",
            title=short(hit.title, 120),
            description=" — ".join(x for x in (byline, state) if x),
            text="\n".join(text),
            buttons=_open_button(ctx, t("inline.open_book"), deep_link_payload("t", hit.id)),
        ))
    next_start = start + len(results.hits)
    more = results.has_more and results.hits and next_start <= MAX_OFFSET
    return items, str(next_start) if more else ""


def _hint(ctx: Context) -> InlineResult:
    t = ctx.t
    return InlineResult(id="hint", title=t("inline.hint_title"), description=t("inline.hint_description"),
                        text=t("inline.hint_text"), buttons=_open_button(ctx, t("inline.open_bot"), None))


def _open_button(ctx: Context, label: str, payload: str | None) -> list[list[Button]]:
    url = ctx.channel.link(payload) if payload else ctx.channel.home
    return [[Button(label, url=url)]] if url else []


def register(router: Router) -> None:
    router.inline(inline_books)

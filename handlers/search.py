"""Finding books: plain text or /search (/tim), result pages with buttons, the book card, and the
QR deep links for a title (t<id>), a copy (c<id>) and a shelf or reading corner (l<id>).

Other features call :func:`book_card` to show a book, and add their own buttons to it through
``router.book_card_buttons`` (Reserve, Reflections…).
"""

from __future__ import annotations

import logging

from handlers.core import Context, Router
from handlers.i18n import N_
from handlers.messages import Button, Incoming, Reply
from handlers.text import short
from services import catalog
from services.common import NotFound
from services.models import CopyStatus
from services.search import MAX_QUERY, CatalogSearch, recall_query, remember_query
from services.textfold import fold

log = logging.getLogger(__name__)

PAGE = 5
SHELF_PAGE = 10
# Scores from the search engine (services/search_index.py): an exact title scores about 100+,
# a strong partial or author match 75–99. Below GOOD_MATCH the best hit is not what was asked
# for; below SIMILARITY_FLOOR a hit is not even close (e.g. "harry potter" → "Here comes
# trouble" scores about 42) and is not offered at all.
GOOD_MATCH = 75.0
SIMILARITY_FLOOR = 60.0
RESEMBLANCE = 75.0          # rapidfuzz similarity of the folded query to the hit's title + authors
CARD_LIMIT = 3500     # a card or a result page is one chat message (Telegram's limit is 4096)
STATUS_KEYS = {
    CopyStatus.AVAILABLE: N_("search.status_available"),
    CopyStatus.ON_LOAN: N_("search.status_on_loan"),
    CopyStatus.ON_HOLD_SHELF: N_("search.status_on_hold_shelf"),
    CopyStatus.IN_REPAIR: N_("search.status_in_repair"),
    CopyStatus.DAMAGED: N_("search.status_damaged"),
    CopyStatus.LOST: N_("search.status_lost"),
    CopyStatus.WITHDRAWN: N_("search.status_withdrawn"),
}


def engine(ctx: Context) -> CatalogSearch:
    """The process's search service (built by the composition root)."""
    found = ctx.deps.extras.get("search")
    if found is None:
        found = ctx.deps.extras["search"] = CatalogSearch(ctx.db)
    return found


def query_problem(query: str) -> str | None:
    """Why ``query`` cannot be searched, as a message key (nothing typed, only symbols, under 2
    letters), or None. Every place students search the catalog applies the same rules."""
    query = " ".join(query.split())
    if not query:
        return N_("search.ask")
    folded = fold(query[:MAX_QUERY])
    if not folded:
        return N_("search.no_words")
    if len(folded.replace(" ", "")) < 2:
        return N_("search.too_short")
    return None


def _resembles(query: str, hit) -> bool:
    """When the engine had to correct the query (unknown words), its best hit must still look like
    what was typed ("hary poter" → Harry Potter), not merely share fuzzy subject words
    ("harry potter" → "Here comes trouble", subjects "Friendship | Stories in rhyme")."""
    from rapidfuzz import fuzz, process

    asked, found = fold(query), fold(f"{hit.title} {hit.authors}")
    if fuzz.partial_ratio(asked, found) >= RESEMBLANCE:
        return True
    words = [w for w in asked.split() if len(w) >= 3]
    candidates = found.split()
    if not words or not candidates:
        return False
    # word by word: each typed word against its most similar word of the title or authors
    best = [process.extractOne(w, candidates, scorer=fuzz.ratio)[1] for w in words]
    return sum(best) / len(best) >= RESEMBLANCE


def _int(value: str) -> int | None:
    return int(value) if value.isdigit() and len(value) < 10 else None


# -- searching ---------------------------------------------------------------------------------

async def search_command(event: Incoming, ctx: Context) -> Reply:
    return await run_search(ctx, event.args)


async def search_text(event: Incoming, ctx: Context) -> Reply | None:
    if event.chat_type != "private" and not event.mentioned:
        return None   # in a group, only /search and "@bot words" are meant for the bot
    return await run_search(ctx, event.text)


async def run_search(ctx: Context, query: str, offset: int = 0, *, edit: bool = False) -> Reply:
    """One page of results, or a friendly word about why there is nothing to search for."""
    t = ctx.t
    query = " ".join(query.split())
    problem = query_problem(query)
    if problem is not None:
        return Reply(t(problem))
    results = await engine(ctx).search(query, limit=PAGE, offset=offset, library_id=ctx.actor.library_id)
    shown = short(results.query, 60)
    lines: list[str] = []
    if results.truncated:
        lines.append(t("search.truncated", limit=MAX_QUERY))
    hits = results.hits
    has_more = results.has_more
    weak = results.kind == "text" and offset == 0 and (not hits or hits[0].score < GOOD_MATCH
                                                       or (results.suggestion is not None
                                                           and not _resembles(results.query, hits[0])))
    if results.kind == "text" and offset == 0:
        # Results are ranked: once one falls under the floor, the rest (and later pages) are noise.
        close = [h for h in hits if h.score >= SIMILARITY_FLOOR]
        if len(close) < len(hits):
            hits, has_more = close, False
    if weak:
        # Nothing matches well: say so plainly, then offer only the close matches (never a
        # confident "did you mean" about an unrelated book).
        if results.suggestion is not None:
            hits = [h for h in hits if _resembles(results.query, h)]
        lines.append(t("search.not_held", query=shown))
        if not hits:
            lines += [t("search.none_tips"), t("search.ask_librarian")]
            return Reply("\n".join(lines), edit=edit)
        lines.append(t("search.closest", count=len(hits)))
    elif results.suggestion and offset == 0 and hits and hits[0].score >= SIMILARITY_FLOOR:
        lines.append(t("search.did_you_mean", title=short(results.suggestion, 80)))
    if not weak:
        last = offset + len(hits)
        total = max(results.total, last)
        if offset == 0 and not has_more:
            lines.append(t("search.results_all", count=len(hits), query=shown))
        else:
            lines.append(t("search.results", first=offset + 1, last=last, total=total, query=shown))
    elsewhere: dict[int, list[str]] = {}
    if ctx.actor.library_id is not None:
        missing = [h.id for h in hits if h.copies == 0]
        elsewhere = await catalog.held_elsewhere(ctx.db, missing, ctx.actor.library_id) if missing else {}
    buttons: list[list[Button]] = []
    for n, hit in enumerate(hits, offset + 1):
        if hit.copies == 0:
            state = t("search.line_none_here")
        elif hit.available:
            state = t("search.line_available", available=hit.available, copies=hit.copies)
        else:
            state = t("search.line_out", copies=hit.copies)
        byline = f" — {short(hit.authors, 40)}" if hit.authors else ""
        year = f" ({hit.year})" if hit.year else ""
        lines.append(f"{n}. {short(hit.title, 100)}{byline}{year} · {state}")
        if hit.id in elsewhere:
            lines.append("   " + t("search.held_elsewhere", libraries=", ".join(elsewhere[hit.id])))
        buttons.append([ctx.button(f"{n}. {short(hit.title, 40)}", "book", hit.id)])
    if weak:
        lines.append(t("search.ask_librarian"))
        return Reply("\n".join(lines), buttons=buttons, edit=edit)
    paging: list[Button] = []
    if offset > 0 or has_more:
        query_id = await remember_query(ctx.db, results.query)
        if offset > 0:
            paging.append(ctx.button(t("search.prev"), "sp", query_id, max(0, offset - PAGE)))
        if has_more:
            paging.append(ctx.button(t("search.next"), "sp", query_id, offset + PAGE))
    if paging:
        buttons.append(paging)
    lines.append(t("search.tap_book"))
    return Reply("\n".join(lines), buttons=buttons, edit=edit)


async def press_page(event: Incoming, ctx: Context, args: list[str]) -> Reply:
    query_id = _int(args[0]) if args else None
    offset = _int(args[1]) if len(args) > 1 else None
    query = await recall_query(ctx.db, query_id) if query_id is not None else None
    if query is None or offset is None:
        return Reply(ctx.t("search.expired_query"))
    return await run_search(ctx, query, offset, edit=True)


# -- the book card -------------------------------------------------------------------------------

async def book_card(ctx: Context, title_id: int, *, scanned_copy: int | None = None) -> Reply:
    """Title, authors, year, call number, each copy's place and status, the hold queue, and the
    buttons other features add. Copies of the asker's library (all libraries for a guest)."""
    t = ctx.t
    library_id = ctx.actor.library_id
    card = await catalog.get_title_card(ctx.db, title_id, library_id)
    lines = [f"📖 {short(card.title, 300)}"]
    if card.authors:
        lines.append(t("search.card_authors", authors=short(card.authors, 200)))
    if card.year:
        lines.append(t("search.card_year", year=card.year))
    if card.publisher:
        lines.append(t("search.card_publisher", publisher=short(card.publisher, 120)))
    if card.call_number:
        lines.append(t("search.card_call_number", call_number=card.call_number))
    if card.isbn13:
        lines.append(t("search.card_isbn", isbn=card.isbn13))
    lines.append("")
    for copy in card.copies:
        if copy.id == scanned_copy:
            lines.insert(1, t("search.card_scanned", barcode=copy.barcode, status=t(STATUS_KEYS[copy.status])))
    if card.copies:
        lines.append(t("search.card_copies", available=card.available, copies=len(card.copies)))
        room = CARD_LIMIT - 200 - sum(len(line) + 1 for line in lines)   # 200: the holds line
        shown = 0
        for copy in card.copies[:30]:
            place = short(copy.location_name, 60) if copy.location_name else t("search.card_no_place")
            status = t(STATUS_KEYS[copy.status])
            if library_id is None:
                lines.append(t("search.card_copy_other", library=copy.library_code, barcode=copy.barcode,
                               place=place, status=status))
            else:
                if copy.due_date is not None:
                    status = t("search.status_on_loan_due", due=t.date(copy.due_date))
                lines.append(t("search.card_copy", barcode=copy.barcode, place=place, status=status))
            room -= len(lines[-1]) + 1
            if room < 0:      # one message per card, however many copies and long shelf names
                lines.pop()
                break
            shown += 1
        if shown < len(card.copies):
            lines.append("…")
        if library_id is not None and not card.available and card.next_due is not None:
            lines.append(t("search.card_next_due", due=t.date(card.next_due), count=card.holds_waiting))
    else:
        lines.append(t("search.card_no_copies"))
        if library_id is not None:
            elsewhere = (await catalog.held_elsewhere(ctx.db, [title_id], library_id)).get(title_id)
            if elsewhere:
                lines.append(t("search.held_elsewhere", libraries=", ".join(elsewhere)))
                lines.append(t("search.ask_librarian"))
    lines.append(t("search.card_holds", count=card.holds_waiting) if card.holds_waiting
                 else t("search.card_no_holds"))
    buttons: list[list[Button]] = []
    for provider in ctx.router.card_buttons:
        try:
            buttons.extend(await provider(ctx, title_id))
        except Exception:  # one feature's bug must not hide the book
            log.exception("book card buttons from %r failed", provider)
    return Reply("\n".join(lines)[:CARD_LIMIT], buttons=buttons)


async def press_book(event: Incoming, ctx: Context, args: list[str]) -> Reply:
    title_id = _int(args[0]) if args else None
    if title_id is None:
        return Reply(ctx.t("search.no_such_book"))
    return await book_card(ctx, title_id)


# -- deep links (QR codes) ---------------------------------------------------------------------------

async def link_title(event: Incoming, ctx: Context) -> Reply:
    title_id = _int(event.args[1:])
    if title_id is None:
        return Reply(ctx.t("search.bad_link"))
    return await book_card(ctx, title_id)


async def link_copy(event: Incoming, ctx: Context) -> Reply:
    copy_id = _int(event.args[1:])
    if copy_id is None:
        return Reply(ctx.t("search.bad_link"))
    title_id = await catalog.title_for_copy(ctx.db, copy_id)
    if title_id is None:
        raise NotFound("search.no_such_copy")
    return await book_card(ctx, title_id, scanned_copy=copy_id)


async def link_location(event: Incoming, ctx: Context) -> Reply:
    location_id = _int(event.args[1:])
    if location_id is None:
        return Reply(ctx.t("search.bad_link"))
    return await shelf(ctx, location_id, 0)


async def shelf(ctx: Context, location_id: int, offset: int, *, edit: bool = False) -> Reply:
    """What is on a shelf or in a classroom reading corner, a page at a time."""
    t = ctx.t
    place = await catalog.titles_at_location(ctx.db, location_id)
    if not place.items:
        return Reply(t("search.place_empty", name=place.name), edit=edit)
    page = place.items[offset:offset + SHELF_PAGE]
    lines = [t("search.place_header", name=place.name, count=len(place.items))]
    buttons: list[list[Button]] = []
    for n, item in enumerate(page, offset + 1):
        lines.append(t("search.place_line", n=n, title=short(item.title, 90), available=item.available,
                       copies=item.copies))
        buttons.append([ctx.button(f"{n}. {short(item.title, 40)}", "book", item.title_id)])
    paging = []
    if offset > 0:
        paging.append(ctx.button(t("search.prev"), "loc", location_id, max(0, offset - SHELF_PAGE)))
    if offset + SHELF_PAGE < len(place.items):
        paging.append(ctx.button(t("search.next"), "loc", location_id, offset + SHELF_PAGE))
    if paging:
        buttons.append(paging)
    return Reply("\n".join(lines), buttons=buttons, edit=edit)


async def press_location(event: Incoming, ctx: Context, args: list[str]) -> Reply:
    location_id = _int(args[0]) if args else None
    offset = _int(args[1]) if len(args) > 1 else 0
    if location_id is None or offset is None:
        return Reply(ctx.t("search.no_such_place"))
    return await shelf(ctx, location_id, offset, edit=True)


def register(router: Router) -> None:
    router.command("search", search_command, help_key="search.cmd_search", aliases=("tim", "timsach"),
                   in_groups=True)
    router.fallback_text(search_text)
    router.button("book", press_book, in_groups=True)
    router.button("sp", press_page, in_groups=True)
    router.button("loc", press_location, in_groups=True)
    router.deep_link("t", link_title, in_groups=True)   # catalog only: nobody's personal data
    router.deep_link("c", link_copy, in_groups=True)
    router.deep_link("l", link_location, in_groups=True)

"""Reflections and reading campaigns in chat.

Students: /reflect (/camnhan) → pick a book (current and recent loans, or search) → optional
prompt → write in one or several messages (and an optional photo) → Done → rate 1–5 → preview
with the word count → submit. The conversation's steps: "book" (text searches the catalog),
"write" (text is added to the draft) and "review" (from «Done» on: text is never added, the
student is pointed to the buttons, so a search typed later cannot end up in the reflection or
take a submitted one out of the queue). /drafts resumes. /campaigns, /join, /progress (certificate when
complete), /leaderboard. Moderators (teachers, librarians, admins): /moderate. Librarians:
/newcampaign (a short guided flow), /shortlist (with exports), /prompts, /flagwords.
Book cards get "Reflect" and "Reflections (n)" buttons.
"""

from __future__ import annotations

import logging
import re
from datetime import date
from typing import Any

from handlers.core import LINKED, MODERATORS, STAFF, Context, Router
from handlers.i18n import N_
from handlers.messages import Attachment, Button, ChannelProfile, Incoming, Reply
from handlers.search import engine, query_problem, run_search
from handlers.text import short
from services import campaigns, patrons, reflections
from services.common import DomainError
from services.models import ReflectionStatus
from services.reflections import EDITABLE, BookChoice, ReflectionView

log = logging.getLogger(__name__)

FLOW_REFLECT = "reflect"
FLOW_MOD_NOTE = "reflect_mod_note"
FLOW_NEW_CAMPAIGN = "newcampaign"
BOOK_HITS = 6           # books offered for a search inside /reflect
MAX_SKIP = 500          # how deep paging buttons go (queue, a book's reflections)

STATUS_KEYS = {
    ReflectionStatus.DRAFT: N_("reflections.status_draft"),
    ReflectionStatus.SUBMITTED: N_("reflections.status_submitted"),
    ReflectionStatus.CHANGES_REQUESTED: N_("reflections.status_changes_requested"),
    ReflectionStatus.APPROVED: N_("reflections.status_approved"),
    ReflectionStatus.REJECTED: N_("reflections.status_rejected"),
}
BADGE_KEYS = {
    "first_reflection": N_("campaigns.badge_first_reflection"),
    "five_books": N_("campaigns.badge_five_books"),
    "month_streak": N_("campaigns.badge_month_streak"),
}


def _chunks(text: str, size: int) -> list[str]:
    """Split on paragraph or line breaks where possible, never mid-word if avoidable."""
    parts: list[str] = []
    while len(text) > size:
        cut = max(text.rfind("\n", 0, size), text.rfind(" ", 0, size))
        cut = cut if cut > size // 2 else size
        parts.append(text[:cut].rstrip())
        text = text[cut:].lstrip()
    parts.append(text)
    return parts


def _long(channel: ChannelProfile, text: str, buttons: list[list[Button]] | None = None,
          edit: bool = False) -> list[Reply]:
    """A long text as several messages, each within what ``channel`` takes."""
    replies = [Reply(part) for part in _chunks(text, channel.chunk)]
    replies[-1].buttons = buttons or []
    replies[0].edit = edit
    return replies


def _prompt_text(ctx: Context, prompt: str | None) -> str | None:
    if not prompt:
        return None
    return ctx.t(prompt) if prompt in reflections.DEFAULT_PROMPTS else prompt


def _stars(rating: int | None) -> str:
    return "★" * rating + "☆" * (5 - rating) if rating else "—"


# -- choosing the book -------------------------------------------------------------------------

async def _search_books(ctx: Context, query: str) -> list[BookChoice]:
    """The catalog search (the same service and rules as plain-text search), keeping the books
    the student's own library holds: those are the ones they can have read from it."""
    library_id = ctx.actor.library_id
    results = await engine(ctx).search(query, limit=BOOK_HITS * 3 if library_id else BOOK_HITS, offset=0,
                                       library_id=library_id)
    hits = [h for h in results.hits if library_id is None or h.copies]
    return [BookChoice(h.id, h.title, False) for h in hits[:BOOK_HITS]]


def _book_buttons(ctx: Context, books: list[BookChoice]) -> list[list[Button]]:
    rows = []
    for book in books:
        label = ("📖 " if book.on_loan else "") + short(book.title, 48)
        rows.append([ctx.button(label, "rfb", book.title_id)])
    return rows


def _close_row(ctx: Context) -> list[Button]:
    return [ctx.button(ctx.t("reflections.btn_close"), "rfx")]


async def reflect(event: Incoming, ctx: Context) -> list[Reply] | Reply:
    t = ctx.t
    if event.args:
        return await _search_reply(ctx, event.args)
    drafts = await reflections.my_open(ctx.db, ctx.actor)
    books = await reflections.books_to_reflect_on(ctx.db, ctx.actor, ctx.clock)
    draft_titles = {d.title_id for d in drafts}
    rows = [[ctx.button(t("reflections.btn_resume", title=short(d.title, 40)), "rfo", d.id)] for d in drafts[:3]]
    rows += _book_buttons(ctx, [b for b in books if b.title_id not in draft_titles])
    await ctx.set_flow(FLOW_REFLECT, step="book")
    text = t("reflections.choose_book") if rows else t("reflections.choose_book_search_only")
    return Reply(text, buttons=[*rows, _close_row(ctx)])


async def _search_reply(ctx: Context, query: str) -> Reply:
    await ctx.set_flow(FLOW_REFLECT, step="book")
    problem = query_problem(query)
    if problem is not None:     # one letter, only symbols: the catalog search's own replies
        return Reply(ctx.t(problem), buttons=[_close_row(ctx)])
    books = await _search_books(ctx, query)
    if not books:
        return Reply(ctx.t("reflections.search_none", query=short(" ".join(query.split()), 60)),
                     buttons=[_close_row(ctx)])
    return Reply(ctx.t("reflections.search_pick"), buttons=[*_book_buttons(ctx, books), _close_row(ctx)])


async def press_book(event: Incoming, ctx: Context, args: list[str]) -> list[Reply] | Reply:
    draft = await reflections.start(ctx.db, ctx.actor, _int(args, 0), ctx.clock)
    return await _after_open(ctx, draft)


async def _after_open(ctx: Context, draft: ReflectionView) -> list[Reply] | Reply:
    """A fresh draft asks for a prompt, one with a prompt but no text asks for the text, and one
    with text shows its preview (the review step)."""
    if not draft.body and draft.prompt is None:
        return await _prompt_picker(ctx, draft)
    if not draft.body:
        await ctx.set_flow(FLOW_REFLECT, step="write", rid=draft.id)
        return Reply(_write_now(ctx, draft))
    return await _review(ctx, draft)


async def _review(ctx: Context, draft: ReflectionView, edit: bool = False) -> list[Reply]:
    await ctx.set_flow(FLOW_REFLECT, step="review", rid=draft.id)
    return _preview(ctx, draft, edit)


def _write_now(ctx: Context, draft: ReflectionView) -> str:
    t = ctx.t
    prompt = _prompt_text(ctx, draft.prompt)
    head = t("reflections.prompt_chosen", prompt=prompt) if prompt else t("reflections.prompt_none")
    return head + "\n\n" + t("reflections.write_now", min=draft.min_words, max=draft.max_words)


async def _not_waiting(ctx: Context, rid: int) -> ReflectionView:
    """Stale buttons (a rating, a prompt, «Clear») must not take a submitted reflection out of the
    review queue behind the student's back: only «Write more», which says so, does."""
    draft = await reflections.get(ctx.db, ctx.actor, rid)
    if draft.status == ReflectionStatus.SUBMITTED:
        raise DomainError("reflections.waiting_use_write_more")
    return draft


async def _prompt_picker(ctx: Context, draft: ReflectionView) -> Reply:
    t = ctx.t
    prompts = await reflections.list_prompts(ctx.db, draft.library_id)
    lines = [t("reflections.prompt_intro", title=draft.title), ""]
    rows = []
    for n, p in enumerate(prompts, 1):
        text = ctx.t(p.message_key) if p.message_key else (p.text or "")
        lines.append(f"{n}. {text}")
        rows.append([ctx.button(f"{n}. {short(text, 50)}", "rfp", draft.id, p.code)])
    rows.append([ctx.button(t("reflections.btn_no_prompt"), "rfp", draft.id, "-")])
    await ctx.set_flow(FLOW_REFLECT, step="write", rid=draft.id)
    return Reply("\n".join(lines), buttons=rows)


async def press_prompt(event: Incoming, ctx: Context, args: list[str]) -> Reply:
    rid = _int(args, 0)
    code = args[1] if len(args) > 1 and args[1] != "-" else None
    await _not_waiting(ctx, rid)
    draft = await reflections.set_prompt(ctx.db, ctx.actor, rid, code)
    await ctx.set_flow(FLOW_REFLECT, step="write", rid=rid)
    return Reply(_write_now(ctx, draft), edit=True)


# -- writing -----------------------------------------------------------------------------------

async def flow_reflect(event: Incoming, ctx: Context) -> list[Reply] | Reply:
    state = await _state(ctx, FLOW_REFLECT)
    step, rid = state.get("step"), state.get("rid")
    if step == "review" and rid:
        return await _nudge(ctx, event, int(rid))
    if step != "write" or not rid:
        return await _search_reply(ctx, event.text)
    rid = int(rid)
    t = ctx.t
    withdrawn = False
    if event.photo_ref:
        withdrawn = (await reflections.set_photo(ctx.db, ctx.actor, rid, event.photo_ref)).withdrawn
    draft = await reflections.append_text(ctx.db, ctx.actor, rid, event.text)
    text = t("reflections.saved", words=draft.word_count, min=draft.min_words, max=draft.max_words)
    if withdrawn or draft.withdrawn:
        text = t("reflections.withdrawn") + "\n\n" + text
    return Reply(text, buttons=[[ctx.button(t("reflections.btn_done"), "rfd", rid)]])


async def _nudge(ctx: Context, event: Incoming, rid: int) -> list[Reply] | Reply:
    """Text or a photo in the review step: nothing is added; the buttons say what can be done."""
    t = ctx.t
    draft = await reflections.get(ctx.db, ctx.actor, rid)
    if draft.status not in EDITABLE:   # decided meanwhile: the conversation is over
        await ctx.clear_flow(FLOW_REFLECT)
        return await run_search(ctx, event.text) if event.text else Reply(t("reflections.photo_no_draft"))
    write_more = ctx.button(t("reflections.btn_write_more"), "rfm", draft.id)
    if draft.status == ReflectionStatus.SUBMITTED:
        return Reply(t("reflections.review_nudge_waiting", title=draft.title),
                     buttons=[[write_more], _close_row(ctx)])
    return Reply(t("reflections.review_nudge", title=draft.title),
                 buttons=[[ctx.button(t("reflections.btn_submit"), "rfs", draft.id)], [write_more], _close_row(ctx)])


async def on_photo(event: Incoming, ctx: Context) -> list[Reply] | Reply:
    state = await _state(ctx, FLOW_REFLECT)
    step, rid = state.get("step"), state.get("rid")
    if step == "review" and rid:
        return await _nudge(ctx, event, int(rid))
    if step != "write" or not rid:
        return Reply(ctx.t("reflections.photo_no_draft"))
    rid = int(rid)
    draft = await reflections.set_photo(ctx.db, ctx.actor, rid, event.photo_ref)
    text = ctx.t("reflections.photo_saved")
    if draft.withdrawn:
        text = ctx.t("reflections.withdrawn") + "\n\n" + text
    return Reply(text, buttons=[[ctx.button(ctx.t("reflections.btn_done"), "rfd", rid)]])


async def press_done(event: Incoming, ctx: Context, args: list[str]) -> Reply | list[Reply]:
    """Writing is over: from here on, stray text is not added (the review step)."""
    draft = await reflections.get(ctx.db, ctx.actor, _int(args, 0))
    if draft.status not in EDITABLE:
        raise DomainError("reflections.locked_approved" if draft.status == ReflectionStatus.APPROVED
                          else "reflections.locked_rejected")
    if draft.rating is not None:
        return await _review(ctx, draft)
    await ctx.set_flow(FLOW_REFLECT, step="review", rid=draft.id)
    return _rating_picker(ctx, draft)


def _rating_picker(ctx: Context, draft: ReflectionView) -> Reply:
    return Reply(ctx.t("reflections.rate", title=draft.title),
                 buttons=[[ctx.button("⭐" * n if n < 3 else f"{n}⭐", "rfr", draft.id, n) for n in range(1, 6)]])


async def press_rating(event: Incoming, ctx: Context, args: list[str]) -> list[Reply]:
    await _not_waiting(ctx, _int(args, 0))
    draft = await reflections.set_rating(ctx.db, ctx.actor, _int(args, 0), _int(args, 1))
    return await _review(ctx, draft, edit=True)


def _preview(ctx: Context, d: ReflectionView, edit: bool = False) -> list[Reply]:
    t = ctx.t
    lines = [t("reflections.preview_title", title=d.title)]
    prompt = _prompt_text(ctx, d.prompt)
    if prompt:
        lines.append(t("reflections.preview_prompt", prompt=prompt))
    lines += ["", d.body or t("reflections.preview_empty"), ""]
    if d.photo_ref:
        lines.append(t("reflections.preview_photo"))
    lines.append(t("reflections.preview_stats", words=d.word_count, min=d.min_words, max=d.max_words,
                   stars=_stars(d.rating), status=t(STATUS_KEYS[d.status])))
    if d.status == ReflectionStatus.CHANGES_REQUESTED and d.moderation_note:
        lines.append(t("reflections.preview_note", note=d.moderation_note))
    rows = []
    if d.status == ReflectionStatus.SUBMITTED:
        lines.append(t("reflections.preview_waiting"))
        rows.append([ctx.button(t("reflections.btn_write_more"), "rfm", d.id)])
    else:
        rows.append([ctx.button(t("reflections.btn_submit"), "rfs", d.id)])
        rows.append([ctx.button(t("reflections.btn_write_more"), "rfm", d.id),
                     ctx.button(t("reflections.btn_rate"), "rfR", d.id)])
        rows.append([ctx.button(t("reflections.btn_clear"), "rfc", d.id)])
    rows.append(_close_row(ctx))
    return _long(ctx.channel, "\n".join(lines), rows, edit)


async def press_write_more(event: Incoming, ctx: Context, args: list[str]) -> Reply:
    draft = await reflections.get(ctx.db, ctx.actor, _int(args, 0))
    if draft.status in (ReflectionStatus.APPROVED, ReflectionStatus.REJECTED):
        raise DomainError("reflections.locked_approved" if draft.status == ReflectionStatus.APPROVED
                          else "reflections.locked_rejected")
    await ctx.set_flow(FLOW_REFLECT, step="write", rid=draft.id)
    text = ctx.t("reflections.write_more", words=draft.word_count, min=draft.min_words, max=draft.max_words)
    if draft.status == ReflectionStatus.SUBMITTED:
        text += "\n" + ctx.t("reflections.edit_withdraws")
    return Reply(text)


async def press_rate_again(event: Incoming, ctx: Context, args: list[str]) -> Reply:
    return _rating_picker(ctx, await _not_waiting(ctx, _int(args, 0)))


async def press_clear(event: Incoming, ctx: Context, args: list[str]) -> Reply:
    await _not_waiting(ctx, _int(args, 0))
    draft = await reflections.clear_text(ctx.db, ctx.actor, _int(args, 0))
    await ctx.set_flow(FLOW_REFLECT, step="write", rid=draft.id)
    return Reply(ctx.t("reflections.cleared", min=draft.min_words, max=draft.max_words))


async def press_submit(event: Incoming, ctx: Context, args: list[str]) -> Reply:
    rid = _int(args, 0)
    try:
        draft = await reflections.submit(ctx.db, ctx.actor, rid, ctx.clock)
    except DomainError as refusal:
        # Not ready yet: say why, with the button that fixes it (stars, or more text).
        if refusal.key == "reflections.rating_missing":
            picker = _rating_picker(ctx, await reflections.get(ctx.db, ctx.actor, rid))
            picker.text = ctx.t(refusal.key) + "\n\n" + picker.text
            return picker
        if refusal.key in ("reflections.too_short", "reflections.nothing_written"):
            return Reply(ctx.t(refusal.key, **refusal.params),
                         buttons=[[ctx.button(ctx.t("reflections.btn_write_more"), "rfm", rid)]])
        raise
    await ctx.clear_flow(FLOW_REFLECT)
    return Reply(ctx.t("reflections.submitted", title=draft.title, words=draft.word_count), edit=True)


async def press_close(event: Incoming, ctx: Context, args: list[str]) -> Reply:
    """Leave /reflect; whatever was written stays saved as a draft."""
    await ctx.clear_flow(FLOW_REFLECT)
    return Reply(ctx.t("reflections.closed"))


async def press_open(event: Incoming, ctx: Context, args: list[str]) -> list[Reply] | Reply:
    draft = await reflections.get(ctx.db, ctx.actor, _int(args, 0))
    if draft.patron_id != ctx.actor.patron_id:
        raise DomainError("reflections.not_found")
    return await _after_open(ctx, draft)


async def drafts(event: Incoming, ctx: Context) -> Reply:
    t = ctx.t
    mine = await reflections.my_open(ctx.db, ctx.actor)
    if not mine:
        return Reply(t("reflections.drafts_none"))
    lines = [t("reflections.drafts_title")]
    rows = []
    for d in mine:
        lines.append(t("reflections.drafts_line", title=d.title, status=t(STATUS_KEYS[d.status]), words=d.word_count))
        rows.append([ctx.button(t("reflections.btn_resume", title=short(d.title, 40)), "rfo", d.id)])
    return Reply("\n".join(lines), buttons=rows)


# -- book card ---------------------------------------------------------------------------------

async def card_buttons(ctx: Context, title_id: int) -> list[list[Button]]:
    if not ctx.actor.is_linked:
        return []
    t = ctx.t
    row = [ctx.button(t("reflections.btn_reflect"), "rfb", title_id)]
    _, total = await reflections.approved_for_title(ctx.db, ctx.actor.library_id, title_id, limit=0)
    if total:
        row.append(ctx.button(t("reflections.btn_reflections", count=total), "rfl", title_id, 0))
    return [row]


def reflect_button(ctx: Context, title_id: int) -> Button:
    """For other features (e.g. after a return): a button that opens a reflection on this book."""
    return ctx.button(ctx.t("reflections.btn_reflect"), "rfb", title_id)


async def press_list(event: Incoming, ctx: Context, args: list[str]) -> list[Reply] | Reply:
    t = ctx.t
    if not ctx.actor.is_linked:
        raise DomainError("link.required")
    title_id, offset = _int(args, 0), min(max(0, _int(args, 1)), MAX_SKIP)
    items, total = await reflections.approved_for_title(ctx.db, ctx.actor.library_id, title_id, limit=3,
                                                         offset=offset)
    if not items:
        return Reply(t("reflections.list_none"))
    parts = [t("reflections.list_title", title=items[0].title, count=total)]
    for r in items:
        who = (t("reflections.by_named", name=r.author, class_name=r.class_name or "—") if r.author
               else t("reflections.by_anonymous", class_name=r.class_name or "—"))
        body = short(r.body, 900)
        parts.append(f"{_stars(r.rating)} {who}\n{body}")
    rows = []
    if offset + 3 < total:
        rows.append([ctx.button(t("reflections.btn_more"), "rfl", title_id, offset + 3)])
    return _long(ctx.channel, "\n\n".join(parts), rows)


# -- moderation --------------------------------------------------------------------------------

async def moderate_cmd(event: Incoming, ctx: Context) -> list[Reply] | Reply:
    return await _queue_reply(ctx, 0)


async def _queue_reply(ctx: Context, skip: int, prefix: str = "") -> list[Reply] | Reply:
    t = ctx.t
    items, total = await reflections.queue(ctx.db, ctx.actor, limit=skip + 1)
    head = (prefix + "\n\n") if prefix else ""
    if len(items) <= skip:
        return Reply(head + (t("reflections.queue_empty") if total == 0 else t("reflections.queue_end")))
    d = items[skip]
    lines = [head + t("reflections.queue_head", count=total, n=skip + 1),
             t("reflections.mod_item", title=d.title, student=d.author, class_name=d.class_name or "—",
               stars=_stars(d.rating), words=d.word_count)]
    prompt = _prompt_text(ctx, d.prompt)
    if prompt:
        lines.append(t("reflections.preview_prompt", prompt=prompt))
    if d.flags:
        lines.append(t("reflections.mod_flags", words=", ".join(d.flags)))
    if d.photo_ref:
        lines.append(t("reflections.preview_photo"))
    lines += ["", d.body]
    rows = [[ctx.button(t("reflections.btn_approve"), "ma", d.id)],
            [ctx.button(t("reflections.btn_changes"), "mc", d.id), ctx.button(t("reflections.btn_reject"), "mj", d.id)]]
    if total > skip + 1:
        rows.append([ctx.button(t("reflections.btn_next"), "mq", skip + 1)])
    replies = _long(ctx.channel, "\n".join(lines), rows)
    replies[0].photo = d.photo_ref   # the moderator must see the photo too, not just that there is one
    return replies


async def press_queue(event: Incoming, ctx: Context, args: list[str]) -> list[Reply] | Reply:
    return await _queue_reply(ctx, min(max(0, _int(args, 0)), MAX_SKIP))


async def press_approve(event: Incoming, ctx: Context, args: list[str]) -> list[Reply] | Reply:
    d = await reflections.moderate(ctx.db, ctx.actor, _int(args, 0), "approve", clock=ctx.clock)
    published = await publish(ctx, d.id)
    done = ctx.t("reflections.mod_approved", student=d.author, title=d.title)
    if published:
        done += "\n" + ctx.t("reflections.mod_published")
    return await _queue_reply(ctx, 0, prefix=done)


async def _ask_note(ctx: Context, args: list[str], decision: str) -> Reply:
    d = await reflections.get(ctx.db, ctx.actor, _int(args, 0))
    if d.patron_id == ctx.actor.patron_id:
        raise DomainError("reflections.own_moderation")
    if d.status != ReflectionStatus.SUBMITTED:
        raise DomainError("reflections.not_in_queue")
    await ctx.set_flow(FLOW_MOD_NOTE, rid=d.id, decision=decision, step="note")
    return _note_question(ctx, d, decision)


def _note_question(ctx: Context, d: ReflectionView, decision: str) -> Reply:
    key = "reflections.ask_reject_reason" if decision == "reject" else "reflections.ask_changes"
    return Reply(ctx.t(key, student=d.author, title=d.title),
                 buttons=[[ctx.button(ctx.t("reflections.btn_mod_cancel"), "mx")]])


async def press_reject(event: Incoming, ctx: Context, args: list[str]) -> Reply:
    return await _ask_note(ctx, args, "reject")


async def press_changes(event: Incoming, ctx: Context, args: list[str]) -> Reply:
    return await _ask_note(ctx, args, "changes")


async def flow_mod_note(event: Incoming, ctx: Context) -> Reply:
    """The moderator's reason, then a confirmation: text typed later (a search, a second thought)
    never becomes a rejection by itself."""
    state = await _state(ctx, FLOW_MOD_NOTE)
    if state.get("step") == "confirm":
        return _confirm_note(ctx, state, nudge=True)
    # refusals (no words, too long) reach the moderator and leave them here to try again
    state.update(step="confirm", note=reflections.check_note(str(state.get("decision")), event.text))
    await ctx.set_flow(FLOW_MOD_NOTE, **state)
    return _confirm_note(ctx, state)


def _confirm_note(ctx: Context, state: dict[str, Any], nudge: bool = False) -> Reply:
    t = ctx.t
    reject = state.get("decision") == "reject"
    text = t("reflections.confirm_reject" if reject else "reflections.confirm_changes", note=state.get("note", ""))
    if nudge:
        text = t("reflections.confirm_nudge") + "\n\n" + text
    rid = int(state.get("rid", 0))
    return Reply(text, buttons=[
        [ctx.button(t("reflections.btn_confirm_reject" if reject else "reflections.btn_confirm_changes"), "mok", rid)],
        [ctx.button(t("reflections.btn_rewrite_note"), "mrw", rid), ctx.button(t("reflections.btn_mod_cancel"), "mx")],
    ])


async def _note_state(ctx: Context, args: list[str], step: str) -> dict[str, Any]:
    state = await _state(ctx, FLOW_MOD_NOTE)
    if state.get("step") != step or int(state.get("rid", 0)) != _int(args, 0):
        raise DomainError("error.button_expired")     # done, cancelled, or another reflection's
    return state


async def press_note_confirm(event: Incoming, ctx: Context, args: list[str]) -> list[Reply] | Reply:
    state = await _note_state(ctx, args, "confirm")
    decision = str(state.get("decision"))
    try:
        d = await reflections.moderate(ctx.db, ctx.actor, int(state["rid"]), decision, state.get("note"),
                                       clock=ctx.clock)
    except DomainError:
        await ctx.clear_flow(FLOW_MOD_NOTE)   # decided by someone else meanwhile, or not allowed
        raise
    await ctx.clear_flow(FLOW_MOD_NOTE)
    key = "reflections.mod_rejected" if decision == "reject" else "reflections.mod_changes_sent"
    return await _queue_reply(ctx, 0, prefix=ctx.t(key, student=d.author, title=d.title))


async def press_note_rewrite(event: Incoming, ctx: Context, args: list[str]) -> Reply:
    state = await _note_state(ctx, args, "confirm")
    d = await reflections.get(ctx.db, ctx.actor, int(state["rid"]))
    state["step"] = "note"
    await ctx.set_flow(FLOW_MOD_NOTE, **state)
    return _note_question(ctx, d, str(state.get("decision")))


async def press_note_cancel(event: Incoming, ctx: Context, args: list[str]) -> list[Reply] | Reply:
    await ctx.clear_flow(FLOW_MOD_NOTE)
    return await _queue_reply(ctx, 0, prefix=ctx.t("reflections.mod_note_cancelled"))


async def publish(ctx: Context, reflection_id: int) -> bool:
    """Post an approved reflection to the school's channel when one is configured and reachable."""
    pub = await reflections.publication(ctx.db, reflection_id)
    if pub is None:
        return False
    channel = ctx.deps.outbound.get(pub.channel)
    if channel is None:
        return False
    t = ctx.deps.catalogs.translator(pub.language, ctx.deps.timezone)
    r = pub.reflection
    who = (t("reflections.by_named", name=r.author, class_name=r.class_name or "—") if r.author
           else t("reflections.by_anonymous", class_name=r.class_name or "—"))
    head = t("reflections.publish_head", title=r.title, who=who, stars=_stars(r.rating))
    prompt = t(r.prompt) if r.prompt in reflections.DEFAULT_PROMPTS else r.prompt
    text = head + ("\n" + t("reflections.preview_prompt", prompt=prompt) if prompt else "") + "\n\n" + r.body
    replies = _long(ctx.deps.profile(pub.channel), text)
    replies[0].photo = r.photo_ref     # the handwritten page or drawing goes out with the text
    try:
        for reply in replies:
            await channel.send(pub.chat_id, reply)
    except Exception:  # the approval stands; publishing can be retried later
        log.warning("could not publish reflection %s to %s", reflection_id, pub.chat_id, exc_info=True)
        return False
    await reflections.mark_published(ctx.db, reflection_id, ctx.clock)
    return True


# -- notices (delivered by the reminders sender) --------------------------------------------

async def notice_approved(ctx: Context, payload: dict[str, Any]) -> Reply:
    return Reply(ctx.t("reflections.notice_approved", title=payload.get("title", "")))


async def notice_rejected(ctx: Context, payload: dict[str, Any]) -> Reply:
    return Reply(ctx.t("reflections.notice_rejected", title=payload.get("title", ""),
                       note=payload.get("note") or "—"))


async def notice_changes(ctx: Context, payload: dict[str, Any]) -> Reply:
    rid = payload.get("reflection_id")
    buttons = [[ctx.button(ctx.t("reflections.btn_revise"), "rfo", rid)]] if rid else []
    return Reply(ctx.t("reflections.notice_changes", title=payload.get("title", ""),
                       note=payload.get("note") or "—"), buttons=buttons)


async def notice_completed(ctx: Context, payload: dict[str, Any]) -> Reply:
    cid = payload.get("campaign_id")
    buttons = [[ctx.button(ctx.t("campaigns.btn_certificate"), "cert", cid)]] if cid else []
    return Reply(ctx.t("campaigns.notice_completed", name=payload.get("name", "")), buttons=buttons)


async def notice_badge(ctx: Context, payload: dict[str, Any]) -> Reply:
    key = BADGE_KEYS.get(str(payload.get("badge")))
    return Reply(ctx.t("campaigns.notice_badge", badge=ctx.t(key) if key else str(payload.get("badge"))))


# -- campaigns ---------------------------------------------------------------------------------

def _campaign_line(ctx: Context, c: campaigns.CampaignView) -> str:
    t = ctx.t
    line = t("campaigns.line", name=c.name, start=t.date(c.starts_on, "short"), end=t.date(c.ends_on, "short"),
             books=c.goal_books, reflections=c.goal_reflections, members=c.members)
    if c.theme:
        line += "\n   " + t("campaigns.theme", theme=c.theme)
    return line


async def campaigns_cmd(event: Incoming, ctx: Context) -> Reply:
    t = ctx.t
    items = await campaigns.list_campaigns(ctx.db, ctx.actor, ctx.clock)
    if not items:
        return Reply(t("campaigns.none"))
    lines, rows = [t("campaigns.title")], []
    for c in items:
        lines.append(("✅ " if c.joined else "• ") + _campaign_line(ctx, c))
        row = []
        if not c.joined and ctx.actor.role and ctx.actor.role.value == "student":
            row.append(ctx.button(t("campaigns.btn_join", name=short(c.name, 30)), "cj", c.id))
        row.append(ctx.button(t("campaigns.btn_leaderboard"), "clb", c.id, "s"))
        rows.append(row)
    return Reply("\n".join(lines), buttons=rows)


def _typed_id(arg: str) -> int | None:
    """A campaign number typed after a command ("/join 3", "#3"); None for anything else
    (including "³" and numbers too large for the database)."""
    arg = arg.strip().lstrip("#")
    return int(arg) if arg.isascii() and arg.isdigit() and len(arg) < 10 else None


async def join_cmd(event: Incoming, ctx: Context) -> Reply:
    cid = _typed_id(event.args)
    if cid is not None:
        return await _join(ctx, cid)
    items = [c for c in await campaigns.list_campaigns(ctx.db, ctx.actor, ctx.clock) if not c.joined]
    if len(items) == 1:
        return await _join(ctx, items[0].id)
    return await campaigns_cmd(event, ctx)


async def press_join(event: Incoming, ctx: Context, args: list[str]) -> Reply:
    return await _join(ctx, _int(args, 0))


async def _join(ctx: Context, campaign_id: int) -> Reply:
    c, new = await campaigns.join(ctx.db, ctx.actor, campaign_id, ctx.clock)
    key = "campaigns.joined" if new else "campaigns.already_joined"
    return Reply(ctx.t(key, name=c.name, books=c.goal_books, reflections=c.goal_reflections))


async def progress_cmd(event: Incoming, ctx: Context) -> Reply:
    t = ctx.t
    items = await campaigns.my_progress(ctx.db, ctx.actor, ctx.clock)
    badges = await campaigns.badges(ctx.db, ctx.actor)
    lines, rows = [], []
    if not items:
        lines.append(t("campaigns.progress_none"))
    for p in items:
        c = p.campaign
        lines.append(t("campaigns.progress_line", name=c.name, books=p.books, goal_books=c.goal_books,
                       reflections=p.reflections, goal_reflections=c.goal_reflections, points=p.points))
        if p.complete:
            lines.append("   " + t("campaigns.progress_complete"))
            rows.append([ctx.button(t("campaigns.btn_certificate_for", name=short(c.name, 30)), "cert", c.id)])
    lines.append("")
    if badges:
        lines.append(t("campaigns.badges_title"))
        lines += [f"🏅 {t(BADGE_KEYS[b.code])} — {t.date(b.earned_on, 'short')}" for b in badges]
    else:
        lines.append(t("campaigns.badges_none"))
    return Reply("\n".join(lines), buttons=rows)


async def press_certificate(event: Incoming, ctx: Context, args: list[str]) -> Reply:
    cid = _int(args, 0)
    pdf = await campaigns.certificate_pdf(ctx.db, ctx.actor, cid, ctx.t, ctx.clock)
    return Reply(ctx.t("campaigns.certificate_here"),
                 attachment=Attachment(filename=f"certificate-{cid}.pdf", data=pdf))


async def _default_campaign(ctx: Context, arg: str) -> int | None:
    cid = _typed_id(arg)
    if cid is not None:
        return cid
    items = await campaigns.list_campaigns(ctx.db, ctx.actor, ctx.clock)
    joined = [c for c in items if c.joined]
    return (joined or items)[0].id if (joined or items) else None


async def leaderboard_cmd(event: Incoming, ctx: Context) -> Reply:
    cid = await _default_campaign(ctx, event.args)
    if cid is None:
        return Reply(ctx.t("campaigns.none"))
    return await _leaderboard(ctx, cid, "s")


async def press_leaderboard(event: Incoming, ctx: Context, args: list[str]) -> Reply:
    reply = await _leaderboard(ctx, _int(args, 0), args[1] if len(args) > 1 else "s")
    reply.edit = True
    return reply


async def _leaderboard(ctx: Context, cid: int, scope: str) -> Reply:
    t = ctx.t
    board = await campaigns.leaderboard(ctx.db, ctx.actor, cid, "class" if scope == "c" else "school")
    title_key = "campaigns.board_class" if board.scope == "class" else "campaigns.board_school"
    lines = [t(title_key, name=board.campaign.name, class_name=ctx.actor.class_name or "—")]

    def line(st: campaigns.Standing) -> str:
        name = st.name or t("campaigns.anonymous")
        me = " " + t("campaigns.you") if st.is_me else ""
        return t("campaigns.board_line", rank=st.rank, name=name, class_name=st.class_name or "—",
                 points=st.points, books=st.books, reflections=st.reflections) + me

    lines += [line(st) for st in board.students] or [t("campaigns.board_empty")]
    if board.me and board.me not in board.students:
        lines += ["…", line(board.me)]
    if board.scope == "school" and board.classes:
        lines += ["", t("campaigns.board_classes")]
        lines += [t("campaigns.class_line", rank=c.rank, class_name=c.class_name, points=c.points, members=c.members)
                  for c in board.classes[:10]]
    rows = [[ctx.button(t("campaigns.btn_school"), "clb", cid, "s"),
             ctx.button(t("campaigns.btn_my_class"), "clb", cid, "c")]]
    if ctx.actor.role and ctx.actor.role.value == "student":
        hidden = await campaigns.hides_name(ctx.db, ctx.actor)
        rows.append([ctx.button(t("campaigns.btn_show_name" if hidden else "campaigns.btn_hide_name"),
                                "chn", cid, 0 if hidden else 1)])
    return Reply("\n".join(lines), buttons=rows)


async def press_hide_name(event: Incoming, ctx: Context, args: list[str]) -> Reply:
    hide = _int(args, 1) == 1
    await campaigns.set_hide_name(ctx.db, ctx.actor, hide)
    reply = await _leaderboard(ctx, _int(args, 0), "s")
    reply.text = ctx.t("campaigns.name_hidden" if hide else "campaigns.name_shown") + "\n\n" + reply.text
    reply.edit = True
    return reply


# -- librarians: new campaign, shortlist, prompts, flag words ---------------------------------

_DATE = re.compile(r"(\d{4})-(\d{1,2})-(\d{1,2})|(\d{1,2})[/.](\d{1,2})[/.](\d{4})")


def parse_dates(text: str) -> tuple[date, date] | None:
    found = []
    for m in _DATE.finditer(text):
        try:
            if m.group(1):
                found.append(date(int(m.group(1)), int(m.group(2)), int(m.group(3))))
            else:
                found.append(date(int(m.group(6)), int(m.group(5)), int(m.group(4))))
        except ValueError:
            return None
    return (found[0], found[1]) if len(found) == 2 else None


NEW_STEPS = ("name", "dates", "goals", "theme", "books", "words")
NEW_ASK = {
    "name": N_("campaigns.new_ask_name"),
    "dates": N_("campaigns.new_ask_dates"),
    "goals": N_("campaigns.new_ask_goals"),
    "theme": N_("campaigns.new_ask_theme"),
    "books": N_("campaigns.new_ask_books"),
    "words": N_("campaigns.new_ask_words"),
}
OPTIONAL = {"theme", "books", "words"}
# Which question to ask again when the service refuses the finished campaign (by refusal key).
STEP_OF_REFUSAL = (("campaigns.name", "name"), ("campaigns.dates", "dates"), ("campaigns.goal", "goals"),
                   ("campaigns.unknown_books", "books"), ("campaigns.words", "words"))


async def newcampaign_cmd(event: Incoming, ctx: Context) -> Reply:
    patrons.require_staff(ctx.actor)
    await ctx.set_flow(FLOW_NEW_CAMPAIGN, step="name")
    ask = _ask(ctx, "name")
    ask.text = ctx.t("campaigns.new_intro") + "\n\n" + ask.text
    return ask


async def press_new_cancel(event: Incoming, ctx: Context, args: list[str]) -> Reply:
    await ctx.clear_flow(FLOW_NEW_CAMPAIGN)
    return Reply(ctx.t("cancel.done"))


def _ask(ctx: Context, step: str) -> Reply:
    row = [ctx.button(ctx.t("campaigns.btn_skip"), "ncs", step)] if step in OPTIONAL else []
    row.append(ctx.button(ctx.t("campaigns.btn_new_cancel"), "ncx"))
    return Reply(ctx.t(NEW_ASK[step]), buttons=[row])


async def flow_newcampaign(event: Incoming, ctx: Context) -> Reply:
    data = await _state(ctx, FLOW_NEW_CAMPAIGN)
    step = data.get("step", "name")
    text = event.text.strip()
    t = ctx.t
    if step == "name":
        if len(text) > 200:
            return Reply(t("campaigns.name_too_long", limit=200))
        data["name"] = text
    elif step == "dates":
        dates = parse_dates(text)
        if dates is None:
            return Reply(t("campaigns.new_bad_dates"))
        campaigns.check_dates(*dates)   # a refusal is told now, and the question stands
        data["starts_on"], data["ends_on"] = dates[0].isoformat(), dates[1].isoformat()
    elif step == "goals":
        numbers = [int(n) for n in re.findall(r"\d+", text)]
        if len(numbers) != 2:
            return Reply(t("campaigns.new_bad_goals"))
        campaigns.check_goals(*numbers)
        data["goal_books"], data["goal_reflections"] = numbers
    elif step == "theme":
        data["theme"] = text[:1000]
    elif step == "books":
        data.pop("title_ids", None)
        data.pop("subjects", None)
        ids = re.findall(r"#(\d{1,9})\b", text)
        if ids:
            data["title_ids"] = [int(i) for i in ids]
        else:
            data["subjects"] = [s.strip() for s in re.split(r"[,;\n]", text) if s.strip()]
    elif step == "words":
        numbers = [int(n) for n in re.findall(r"\d+", text)]
        if len(numbers) != 2:
            return Reply(t("campaigns.new_bad_words"))
        campaigns.check_words(*numbers)
        data["min_words"], data["max_words"] = numbers
    return await _next_step(ctx, data, step)


async def press_skip(event: Incoming, ctx: Context, args: list[str]) -> Reply:
    data = await _state(ctx, FLOW_NEW_CAMPAIGN)
    step = args[0] if args else ""
    if not data or data.get("step") != step or step not in OPTIONAL:
        return Reply(t_expired(ctx))
    return await _next_step(ctx, data, step)


def t_expired(ctx: Context) -> str:
    return ctx.t("error.button_expired")


async def _next_step(ctx: Context, data: dict[str, Any], step: str) -> Reply:
    fixing = data.pop("fixing", False)     # re-answering one refused question: create right away
    following = NEW_STEPS[NEW_STEPS.index(step) + 1:] if step in NEW_STEPS and not fixing else ()
    if following:
        data["step"] = following[0]
        await ctx.set_flow(FLOW_NEW_CAMPAIGN, **data)
        return _ask(ctx, following[0])
    try:
        c = await campaigns.create(
            ctx.db, ctx.actor, name=data.get("name", ""), theme=data.get("theme"),
            starts_on=date.fromisoformat(data["starts_on"]), ends_on=date.fromisoformat(data["ends_on"]),
            title_ids=data.get("title_ids"), subjects=data.get("subjects"),
            goal_books=int(data.get("goal_books", 0)), goal_reflections=int(data.get("goal_reflections", 0)),
            min_words=data.get("min_words"), max_words=data.get("max_words"), clock=ctx.clock)
    except DomainError as refusal:
        # Keep every answer and ask again only the question the refusal is about.
        again = next((s for prefix, s in STEP_OF_REFUSAL if refusal.key.startswith(prefix)), None)
        if again is None:
            await ctx.clear_flow(FLOW_NEW_CAMPAIGN)
            raise
        data.update(step=again, fixing=True)
        await ctx.set_flow(FLOW_NEW_CAMPAIGN, **data)
        ask = _ask(ctx, again)
        ask.text = ctx.t(refusal.key, **refusal.params) + "\n\n" + ask.text
        return ask
    await ctx.clear_flow(FLOW_NEW_CAMPAIGN)
    return Reply(ctx.t("campaigns.created", id=c.id) + "\n" + _campaign_line(ctx, c))


async def shortlist_cmd(event: Incoming, ctx: Context) -> list[Reply] | Reply:
    cid = await _default_campaign(ctx, event.args)
    if cid is None:
        return Reply(ctx.t("campaigns.none"))
    return await _shortlist(ctx, cid)


async def _shortlist(ctx: Context, cid: int) -> list[Reply] | Reply:
    t = ctx.t
    view = await campaigns.get(ctx.db, ctx.actor, cid)
    rows = await campaigns.campaign_reflections(ctx.db, cid, actor=ctx.actor)
    lines = [t("campaigns.shortlist_title", name=view.name, count=len(rows))]
    buttons = []
    for r in rows[:12]:
        mark = "★" if r.shortlisted else "☆"
        lines.append(t("campaigns.shortlist_line", mark=mark, student=r.student, class_name=r.class_name or "—",
                       book=r.book, words=r.word_count, stars=_stars(r.rating)))
        label = t("campaigns.btn_unpick" if r.shortlisted else "campaigns.btn_pick", student=short(r.student, 24))
        buttons.append([ctx.button(label, "csl", cid, r.reflection_id, 0 if r.shortlisted else 1)])
    if not rows:
        lines.append(t("campaigns.shortlist_empty"))
    buttons.append([ctx.button(fmt.upper(), "cex", cid, fmt) for fmt in campaigns.EXPORT_FORMATS])
    return _long(ctx.channel, "\n".join(lines), buttons)


async def press_shortlist(event: Incoming, ctx: Context, args: list[str]) -> list[Reply] | Reply:
    await campaigns.shortlist(ctx.db, ctx.actor, _int(args, 0), _int(args, 1), _int(args, 2) == 1, ctx.clock)
    replies = await _shortlist(ctx, _int(args, 0))
    replies = replies if isinstance(replies, list) else [replies]
    replies[0].edit = True
    return replies


async def press_export(event: Incoming, ctx: Context, args: list[str]) -> Reply:
    cid, fmt = _int(args, 0), (args[1] if len(args) > 1 else "csv")
    data = await campaigns.export_reflections(ctx.db, cid, fmt, ctx.t, actor=ctx.actor)
    mime = {"csv": "text/csv", "pdf": "application/pdf",
            "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"}[fmt]
    return Reply(ctx.t("campaigns.export_here"),
                 attachment=Attachment(filename=f"reflections-campaign-{cid}.{fmt}", data=data, mime_type=mime))


async def prompts_cmd(event: Incoming, ctx: Context) -> Reply:
    t = ctx.t
    patrons.require_staff(ctx.actor)
    arg = event.args
    if arg.lower().startswith(("add ", "them ", "thêm ")):
        await reflections.add_prompt(ctx.db, ctx.actor, arg.split(" ", 1)[1])
    items = await reflections.list_prompts(ctx.db, ctx.actor.library_id)
    lines = [t("reflections.prompts_title")]
    rows = []
    for n, p in enumerate(items, 1):
        text = t(p.message_key) if p.message_key else (p.text or "")
        lines.append(f"{n}. {text}")
        rows.append([ctx.button(t("reflections.btn_remove_prompt", n=n), "prx", p.code)])
    lines.append("")
    lines.append(t("reflections.prompts_how"))
    return Reply("\n".join(lines), buttons=rows)


async def press_remove_prompt(event: Incoming, ctx: Context, args: list[str]) -> Reply:
    await reflections.remove_prompt(ctx.db, ctx.actor, args[0] if args else "")
    reply = await prompts_cmd(_with_args(event), ctx)
    reply.edit = True
    return reply


def _with_args(event: Incoming) -> Incoming:
    from dataclasses import replace

    return replace(event, text="/prompts", button=None)


async def flagwords_cmd(event: Incoming, ctx: Context) -> Reply:
    patrons.require_staff(ctx.actor)
    if event.args:
        words = [w for w in re.split(r"[,;\n]", event.args) if w.strip()]
        saved = await reflections.set_flag_words(ctx.db, ctx.actor, words)
        return Reply(ctx.t("reflections.flagwords_saved", count=len(saved)))
    return Reply(ctx.t("reflections.flagwords_how", count=len(reflections.default_flag_words())))


# -- plumbing ----------------------------------------------------------------------------------

def _int(args: list[str], index: int) -> int:
    try:
        return int(args[index])
    except (IndexError, ValueError):
        raise DomainError("error.button_expired") from None


async def _state(ctx: Context, flow: str) -> dict[str, Any]:
    from services import conversations

    return await conversations.find_state(ctx.db, ctx.event.channel, ctx.event.chat_id, flow) or {}


def register(router: Router) -> None:
    router.command("reflect", reflect, help_key="reflections.help_reflect", roles=LINKED, aliases=("camnhan",))
    router.command("drafts", drafts, help_key="reflections.help_drafts", roles=LINKED, aliases=("bannhap",))
    router.command("moderate", moderate_cmd, help_key="reflections.help_moderate", roles=MODERATORS,
                   aliases=("duyet",))
    router.command("campaigns", campaigns_cmd, help_key="campaigns.help_campaigns", roles=LINKED,
                   aliases=("chiendich",))
    router.command("join", join_cmd, help_key="campaigns.help_join", roles=LINKED, aliases=("thamgia",))
    router.command("progress", progress_cmd, help_key="campaigns.help_progress", roles=LINKED,
                   aliases=("tiendo",))
    router.command("leaderboard", leaderboard_cmd, help_key="campaigns.help_leaderboard", roles=LINKED,
                   aliases=("bangxephang",))
    router.command("newcampaign", newcampaign_cmd, help_key="campaigns.help_newcampaign", roles=STAFF)
    router.command("shortlist", shortlist_cmd, help_key="campaigns.help_shortlist", roles=STAFF)
    router.command("prompts", prompts_cmd, help_key="reflections.help_prompts", roles=STAFF)
    router.command("flagwords", flagwords_cmd, help_key="reflections.help_flagwords", roles=STAFF, menu=False)
    router.flow(FLOW_REFLECT, flow_reflect)
    router.flow(FLOW_MOD_NOTE, flow_mod_note)
    router.flow(FLOW_NEW_CAMPAIGN, flow_newcampaign)
    for action, fn in {
        "rfb": press_book, "rfp": press_prompt, "rfd": press_done, "rfr": press_rating, "rfR": press_rate_again,
        "rfs": press_submit, "rfm": press_write_more, "rfc": press_clear, "rfo": press_open, "rfl": press_list,
        "rfx": press_close, "mq": press_queue, "ma": press_approve, "mj": press_reject, "mc": press_changes,
        "mok": press_note_confirm, "mrw": press_note_rewrite, "mx": press_note_cancel, "ncx": press_new_cancel,
        "cj": press_join, "clb": press_leaderboard, "chn": press_hide_name, "cert": press_certificate,
        "csl": press_shortlist, "cex": press_export, "ncs": press_skip, "prx": press_remove_prompt,
    }.items():
        router.button(action, fn)
    router.book_card_buttons(card_buttons)
    router.notice("reflection_approved", notice_approved)
    router.notice("reflection_rejected", notice_rejected)
    router.notice("reflection_changes_requested", notice_changes)
    router.notice("campaign_completed", notice_completed)
    router.notice("badge_earned", notice_badge)
    if router.photo_handler is None:
        router.photo_handler = on_photo

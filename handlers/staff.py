"""Staff work in chat that has no better home at the counter: a copy's condition (/status),
adding one book (/addbook), cancelling a reader's hold (/cancelhold), today's overdue list
(/overdue [CLASS]) and the library's reminder settings (/settings).

The services check roles and library (the web desk calls the same functions); this module only
parses what a librarian types and says what happened, in a neutral register (staff are never "em").
"""

from __future__ import annotations

import re

from handlers.circulation import COPY_STATUS, refusal
from handlers.core import Context, Router
from handlers.i18n import N_
from handlers.messages import Button, Incoming, Reply
from handlers.text import short
from services import catalog, conversations, rules
from services import circulation as circ
from services.common import DomainError
from services.models import CopyStatus, HoldStatus
from services.textfold import fold, looks_like_isbn

STAFF = {"librarian", "admin"}
OVERDUE_ROLES = {"teacher", "librarian", "admin"}
MAX_OVERDUE_LINES = 60

# What a librarian may type after /status, in either language (accents optional).
STATUS_WORDS = {
    "lost": CopyStatus.LOST, "mat": CopyStatus.LOST,
    "damaged": CopyStatus.DAMAGED, "hong": CopyStatus.DAMAGED, "hu": CopyStatus.DAMAGED,
    "repair": CopyStatus.IN_REPAIR, "in_repair": CopyStatus.IN_REPAIR, "sua": CopyStatus.IN_REPAIR,
    "withdrawn": CopyStatus.WITHDRAWN, "withdraw": CopyStatus.WITHDRAWN, "thanhly": CopyStatus.WITHDRAWN,
    "available": CopyStatus.AVAILABLE, "back": CopyStatus.AVAILABLE, "shelf": CopyStatus.AVAILABLE,
    "ke": CopyStatus.AVAILABLE, "trave": CopyStatus.AVAILABLE, "con": CopyStatus.AVAILABLE,
}
STATUS_BUTTONS = (
    (CopyStatus.LOST, N_("staff.btn_lost")), (CopyStatus.DAMAGED, N_("staff.btn_damaged")),
    (CopyStatus.IN_REPAIR, N_("staff.btn_repair")), (CopyStatus.WITHDRAWN, N_("staff.btn_withdrawn")),
    (CopyStatus.AVAILABLE, N_("staff.btn_available")),
)
STATUS_CODES = {CopyStatus.LOST: "l", CopyStatus.DAMAGED: "d", CopyStatus.IN_REPAIR: "r",
                CopyStatus.WITHDRAWN: "w", CopyStatus.AVAILABLE: "a"}
CODE_STATUS = {code: status for status, code in STATUS_CODES.items()}


def _status_name(ctx: Context, status: CopyStatus) -> str:
    return ctx.t(COPY_STATUS[status.value])


# -- /status BARCODE [lost|damaged|repair|withdrawn|available] [note] ------------------------------------

async def _show_copy(ctx: Context, ref: str) -> Reply:
    view = await circ.find_copy(ctx.db, ctx.actor, ref)
    t = ctx.t
    text = t("staff.copy_card", title=view.title, barcode=view.barcode, status=_status_name(ctx, view.status),
             location=view.location or t("staff.no_location"))
    if view.due_date:
        text += "\n" + t("staff.copy_due", due=t.date(view.due_date))
    buttons = [[ctx.button(t(label), "cst", view.copy_id, STATUS_CODES[status])]
               for status, label in STATUS_BUTTONS if status != view.status]
    return Reply(text + "\n" + t("staff.status_pick"), buttons=buttons)


def _said(ctx: Context, r: circ.CopyStatusResult) -> Reply:
    t = ctx.t
    if not r.changed:
        return Reply(t("staff.status_same", title=r.title, barcode=r.barcode, status=_status_name(ctx, r.status)))
    lines = [t("staff.status_done", title=r.title, barcode=r.barcode, previous=_status_name(ctx, r.previous),
               status=_status_name(ctx, r.status))]
    if r.closed_loan_id:
        lines.append(t("staff.status_loan_closed", name=r.loan_patron_name, card=r.loan_card_number))
    if r.requeued_hold_id and not r.held_for_card:
        lines.append(t("staff.status_requeued"))
    if r.held_for_card:
        lines.append(t("return.set_aside", name=r.held_for_name, card=r.held_for_card,
                       deadline=t.date(r.pickup_deadline)))
    return Reply("\n".join(lines))


async def status_cmd(event: Incoming, ctx: Context) -> Reply:
    parts = event.args.split(maxsplit=2)
    if not parts:
        return Reply(ctx.t("staff.status_usage"))
    try:
        if len(parts) == 1:
            return await _show_copy(ctx, parts[0])
        status = STATUS_WORDS.get(fold(parts[1]).replace(" ", ""))
        if status is None:
            return Reply(ctx.t("staff.status_unknown_word", word=short(parts[1], 20)) + "\n"
                         + ctx.t("staff.status_usage"))
        result = await circ.set_copy_status(ctx.db, ctx.actor, parts[0], status, clock=ctx.clock,
                                            note=parts[2] if len(parts) > 2 else None)
    except DomainError as err:
        return refusal(ctx, err)
    return _said(ctx, result)


async def status_press(event: Incoming, ctx: Context, args: list[str]) -> Reply:
    try:
        copy_id, status = int(args[0]), CODE_STATUS[args[1]]
    except (IndexError, ValueError, KeyError):
        return Reply(ctx.t("error.button_expired"))
    try:
        result = await circ.set_copy_status(ctx.db, ctx.actor, copy_id, status, clock=ctx.clock)
    except DomainError as err:
        return refusal(ctx, err)
    reply = _said(ctx, result)
    reply.edit = True
    reply.toast = short(reply.text, 190)
    return reply


# -- /addbook ISBN | /addbook [ISBN] Title; Authors; Year; Publisher ------------------------------------

_FIELDS_SPLIT = re.compile(r"\s*[;|]\s*")


def _parse_book(text: str) -> tuple[str | None, catalog.NewTitle | None, int]:
    """(isbn, typed fields or None, copies). ``x3`` or ``×3`` at the end asks for three copies."""
    text = " ".join(text.split())
    copies = 1
    match = re.search(r"\s+[x×]\s*(\d{1,3})$", text, re.IGNORECASE)
    if match:
        copies, text = int(match.group(1)), text[:match.start()]
    isbn = None
    first, _, rest = text.partition(" ")
    if looks_like_isbn(first) or first.upper().startswith("ISBN"):
        isbn, text = first, rest
    text = text.strip()
    if not text:
        return isbn, None, copies
    fields = _FIELDS_SPLIT.split(text)
    fields += [""] * (4 - len(fields))
    title, authors, year, publisher = fields[:4]
    return isbn, catalog.NewTitle(title=title, authors=authors, isbn=isbn, year=year or None,
                                  publisher=publisher or None), copies


async def _add(ctx: Context, isbn: str | None, typed: catalog.NewTitle | None, copies: int) -> Reply:
    t = ctx.t
    try:
        if typed is None:
            if isbn is None:
                return Reply(t("staff.addbook_usage"))
            known = await catalog.title_by_isbn(ctx.db, isbn)
            if known is None:
                await ctx.set_flow("addbook", isbn=isbn, copies=copies)
                return Reply(t("staff.addbook_ask_fields", isbn=isbn))
            typed = catalog.NewTitle(isbn=isbn)
        book = await catalog.add_book(ctx.db, ctx.actor, typed, count=copies, clock=ctx.clock)
    except DomainError as err:
        return refusal(ctx, err)
    await ctx.clear_flow("addbook")
    key = "staff.addbook_new" if book.title.created else "staff.addbook_known"
    lines = [t(key, title=book.title.title, authors=book.title.authors or "—", count=len(book.copies))]
    for c in book.copies:
        line = t("staff.addbook_copy", barcode=c.barcode)
        if c.held_for_card:
            line += " " + t("staff.addbook_copy_held", name=c.held_for_name, card=c.held_for_card)
        lines.append(line)
    lines.append(t("staff.addbook_labels", title_id=book.title.title_id))
    return Reply("\n".join(lines))


async def addbook_cmd(event: Incoming, ctx: Context) -> Reply:
    if not event.args:
        return Reply(ctx.t("staff.addbook_usage"))
    isbn, typed, copies = _parse_book(event.args)
    return await _add(ctx, isbn, typed, copies)


async def addbook_flow(event: Incoming, ctx: Context) -> Reply:
    state = await conversations.find_state(ctx.db, event.channel, event.chat_id, "addbook") or {}
    if fold(event.text).strip() in ("huy", "cancel", "thoi"):
        await ctx.clear_flow("addbook")
        return Reply(ctx.t("staff.addbook_cancelled"))
    _, typed, copies = _parse_book(event.text)
    isbn = state.get("isbn")
    if typed is not None:
        typed = catalog.NewTitle(title=typed.title, authors=typed.authors, isbn=isbn, year=typed.year,
                                 publisher=typed.publisher)
    return await _add(ctx, isbn, typed, max(copies, int(state.get("copies") or 1)))


# -- /cancelhold CARD -------------------------------------------------------------------------------------

async def cancelhold_cmd(event: Incoming, ctx: Context) -> Reply:
    t = ctx.t
    ref = event.args.split()[0] if event.args else ""
    if not ref:
        return Reply(t("staff.cancelhold_usage"))
    try:
        reader = await circ.reader_holds(ctx.db, ctx.actor, ref)
    except DomainError as err:
        return refusal(ctx, err)
    who = " · ".join(p for p in (reader.full_name, reader.class_name, reader.card_number) if p)
    if not reader.holds:
        return Reply(t("staff.cancelhold_none", who=who))
    lines = [t("staff.cancelhold_title", who=who, count=len(reader.holds))]
    buttons: list[list[Button]] = []
    for i, h in enumerate(reader.holds, 1):
        if h.status == HoldStatus.READY:
            lines.append(t("staff.cancelhold_line_ready", n=i, title=h.title, barcode=h.barcode or "—",
                           deadline=t.date(h.pickup_deadline)))
        else:
            lines.append(t("staff.cancelhold_line_waiting", n=i, title=h.title, position=h.position))
        buttons.append([ctx.button(t("staff.cancelhold_button", n=i, title=short(h.title, 28)), "shc", h.hold_id)])
    return Reply("\n".join(lines), buttons=buttons)


async def cancelhold_press(event: Incoming, ctx: Context, args: list[str]) -> Reply:
    try:
        hold_id = int(args[0])
    except (IndexError, ValueError):
        return Reply(ctx.t("error.button_expired"))
    try:
        result = await circ.staff_cancel_hold(ctx.db, ctx.actor, hold_id, clock=ctx.clock)
    except DomainError as err:
        return refusal(ctx, err)
    text = ctx.t("staff.cancelhold_done", title=result.title)
    return Reply(text, toast=short(text, 190))


# -- /overdue [CLASS] ------------------------------------------------------------------------------------

async def overdue_cmd(event: Incoming, ctx: Context) -> Reply:
    t = ctx.t
    wanted = event.args.split()[0] if event.args else None
    try:
        report = await circ.overdue_list(ctx.db, ctx.actor, clock=ctx.clock, class_name=wanted)
    except DomainError as err:
        return refusal(ctx, err)
    if not report.lines:
        key = "staff.overdue_none_class" if wanted or ctx.actor.role.value == "teacher" else "staff.overdue_none"
        return Reply(t(key, class_name=(wanted or ctx.actor.class_name or "").upper(), date=t.date(report.today)))
    lines = [t("staff.overdue_title", count=len(report.lines), date=t.date(report.today))]
    shown = 0
    for class_name, group in report.by_class():
        lines.append("")
        lines.append(t("staff.overdue_class", class_name=class_name, count=len(group)) if class_name
                     else t("staff.overdue_staff", count=len(group)))
        for line in group:
            if shown >= MAX_OVERDUE_LINES:
                break
            lines.append(t("staff.overdue_line", name=line.full_name, card=line.card_number,
                           title=short(line.title, 40), barcode=line.barcode, days=line.days_overdue))
            shown += 1
    if shown < len(report.lines):
        lines.append(t("staff.overdue_more", count=len(report.lines) - shown))
    return Reply("\n".join(lines))


# -- /settings: quiet hours and reminder days -------------------------------------------------------------

def _settings_text(ctx: Context, s: rules.ReminderSettings) -> str:
    return ctx.t("staff.settings", start=s.quiet_start.strftime("%H:%M"), end=s.quiet_end.strftime("%H:%M"),
                 before=s.before_days, overdue=", ".join(str(d) for d in s.overdue_days))


async def settings_cmd(event: Incoming, ctx: Context) -> Reply:
    words = event.args.split()
    t = ctx.t
    try:
        if not words:
            return Reply(_settings_text(ctx, await rules.reminder_settings(ctx.db, ctx.actor)) + "\n\n"
                         + t("staff.settings_usage"))
        what = fold(words[0])
        if what in ("quiet", "yenlang", "gioyenlang") and len(words) == 2 and "-" in words[1]:
            words = [words[0], *words[1].split("-", 1)]
        if what in ("quiet", "yenlang", "gioyenlang") and len(words) == 3:
            changed = await rules.set_quiet_hours(ctx.db, ctx.actor, words[1], words[2])
        elif what in ("before", "truoc") and len(words) == 2:
            changed = await rules.set_reminder_days(ctx.db, ctx.actor, before_days=words[1])
        elif what in ("overdue", "quahan") and len(words) >= 2:
            changed = await rules.set_reminder_days(ctx.db, ctx.actor, overdue_days=" ".join(words[1:]))
        elif what in ("reset", "macdinh") and len(words) == 2:
            changed = await rules.reset_reminder_settings(ctx.db, ctx.actor, words[1])
        else:
            return Reply(t("staff.settings_usage"))
    except DomainError as err:
        return refusal(ctx, err)
    return Reply(t("staff.settings_saved") + "\n" + _settings_text(ctx, changed))


def register(router: Router) -> None:
    router.command("overdue", overdue_cmd, help_key="help.cmd_overdue", roles=OVERDUE_ROLES, aliases=("quahan",))
    router.command("status", status_cmd, help_key="help.cmd_status", roles=STAFF, aliases=("tinhtrang",))
    router.command("addbook", addbook_cmd, help_key="help.cmd_addbook", roles=STAFF, aliases=("themsach",))
    router.command("cancelhold", cancelhold_cmd, help_key="help.cmd_cancelhold", roles=STAFF,
                   aliases=("huydatcho",))
    router.command("settings", settings_cmd, help_key="help.cmd_settings", roles=STAFF, aliases=("caidat",))
    router.button("cst", status_press)
    router.button("shc", cancelhold_press)
    router.flow("addbook", addbook_flow)

"""What the librarian's desk shows and does: today's overview, the counter, overdue loans.

Public API (staff of the actor's library unless said; refusals raise ``DomainError``):
- ``today(db, actor, *, clock) -> Today``: checkouts, returns and visits today; ready holds still
  to be fetched from the shelves; the pickup shelf with deadlines; holds expiring.
- ``set_aside(db, actor, hold_id, *, clock)``: the READY copy is now on the pickup shelf.
- ``scan(db, actor, code, *, reader=None, pending=None, clock) -> Scan``: one scanner field. A copy
  on loan is checked in; an available copy starts a checkout (or completes it when a reader is
  chosen); a card chooses the reader (and completes a started checkout).
- ``reader(db, actor, ref, *, clock) -> Reader``: a reader's open loans and active holds.
- ``overdue(db, actor, *, clock, class_name=None, min_days=1) -> Overdue``, grouped by class.
- ``remind(db, actor, loan_ids, *, clock) -> (queued, already)``: "remind now" through the
  outbox, once per loan and due date, whatever the number of clicks.
- ``overdue_slips_pdf(db, actor, class_name, *, clock, t) -> bytes``: slips to hand out in class.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update

from services import audit, circulation, outbox
from services.common import Clock, DomainError, NotFound, aware
from services.db import Database, insert_for
from services.models import (
    Copy,
    CopyStatus,
    Hold,
    HoldStatus,
    Library,
    Loan,
    Location,
    Notification,
    NotificationStatus,
    Patron,
    Role,
    Title,
    Visit,
)
from services.patrons import Actor, require_staff
from services.rules import load_calendar, rules_for

MAX_LIST = 200          # rows a page shows at most (the rest is counted)


# -- today ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HoldLine:
    hold_id: int
    title: str
    barcode: str | None
    location: str | None
    patron_name: str
    card_number: str
    class_name: str | None
    ready_at: datetime | None
    pickup_deadline: date | None


@dataclass
class Today:
    day: date
    checkouts: int
    returns: int
    visits: int
    open_loans: int
    overdue: int
    waiting: int
    to_fetch: list[HoldLine] = field(default_factory=list)
    shelf: list[HoldLine] = field(default_factory=list)
    expiring: list[HoldLine] = field(default_factory=list)


def _day_bounds(day: date, tz: str) -> tuple[datetime, datetime]:
    from zoneinfo import ZoneInfo

    start = datetime.combine(day, datetime.min.time(), tzinfo=ZoneInfo(tz))
    return start, start + timedelta(days=1)


async def _library(s, actor: Actor) -> Library:
    library = await s.get(Library, actor.library_id)
    if library is None:
        raise NotFound()
    return library


async def today(db: Database, actor: Actor, *, clock: Clock) -> Today:
    require_staff(actor)
    async with db.session() as s:
        library = await _library(s, actor)
        day = clock.today(library.timezone)
        start, end = _day_bounds(day, library.timezone)
        lib = actor.library_id
        checkouts = await s.scalar(select(func.count()).select_from(Loan).where(
            Loan.library_id == lib, Loan.checked_out_at >= start, Loan.checked_out_at < end))
        returns = await s.scalar(select(func.count()).select_from(Loan).where(
            Loan.library_id == lib, Loan.returned_at >= start, Loan.returned_at < end))
        visits = await s.scalar(select(func.count()).select_from(Visit).where(
            Visit.library_id == lib, Visit.day == day))
        open_loans = await s.scalar(select(func.count()).select_from(Loan).where(
            Loan.library_id == lib, Loan.returned_at.is_(None)))
        overdue = await s.scalar(select(func.count()).select_from(Loan).where(
            Loan.library_id == lib, Loan.returned_at.is_(None), Loan.due_date < day))
        waiting = await s.scalar(select(func.count()).select_from(Hold).where(
            Hold.library_id == lib, Hold.status == HoldStatus.WAITING))
        rows = (await s.execute(
            select(Hold, Title.title, Copy.barcode, Location.name, Patron.full_name, Patron.card_number,
                   Patron.class_name)
            .join(Title, Title.id == Hold.title_id).join(Patron, Patron.id == Hold.patron_id)
            .outerjoin(Copy, Copy.id == Hold.copy_id).outerjoin(Location, Location.id == Copy.location_id)
            .where(Hold.library_id == lib, Hold.status == HoldStatus.READY)
            .order_by(Hold.pickup_deadline, Hold.ready_at, Hold.id).limit(MAX_LIST))).all()
        calendar = await load_calendar(s, library, since=day)
    soon = calendar.add_school_days(day, 1)
    result = Today(day, int(checkouts or 0), int(returns or 0), int(visits or 0), int(open_loans or 0),
                   int(overdue or 0), int(waiting or 0))
    for hold, title, barcode, location, name, card, class_name in rows:
        line = HoldLine(hold.id, title, barcode, location, name, card, class_name, aware(hold.ready_at),
                        hold.pickup_deadline)
        (result.shelf if hold.set_aside_at is not None else result.to_fetch).append(line)
        if hold.pickup_deadline is not None and hold.pickup_deadline <= soon:
            result.expiring.append(line)
    return result


async def set_aside(db: Database, actor: Actor, hold_id: int, *, clock: Clock) -> str:
    """Record that a READY hold's copy is on the pickup shelf. Returns the title."""
    require_staff(actor)
    async with db.transaction() as s:
        hold = await s.get(Hold, hold_id)
        if hold is None or hold.library_id != actor.library_id:
            raise NotFound("desk.hold_unknown")
        if hold.status != HoldStatus.READY:
            raise DomainError("desk.hold_not_ready")
        title = (await s.get(Title, hold.title_id)).title
        if hold.set_aside_at is None:
            await s.execute(update(Hold).where(Hold.id == hold.id, Hold.set_aside_at.is_(None))
                            .values(set_aside_at=clock.now()))
            audit.record(s, "hold.set_aside", "hold", hold.id, actor_patron_id=actor.patron_id,
                         library_id=hold.library_id, channel=actor.channel)
        return title


# -- the counter ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Scan:
    """What one scan did. ``outcome`` is "ok", "waiting" (needs the card next) or "refused"."""

    outcome: str
    message_key: str
    params: dict[str, Any]
    reader_card: str | None = None    # the reader now chosen at the counter
    pending_copy: str | None = None   # a copy waiting for its reader's card


@dataclass(frozen=True)
class HoldOfReader:
    hold_id: int
    title: str
    status: HoldStatus
    pickup_deadline: date | None
    barcode: str | None


@dataclass(frozen=True)
class Reader:
    patron_id: int
    card_number: str
    full_name: str
    class_name: str | None
    role: Role
    loans: list[circulation.LoanView]
    holds: list[HoldOfReader]
    max_loans: int


async def _what_is(s, library_id: int, code: str) -> tuple[str, Any]:
    """("copy", Copy) or ("reader", Patron) for a scanned code of this library, else ("", None)."""
    try:
        return "copy", await circulation._find_copy(s, library_id, code)
    except NotFound:
        pass
    try:
        return "reader", await circulation._find_patron(s, library_id, code)
    except NotFound:
        return "", None


async def _record_visit(db: Database, patron_id: int, library_id: int, clock: Clock, tz: str) -> None:
    """A reader served at the desk visited the library today (once per day, as the kiosks count)."""
    async with db.transaction() as s:
        stmt = insert_for(s)(Visit).values(library_id=library_id, patron_id=patron_id, day=clock.today(tz),
                                           at=clock.now(), source="desk")
        await s.execute(stmt.on_conflict_do_nothing(index_elements=["patron_id", "day"]))


async def scan(db: Database, actor: Actor, code: str, *, reader: str | None = None, pending: str | None = None,
               clock: Clock) -> Scan:
    require_staff(actor)
    code = " ".join((code or "").split())[:200]
    if not code:
        raise DomainError("desk.scan_empty")
    async with db.session() as s:
        kind, found = await _what_is(s, actor.library_id, code)
        library = await _library(s, actor)
    if kind == "":
        return Scan("refused", "desk.scan_unknown", {"code": code[:40]}, reader, pending)
    if kind == "reader":
        patron: Patron = found
        if pending:
            return await _checkout(db, actor, pending, patron.card_number, clock, library)
        return Scan("ok", "desk.reader_chosen", {"name": patron.full_name, "card": patron.card_number},
                    patron.card_number, None)
    copy: Copy = found
    if copy.status == CopyStatus.ON_LOAN:
        result = await circulation.check_in(db, actor, copy.id, clock=clock)
        params = {"title": result.title, "barcode": result.barcode, "name": result.patron_name,
                  "days": result.overdue_days}
        if result.held_for_hold_id is not None:
            await set_aside(db, actor, result.held_for_hold_id, clock=clock)
            params.update(holder=result.held_for_name, holder_card=result.held_for_card)
            return Scan("ok", "desk.returned_hold", params, reader, None)
        return Scan("ok", "desk.returned_late" if result.overdue_days else "desk.returned", params, reader, None)
    if reader:
        return await _checkout(db, actor, copy.barcode, reader, clock, library)
    if copy.status not in (CopyStatus.AVAILABLE, CopyStatus.ON_HOLD_SHELF):
        return Scan("refused", "desk.copy_not_lendable", {"barcode": copy.barcode, "status": copy.status.value},
                    None, None)
    async with db.session() as s:
        title = (await s.get(Title, copy.title_id)).title
    return Scan("waiting", "desk.scan_card_next", {"title": title, "barcode": copy.barcode}, None, copy.barcode)


async def _checkout(db: Database, actor: Actor, copy_ref: str, card: str, clock: Clock, library: Library) -> Scan:
    try:
        result = await circulation.check_out(db, actor, copy_ref, card, clock=clock)
    except DomainError as refusal:
        return Scan("refused", refusal.key, refusal.params, card, None)
    await _record_visit(db, result.patron_id, library.id, clock, library.timezone)
    return Scan("ok", "desk.lent", {"title": result.title, "barcode": result.barcode, "name": result.patron_name,
                                    "due": result.due_date, "count": result.loans_count,
                                    "limit": result.max_loans}, result.card_number, None)


async def reader(db: Database, actor: Actor, ref: int | str, *, clock: Clock) -> Reader:
    require_staff(actor)
    async with db.session() as s:
        patron = await circulation._find_patron(s, actor.library_id, ref)
        library = await _library(s, actor)
        loans = await circulation._loan_views(s, Loan.patron_id == patron.id, clock.today(library.timezone), library)
        holds = await circulation._active_holds(s, patron.id)
    return Reader(patron.id, patron.card_number, patron.full_name, patron.class_name, patron.role, loans,
                  [HoldOfReader(h.id, title, h.status, h.pickup_deadline, barcode) for h, title, barcode in holds],
                  rules_for(library, patron.role).max_loans)


# -- overdue -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OverdueLine:
    loan_id: int
    patron_id: int
    full_name: str
    card_number: str
    class_name: str | None
    title: str
    barcode: str
    due_date: date
    days: int
    reminded: bool          # a desk reminder for this due date is already in the outbox


@dataclass
class Overdue:
    day: date
    lines: list[OverdueLine]
    total: int                          # all overdue loans matching, beyond the shown ones too
    by_class: dict[str, int]            # class (or "") → overdue loans, all of them
    by_days: dict[str, int]             # "1–7", "8–14", "15–30", "> 30" → loans


BUCKETS = (("1-7", 1, 7), ("8-14", 8, 14), ("15-30", 15, 30), ("31+", 31, 10**6))


def _remind_key(loan_id: int, due: date) -> str:
    return f"overdue:loan={loan_id}:{due}:desk"


async def overdue(db: Database, actor: Actor, *, clock: Clock, class_name: str | None = None,
                  min_days: int = 1, limit: int = MAX_LIST) -> Overdue:
    """The overdue list of ``circulation.overdue_list`` (which checks who may see what), counted by
    class and by days overdue, filtered, with whether a desk reminder is already queued."""
    min_days = max(1, min(int(min_days), 3650))
    # A teacher's view is their class, and asking for another is refused there; staff get the whole
    # library (for the counts per class) and the filter applies below.
    own = actor.role == Role.TEACHER
    full = await circulation.overdue_list(db, actor, clock=clock, class_name=class_name if own else None)
    wanted = class_name.strip().upper() if class_name else None
    by_class: dict[str, int] = defaultdict(int)
    by_days: dict[str, int] = {name: 0 for name, _, _ in BUCKETS}
    chosen = []
    for line in full.lines:
        by_class[line.class_name or ""] += 1
        if wanted is not None and (line.class_name or "") != wanted:
            continue
        for name, low, high in BUCKETS:
            if low <= line.days_overdue <= high:
                by_days[name] += 1
        if line.days_overdue >= min_days:
            chosen.append(line)
    shown = chosen[:limit]
    keys = [_remind_key(line.loan_id, line.due_date) for line in shown]
    async with db.session() as s:
        reminded = set((await s.execute(select(Notification.key).where(Notification.key.in_(keys)))).scalars()) \
            if keys else set()
    lines = [OverdueLine(line.loan_id, line.patron_id, line.full_name, line.card_number, line.class_name,
                         line.title, line.barcode, line.due_date, line.days_overdue,
                         _remind_key(line.loan_id, line.due_date) in reminded) for line in shown]
    return Overdue(full.today, lines, len(chosen), dict(sorted(by_class.items())), by_days)


async def remind(db: Database, actor: Actor, loan_ids: list[int], *, clock: Clock) -> tuple[int, int]:
    """Queue an overdue notice for each open, overdue loan of the library now: (queued, already queued)."""
    require_staff(actor)
    if not loan_ids:
        raise DomainError("desk.nothing_selected")
    now = clock.now()
    queued = already = 0
    async with db.transaction() as s:
        library = await _library(s, actor)
        day = clock.today(library.timezone)
        rows = (await s.execute(
            select(Loan.id, Loan.patron_id, Loan.due_date, Loan.renewals, Title.id, Title.title, Patron.role)
            .join(Copy, Copy.id == Loan.copy_id).join(Title, Title.id == Copy.title_id)
            .join(Patron, Patron.id == Loan.patron_id)
            .where(Loan.id.in_([int(i) for i in loan_ids[:MAX_LIST]]), Loan.library_id == actor.library_id,
                   Loan.returned_at.is_(None), Loan.due_date < day))).all()
        if not rows:
            raise NotFound("desk.loan_unknown")
        for loan_id, patron_id, due, renewals, title_id, title, role in rows:
            rules = rules_for(library, role)
            overdue_days = (day - due).days
            renewable = renewals < rules.max_renewals and overdue_days <= rules.block_overdue_days
            added = await outbox.enqueue(
                s, patron_id=patron_id, kind="overdue", key=_remind_key(loan_id, due), send_after=now,
                payload={"loan_id": loan_id, "title_id": title_id, "title": title, "renewals": renewals,
                         "renewable": renewable, "due_date": due.isoformat(), "stage": overdue_days,
                         "by_desk": True})
            if added:
                queued += 1
                audit.record(s, "loan.remind", "loan", loan_id, actor_patron_id=actor.patron_id,
                             library_id=actor.library_id, channel=actor.channel, patron_id=patron_id)
            else:
                already += 1
    return queued, already


async def overdue_slips_pdf(db: Database, actor: Actor, class_name: str, *, clock: Clock, t) -> bytes:
    """A4 with one cut-out slip per student of the class with overdue books (for students without a chat)."""
    data = await overdue(db, actor, clock=clock, class_name=class_name, limit=2000)
    async with db.session() as s:
        library = await _library(s, actor)
    per_student: dict[int, list[OverdueLine]] = defaultdict(list)
    for line in data.lines:
        per_student[line.patron_id].append(line)
    from fpdf import FPDF

    from services.labels import add_fonts, fit_text

    pdf = FPDF(orientation="P", format="A4")
    add_fonts(pdf)
    pdf.set_auto_page_break(False)
    pdf.set_margins(12, 12, 12)
    slip_h, gap = 62.0, 4.0
    y = None
    for lines in per_student.values():
        needed = 26 + 6 * min(len(lines), 6)
        height = max(slip_h, needed)
        if y is None or y + height > 297 - 12:
            pdf.add_page()
            y = 12.0
        first = lines[0]
        pdf.set_draw_color(150, 150, 150)
        pdf.set_line_width(0.2)
        pdf.set_dash_pattern(dash=2, gap=2)
        pdf.line(12, y + height + gap / 2, 198, y + height + gap / 2)
        pdf.set_dash_pattern()
        pdf.set_xy(14, y + 3)
        pdf.set_font("DejaVu", "", 9)
        pdf.cell(0, 5, f"{library.name} · {t('desk.slip_heading')} · {t.date(data.day)}", new_x="LMARGIN",
                 new_y="NEXT")
        pdf.set_x(14)
        pdf.set_font("DejaVu", "B", 13)
        pdf.cell(0, 7, f"{first.full_name} — {t('desk.col_class')} {first.class_name or '—'} ({first.card_number})",
                 new_x="LMARGIN", new_y="NEXT")
        pdf.set_x(14)
        pdf.set_font("DejaVu", "", 10)
        pdf.multi_cell(180, 5, t("desk.slip_intro"), new_x="LMARGIN", new_y="NEXT")
        for line in lines[:6]:
            pdf.set_x(18)
            params = {"barcode": line.barcode, "due": t.date(line.due_date, "short"), "days": line.days}
            room = 174 - pdf.get_string_width(t("desk.slip_line", title="", **params))
            pdf.cell(176, 6, t("desk.slip_line", title=fit_text(pdf, line.title, room), **params),
                     new_x="LMARGIN", new_y="NEXT")
        if len(lines) > 6:
            pdf.set_x(18)
            pdf.cell(176, 6, t("desk.slip_more", count=len(lines) - 6), new_x="LMARGIN", new_y="NEXT")
        y += height + gap
    if y is None:
        pdf.add_page()
        pdf.set_font("DejaVu", "", 12)
        pdf.multi_cell(0, 8, t("desk.slips_none", class_name=class_name), new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


# -- notices ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class NoticeLine:
    notice_id: int
    kind: str
    title: str | None
    status: str
    created_at: datetime | None
    sent_at: datetime | None
    channel: str | None
    attempts: int
    last_error: str | None

    @property
    def can_resend(self) -> bool:   # uncertain: maybe delivered; only a person decides to send again
        return self.status == "uncertain"

    @property
    def can_cancel(self) -> bool:   # not yet picked up by a sender
        return self.status == "pending"


async def _patron_here(s, actor: Actor, patron_id: int) -> Patron:
    patron = await s.get(Patron, patron_id)
    if patron is None or patron.library_id != actor.library_id:
        raise NotFound("circulation.patron_not_found", ref=str(patron_id))
    return patron


async def notices(db: Database, actor: Actor, patron_id: int, *, limit: int = 50) -> list[NoticeLine]:
    """What was said to a reader of the library, newest first, with its delivery status."""
    require_staff(actor)
    async with db.session() as s:
        await _patron_here(s, actor, patron_id)
        rows = (await s.execute(select(Notification).where(Notification.patron_id == patron_id)
                                .order_by(Notification.id.desc()).limit(limit))).scalars().all()
    return [NoticeLine(n.id, n.kind, (n.payload or {}).get("title"), getattr(n.status, "value", str(n.status)),
                       aware(n.created_at), aware(n.sent_at), n.channel, n.attempts or 0,
                       (n.last_error or "")[:200] or None) for n in rows]


async def _notice_here(s, actor: Actor, notice_id: int) -> Notification:
    row = (await s.execute(select(Notification).join(Patron, Patron.id == Notification.patron_id)
                           .where(Notification.id == notice_id, Patron.library_id == actor.library_id)
                           .with_for_update(of=Notification))).scalar_one_or_none()
    if row is None:
        raise NotFound("desk.notice_unknown")
    return row


async def resend_notice(db: Database, actor: Actor, notice_id: int, *, clock: Clock) -> None:
    """Send an *uncertain* notice again: a librarian's deliberate decision (it may arrive twice)."""
    require_staff(actor)
    async with db.transaction() as s:
        row = await _notice_here(s, actor, notice_id)
        if row.status != NotificationStatus.UNCERTAIN:
            raise DomainError("desk.notice_not_uncertain")
        row.status, row.claimed_by, row.claimed_at, row.send_after = (
            NotificationStatus.PENDING, None, None, clock.now())
        audit.record(s, "notice.resend", "notification", row.id, actor_patron_id=actor.patron_id,
                     library_id=actor.library_id, channel=actor.channel)


async def cancel_notice(db: Database, actor: Actor, notice_id: int) -> None:
    """Keep a pending notice from going out (e.g. the book came back at the counter meanwhile)."""
    require_staff(actor)
    async with db.transaction() as s:
        row = await _notice_here(s, actor, notice_id)
        if row.status != NotificationStatus.PENDING:
            raise DomainError("desk.notice_not_pending")
        row.status, row.last_error = NotificationStatus.SKIPPED, "cancelled at the desk"
        audit.record(s, "notice.cancel", "notification", row.id, actor_patron_id=actor.patron_id,
                     library_id=actor.library_id, channel=actor.channel)

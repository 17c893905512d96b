"""Holds and loans: reserve, check out, return, renew — safe with several worker processes.

Public API (every function owns its transaction; refusals raise ``DomainError("circulation.…")``):

Holds
- ``place_hold(db, actor, title_id, *, clock) -> HoldResult``  (linked patron; queue position)
- ``cancel_hold(db, actor, hold_id, *, clock) -> CancelResult``  (own hold, or staff of that library)
- ``my_holds(db, actor) -> list[HoldView]``
- ``expire_holds(db, *, clock, library_id=None) -> ExpireReport``  (sweep: READY past deadline → EXPIRED;
  the copy passes to the next in the queue or back to the shelf)
Loans
- ``check_out(db, actor, copy_ref, patron_ref, *, clock) -> CheckoutResult``  (staff)
- ``check_in(db, actor, copy_ref, *, clock) -> CheckinResult``  (staff; says if the copy is now set aside)
- ``renew_loan(db, actor, loan_id, *, clock, expected_renewals=None) -> RenewResult``  (own loan, or staff;
  pass ``expected_renewals`` from a button so a double tap renews once)
- ``my_loans(db, actor, *, clock) -> list[LoanView]``, ``loan_for_copy(db, actor, copy_ref, *, clock)`` (staff)
- ``patron_history(db, actor, patron_ref=None)`` (own, or staff), ``copy_history(db, actor, copy_ref)`` (staff)
- ``find_copy(db, actor, copy_ref) -> CopyView`` (staff), ``title_availability(db, actor, title_id)``

Staff work (the chat commands and the web desk call these; staff of the copy's/reader's library only)
- ``set_copy_status(db, actor, copy_ref, status, *, clock, note=None) -> CopyStatusResult``  (lost, damaged,
  in_repair, withdrawn, or back to available; a lent copy can only be declared lost, which closes its loan)
- ``reader_holds(db, actor, patron_ref)``, ``staff_cancel_hold(db, actor, hold_id, *, clock, reason=None)``
  (the reader gets a ``hold_cancelled`` notice)
- ``overdue_list(db, actor, *, clock, class_name=None) -> OverdueList``  (by class, days overdue; a teacher
  sees their own class)
- ``give_to_queue(session, actor, library_id, title_id, *, clock)``  (new copies go to waiting readers first)

``copy_ref``: an int id, a barcode, ``c<id>`` (the copy QR payload) or a scanned link carrying it.
``patron_ref``: an int id or a card number.

Events recorded for the reminders feature (``services.outbox``, same transaction):
- ``kind="hold_ready"``, ``key=f"hold_ready:{hold_id}"``, payload ``{hold_id, title_id, title, copy_id,
  barcode, pickup_deadline (ISO date), library_id, location}``
- ``kind="hold_expired"``, ``key=f"hold_expired:{hold_id}"``, payload ``{hold_id, title_id, title, library_id}``
- ``kind="hold_cancelled"``, ``key=f"hold_cancelled:{hold_id}"``, payload ``{hold_id, title_id, title, library_id,
  reason}`` (staff cancelled it)
Due and pickup reminders are planned by the reminders feature from ``loans`` and ``holds`` itself.

How concurrency is handled (no in-process locks): each change runs in one transaction that first
locks the patron row (limits) and then every copy row of the title in that library, in id order
(``SELECT … FOR UPDATE`` on PostgreSQL; SQLite has one writer at a time). That makes the hold
queue of a title a critical section per library. Status changes are compare-and-set
(``UPDATE … WHERE status=… AND version=…``) and the partial unique indexes (one open loan per
copy, one READY hold per copy, one active hold per patron and title) are the last line of
defence. Deadlocks, serialization failures, busy SQLite files and lost compare-and-sets are
retried a bounded number of times, then the user is asked to try again.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import TypeVar

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services import audit, outbox
from services.common import Clock, DomainError, NotFound, PermissionDenied, aware
from services.db import Database
from services.models import Copy, CopyStatus, Hold, HoldStatus, Library, Loan, Location, Patron, Role, Title
from services.patrons import Actor, require_linked, require_staff
from services.rules import Rules, SchoolCalendar, load_calendar, rules_for

T = TypeVar("T")
# Runs inside a loan change's own transaction, after the change (e.g. a kiosk's chat receipt):
# whatever it writes is committed exactly when the change is.
Within = Callable[[AsyncSession, "CheckoutResult | CheckinResult | RenewResult"], Awaitable[None]]
MAX_ATTEMPTS = 8
ACTIVE_HOLD = (HoldStatus.WAITING, HoldStatus.READY)
LENDABLE = (CopyStatus.AVAILABLE, CopyStatus.ON_LOAN, CopyStatus.ON_HOLD_SHELF, CopyStatus.IN_REPAIR)
SYSTEM_CHANNEL = "system"


# -- results ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class HoldResult:
    hold_id: int
    title_id: int
    title: str
    status: HoldStatus
    position: int                      # 1 = next in line; 0 when READY
    pickup_deadline: date | None = None
    barcode: str | None = None


@dataclass(frozen=True)
class CancelResult:
    hold_id: int
    title: str
    was_ready: bool


@dataclass(frozen=True)
class HoldView:
    hold_id: int
    title_id: int
    title: str
    status: HoldStatus
    position: int
    queued_at: datetime
    pickup_deadline: date | None
    barcode: str | None


@dataclass(frozen=True)
class ExpireReport:
    expired: list[int]
    passed_on: list[int]               # holds that became READY with the freed copies


@dataclass(frozen=True)
class CheckoutResult:
    loan_id: int
    copy_id: int
    barcode: str
    title: str
    patron_id: int
    patron_name: str
    card_number: str
    due_date: date
    fulfilled_hold_id: int | None
    loans_count: int
    max_loans: int


@dataclass(frozen=True)
class CheckinResult:
    loan_id: int
    copy_id: int
    barcode: str
    title: str
    patron_name: str
    card_number: str
    overdue_days: int
    held_for_hold_id: int | None = None
    held_for_name: str | None = None
    held_for_card: str | None = None
    pickup_deadline: date | None = None


@dataclass(frozen=True)
class RenewResult:
    loan_id: int
    title: str
    due_date: date
    renewals: int
    renewals_left: int


@dataclass(frozen=True)
class LoanView:
    loan_id: int
    copy_id: int
    barcode: str
    title_id: int
    title: str
    due_date: date
    renewals: int
    renewals_left: int
    overdue_days: int
    patron_name: str
    card_number: str


@dataclass(frozen=True)
class HistoryEntry:
    loan_id: int
    title: str
    barcode: str
    patron_name: str
    card_number: str
    checked_out_at: datetime
    due_date: date
    returned_at: datetime | None
    renewals: int


@dataclass(frozen=True)
class CopyView:
    copy_id: int
    barcode: str
    title_id: int
    title: str
    status: CopyStatus
    location: str | None
    due_date: date | None = None
    held_for_card: str | None = None


@dataclass(frozen=True)
class Availability:
    copies: int
    available: int
    waiting: int
    my_hold_id: int | None = None
    my_hold_status: HoldStatus | None = None
    my_position: int | None = None
    my_loan: bool = False


# -- transactions with bounded retries ------------------------------------------------------------

class _Conflict(Exception):
    """A compare-and-set lost a race: run the whole transaction again on fresh data."""


def _retryable(exc: DBAPIError) -> bool:
    orig = exc.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if code in ("40001", "40P01", "55P03"):  # serialization failure, deadlock, lock not available
        return True
    message = str(orig).lower()
    return "database is locked" in message or "deadlock" in message


async def run_tx(db: Database, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run ``work`` in one transaction; retry on deadlocks, busy databases and lost races."""
    for attempt in range(MAX_ATTEMPTS):
        try:
            async with db.transaction() as s:
                return await work(s)
        except _Conflict:
            pass
        except IntegrityError:
            raise
        except DBAPIError as exc:
            if not _retryable(exc):
                raise
        await asyncio.sleep(random.uniform(0, 0.005 * 2 ** attempt))
    raise DomainError("circulation.busy")


# -- lookups ---------------------------------------------------------------------------------------

_COPY_QR = re.compile(r"(?:start=|^/start\s+|/b/|^)c(\d{1,12})$", re.IGNORECASE)


def parse_copy_ref(ref: int | str) -> tuple[int | None, str | None]:
    """(copy id, barcode): ``12`` (int), ``"c12"``, a scanned QR link carrying it
    (``https://t.me/bot?start=c12``, ``https://…/b/c12``) or a barcode."""
    if isinstance(ref, int):
        return ref, None
    text = " ".join(str(ref).split())[:200]
    match = _COPY_QR.search(text)
    if match:
        return int(match.group(1)), None
    return None, text[:32]


async def _find_copy(s: AsyncSession, library_id: int | None, ref: int | str) -> Copy:
    copy_id, barcode = parse_copy_ref(ref)
    query = select(Copy).where(Copy.library_id == library_id)
    copy = None
    if copy_id is not None:
        copy = (await s.execute(query.where(Copy.id == copy_id))).scalar_one_or_none()
    elif barcode:
        copy = (await s.execute(query.where(Copy.barcode == barcode))).scalar_one_or_none()
        if copy is None:
            copy = (await s.execute(query.where(func.upper(Copy.barcode) == barcode.upper()))).scalars().first()
    if copy is None:
        raise NotFound("circulation.copy_not_found", ref=str(ref)[:40])
    return copy


async def _find_patron(s: AsyncSession, library_id: int | None, ref: int | str) -> Patron:
    query = select(Patron).where(Patron.library_id == library_id)
    if isinstance(ref, int):
        patron = (await s.execute(query.where(Patron.id == ref))).scalar_one_or_none()
    else:
        card = " ".join(str(ref).split())[:32]
        patron = (await s.execute(query.where(Patron.card_number == card))).scalar_one_or_none()
        if patron is None and card:
            patron = (await s.execute(query.where(func.upper(Patron.card_number) == card.upper()))).scalars().first()
    if patron is None:
        raise NotFound("circulation.patron_not_found", ref=str(ref)[:40])
    return patron


async def _lock_patron(s: AsyncSession, patron_id: int) -> Patron:
    patron = (await s.execute(
        select(Patron).where(Patron.id == patron_id).with_for_update()
        .execution_options(populate_existing=True)
    )).scalar_one_or_none()
    if patron is None or not patron.active:
        raise DomainError("circulation.patron_inactive")
    return patron


async def _lock_title(s: AsyncSession, library_id: int, title_id: int) -> list[Copy]:
    """Lock every copy of the title in this library, in id order: the title's queue is ours now."""
    return list((await s.execute(
        select(Copy).where(Copy.library_id == library_id, Copy.title_id == title_id)
        .order_by(Copy.id).with_for_update().execution_options(populate_existing=True)
    )).scalars())


async def _cas_copy(s: AsyncSession, copy: Copy, status: CopyStatus) -> None:
    result = await s.execute(
        update(Copy).where(Copy.id == copy.id, Copy.version == copy.version, Copy.status == copy.status)
        .values(status=status, version=copy.version + 1)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        raise _Conflict()
    await s.refresh(copy)


async def _cas_hold(s: AsyncSession, hold: Hold, expected: HoldStatus, **values) -> None:
    result = await s.execute(
        update(Hold).where(Hold.id == hold.id, Hold.status == expected).values(**values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        raise _Conflict()
    await s.refresh(hold)


async def _title(s: AsyncSession, title_id: int) -> Title:
    title = await s.get(Title, title_id)
    if title is None:
        raise NotFound("circulation.title_not_found")
    return title


async def _position(s: AsyncSession, hold: Hold) -> int:
    if hold.status != HoldStatus.WAITING:
        return 0
    return int(await s.scalar(select(func.count()).select_from(Hold).where(
        Hold.library_id == hold.library_id, Hold.title_id == hold.title_id, Hold.status == HoldStatus.WAITING,
        or_(Hold.queued_at < hold.queued_at, and_(Hold.queued_at == hold.queued_at, Hold.id <= hold.id)),
    )) or 0)


async def _check_overdue_block(s: AsyncSession, patron: Patron, rules: Rules, today: date) -> None:
    oldest = await s.scalar(select(func.min(Loan.due_date)).where(
        Loan.patron_id == patron.id, Loan.returned_at.is_(None)))
    if oldest is not None and (today - oldest).days > rules.block_overdue_days:
        raise DomainError("circulation.blocked_overdue", days=(today - oldest).days)


@dataclass
class _Scope:
    """What one transaction needs about the library: the row, its calendar, today and now."""

    library: Library
    calendar: SchoolCalendar
    today: date
    now: datetime


async def _scope(s: AsyncSession, library_id: int, clock: Clock) -> _Scope:
    library = await s.get(Library, library_id)
    if library is None:
        raise NotFound()
    today = clock.today(library.timezone)
    return _Scope(library, await load_calendar(s, library, since=today), today, clock.now())


# -- the hold queue ----------------------------------------------------------------------------------

async def _allocate(s: AsyncSession, sc: _Scope, title_id: int, *, actor: Actor | None,
                    prefer_copy_id: int | None = None) -> list[Hold]:
    """Give AVAILABLE copies of the title to the first WAITING holds. The caller holds the title lock."""
    copies = list((await s.execute(
        select(Copy).where(Copy.library_id == sc.library.id, Copy.title_id == title_id,
                           Copy.status == CopyStatus.AVAILABLE).order_by(Copy.id)
    )).scalars())
    copies.sort(key=lambda c: (c.id != prefer_copy_id, c.id))
    if not copies:
        return []
    waiting = list((await s.execute(
        select(Hold, Patron).join(Patron, Patron.id == Hold.patron_id)
        .where(Hold.library_id == sc.library.id, Hold.title_id == title_id, Hold.status == HoldStatus.WAITING)
        .order_by(Hold.queued_at, Hold.id).limit(len(copies))
    )).all())
    title = await _title(s, title_id) if waiting else None
    made_ready = []
    for copy, (hold, patron) in zip(copies, waiting, strict=False):
        deadline = sc.calendar.add_school_days(sc.today, rules_for(sc.library, patron.role).pickup_days)
        await _cas_copy(s, copy, CopyStatus.ON_HOLD_SHELF)
        await _cas_hold(s, hold, HoldStatus.WAITING, status=HoldStatus.READY, copy_id=copy.id,
                        ready_at=sc.now, pickup_deadline=deadline)
        location = await s.get(Location, copy.location_id) if copy.location_id else None
        audit.record(s, "hold.ready", "hold", hold.id, actor_patron_id=actor.patron_id if actor else None,
                     library_id=sc.library.id, channel=actor.channel if actor else SYSTEM_CHANNEL,
                     patron_id=patron.id, copy_id=copy.id, pickup_deadline=deadline.isoformat())
        await outbox.enqueue(
            s, patron_id=patron.id, kind="hold_ready", key=f"hold_ready:{hold.id}", send_after=sc.now,
            payload={"hold_id": hold.id, "title_id": title_id, "title": title.title if title else "",
                     "copy_id": copy.id, "barcode": copy.barcode, "pickup_deadline": deadline.isoformat(),
                     "library_id": sc.library.id, "location": location.name if location else None},
        )
        made_ready.append(hold)
    return made_ready


async def _release(s: AsyncSession, sc: _Scope, copy: Copy, *, actor: Actor | None) -> list[Hold]:
    """A copy comes back to the shelf (returned, or its hold ended): the queue gets it first."""
    if copy.status != CopyStatus.AVAILABLE:
        await _cas_copy(s, copy, CopyStatus.AVAILABLE)
    return await _allocate(s, sc, copy.title_id, actor=actor, prefer_copy_id=copy.id)


def _owner_or_staff(actor: Actor, patron_id: int, library_id: int) -> bool:
    if actor.patron_id is not None and actor.patron_id == patron_id:
        return True
    return actor.is_staff and actor.library_id == library_id


# -- holds -------------------------------------------------------------------------------------------

async def place_hold(db: Database, actor: Actor, title_id: int, *, clock: Clock) -> HoldResult:
    """Reserve a title (any copy) in the actor's library. If a copy is on the shelf, it is set aside at once."""
    require_linked(actor)
    assert actor.patron_id is not None and actor.library_id is not None

    async def work(s: AsyncSession) -> HoldResult:
        patron = await _lock_patron(s, actor.patron_id)
        sc = await _scope(s, patron.library_id, clock)
        title = await _title(s, title_id)
        copies = await _lock_title(s, patron.library_id, title_id)
        if not any(c.status in LENDABLE for c in copies):
            raise DomainError("circulation.no_copies_here", title=title.title)
        existing = (await s.execute(select(Hold).where(
            Hold.patron_id == patron.id, Hold.title_id == title_id, Hold.status.in_(ACTIVE_HOLD)))).scalar_one_or_none()
        if existing is not None:
            if existing.status == HoldStatus.READY:
                raise DomainError("circulation.already_ready", title=title.title)
            raise DomainError("circulation.already_holding", title=title.title, position=await _position(s, existing))
        if await s.scalar(select(func.count()).select_from(Loan).where(
                Loan.patron_id == patron.id, Loan.returned_at.is_(None),
                Loan.copy_id.in_([c.id for c in copies]))):
            raise DomainError("circulation.already_borrowed", title=title.title)
        rules = rules_for(sc.library, patron.role)
        await _check_overdue_block(s, patron, rules, sc.today)
        active = await s.scalar(select(func.count()).select_from(Hold).where(
            Hold.patron_id == patron.id, Hold.status.in_(ACTIVE_HOLD)))
        if (active or 0) >= rules.max_holds:
            raise DomainError("circulation.hold_limit", limit=rules.max_holds)
        hold = Hold(library_id=patron.library_id, title_id=title_id, patron_id=patron.id,
                    status=HoldStatus.WAITING, queued_at=sc.now)
        try:
            async with s.begin_nested():
                s.add(hold)
                await s.flush()
        except IntegrityError:
            raise DomainError("circulation.already_holding", title=title.title, position=1) from None
        audit.record(s, "hold.place", "hold", hold.id, actor_patron_id=actor.patron_id,
                     library_id=patron.library_id, channel=actor.channel, title_id=title_id)
        await _allocate(s, sc, title_id, actor=actor)
        await s.refresh(hold)
        barcode = None
        if hold.copy_id:
            barcode = (await s.get(Copy, hold.copy_id)).barcode
        return HoldResult(hold.id, title_id, title.title, hold.status, await _position(s, hold),
                          hold.pickup_deadline, barcode)

    return await run_tx(db, work)


async def cancel_hold(db: Database, actor: Actor, hold_id: int, *, clock: Clock) -> CancelResult:
    """Cancel one's own hold (or, for staff, any hold in their library). A set-aside copy passes on."""
    require_linked(actor)

    async def work(s: AsyncSession) -> CancelResult:
        return await _cancel_active_hold(
            s, actor, hold_id, clock, allowed=lambda h: _owner_or_staff(actor, h.patron_id, h.library_id))

    return await run_tx(db, work)


async def _cancel_active_hold(s: AsyncSession, actor: Actor, hold_id: int, clock: Clock, *,
                              allowed: Callable[[Hold], bool],
                              on_cancelled: Callable[[AsyncSession, _Scope, Hold, Title], Awaitable[None]]
                              | None = None, by_staff: bool = False, reason: str | None = None) -> CancelResult:
    """One in-transaction cancel, shared by readers and staff: lock the title, close the hold,
    audit it (noting the reader and reason when staff act for them), run the caller's extra step,
    then pass a set-aside copy to the next reader."""
    hold = await s.get(Hold, hold_id)
    if hold is None or not allowed(hold):
        raise NotFound("circulation.hold_not_found")
    sc = await _scope(s, hold.library_id, clock)
    await _lock_title(s, hold.library_id, hold.title_id)
    await s.refresh(hold)
    title = await _title(s, hold.title_id)
    if hold.status not in ACTIVE_HOLD:
        raise DomainError("circulation.hold_not_active", title=title.title)
    was_ready = hold.status == HoldStatus.READY
    copy_id = hold.copy_id
    await _cas_hold(s, hold, hold.status, status=HoldStatus.CANCELLED, closed_at=sc.now)
    on_behalf = {"patron_id": hold.patron_id, "by_staff": True, "reason": reason} if by_staff else {}
    audit.record(s, "hold.cancel", "hold", hold.id, actor_patron_id=actor.patron_id,
                 library_id=hold.library_id, channel=actor.channel, was_ready=was_ready, **on_behalf)
    if on_cancelled is not None:
        await on_cancelled(s, sc, hold, title)
    if was_ready and copy_id:
        copy = await s.get(Copy, copy_id)
        if copy is not None and copy.status == CopyStatus.ON_HOLD_SHELF:
            await _release(s, sc, copy, actor=actor)
    return CancelResult(hold.id, title.title, was_ready)


async def my_holds(db: Database, actor: Actor) -> list[HoldView]:
    """The actor's own active holds, with queue positions. Nobody else's."""
    require_linked(actor)
    async with db.session() as s:
        return await _active_hold_views(s, actor.patron_id)


async def _active_holds(s: AsyncSession, patron_id: int) -> list[tuple[Hold, str, str | None]]:
    """A patron's active holds, oldest first: (hold, title, barcode of the set-aside copy or None)."""
    return [tuple(row) for row in (await s.execute(
        select(Hold, Title.title, Copy.barcode).join(Title, Title.id == Hold.title_id)
        .outerjoin(Copy, Copy.id == Hold.copy_id)
        .where(Hold.patron_id == patron_id, Hold.status.in_(ACTIVE_HOLD))
        .order_by(Hold.queued_at, Hold.id)
    )).all()]


async def _active_hold_views(s: AsyncSession, patron_id: int) -> list[HoldView]:
    """A patron's active holds with queue positions."""
    return [HoldView(h.id, h.title_id, title, h.status, await _position(s, h), aware(h.queued_at),
                     h.pickup_deadline, barcode) for h, title, barcode in await _active_holds(s, patron_id)]


async def expire_holds(db: Database, *, clock: Clock, library_id: int | None = None) -> ExpireReport:
    """READY holds whose pickup deadline has passed expire; each copy goes to the next in the queue."""
    async with db.session() as s:
        query = (select(Hold.id, Hold.pickup_deadline, Library.timezone)
                 .join(Library, Library.id == Hold.library_id).where(Hold.status == HoldStatus.READY))
        if library_id is not None:
            query = query.where(Hold.library_id == library_id)
        due = [hid for hid, deadline, tz in (await s.execute(query)).all()
               if deadline is not None and deadline < clock.today(tz)]
    expired: list[int] = []
    passed: list[int] = []
    for hold_id in due:
        async def work(s: AsyncSession, hold_id: int = hold_id) -> list[Hold] | None:
            hold = await s.get(Hold, hold_id)
            if hold is None:
                return None
            sc = await _scope(s, hold.library_id, clock)
            await _lock_title(s, hold.library_id, hold.title_id)
            await s.refresh(hold)
            if hold.status != HoldStatus.READY or hold.pickup_deadline is None or hold.pickup_deadline >= sc.today:
                return None
            copy_id = hold.copy_id
            await _cas_hold(s, hold, HoldStatus.READY, status=HoldStatus.EXPIRED, closed_at=sc.now)
            title = await _title(s, hold.title_id)
            audit.record(s, "hold.expire", "hold", hold.id, library_id=hold.library_id, channel=SYSTEM_CHANNEL,
                         patron_id=hold.patron_id, copy_id=copy_id)
            await outbox.enqueue(
                s, patron_id=hold.patron_id, kind="hold_expired", key=f"hold_expired:{hold.id}",
                send_after=sc.now, payload={"hold_id": hold.id, "title_id": hold.title_id, "title": title.title,
                                            "library_id": hold.library_id})
            ready: list[Hold] = []
            copy = await s.get(Copy, copy_id) if copy_id else None
            if copy is not None and copy.status == CopyStatus.ON_HOLD_SHELF:
                ready = await _release(s, sc, copy, actor=None)
            return ready

        result = await run_tx(db, work)
        if result is not None:
            expired.append(hold_id)
            passed.extend(h.id for h in result)
    return ExpireReport(expired, passed)


# -- loans -------------------------------------------------------------------------------------------

async def check_out(db: Database, actor: Actor, copy_ref: int | str, patron_ref: int | str, *,
                    clock: Clock, within: Within | None = None) -> CheckoutResult:
    """Lend a copy to a patron of the staff member's library. Fulfils that patron's hold on the title."""
    require_staff(actor)

    async def work(s: AsyncSession) -> CheckoutResult:
        copy = await _find_copy(s, actor.library_id, copy_ref)
        patron = await _find_patron(s, actor.library_id, patron_ref)
        patron = await _lock_patron(s, patron.id)
        sc = await _scope(s, copy.library_id, clock)
        await _lock_title(s, copy.library_id, copy.title_id)
        await s.refresh(copy)
        title = await _title(s, copy.title_id)
        if copy.status == CopyStatus.ON_LOAN:
            loan = (await s.execute(select(Loan).where(Loan.copy_id == copy.id, Loan.returned_at.is_(None)))
                    ).scalar_one_or_none()
            if loan is not None and loan.patron_id == patron.id:
                raise DomainError("circulation.already_lent_to_patron", title=title.title, barcode=copy.barcode,
                                  due=loan.due_date)
            raise DomainError("circulation.copy_on_loan", title=title.title, barcode=copy.barcode)
        if copy.status not in (CopyStatus.AVAILABLE, CopyStatus.ON_HOLD_SHELF):
            raise DomainError("circulation.copy_unavailable", barcode=copy.barcode, status=copy.status.value)
        if copy.status == CopyStatus.ON_HOLD_SHELF:
            other = (await s.execute(
                select(Hold, Patron.card_number).join(Patron, Patron.id == Hold.patron_id)
                .where(Hold.copy_id == copy.id, Hold.status == HoldStatus.READY))).first()
            if other is not None and other[0].patron_id != patron.id:
                raise DomainError("circulation.copy_held_for_other", barcode=copy.barcode, card=other[1])
        rules = rules_for(sc.library, patron.role)
        open_loans = int(await s.scalar(select(func.count()).select_from(Loan).where(
            Loan.patron_id == patron.id, Loan.returned_at.is_(None))) or 0)
        if open_loans >= rules.max_loans:
            raise DomainError("circulation.loan_limit", name=patron.full_name, limit=rules.max_loans)
        await _check_overdue_block(s, patron, rules, sc.today)
        own_hold = (await s.execute(select(Hold).where(
            Hold.patron_id == patron.id, Hold.title_id == copy.title_id, Hold.library_id == copy.library_id,
            Hold.status.in_(ACTIVE_HOLD)))).scalar_one_or_none()
        due = sc.calendar.due_date(sc.today, rules.loan_days)
        await _cas_copy(s, copy, CopyStatus.ON_LOAN)
        loan = Loan(library_id=copy.library_id, copy_id=copy.id, patron_id=patron.id, checked_out_at=sc.now,
                    due_date=due, renewals=0, checked_out_by=actor.patron_id)
        try:
            async with s.begin_nested():
                s.add(loan)
                await s.flush()
        except IntegrityError:
            raise _Conflict() from None
        audit.record(s, "loan.checkout", "loan", loan.id, actor_patron_id=actor.patron_id,
                     library_id=copy.library_id, channel=actor.channel, copy_id=copy.id, patron_id=patron.id,
                     due_date=due.isoformat())
        fulfilled = None
        if own_hold is not None:
            freed_copy_id = own_hold.copy_id if own_hold.copy_id != copy.id else None
            await _cas_hold(s, own_hold, own_hold.status, status=HoldStatus.FULFILLED, closed_at=sc.now)
            fulfilled = own_hold.id
            audit.record(s, "hold.fulfil", "hold", own_hold.id, actor_patron_id=actor.patron_id,
                         library_id=copy.library_id, channel=actor.channel, loan_id=loan.id)
            if freed_copy_id is not None:  # they took another copy than the one set aside for them
                freed = await s.get(Copy, freed_copy_id)
                if freed is not None and freed.status == CopyStatus.ON_HOLD_SHELF:
                    await _release(s, sc, freed, actor=actor)
        result = CheckoutResult(loan.id, copy.id, copy.barcode, title.title, patron.id, patron.full_name,
                                patron.card_number, due, fulfilled, open_loans + 1, rules.max_loans)
        if within is not None:
            await within(s, result)
        return result

    return await run_tx(db, work)


async def check_in(db: Database, actor: Actor, copy_ref: int | str, *, clock: Clock,
                   within: Within | None = None) -> CheckinResult:
    """Take a copy back. If someone is waiting for the title, the copy is set aside for them."""
    require_staff(actor)

    async def work(s: AsyncSession) -> CheckinResult:
        copy = await _find_copy(s, actor.library_id, copy_ref)
        sc = await _scope(s, copy.library_id, clock)
        await _lock_title(s, copy.library_id, copy.title_id)
        await s.refresh(copy)
        title = await _title(s, copy.title_id)
        row = (await s.execute(
            select(Loan, Patron).join(Patron, Patron.id == Loan.patron_id)
            .where(Loan.copy_id == copy.id, Loan.returned_at.is_(None))
            .execution_options(populate_existing=True))).first()
        if row is None:
            raise DomainError("circulation.not_on_loan", title=title.title, barcode=copy.barcode)
        loan, patron = row
        result = await s.execute(
            update(Loan).where(Loan.id == loan.id, Loan.returned_at.is_(None))
            .values(returned_at=sc.now, returned_by=actor.patron_id).execution_options(synchronize_session=False))
        if result.rowcount != 1:
            raise _Conflict()
        overdue = max(0, (sc.today - loan.due_date).days)
        audit.record(s, "loan.return", "loan", loan.id, actor_patron_id=actor.patron_id,
                     library_id=copy.library_id, channel=actor.channel, copy_id=copy.id, patron_id=patron.id,
                     overdue_days=overdue or None)
        ready = await _release(s, sc, copy, actor=actor)
        mine = next((h for h in ready if h.copy_id == copy.id), None)
        if mine is None:
            result = CheckinResult(loan.id, copy.id, copy.barcode, title.title, patron.full_name,
                                   patron.card_number, overdue)
        else:
            holder = await s.get(Patron, mine.patron_id)
            result = CheckinResult(loan.id, copy.id, copy.barcode, title.title, patron.full_name,
                                   patron.card_number, overdue, mine.id, holder.full_name, holder.card_number,
                                   mine.pickup_deadline)
        if within is not None:
            await within(s, result)
        return result

    return await run_tx(db, work)


async def renew_loan(db: Database, actor: Actor, loan_id: int, *, clock: Clock,
                     expected_renewals: int | None = None, within: Within | None = None) -> RenewResult:
    """Extend a loan by the loan period (from the later of today and the due date).

    Refused when someone is waiting for the title, the renewal limit is reached or the loan is
    too overdue. ``expected_renewals`` (from the button that was pressed) makes a double tap a no-op.
    Staff (and kiosks, which act as staff of their library) need no linked card of their own.
    """
    if not actor.is_staff:
        require_linked(actor)

    async def work(s: AsyncSession) -> RenewResult:
        loan = await s.get(Loan, loan_id)
        if loan is None or not _owner_or_staff(actor, loan.patron_id, loan.library_id):
            raise NotFound("circulation.loan_not_found")
        copy = await s.get(Copy, loan.copy_id)
        sc = await _scope(s, loan.library_id, clock)
        await _lock_title(s, loan.library_id, copy.title_id)
        await s.refresh(loan)
        title = await _title(s, copy.title_id)
        if loan.returned_at is not None:
            raise DomainError("circulation.already_returned", title=title.title)
        if expected_renewals is not None and loan.renewals != expected_renewals:
            raise DomainError("circulation.already_renewed", title=title.title, due=loan.due_date)
        patron = await s.get(Patron, loan.patron_id)
        rules = rules_for(sc.library, patron.role)
        waiting = await s.scalar(select(func.count()).select_from(Hold).where(
            Hold.library_id == loan.library_id, Hold.title_id == copy.title_id, Hold.status == HoldStatus.WAITING))
        if waiting:
            raise DomainError("circulation.renew_holds_waiting", title=title.title, count=waiting)
        if loan.renewals >= rules.max_renewals:
            raise DomainError("circulation.renew_limit", title=title.title, limit=rules.max_renewals)
        overdue = (sc.today - loan.due_date).days
        if overdue > rules.block_overdue_days:
            raise DomainError("circulation.renew_too_overdue", title=title.title, days=overdue)
        due = sc.calendar.due_date(max(sc.today, loan.due_date), rules.loan_days)
        result = await s.execute(
            update(Loan).where(Loan.id == loan.id, Loan.renewals == loan.renewals, Loan.returned_at.is_(None))
            .values(due_date=due, renewals=loan.renewals + 1).execution_options(synchronize_session=False))
        if result.rowcount != 1:
            raise _Conflict()
        audit.record(s, "loan.renew", "loan", loan.id, actor_patron_id=actor.patron_id,
                     library_id=loan.library_id, channel=actor.channel, due_date=due.isoformat(),
                     previous_due=loan.due_date.isoformat())
        result = RenewResult(loan.id, title.title, due, loan.renewals + 1,
                             max(0, rules.max_renewals - loan.renewals - 1))
        if within is not None:
            await within(s, result)
        return result

    return await run_tx(db, work)


async def _loan_views(s: AsyncSession, where, today: date, library: Library | None) -> list[LoanView]:
    rows = (await s.execute(
        select(Loan, Copy, Title.title, Patron, Library)
        .join(Copy, Copy.id == Loan.copy_id).join(Title, Title.id == Copy.title_id)
        .join(Patron, Patron.id == Loan.patron_id).join(Library, Library.id == Loan.library_id)
        .where(where, Loan.returned_at.is_(None)).order_by(Loan.due_date, Loan.id)
    )).all()
    views = []
    for loan, copy, title, patron, lib in rows:
        rules = rules_for(lib, patron.role)
        views.append(LoanView(loan.id, copy.id, copy.barcode, copy.title_id, title, loan.due_date, loan.renewals,
                              max(0, rules.max_renewals - loan.renewals), max(0, (today - loan.due_date).days),
                              patron.full_name, patron.card_number))
    return views


async def my_loans(db: Database, actor: Actor, *, clock: Clock) -> list[LoanView]:
    """The actor's own open loans, soonest due first."""
    require_linked(actor)
    async with db.session() as s:
        library = await s.get(Library, actor.library_id)
        return await _loan_views(s, Loan.patron_id == actor.patron_id, clock.today(library.timezone), library)


async def loan_for_copy(db: Database, actor: Actor, copy_ref: int | str, *, clock: Clock) -> LoanView:
    """The open loan of a copy in the staff member's library (for renewing by barcode)."""
    require_staff(actor)
    async with db.session() as s:
        copy = await _find_copy(s, actor.library_id, copy_ref)
        library = await s.get(Library, actor.library_id)
        views = await _loan_views(s, Loan.copy_id == copy.id, clock.today(library.timezone), library)
        if not views:
            title = await _title(s, copy.title_id)
            raise DomainError("circulation.not_on_loan", title=title.title, barcode=copy.barcode)
        return views[0]


async def _history(s: AsyncSession, where, limit: int) -> list[HistoryEntry]:
    rows = (await s.execute(
        select(Loan, Copy.barcode, Title.title, Patron.full_name, Patron.card_number)
        .join(Copy, Copy.id == Loan.copy_id).join(Title, Title.id == Copy.title_id)
        .join(Patron, Patron.id == Loan.patron_id)
        .where(where).order_by(Loan.checked_out_at.desc(), Loan.id.desc()).limit(limit)
    )).all()
    return [HistoryEntry(loan.id, title, barcode, name, card, aware(loan.checked_out_at), loan.due_date,
                         aware(loan.returned_at), loan.renewals) for loan, barcode, title, name, card in rows]


async def patron_history(db: Database, actor: Actor, patron_ref: int | str | None = None,
                         limit: int = 30) -> tuple[str, list[HistoryEntry]]:
    """(patron name, loans newest first). Own history for anyone linked; others' for staff only."""
    require_linked(actor)
    async with db.session() as s:
        if patron_ref is None:
            patron = await s.get(Patron, actor.patron_id)
        else:
            require_staff(actor)
            patron = await _find_patron(s, actor.library_id, patron_ref)
        return patron.full_name, await _history(s, Loan.patron_id == patron.id, limit)


async def copy_history(db: Database, actor: Actor, copy_ref: int | str, limit: int = 30
                       ) -> tuple[CopyView, list[HistoryEntry]]:
    require_staff(actor)
    view = await find_copy(db, actor, copy_ref)
    async with db.session() as s:
        return view, await _history(s, Loan.copy_id == view.copy_id, limit)


async def find_copy(db: Database, actor: Actor, copy_ref: int | str) -> CopyView:
    """A copy of the staff member's library, with its state (who it is set aside for, due date)."""
    require_staff(actor)
    async with db.session() as s:
        copy = await _find_copy(s, actor.library_id, copy_ref)
        title = await _title(s, copy.title_id)
        location = await s.get(Location, copy.location_id) if copy.location_id else None
        due = await s.scalar(select(Loan.due_date).where(Loan.copy_id == copy.id, Loan.returned_at.is_(None)))
        held_for = await s.scalar(select(Patron.card_number).join(Hold, Hold.patron_id == Patron.id).where(
            Hold.copy_id == copy.id, Hold.status == HoldStatus.READY))
        return CopyView(copy.id, copy.barcode, copy.title_id, title.title, copy.status,
                        location.name if location else None, due, held_for)


async def title_availability(db: Database, actor: Actor, title_id: int) -> Availability:
    """Copies of a title in the actor's library, and the actor's own hold or loan on it."""
    if actor.library_id is None:
        return Availability(0, 0, 0)
    async with db.session() as s:
        statuses = list((await s.execute(select(Copy.status, Copy.id).where(
            Copy.library_id == actor.library_id, Copy.title_id == title_id))).all())
        waiting = int(await s.scalar(select(func.count()).select_from(Hold).where(
            Hold.library_id == actor.library_id, Hold.title_id == title_id, Hold.status == HoldStatus.WAITING)) or 0)
        hold = (await s.execute(select(Hold).where(
            Hold.patron_id == actor.patron_id, Hold.title_id == title_id, Hold.status.in_(ACTIVE_HOLD)))
        ).scalar_one_or_none()
        my_loan = bool(statuses) and bool(await s.scalar(select(func.count()).select_from(Loan).where(
            Loan.patron_id == actor.patron_id, Loan.returned_at.is_(None),
            Loan.copy_id.in_([cid for _, cid in statuses]))))
        return Availability(
            copies=sum(1 for st, _ in statuses if st in LENDABLE),
            available=sum(1 for st, _ in statuses if st == CopyStatus.AVAILABLE),
            waiting=waiting,
            my_hold_id=hold.id if hold else None,
            my_hold_status=hold.status if hold else None,
            my_position=await _position(s, hold) if hold else None,
            my_loan=my_loan,
        )


# -- staff work: a copy's condition, holds on a reader's behalf, the overdue list -------------------

# What staff may set by hand. Lending states (on loan, on the hold shelf) only change through
# check-out, check-in and holds, so the queue and the loans always agree with the copy.
STAFF_STATUSES = (CopyStatus.AVAILABLE, CopyStatus.IN_REPAIR, CopyStatus.DAMAGED, CopyStatus.LOST,
                  CopyStatus.WITHDRAWN)


@dataclass(frozen=True)
class CopyStatusResult:
    copy_id: int
    barcode: str
    title_id: int
    title: str
    previous: CopyStatus
    status: CopyStatus
    changed: bool
    # Marked lost while on loan: that loan is closed (the reader no longer has it on their card).
    closed_loan_id: int | None = None
    loan_patron_name: str | None = None
    loan_card_number: str | None = None
    # It was set aside for a hold: that reader is back at the head of the queue (or got another copy).
    requeued_hold_id: int | None = None
    # Back on the shelf and someone was waiting: now set aside for them.
    held_for_hold_id: int | None = None
    held_for_name: str | None = None
    held_for_card: str | None = None
    pickup_deadline: date | None = None


async def set_copy_status(db: Database, actor: Actor, copy_ref: int | str, status: CopyStatus | str, *,
                          clock: Clock, note: str | None = None) -> CopyStatusResult:
    """Mark a copy of the staff member's library lost, damaged, in repair or withdrawn, or put it
    back on the shelf (``available``). Staff only.

    A copy on loan may only be marked lost (the loan is closed and the audit log keeps who had it);
    for the other states it must be checked in first. A copy set aside for a hold gives the hold
    back to the head of the queue, which takes another copy on the shelf if there is one. A copy
    coming back goes to the first reader waiting for the title, as a returned copy does.
    """
    require_staff(actor)
    try:
        target = CopyStatus(status)
    except ValueError:
        raise DomainError("circulation.status_unknown", status=str(status)[:24]) from None
    if target not in STAFF_STATUSES:
        raise DomainError("circulation.status_not_settable", status=target.value)
    note = " ".join((note or "").split())[:300] or None

    async def work(s: AsyncSession) -> CopyStatusResult:
        copy = await _find_copy(s, actor.library_id, copy_ref)
        sc = await _scope(s, copy.library_id, clock)
        await _lock_title(s, copy.library_id, copy.title_id)
        await s.refresh(copy)
        title = await _title(s, copy.title_id)
        previous = copy.status
        if previous == target:
            return CopyStatusResult(copy.id, copy.barcode, copy.title_id, title.title, previous, target, False)
        closed_loan = requeued = None
        loan_patron: Patron | None = None
        if previous == CopyStatus.ON_LOAN:
            if target != CopyStatus.LOST:
                raise DomainError("circulation.status_on_loan", title=title.title, barcode=copy.barcode)
            row = (await s.execute(
                select(Loan, Patron).join(Patron, Patron.id == Loan.patron_id)
                .where(Loan.copy_id == copy.id, Loan.returned_at.is_(None))
                .execution_options(populate_existing=True))).first()
            if row is not None:
                loan, loan_patron = row
                result = await s.execute(
                    update(Loan).where(Loan.id == loan.id, Loan.returned_at.is_(None))
                    .values(returned_at=sc.now, returned_by=actor.patron_id)
                    .execution_options(synchronize_session=False))
                if result.rowcount != 1:
                    raise _Conflict()
                closed_loan = loan.id
                audit.record(s, "loan.lost", "loan", loan.id, actor_patron_id=actor.patron_id,
                             library_id=copy.library_id, channel=actor.channel, copy_id=copy.id,
                             patron_id=loan_patron.id, due_date=loan.due_date.isoformat(), note=note)
        elif previous == CopyStatus.ON_HOLD_SHELF and target != CopyStatus.AVAILABLE:
            hold = (await s.execute(select(Hold).where(
                Hold.copy_id == copy.id, Hold.status == HoldStatus.READY))).scalar_one_or_none()
            if hold is not None:
                # Back to waiting, keeping its place (queued_at) at the head of the queue.
                await _cas_hold(s, hold, HoldStatus.READY, status=HoldStatus.WAITING, copy_id=None,
                                ready_at=None, pickup_deadline=None)
                requeued = hold.id
                audit.record(s, "hold.requeue", "hold", hold.id, actor_patron_id=actor.patron_id,
                             library_id=copy.library_id, channel=actor.channel, copy_id=copy.id,
                             reason=target.value)
        ready: list[Hold] = []
        if target == CopyStatus.AVAILABLE:
            if previous == CopyStatus.ON_HOLD_SHELF:
                # Putting a set-aside copy "back" would steal it from the reader it waits for.
                raise DomainError("circulation.status_on_hold_shelf", title=title.title, barcode=copy.barcode)
            ready = await _release(s, sc, copy, actor=actor)
        else:
            await _cas_copy(s, copy, target)
        if requeued is not None:
            ready += await _allocate(s, sc, copy.title_id, actor=actor)
        audit.record(s, "copy.status", "copy", copy.id, actor_patron_id=actor.patron_id,
                     library_id=copy.library_id, channel=actor.channel, previous=previous.value,
                     status=target.value, note=note)
        mine = next((h for h in ready if h.copy_id == copy.id), None)
        holder = await s.get(Patron, mine.patron_id) if mine is not None else None
        return CopyStatusResult(
            copy.id, copy.barcode, copy.title_id, title.title, previous, target, True,
            closed_loan_id=closed_loan,
            loan_patron_name=loan_patron.full_name if loan_patron else None,
            loan_card_number=loan_patron.card_number if loan_patron else None,
            requeued_hold_id=requeued,
            held_for_hold_id=mine.id if mine else None,
            held_for_name=holder.full_name if holder else None,
            held_for_card=holder.card_number if holder else None,
            pickup_deadline=mine.pickup_deadline if mine else None,
        )

    return await run_tx(db, work)


async def give_to_queue(s: AsyncSession, actor: Actor, library_id: int, title_id: int, *,
                        clock: Clock) -> dict[int, Patron]:
    """Inside the caller's transaction: copies just put on the shelf (e.g. a librarian added them)
    go to the readers waiting for the title first. Returns {copy id: the reader it is set aside for}."""
    sc = await _scope(s, library_id, clock)
    await _lock_title(s, library_id, title_id)
    ready = await _allocate(s, sc, title_id, actor=actor)
    return {h.copy_id: await s.get(Patron, h.patron_id) for h in ready if h.copy_id is not None}


@dataclass(frozen=True)
class ReaderHolds:
    patron_id: int
    full_name: str
    card_number: str
    class_name: str | None
    holds: list[HoldView]


async def reader_holds(db: Database, actor: Actor, patron_ref: int | str) -> ReaderHolds:
    """A reader's active holds, for staff of the reader's library (to cancel one on their behalf)."""
    require_staff(actor)
    async with db.session() as s:
        patron = await _find_patron(s, actor.library_id, patron_ref)
        holds = await _active_hold_views(s, patron.id)
        return ReaderHolds(patron.id, patron.full_name, patron.card_number, patron.class_name, holds)


async def staff_cancel_hold(db: Database, actor: Actor, hold_id: int, *, clock: Clock,
                            reason: str | None = None) -> CancelResult:
    """Cancel a reader's hold on their behalf (staff of that library). The reader is told, with
    the reason when one is given; a set-aside copy passes to the next reader."""
    require_staff(actor)
    reason = " ".join((reason or "").split())[:300] or None

    async def tell_reader(s: AsyncSession, sc: _Scope, hold: Hold, title: Title) -> None:
        if hold.patron_id != actor.patron_id:
            await outbox.enqueue(
                s, patron_id=hold.patron_id, kind="hold_cancelled", key=f"hold_cancelled:{hold.id}",
                send_after=sc.now, payload={"hold_id": hold.id, "title_id": hold.title_id, "title": title.title,
                                            "library_id": hold.library_id, "reason": reason})

    async def work(s: AsyncSession) -> CancelResult:
        return await _cancel_active_hold(
            s, actor, hold_id, clock, allowed=lambda h: h.library_id == actor.library_id,
            on_cancelled=tell_reader, by_staff=True, reason=reason)

    return await run_tx(db, work)


@dataclass(frozen=True)
class OverdueLine:
    loan_id: int
    patron_id: int
    full_name: str
    card_number: str
    class_name: str | None
    role: str
    title_id: int
    title: str
    barcode: str
    due_date: date
    days_overdue: int


@dataclass(frozen=True)
class OverdueList:
    """Open loans past their due date on ``today`` (school time), by class, most overdue first;
    teachers' and staff's own loans last, with no class (``class_name`` None)."""

    today: date
    class_name: str | None
    lines: list[OverdueLine]

    def by_class(self) -> list[tuple[str | None, list[OverdueLine]]]:
        groups: dict[str | None, list[OverdueLine]] = {}
        for line in self.lines:
            groups.setdefault(line.class_name, []).append(line)
        return list(groups.items())


def _class_key(name: str | None) -> str:
    return " ".join((name or "").split()).upper()


async def overdue_list(db: Database, actor: Actor, *, clock: Clock, class_name: str | None = None,
                       limit: int = 2000) -> OverdueList:
    """Today's overdue loans of the actor's library, optionally of one class (``10a1`` = ``10A1``).

    Librarians and admins see the whole library; a teacher sees their own class only (the
    class on their card); students see nobody's (their own loans are in /loans).
    """
    if actor.role == Role.TEACHER and actor.library_id is not None:
        own = _class_key(actor.class_name)
        if not own or (class_name and _class_key(class_name) != own):
            raise PermissionDenied()
        class_name = actor.class_name
    else:
        require_staff(actor)
    wanted = _class_key(class_name) or None
    async with db.session() as s:
        library = await s.get(Library, actor.library_id)
        if library is None:
            raise NotFound()
        today = clock.today(library.timezone)
        query = (select(Loan.id, Patron.id, Patron.full_name, Patron.card_number, Patron.class_name, Patron.role,
                        Copy.title_id, Title.title, Copy.barcode, Loan.due_date)
                 .join(Patron, Patron.id == Loan.patron_id).join(Copy, Copy.id == Loan.copy_id)
                 .join(Title, Title.id == Copy.title_id)
                 .where(Loan.library_id == library.id, Loan.returned_at.is_(None), Loan.due_date < today)
                 .order_by(Loan.due_date, Loan.id).limit(limit))
        if wanted:  # a class is its students (a teacher's class on the card is the class they lead)
            query = query.where(func.upper(Patron.class_name) == wanted, Patron.role == Role.STUDENT)
        rows = (await s.execute(query)).all()
    lines = [OverdueLine(loan_id, pid, name, card, cls if Role(role) == Role.STUDENT else None, Role(role).value,
                         tid, title, barcode, due, (today - due).days)
             for loan_id, pid, name, card, cls, role, tid, title, barcode, due in rows]
    # Classes in order, then teachers and staff (no class); most overdue first, then by name.
    lines.sort(key=lambda line: (line.class_name is None, _class_key(line.class_name), line.due_date,
                                 line.full_name, line.loan_id))
    return OverdueList(today, class_name if wanted else None, lines)

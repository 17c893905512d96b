"""Reminders: what to say and when. ``plan`` reads loans and holds and enqueues the notices that
are due by now; the outbox (``services/outbox.py``) makes each go out once.

Each sweep:

1. ``plan`` inserts the notices that are due by now, each with a unique key
   (``due_soon:loan=12:2026-12-03``), so planning twice inserts nothing. A renewed loan has a new
   due date and therefore new keys; the old ones are skipped as stale when they come up
   (``stale`` re-checks every notice against the current loan/hold before sending).
2. ``defer_quiet`` pushes pending notices of libraries in quiet hours to the next morning.
3. The outbox claims, attempts and records outcomes.

Every reminder has a natural follow-up (due soon → due today → overdue day 1, 7, 14; pickup
tomorrow after hold ready), which is why an uncertain send is never repeated automatically.

Payload contract for notices other features enqueue (renderers read these keys):
``hold_ready`` / ``hold_expired``: ``hold_id`` (required), ``title`` and ``pickup_deadline``
(ISO date) are filled in from the hold when missing. ``reflection_*``: free-form, rendered by the
feature that owns the kind.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import exists, select, update

from services import audit
from services.common import Clock, DomainError
from services.db import Database, insert_for
from services.models import (
    ChatIdentity,
    Copy,
    Hold,
    HoldStatus,
    Library,
    Loan,
    Notification,
    NotificationStatus,
    Patron,
    Role,
    Title,
)
from services.outbox import Claimed
from services.patrons import Actor, require_linked
from services.rules import SchoolCalendar, load_calendar, rules_for

log = logging.getLogger(__name__)

LOAN_KINDS = ("due_soon", "due_today", "overdue")
HOLD_KINDS = ("pickup_tomorrow",)
EVENT_KINDS = ("hold_ready", "hold_expired")
CLASS_KIND = "class_overdue"
DIGEST_KIND = "digest"
# Notices of these kinds for one patron in one sweep become a single message.
DIGESTIBLE = frozenset(LOAN_KINDS + HOLD_KINDS)
# Kinds a patron may switch off (on by default) and kinds a teacher may switch on (off by default).
OPT_OUT_KINDS = LOAN_KINDS + HOLD_KINDS + EVENT_KINDS
OPT_IN_KINDS = (CLASS_KIND,)

CHUNK = 500


# -- rules --------------------------------------------------------------------------------------

def _hhmm(value: Any, default: time) -> time:
    try:
        hours, minutes = str(value).split(":")
        return time(int(hours), int(minutes))
    except (ValueError, TypeError):
        return default


@dataclass(frozen=True)
class Rules:
    """A library's reminder settings (``Library.settings["reminders"]``) with the defaults."""

    timezone: str = "Asia/Ho_Chi_Minh"
    before_days: int = 2
    overdue_days: tuple[int, ...] = (1, 7, 14)
    quiet_start: time = time(20, 0)
    quiet_end: time = time(7, 0)
    class_digest_weekday: int = 0   # Monday

    @classmethod
    def of(cls, library: Library) -> Rules:
        cfg = (library.settings or {}).get("reminders") or {}
        quiet = cfg.get("quiet_hours") or ["20:00", "07:00"]
        return cls(
            timezone=library.timezone or "Asia/Ho_Chi_Minh",
            before_days=max(0, int(cfg.get("before_days", 2))),
            overdue_days=tuple(sorted({int(d) for d in cfg.get("overdue_days", (1, 7, 14)) if int(d) > 0})),
            quiet_start=_hhmm(quiet[0], time(20, 0)),
            quiet_end=_hhmm(quiet[1], time(7, 0)),
            class_digest_weekday=int(cfg.get("class_digest_weekday", 0)) % 7,
        )

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def is_quiet(self, now: datetime) -> bool:
        local = now.astimezone(self.zone).time()
        start, end = self.quiet_start, self.quiet_end
        if start == end:
            return False
        if start > end:                       # overnight, e.g. 20:00–07:00
            return local >= start or local < end
        return start <= local < end

    def morning(self, now: datetime) -> datetime:
        """When quiet hours next end (UTC): today's if still ahead, else tomorrow's."""
        local = now.astimezone(self.zone)
        candidate = datetime.combine(local.date(), self.quiet_end, tzinfo=self.zone)
        if candidate <= local:
            candidate = datetime.combine(local.date() + timedelta(days=1), self.quiet_end, tzinfo=self.zone)
        return candidate.astimezone(UTC)

    def start_of_day(self, day: date) -> datetime:
        """The first moment reminders may go out on ``day`` (end of the night's quiet hours)."""
        return datetime.combine(day, self.quiet_end, tzinfo=self.zone).astimezone(UTC)



def last_open_day_before(calendar: SchoolCalendar, day: date) -> date:
    """Where "pickup deadline tomorrow" is said: the last open day before the deadline (Friday
    for a Monday deadline; before Tết for a deadline just after it)."""
    candidate = day - timedelta(days=1)
    for _ in range(60):
        if not calendar.is_closed(candidate):
            return candidate
        candidate -= timedelta(days=1)
    return day - timedelta(days=1)


# -- preferences ---------------------------------------------------------------------------------

def enabled(preferences: dict[str, Any] | None, kind: str) -> bool:
    """Whether a patron wants notices of ``kind`` (opt-out kinds on, opt-in kinds off by default)."""
    prefs = preferences or {}
    if kind in OPT_IN_KINDS:
        return kind in (prefs.get("opt_in") or [])
    return kind not in (prefs.get("opt_out") or [])


def allowed_kinds(role: Role | None) -> tuple[str, ...]:
    return OPT_OUT_KINDS + (OPT_IN_KINDS if role == Role.TEACHER else ())


async def preferences(db: Database, actor: Actor) -> dict[str, bool]:
    """Each kind this person may switch, and whether it is on."""
    require_linked(actor)
    async with db.session() as s:
        prefs = (await s.execute(select(Patron.preferences).where(Patron.id == actor.patron_id))).scalar_one()
    return {kind: enabled(prefs, kind) for kind in allowed_kinds(actor.role)}


async def quiet_hours(db: Database, actor: Actor) -> tuple[time, time]:
    """When the actor's library sends nothing (school time)."""
    require_linked(actor)
    async with db.session() as s:
        library = await s.get(Library, actor.library_id)
    rules = Rules.of(library) if library is not None else Rules()
    return rules.quiet_start, rules.quiet_end


async def set_enabled(db: Database, actor: Actor, kind: str, on: bool) -> bool:
    """Switch one kind on or off for the actor themselves. Returns the new state."""
    require_linked(actor)
    if kind not in allowed_kinds(actor.role):
        raise DomainError("reminders.unknown_kind", kind=kind[:32])
    async with db.transaction() as s:
        query = select(Patron).where(Patron.id == actor.patron_id)
        if db.is_postgres:
            query = query.with_for_update()
        patron = (await s.execute(query)).scalar_one()
        prefs = dict(patron.preferences or {})
        field_name = "opt_in" if kind in OPT_IN_KINDS else "opt_out"
        values = set(prefs.get(field_name) or [])
        wanted = on if field_name == "opt_in" else not on
        if wanted:
            values.add(kind)
        else:
            values.discard(kind)
        prefs[field_name] = sorted(values)
        patron.preferences = prefs
        audit.record(s, "reminders.set", "patron", patron.id, actor_patron_id=actor.patron_id,
                     library_id=patron.library_id, channel=actor.channel, kind=kind, on=on)
    return on


# -- planning ------------------------------------------------------------------------------------

@dataclass
class PlanResult:
    considered: int = 0
    inserted: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)   # the new notices (a dry run: would be)


def _loan_notice(rules: Rules, today: date, loan_id: int, due: date) -> tuple[str, str, dict[str, Any]] | None:
    days = (due - today).days
    if 0 < days <= rules.before_days:
        return "due_soon", f"due_soon:loan={loan_id}:{due}", {}
    if days == 0:
        return "due_today", f"due_today:loan={loan_id}:{due}", {}
    if days < 0:
        stages = [n for n in rules.overdue_days if -days >= n]
        if stages:
            # After downtime only the latest stage reached is said, not every missed one.
            stage = stages[-1]
            return "overdue", f"overdue:loan={loan_id}:{due}:{stage}", {"stage": stage}
    return None


async def plan(db: Database, clock: Clock, *, library_id: int | None = None,
               dry_run: bool = False) -> PlanResult:
    """Insert the notices due by now for every library (or one). Idempotent."""
    now = clock.now().astimezone(UTC)
    result = PlanResult()
    reachable = exists().where(ChatIdentity.patron_id == Patron.id, ChatIdentity.unreachable_at.is_(None))
    async with db.session() as s:
        query = select(Library)
        if library_id is not None:
            query = query.where(Library.id == library_id)
        libraries = list((await s.execute(query)).scalars())
        for library in libraries:
            rules = Rules.of(library)
            today = now.astimezone(rules.zone).date()
            send_after = rules.start_of_day(today)
            calendar = await load_calendar(s, library, since=today)
            role_rules: dict[Role, Any] = {}
            loans = await s.execute(
                select(Loan.id, Loan.patron_id, Loan.due_date, Loan.renewals, Title.id, Title.title,
                       Patron.preferences, Patron.role)
                .join(Patron, Patron.id == Loan.patron_id)
                .join(Copy, Copy.id == Loan.copy_id)
                .join(Title, Title.id == Copy.title_id)
                .where(Loan.library_id == library.id, Loan.returned_at.is_(None),
                       Loan.due_date <= today + timedelta(days=rules.before_days),
                       Patron.active.is_(True), reachable)
            )
            for loan_id, patron_id, due, renewals, title_id, title, prefs, role in loans:
                result.considered += 1
                found = _loan_notice(rules, today, loan_id, due)
                if found is None or not enabled(prefs, found[0]):
                    continue
                kind, key, extra = found
                loan_rules = role_rules.get(role) or role_rules.setdefault(role, rules_for(library, role))
                # Offer Renew only where circulation would allow it (holds waiting are checked on press).
                renewable = renewals < loan_rules.max_renewals and (today - due).days <= loan_rules.block_overdue_days
                result.rows.append(dict(
                    key=key, patron_id=patron_id, kind=kind, send_after=send_after,
                    payload={"loan_id": loan_id, "title_id": title_id, "title": title, "renewals": renewals,
                             "renewable": renewable, "due_date": due.isoformat(), **extra},
                ))
            holds = await s.execute(
                select(Hold.id, Hold.patron_id, Hold.pickup_deadline, Title.id, Title.title, Patron.preferences)
                .join(Patron, Patron.id == Hold.patron_id)
                .join(Title, Title.id == Hold.title_id)
                .where(Hold.library_id == library.id, Hold.status == HoldStatus.READY,
                       Hold.pickup_deadline.is_not(None), Hold.pickup_deadline > today,
                       Patron.active.is_(True), reachable)
            )
            for hold_id, patron_id, deadline, title_id, title, prefs in holds:
                result.considered += 1
                if not (last_open_day_before(calendar, deadline) <= today < deadline):
                    continue
                if not enabled(prefs, "pickup_tomorrow"):
                    continue
                result.rows.append(dict(
                    key=f"pickup_tomorrow:hold={hold_id}:{deadline}", patron_id=patron_id,
                    kind="pickup_tomorrow", send_after=send_after,
                    payload={"hold_id": hold_id, "title_id": title_id, "title": title,
                             "pickup_deadline": deadline.isoformat()},
                ))
            if today.weekday() >= rules.class_digest_weekday:
                result.rows += await _plan_class_digests(s, library, today, send_after)
    if result.rows:
        # One batched INSERT … ON CONFLICT (key) DO NOTHING RETURNING key: the unique key index
        # decides what is new (also between concurrent planners). A dry run rolls it back.
        rows = [dict(r, status=NotificationStatus.PENDING, attempts=0) for r in result.rows]
        new_keys: set[str] = set()
        try:
            async with db.transaction() as s:
                stmt = (insert_for(s)(Notification).on_conflict_do_nothing(index_elements=["key"])
                        .returning(Notification.key))
                for start in range(0, len(rows), 5000):
                    new_keys.update((await s.execute(stmt, rows[start:start + 5000])).scalars())
                if dry_run:
                    raise _DryRun
        except _DryRun:
            pass
        result.inserted = len(new_keys)
        result.rows = [r for r in result.rows if r["key"] in new_keys]
    return result


class _DryRun(Exception):
    """Raised to roll back a dry run's inserts."""


async def _plan_class_digests(s, library: Library, today: date, send_after: datetime) -> list[dict]:
    """Weekly, for homeroom teachers who asked: their class's overdue loans."""
    teachers = [
        t for t in (await s.execute(
            select(Patron).where(Patron.library_id == library.id, Patron.role == Role.TEACHER,
                                 Patron.active.is_(True), Patron.class_name.is_not(None))
        )).scalars() if enabled(t.preferences, CLASS_KIND)
    ]
    rows = []
    year, week, _ = today.isocalendar()
    for teacher in teachers:
        overdue = (await s.execute(
            select(Patron.full_name, Patron.card_number, Title.title, Loan.due_date)
            .join(Loan, Loan.patron_id == Patron.id).join(Copy, Copy.id == Loan.copy_id)
            .join(Title, Title.id == Copy.title_id)
            .where(Patron.library_id == library.id, Patron.class_name == teacher.class_name,
                   Patron.role == Role.STUDENT, Loan.returned_at.is_(None), Loan.due_date < today)
            .order_by(Patron.full_name, Loan.due_date).limit(60)
        )).all()
        if not overdue:
            continue
        rows.append(dict(
            key=f"{CLASS_KIND}:patron={teacher.id}:{year}-W{week:02d}", patron_id=teacher.id,
            kind=CLASS_KIND, send_after=send_after,
            payload={"class_name": teacher.class_name, "items": [
                {"name": name, "card": card, "title": title, "due_date": due.isoformat()}
                for name, card, title, due in overdue]},
        ))
    return rows


# -- quiet hours, staleness and digests ---------------------------------------------------------

async def library_rules(db: Database) -> dict[int, Rules]:
    async with db.session() as s:
        return {lib.id: Rules.of(lib) for lib in (await s.execute(select(Library))).scalars()}


async def defer_quiet(db: Database, clock: Clock) -> list[int]:
    """Push pending notices of libraries in quiet hours to their morning; return the open ones."""
    now = clock.now().astimezone(UTC)
    open_ids = []
    for library_id, rules in (await library_rules(db)).items():
        if not rules.is_quiet(now):
            open_ids.append(library_id)
            continue
        morning = rules.morning(now)
        async with db.transaction() as s:
            await s.execute(
                update(Notification)
                .where(Notification.status == NotificationStatus.PENDING, Notification.send_after < morning,
                       Notification.patron_id.in_(select(Patron.id).where(Patron.library_id == library_id)))
                .values(send_after=morning)
            )
    return open_ids

async def stale(db: Database, clock: Clock, notices: Sequence[Claimed], rules: dict[int, Rules],
                library_of: dict[int, int]) -> dict[int, str]:
    """Notices that are no longer true (loan returned or renewed, hold picked up…), with why.

    Also fills in missing ``title``/``pickup_deadline`` of hold notices other features enqueued.
    """
    now = clock.now()
    loan_ids = {n.payload.get("loan_id") for n in notices if n.kind in LOAN_KINDS}
    hold_ids = {n.payload.get("hold_id") for n in notices if n.kind in HOLD_KINDS + EVENT_KINDS}
    loan_ids.discard(None)
    hold_ids.discard(None)
    async with db.session() as s:
        loans = {r.id: r for r in (await s.execute(
            select(Loan.id, Loan.due_date, Loan.returned_at).where(Loan.id.in_(loan_ids)))).all()} if loan_ids else {}
        holds = {r.id: r for r in (await s.execute(
            select(Hold.id, Hold.status, Hold.pickup_deadline, Title.title)
            .join(Title, Title.id == Hold.title_id).where(Hold.id.in_(hold_ids)))).all()} if hold_ids else {}
    why: dict[int, str] = {}
    for n in notices:
        library_rules_ = rules.get(library_of.get(n.patron_id, -1))
        today = now.astimezone(library_rules_.zone).date() if library_rules_ else clock.today()
        if n.kind in LOAN_KINDS:
            loan = loans.get(n.payload.get("loan_id"))
            if loan is None or loan.returned_at is not None:
                why[n.id] = "stale: returned"
            elif loan.due_date.isoformat() != n.payload.get("due_date"):
                why[n.id] = "stale: due date changed"
            elif n.kind == "due_soon" and loan.due_date <= today:
                why[n.id] = "stale: no longer before the due date"
            elif n.kind == "due_today" and loan.due_date != today:
                why[n.id] = "stale: not the due date any more"
        elif n.kind in HOLD_KINDS or n.kind in EVENT_KINDS:
            hold = holds.get(n.payload.get("hold_id"))
            if hold is not None:
                n.payload.setdefault("title", hold.title)
                if hold.pickup_deadline is not None:
                    n.payload.setdefault("pickup_deadline", hold.pickup_deadline.isoformat())
            if n.kind in ("pickup_tomorrow", "hold_ready"):
                if hold is None or hold.status != HoldStatus.READY:
                    why[n.id] = "stale: hold no longer ready"
                elif n.kind == "pickup_tomorrow" and (hold.pickup_deadline is None or hold.pickup_deadline <= today
                                                      or hold.pickup_deadline.isoformat() != n.payload.get("pickup_deadline")):
                    why[n.id] = "stale: pickup deadline changed"
    return why

def group_messages(notices: Sequence[Claimed]) -> list[list[Claimed]]:
    """One message per patron for their digestible notices; every other notice on its own."""
    digest: dict[int, list[Claimed]] = defaultdict(list)
    groups: list[list[Claimed]] = []
    for n in notices:
        if n.kind in DIGESTIBLE:
            digest[n.patron_id].append(n)
        else:
            groups.append([n])
    return list(digest.values()) + groups

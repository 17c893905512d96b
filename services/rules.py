"""Circulation rules per library (and per role) and the school calendar of closed days.

Public API (other features, e.g. reminders, may call these):

- ``DEFAULTS`` / ``RULE_NAMES``: the rules and their defaults (loan 14 days; max loans 5 for
  students, 10 for teachers and staff; max active holds 3; renewals 2; pickup window 3 school
  days; borrowing/reserving/renewing blocked when a loan is more than 7 days overdue; weekends
  Saturday+Sunday).
- ``await get_rules(db, library_id, role) -> Rules`` (and ``rules_for(library, role)`` when you
  already hold the ``Library`` row).
- ``await set_rule(db, actor, name, value, role=None)`` / ``reset_rule(...)`` (staff of that library).
- ``await calendar_for(db, library_id) -> SchoolCalendar`` with ``is_closed(day)``,
  ``next_open_day(day)``, ``add_school_days(day, n)`` and ``due_date(start, days)``;
  shortcuts ``await add_school_days(db, library_id, day, n)`` and ``await is_closed(db, library_id, day)``.
- ``await add_closed_days(db, actor, start, end, name)``, ``list_closed_days``, ``remove_closed_days``.
- Reminder settings (``Library.settings["reminders"]``, read by ``services.reminders.Rules``):
  ``await reminder_settings(db, actor)``, ``set_quiet_hours(db, actor, start, end)``,
  ``set_reminder_days(db, actor, before_days=…, overdue_days=…)``, ``reset_reminder_settings``.

Why the rules live in ``Library.settings["circulation"]`` and not in a table of their own: they are
a handful of integers read together with the library row on every loan or hold (no extra join),
they change a few times a year, and per-role overrides are just nested keys
(``{"all": {"loan_days": 21}, "teacher": {"max_loans": 15}}``). Writes lock the library row so two
staff changing different rules never lose each other's change. Closed days, in contrast, are
many dated rows queried by range, so they get the ``closed_days`` table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from datetime import date, time, timedelta

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from services import audit
from services.common import DomainError
from services.db import Database
from services.models import ClosedDay, Library, Role
from services.patrons import Actor, require_staff

SETTINGS_KEY = "circulation"
HORIZON_DAYS = 400          # how far ahead the calendar looks for an open day before giving up


@dataclass(frozen=True)
class Rules:
    """The effective rules for one role in one library."""

    loan_days: int = 14
    max_loans: int = 5
    max_holds: int = 3
    max_renewals: int = 2
    pickup_days: int = 3          # school days a ready hold waits on the hold shelf
    block_overdue_days: int = 7   # a loan overdue by more than this blocks new loans/holds/renewals
    weekend: tuple[int, ...] = (5, 6)  # ISO weekday - 1: Monday 0 … Sunday 6; applies to every role


DEFAULTS = Rules()
ROLE_DEFAULTS: dict[str, dict[str, int]] = {
    Role.TEACHER.value: {"max_loans": 10},
    Role.LIBRARIAN.value: {"max_loans": 10},
    Role.ADMIN.value: {"max_loans": 10},
}
RULE_NAMES = tuple(f.name for f in fields(Rules))
# Sensible bounds so a typo cannot, say, make every loan last a century.
LIMITS = {"loan_days": (1, 365), "max_loans": (0, 100), "max_holds": (0, 50), "max_renewals": (0, 20),
          "pickup_days": (1, 30), "block_overdue_days": (0, 365)}


def rules_for(library: Library, role: Role | str | None) -> Rules:
    """Defaults, then role defaults, then the library's "all" overrides, then its role overrides."""
    role_name = Role(role).value if role else Role.STUDENT.value
    stored = (library.settings or {}).get(SETTINGS_KEY) or {}
    merged: dict[str, object] = {}
    for layer in (ROLE_DEFAULTS.get(role_name, {}), stored.get("all") or {}, stored.get(role_name) or {}):
        merged.update({k: v for k, v in layer.items() if k in RULE_NAMES})
    if "weekend" in (stored.get("all") or {}):
        merged["weekend"] = tuple(stored["all"]["weekend"])
    else:
        merged.pop("weekend", None)
    return Rules(**merged)  # type: ignore[arg-type]


async def get_rules(db: Database, library_id: int, role: Role | str | None = None) -> Rules:
    async with db.session() as s:
        library = await s.get(Library, library_id)
        if library is None:
            raise DomainError("rules.library_unknown", library=str(library_id))
        return rules_for(library, role)


def parse_weekend(value: str) -> tuple[int, ...]:
    """"sat,sun" / "6,7" (ISO) / "" (no weekend) → (5, 6) style weekday numbers."""
    names = {"mon": 0, "tue": 1, "wed": 2, "thu": 3, "fri": 4, "sat": 5, "sun": 6,
             "t2": 0, "t3": 1, "t4": 2, "t5": 3, "t6": 4, "t7": 5, "cn": 6}
    days = set()
    for part in value.replace(";", ",").replace(" ", ",").split(","):
        part = part.strip().lower()
        if not part or part == "none":
            continue
        if part in names:
            days.add(names[part])
        elif part[:3] in names:  # "saturday"
            days.add(names[part[:3]])
        elif part.isdigit() and 1 <= int(part) <= 7:
            days.add(int(part) - 1)
        else:
            raise DomainError("rules.bad_value", name="weekend", value=value[:40])
    if len(days) >= 7:
        raise DomainError("rules.bad_value", name="weekend", value=value[:40])
    return tuple(sorted(days))


async def set_rule(db: Database, actor: Actor, name: str, value: str | int,
                   role: str | None = None) -> Rules:
    """Change one rule for the actor's library (optionally for one role). Staff only."""
    require_staff(actor)
    if name not in RULE_NAMES:
        raise DomainError("rules.unknown", name=name[:40], names=", ".join(RULE_NAMES))
    if role is not None and role not in {r.value for r in Role}:
        raise DomainError("rules.bad_role", role=role[:20])
    if name == "weekend":
        if role is not None:
            raise DomainError("rules.weekend_all_roles")
        stored_value: object = list(parse_weekend(str(value)))
    else:
        try:
            number = int(str(value).strip())
        except ValueError:
            raise DomainError("rules.bad_value", name=name, value=str(value)[:40]) from None
        low, high = LIMITS[name]
        if not low <= number <= high:
            raise DomainError("rules.out_of_range", name=name, low=low, high=high)
        stored_value = number
    async with db.transaction() as s:
        library = await _lock_library(s, actor.library_id)
        settings = dict(library.settings or {})
        circ = {k: dict(v) for k, v in (settings.get(SETTINGS_KEY) or {}).items()}
        circ.setdefault(role or "all", {})[name] = stored_value
        settings[SETTINGS_KEY] = circ
        library.settings = settings
        audit.record(s, "rules.set", "library", library.id, actor_patron_id=actor.patron_id,
                     library_id=library.id, channel=actor.channel, name=name, value=stored_value, role=role)
        return rules_for(library, role)


async def reset_rule(db: Database, actor: Actor, name: str, role: str | None = None) -> Rules:
    """Drop the library's override so the default applies again."""
    require_staff(actor)
    async with db.transaction() as s:
        library = await _lock_library(s, actor.library_id)
        settings = dict(library.settings or {})
        circ = {k: dict(v) for k, v in (settings.get(SETTINGS_KEY) or {}).items()}
        circ.get(role or "all", {}).pop(name, None)
        settings[SETTINGS_KEY] = circ
        library.settings = settings
        audit.record(s, "rules.reset", "library", library.id, actor_patron_id=actor.patron_id,
                     library_id=library.id, channel=actor.channel, name=name, role=role)
        return rules_for(library, role)


async def _lock_library(s: AsyncSession, library_id: int | None) -> Library:
    library = (await s.execute(select(Library).where(Library.id == library_id).with_for_update())).scalar_one()
    return library


# -- the school calendar ------------------------------------------------------------------------

@dataclass(frozen=True)
class SchoolCalendar:
    """Weekends plus closed ranges of one library. Pure functions once loaded."""

    weekend: tuple[int, ...]
    closed: tuple[tuple[date, date], ...]  # inclusive (start, end) ranges

    def is_closed(self, day: date) -> bool:
        return day.weekday() in self.weekend or any(start <= day <= end for start, end in self.closed)

    def next_open_day(self, day: date) -> date:
        """``day`` itself if the library is open then, else the first open day after it."""
        for _ in range(HORIZON_DAYS):
            if not self.is_closed(day):
                return day
            day += timedelta(days=1)
        return day  # a calendar closed for over a year is a configuration mistake; do not loop forever

    def add_school_days(self, day: date, n: int) -> date:
        """The n-th open day after ``day`` (n=0: ``day`` or the next open day)."""
        if n <= 0:
            return self.next_open_day(day)
        count = 0
        for _ in range(HORIZON_DAYS + n):
            day += timedelta(days=1)
            if not self.is_closed(day):
                count += 1
                if count == n:
                    return day
        return day

    def due_date(self, start: date, days: int) -> date:
        """A loan period counts calendar days; a due date that falls on a closed day moves to the
        next open day (nobody has to return a book during Tết)."""
        return self.next_open_day(start + timedelta(days=days))


async def load_calendar(s: AsyncSession, library: Library, since: date | None = None) -> SchoolCalendar:
    """The calendar inside an existing session (``since``: ignore ranges that ended before it)."""
    query = select(ClosedDay.start_date, ClosedDay.end_date).where(ClosedDay.library_id == library.id)
    if since is not None:
        query = query.where(ClosedDay.end_date >= since)
    rows = (await s.execute(query.order_by(ClosedDay.start_date))).all()
    return SchoolCalendar(weekend=rules_for(library, None).weekend, closed=tuple((a, b) for a, b in rows))


async def calendar_for(db: Database, library_id: int, since: date | None = None) -> SchoolCalendar:
    async with db.session() as s:
        library = await s.get(Library, library_id)
        if library is None:
            raise DomainError("rules.library_unknown", library=str(library_id))
        return await load_calendar(s, library, since)


async def add_school_days(db: Database, library_id: int, day: date, n: int) -> date:
    return (await calendar_for(db, library_id, day)).add_school_days(day, n)


async def is_closed(db: Database, library_id: int, day: date) -> bool:
    return (await calendar_for(db, library_id, day)).is_closed(day)


@dataclass(frozen=True)
class ClosedRange:
    id: int
    start: date
    end: date
    name: str


async def add_closed_days(db: Database, actor: Actor, start: date, end: date | None, name: str) -> ClosedRange:
    """Close the library from ``start`` to ``end`` inclusive (one day when ``end`` is None). Staff only."""
    require_staff(actor)
    end = end or start
    if end < start:
        raise DomainError("calendar.bad_range")
    if (end - start).days > 366:
        raise DomainError("calendar.too_long")
    name = " ".join(name.split())[:200]
    async with db.transaction() as s:
        row = ClosedDay(library_id=actor.library_id, start_date=start, end_date=end, name=name)
        s.add(row)
        await s.flush()
        audit.record(s, "calendar.add", "closed_days", row.id, actor_patron_id=actor.patron_id,
                     library_id=actor.library_id, channel=actor.channel, start=start.isoformat(),
                     end=end.isoformat(), name=name)
        return ClosedRange(row.id, start, end, name)


async def list_closed_days(db: Database, actor: Actor, since: date | None = None) -> list[ClosedRange]:
    """Closed ranges of the actor's library (anyone linked to it may read the calendar)."""
    if actor.library_id is None:
        raise DomainError("link.required")
    async with db.session() as s:
        query = select(ClosedDay).where(ClosedDay.library_id == actor.library_id)
        if since is not None:
            query = query.where(ClosedDay.end_date >= since)
        rows = (await s.execute(query.order_by(ClosedDay.start_date, ClosedDay.id))).scalars()
        return [ClosedRange(r.id, r.start_date, r.end_date, r.name) for r in rows]


async def remove_closed_days(db: Database, actor: Actor, range_id: int) -> bool:
    """Remove one closed range of the actor's library. Staff only; another library's id is not found."""
    require_staff(actor)
    async with db.transaction() as s:
        result = await s.execute(delete(ClosedDay).where(
            ClosedDay.id == range_id, ClosedDay.library_id == actor.library_id))
        if not result.rowcount:
            raise DomainError("calendar.not_found", id=range_id)
        audit.record(s, "calendar.remove", "closed_days", range_id, actor_patron_id=actor.patron_id,
                     library_id=actor.library_id, channel=actor.channel)
        return True


# -- reminder settings: quiet hours and which days reminders go out ---------------------------------

REMINDERS_KEY = "reminders"
MAX_BEFORE_DAYS = 14
MAX_OVERDUE_REMINDERS = 6
_TIME = re.compile(r"^\s*(\d{1,2})(?:\s*[:h.]\s*(\d{2})?)?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class ReminderSettings:
    """When a library's reminders go out (school time): nothing between ``quiet_start`` and
    ``quiet_end``; "due soon" ``before_days`` days before the due date; "overdue" on these
    days after it."""

    quiet_start: time
    quiet_end: time
    before_days: int
    overdue_days: tuple[int, ...]
    timezone: str


def _reminder_settings(library: Library) -> ReminderSettings:
    from services.reminders import Rules as ReminderRules  # reminders imports this module

    r = ReminderRules.of(library)
    return ReminderSettings(r.quiet_start, r.quiet_end, r.before_days, r.overdue_days, r.timezone)


def parse_time(value: str | time) -> time:
    """"20:00", "20h", "7h30", "7" → a time of day; anything else is refused."""
    if isinstance(value, time):
        return value.replace(second=0, microsecond=0, tzinfo=None)
    match = _TIME.match(str(value))
    if match:
        hours, minutes = int(match.group(1)), int(match.group(2) or 0)
        if hours <= 23 and minutes <= 59:
            return time(hours, minutes)
    raise DomainError("rules.bad_time", value=str(value)[:20])


def parse_days(value: str | int | list[int] | tuple[int, ...]) -> tuple[int, ...]:
    """"1,7,14" / "1 7 14" / [1, 7, 14] → (1, 7, 14)."""
    if isinstance(value, int):
        parts: list[object] = [value]
    elif isinstance(value, list | tuple):
        parts = list(value)
    else:
        parts = [p for p in re.split(r"[\s,;]+", str(value)) if p]
    days = set()
    for part in parts:
        text = str(part).strip()
        if not text.isdigit():
            raise DomainError("rules.bad_days", value=str(value)[:40])
        days.add(int(text))
    if not days or not all(1 <= d <= 365 for d in days) or len(days) > MAX_OVERDUE_REMINDERS:
        raise DomainError("rules.bad_days", value=str(value)[:40])
    return tuple(sorted(days))


async def reminder_settings(db: Database, actor: Actor) -> ReminderSettings:
    """The reminder settings of the actor's library (anyone linked to it may read them)."""
    if actor.library_id is None:
        raise DomainError("link.required")
    async with db.session() as s:
        library = await s.get(Library, actor.library_id)
        if library is None:
            raise DomainError("rules.library_unknown", library=str(actor.library_id))
        return _reminder_settings(library)


async def _change_reminders(db: Database, actor: Actor, action: str, change: dict[str, object],
                            drop: tuple[str, ...] = ()) -> ReminderSettings:
    require_staff(actor)
    async with db.transaction() as s:
        library = await _lock_library(s, actor.library_id)
        settings = dict(library.settings or {})
        cfg = dict(settings.get(REMINDERS_KEY) or {})
        cfg.update(change)
        for name in drop:
            cfg.pop(name, None)
        settings[REMINDERS_KEY] = cfg
        library.settings = settings
        audit.record(s, action, "library", library.id, actor_patron_id=actor.patron_id, library_id=library.id,
                     channel=actor.channel, **change, reset=list(drop) or None)
        return _reminder_settings(library)


async def set_quiet_hours(db: Database, actor: Actor, start: str | time, end: str | time) -> ReminderSettings:
    """No reminders from ``start`` to ``end`` (school time; may run overnight, e.g. 20:00–07:00).
    Equal times mean no quiet hours at all, which is refused: children's phones at night."""
    begin, finish = parse_time(start), parse_time(end)
    if begin == finish:
        raise DomainError("rules.quiet_empty")
    return await _change_reminders(db, actor, "reminders.quiet_hours",
                                   {"quiet_hours": [begin.strftime("%H:%M"), finish.strftime("%H:%M")]})


async def set_reminder_days(db: Database, actor: Actor, *, before_days: int | str | None = None,
                            overdue_days: str | list[int] | tuple[int, ...] | None = None) -> ReminderSettings:
    """Days before the due date for "due soon" (0 = none) and the days after it for "overdue"."""
    change: dict[str, object] = {}
    if before_days is not None:
        text = str(before_days).strip()
        if not text.isdigit() or int(text) > MAX_BEFORE_DAYS:
            raise DomainError("rules.out_of_range", name="before_days", low=0, high=MAX_BEFORE_DAYS)
        change["before_days"] = int(text)
    if overdue_days is not None:
        change["overdue_days"] = list(parse_days(overdue_days))
    if not change:
        raise DomainError("rules.nothing_to_change")
    return await _change_reminders(db, actor, "reminders.days", change)


async def reset_reminder_settings(db: Database, actor: Actor, name: str) -> ReminderSettings:
    """Back to the default for ``quiet_hours``, ``before_days`` or ``overdue_days``."""
    if name not in ("quiet_hours", "before_days", "overdue_days"):
        raise DomainError("rules.unknown", name=name[:40], names="quiet_hours, before_days, overdue_days")
    return await _change_reminders(db, actor, "reminders.reset", {}, drop=(name,))

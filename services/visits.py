"""Library visits: a reader came in (door QR, kiosk, desk). At most one per reader per school day.

"Readers per day" is how the province measures a smart library, so the count must not grow when
the same student scans the door twice or uses the kiosk after scanning: the unique (patron, day)
constraint makes recording idempotent, with the day taken in the school's time zone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.common import Clock, DomainError
from services.db import Database, insert_for
from services.models import Library, Patron, Visit
from services.patrons import Actor, require_linked, require_staff

SOURCES = ("door", "sip2", "desk")


@dataclass(frozen=True)
class VisitResult:
    recorded: bool        # False: this reader's visit today was already counted
    day: date
    library_name: str


async def record(s: AsyncSession, *, library_id: int, patron_id: int, source: str, clock: Clock,
                 timezone: str) -> tuple[bool, date]:
    """Count a visit inside the caller's transaction. Returns (new?, school day)."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}")
    now = clock.now()
    day = clock.today(timezone)
    insert = insert_for(s)
    result = await s.execute(insert(Visit).values(library_id=library_id, patron_id=patron_id, day=day, at=now,
                                                  source=source)
                             .on_conflict_do_nothing(index_elements=["patron_id", "day"]))
    return bool(result.rowcount), day


async def check_in_at_door(db: Database, actor: Actor, library_id: int, *, clock: Clock) -> VisitResult:
    """A linked reader scanned the door QR of ``library_id`` (their own library only)."""
    require_linked(actor)
    async with db.transaction() as s:
        library = await s.get(Library, library_id)
        if library is None:
            raise DomainError("sip2.door_unknown")
        if actor.library_id != library.id:
            raise DomainError("sip2.door_other_library", library=library.name)
        patron = await s.get(Patron, actor.patron_id)
        if patron is None or not patron.active:
            raise DomainError("circulation.patron_inactive")
        recorded, day = await record(s, library_id=library.id, patron_id=patron.id, source="door", clock=clock,
                                     timezone=library.timezone)
        return VisitResult(recorded, day, library.name)


async def door(db: Database, library_code: str) -> tuple[int, str] | None:
    """(library id, name) for the door label of a library, or None when there is no such code."""
    async with db.session() as s:
        row = (await s.execute(select(Library.id, Library.name).where(Library.code == library_code))).first()
        return (row[0], row[1]) if row else None


async def per_day(db: Database, actor: Actor, start: date, end: date) -> list[tuple[date, int]]:
    """Readers per day in the staff member's library from ``start`` to ``end`` (days with visits)."""
    require_staff(actor)
    async with db.session() as s:
        rows = (await s.execute(
            select(Visit.day, func.count()).where(Visit.library_id == actor.library_id, Visit.day >= start,
                                                  Visit.day <= end)
            .group_by(Visit.day).order_by(Visit.day))).all()
        return [(day, int(count)) for day, count in rows]

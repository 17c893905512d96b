"""What operators need to know about the stored state: heartbeats of background jobs, the
outbox backlog, the migration level, and whether the database holds anything at all.

Kept in the database (not in a process's memory) so every worker, ``docsach doctor`` and the
alarms agree, and a restart forgets nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, inspect, select, text

from services.common import Clock, aware
from services.db import Base, Database, insert_for
from services.models import Heartbeat, Notification, NotificationStatus

SWEEP = "reminder_sweep"


@dataclass
class Beat:
    name: str
    worker: str
    at: datetime
    seconds: float | None
    detail: dict[str, Any]


async def beat(db: Database, name: str, worker: str, *, seconds: float | None = None,
               detail: dict[str, Any] | None = None, clock: Clock | None = None) -> None:
    """Record that ``name`` just ran (one row per job, overwritten: the latest run wins)."""
    now = (clock or Clock()).now()
    values = {"name": name, "worker": worker[:120], "at": now, "seconds": seconds, "detail": detail or {}}
    stmt = insert_for(db)(Heartbeat).values(**values)
    stmt = stmt.on_conflict_do_update(index_elements=["name"], set_={k: v for k, v in values.items() if k != "name"})
    async with db.transaction() as s:
        await s.execute(stmt)


async def last_beat(db: Database, name: str) -> Beat | None:
    async with db.session() as s:
        row = await s.get(Heartbeat, name)
    if row is None:
        return None
    return Beat(row.name, row.worker, aware(row.at), row.seconds, dict(row.detail or {}))


@dataclass
class Backlog:
    pending: int
    oldest_due: datetime | None   # the send_after of the oldest notice still waiting

    def oldest_age(self, now: datetime) -> float:
        return max(0.0, (now - self.oldest_due).total_seconds()) if self.oldest_due else 0.0


async def outbox_backlog(db: Database, clock: Clock | None = None) -> Backlog:
    """Notices due now that are not delivered yet (pending or claimed by a sweeper)."""
    now = (clock or Clock()).now()
    waiting = (NotificationStatus.PENDING, NotificationStatus.CLAIMED)
    async with db.session() as s:
        count, oldest = (await s.execute(
            select(func.count(), func.min(Notification.send_after))
            .where(Notification.status.in_(waiting), Notification.send_after <= now))).one()
    return Backlog(int(count or 0), aware(oldest) if oldest else None)


async def migration_level(db: Database) -> str | None:
    """The Alembic revision the database is at, or None when it was never migrated."""
    async with db.engine.connect() as conn:
        def read(sync_conn) -> str | None:
            from alembic.migration import MigrationContext

            return MigrationContext.configure(sync_conn).get_current_revision()

        return await conn.run_sync(read)


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    from services.db import alembic_config

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def tables() -> list[str]:
    """Every table of the schema, parents before children."""
    return [t.name for t in Base.metadata.sorted_tables]


async def row_counts(db: Database) -> dict[str, int]:
    """Rows per table that exists in the database (tables a migration has not made yet are skipped)."""
    async with db.engine.connect() as conn:
        existing = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
        counts = {}
        for name in tables():
            if name in existing:
                counts[name] = int((await conn.execute(text(f'SELECT count(*) FROM "{name}"'))).scalar_one())
    return counts


async def is_empty(db: Database) -> bool:
    """True when no table of the schema holds a row (a fresh or never-migrated database)."""
    return not any((await row_counts(db)).values())

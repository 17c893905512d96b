"""Leases: work that one process at a time may do, agreed through the database.

Long-polling a Zalo bot is such work: the platform hands each update to whichever poll asks
first, so two processes polling one bot would split a chat's messages between them and answer
them out of order. Whoever holds the lease polls; the others wait and take over when it lapses.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, or_, update

from services.db import Database, insert_for
from services.models import Lease


async def acquire(db: Database, name: str, holder: str, *, now: datetime, ttl: timedelta) -> bool:
    """Take or renew the lease ``name`` for ``holder`` until ``now + ttl``; False while another
    holder's lease is still running."""
    async with db.transaction() as s:
        insert = insert_for(s)
        created = await s.execute(insert(Lease).values(name=name, holder=holder, expires_at=now + ttl)
                                  .on_conflict_do_nothing(index_elements=["name"]))
        if (created.rowcount or 0) == 1:
            return True
        renewed = await s.execute(
            update(Lease).where(Lease.name == name, or_(Lease.holder == holder, Lease.expires_at < now))
            .values(holder=holder, expires_at=now + ttl))
        return (renewed.rowcount or 0) == 1


async def release(db: Database, name: str, holder: str) -> None:
    async with db.transaction() as s:
        await s.execute(delete(Lease).where(Lease.name == name, Lease.holder == holder))

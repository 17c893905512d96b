"""Repeated deliveries: platforms without an update offset (Zalo) may send one message twice.

The first process to record a message id answers it; every later delivery of the same id, in
this worker or another, is dropped. Ids are kept for a week, far longer than any redelivery.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete

from services.db import Database, insert_for
from services.models import SeenMessage

KEEP = timedelta(days=7)


async def first_delivery(db: Database, channel: str, message_id: str, *, now: datetime) -> bool:
    """True exactly once per (channel, message id), however many workers are asked at once."""
    async with db.transaction() as s:
        insert = insert_for(s)
        result = await s.execute(
            insert(SeenMessage).values(channel=channel, message_id=message_id[:128], seen_at=now)
            .on_conflict_do_nothing(index_elements=["channel", "message_id"]))
        return (result.rowcount or 0) == 1


async def prune(db: Database, *, now: datetime) -> int:
    async with db.transaction() as s:
        result = await s.execute(delete(SeenMessage).where(SeenMessage.seen_at < now - KEEP))
        return result.rowcount or 0

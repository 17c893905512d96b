"""The notification outbox. Features record what should be said; the reminder sweeper sends it.

``enqueue`` runs inside the caller's transaction, so a notice exists exactly when the state
change that caused it was committed (e.g. a hold became ready), and its unique ``key`` makes
recording the same event twice harmless.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from services.db import insert_for
from services.models import Notification, NotificationStatus


async def enqueue(
    session: AsyncSession,
    *,
    patron_id: int,
    kind: str,
    key: str,
    send_after: datetime,
    payload: dict[str, Any] | None = None,
) -> bool:
    """Record a notice once. Returns False when a notice with that key already exists."""
    insert = insert_for(session)
    stmt = insert(Notification).values(
        key=key[:160], patron_id=patron_id, kind=kind, payload=payload or {},
        status=NotificationStatus.PENDING, send_after=send_after, attempts=0,
    ).on_conflict_do_nothing(index_elements=["key"])
    result = await session.execute(stmt)
    return bool(result.rowcount)

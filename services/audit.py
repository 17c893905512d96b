"""The audit log: every state change says who, when, what and through which channel."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from services.models import AuditEntry


def record(
    session: AsyncSession,
    action: str,
    entity: str,
    entity_id: int | None,
    *,
    actor_patron_id: int | None = None,
    library_id: int | None = None,
    channel: str | None = None,
    **details: Any,
) -> AuditEntry:
    """Add an audit entry to the caller's transaction, so it is written exactly when the change is."""
    entry = AuditEntry(
        action=action,
        entity=entity,
        entity_id=entity_id,
        actor_patron_id=actor_patron_id,
        library_id=library_id,
        channel=channel,
        details={k: v for k, v in details.items() if v is not None},
    )
    session.add(entry)
    return entry

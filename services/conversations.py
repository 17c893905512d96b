"""Where a multi-step conversation stands, kept in the database (survives restarts, shared by workers)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, select

from services.db import Database, insert_for
from services.models import ConversationState


async def get_state(db: Database, channel: str, chat_id: str) -> ConversationState | None:
    async with db.session() as s:
        return await s.get(ConversationState, (channel, chat_id))


async def set_state(db: Database, channel: str, chat_id: str, flow: str, data: dict[str, Any]) -> None:
    """Start or move a conversation on; an upsert, so two racing messages cannot collide."""
    async with db.transaction() as s:
        insert = insert_for(s)
        stmt = insert(ConversationState).values(channel=channel, chat_id=chat_id, flow=flow, data=dict(data))
        await s.execute(stmt.on_conflict_do_update(
            index_elements=["channel", "chat_id"],
            set_={"flow": stmt.excluded.flow, "data": stmt.excluded.data, "updated_at": func.now()},
        ))


async def clear_state(db: Database, channel: str, chat_id: str, flow: str | None = None) -> None:
    async with db.transaction() as s:
        query = delete(ConversationState).where(
            ConversationState.channel == channel, ConversationState.chat_id == chat_id
        )
        if flow is not None:
            query = query.where(ConversationState.flow == flow)
        await s.execute(query)


async def find_state(db: Database, channel: str, chat_id: str, flow: str) -> dict[str, Any] | None:
    async with db.session() as s:
        row = (await s.execute(select(ConversationState).where(
            ConversationState.channel == channel, ConversationState.chat_id == chat_id,
            ConversationState.flow == flow))).scalar_one_or_none()
        return dict(row.data) if row else None

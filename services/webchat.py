"""Web chat storage: browser sessions and each conversation's messages, in order.

Every message (what the person typed, what docsach answered, pushed notices) is stored with a
growing id, so a page that lost its connection asks for "everything after id N" and gets each
message exactly once; a message the browser re-sends after a drop carries the same ``client_ref``
and is recognised instead of being handled twice.

Sessions: the cookie holds the session id and a random token; only ``sha256(token)`` is stored.
A session names a conversation (``chat_key``, the chat identity's external id on channel "web").
Linking a card rotates the session (:func:`arm_rotation` → :func:`rotate`: a new token for the same
conversation, the old one revoked); unlinking ends it (:func:`revoke`), and the messages about the
patron are hidden from the conversation from then on.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from services.common import Clock, aware
from services.db import Database
from services.models import ChatIdentity, WebMessage, WebSession

CHANNEL = "web"
MAX_HISTORY = 200


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class SessionView:
    id: int
    chat_key: str
    patron_id: int | None
    rotating: bool


@dataclass(frozen=True)
class StoredMessage:
    id: int
    outgoing: bool
    notice: bool
    body: dict[str, Any]
    created_at: datetime | None
    read: bool
    has_attachment: bool


async def new_session(db: Database, clock: Clock | None = None) -> tuple[SessionView, str]:
    """A new conversation and its session; returns the session and the token for the cookie."""
    now = (clock or Clock()).now().astimezone(UTC)
    token = secrets.token_urlsafe(32)
    chat_key = secrets.token_urlsafe(24)
    async with db.transaction() as s:
        row = WebSession(chat_key=chat_key, token_hash=_hash(token), created_at=now, last_seen_at=now)
        s.add(row)
        await s.flush()
        view = SessionView(row.id, chat_key, None, False)
    return view, token


async def session(db: Database, session_id: int, token: str) -> SessionView | None:
    """The live session for a cookie, or None (unknown, wrong token, revoked)."""
    async with db.session() as s:
        row = await s.get(WebSession, session_id)
    if row is None or row.revoked_at is not None or not secrets.compare_digest(row.token_hash, _hash(token)):
        return None
    return SessionView(row.id, row.chat_key, row.patron_id, row.rotate_ticket_hash is not None)


async def linked_patron(db: Database, chat_key: str) -> int | None:
    """Who the conversation's chat identity is linked to now (staff may have unlinked it)."""
    async with db.session() as s:
        return await s.scalar(select(ChatIdentity.patron_id).where(
            ChatIdentity.channel == CHANNEL, ChatIdentity.external_id == chat_key))


async def arm_rotation(db: Database, session_id: int) -> str:
    """The chat was just linked: from now on the old cookie only buys the new one, with the
    one-time ticket returned here (sent down the socket that did the linking, nowhere else)."""
    ticket = secrets.token_urlsafe(24)
    async with db.transaction() as s:
        await s.execute(update(WebSession).where(WebSession.id == session_id, WebSession.revoked_at.is_(None))
                        .values(rotate_ticket_hash=_hash(ticket)))
    return ticket


async def rotate(db: Database, session_id: int, token: str, ticket: str,
                 clock: Clock | None = None) -> tuple[SessionView, str] | None:
    """Swap an armed session for a new one on the same conversation (the old one is revoked)."""
    now = (clock or Clock()).now().astimezone(UTC)
    async with db.transaction() as s:
        row = await s.get(WebSession, session_id)
        if (row is None or row.revoked_at is not None or row.rotate_ticket_hash is None
                or not secrets.compare_digest(row.token_hash, _hash(token))
                or not secrets.compare_digest(row.rotate_ticket_hash, _hash(ticket))):
            return None
        row.revoked_at = now
        patron_id = await s.scalar(select(ChatIdentity.patron_id).where(
            ChatIdentity.channel == CHANNEL, ChatIdentity.external_id == row.chat_key))
        new_token = secrets.token_urlsafe(32)
        fresh = WebSession(chat_key=row.chat_key, token_hash=_hash(new_token), patron_id=patron_id,
                           created_at=now, last_seen_at=now)
        s.add(fresh)
        await s.flush()
        return SessionView(fresh.id, fresh.chat_key, patron_id, False), new_token


async def revoke(db: Database, *, session_id: int | None = None, chat_key: str | None = None,
                 clock: Clock | None = None) -> int:
    """End a session (or every session of a conversation)."""
    now = (clock or Clock()).now().astimezone(UTC)
    condition = WebSession.id == session_id if session_id is not None else WebSession.chat_key == chat_key
    async with db.transaction() as s:
        result = await s.execute(update(WebSession).where(condition, WebSession.revoked_at.is_(None))
                                 .values(revoked_at=now))
        return result.rowcount or 0


async def append(db: Database, chat_key: str, body: dict[str, Any], *, outgoing: bool, patron_id: int | None,
                 notice: bool = False, client_ref: str | None = None,
                 attachment: tuple[str, str, bytes] | None = None) -> int | None:
    """Store one message; returns its id, or None when ``client_ref`` was already stored (a
    message the browser sent again after a reconnect)."""
    row = WebMessage(chat_key=chat_key, body=body, outgoing=outgoing, notice=notice, patron_id=patron_id,
                     client_ref=client_ref)
    if attachment is not None:
        row.attachment_name, row.attachment_type, row.attachment = attachment
    try:
        async with db.transaction() as s:
            s.add(row)
            await s.flush()
            return row.id
    except IntegrityError:
        if client_ref is None:
            raise
        return None


def _visible(chat_key: str, patron_id: int | None):
    """A conversation's messages the current holder may see: none about a patron it is no longer
    linked to (staff unlinked the chat, or the person did)."""
    mine = WebMessage.patron_id.is_(None)
    if patron_id is not None:
        mine = or_(mine, WebMessage.patron_id == patron_id)
    return and_(WebMessage.chat_key == chat_key, mine)


async def history(db: Database, chat_key: str, patron_id: int | None, *, after: int = 0,
                  limit: int = MAX_HISTORY) -> list[StoredMessage]:
    """Messages after ``after`` in order (the last ``limit`` of them for a fresh page)."""
    query = select(WebMessage.id, WebMessage.outgoing, WebMessage.notice, WebMessage.body, WebMessage.created_at,
                   WebMessage.read_at, WebMessage.attachment_name).where(
        _visible(chat_key, patron_id), WebMessage.id > after)
    async with db.session() as s:
        if after <= 0:
            rows = list((await s.execute(query.order_by(WebMessage.id.desc()).limit(limit))).all())[::-1]
        else:
            rows = list((await s.execute(query.order_by(WebMessage.id).limit(limit))).all())
    return [StoredMessage(r.id, r.outgoing, r.notice, dict(r.body or {}), aware(r.created_at), r.read_at is not None,
                          r.attachment_name is not None) for r in rows]


async def new_since(db: Database, chat_keys: list[str], after: int) -> list[tuple[str, int | None, StoredMessage]]:
    """Messages stored after ``after`` for any of these conversations (other processes' pushes)."""
    if not chat_keys:
        return []
    async with db.session() as s:
        rows = (await s.execute(
            select(WebMessage.chat_key, WebMessage.patron_id, WebMessage.id, WebMessage.outgoing, WebMessage.notice,
                   WebMessage.body, WebMessage.created_at, WebMessage.read_at, WebMessage.attachment_name)
            .where(WebMessage.id > after, WebMessage.chat_key.in_(chat_keys)).order_by(WebMessage.id).limit(1000)
        )).all()
    return [(r.chat_key, r.patron_id, StoredMessage(r.id, r.outgoing, r.notice, dict(r.body or {}),
                                                    aware(r.created_at), r.read_at is not None,
                                                    r.attachment_name is not None)) for r in rows]


async def last_id(db: Database) -> int:
    async with db.session() as s:
        return int(await s.scalar(select(func.max(WebMessage.id))) or 0)


async def mark_read(db: Database, chat_key: str, upto: int, clock: Clock | None = None) -> int:
    now = (clock or Clock()).now().astimezone(UTC)
    async with db.transaction() as s:
        result = await s.execute(update(WebMessage).where(
            WebMessage.chat_key == chat_key, WebMessage.id <= upto, WebMessage.read_at.is_(None),
            WebMessage.outgoing.is_(True)).values(read_at=now))
        return result.rowcount or 0


async def attachment(db: Database, chat_key: str, patron_id: int | None,
                     message_id: int) -> tuple[str, str, bytes] | None:
    """A file sent in this conversation (a PDF slip), for its holder only."""
    async with db.session() as s:
        row = (await s.execute(select(WebMessage).where(_visible(chat_key, patron_id), WebMessage.id == message_id))
               ).scalar_one_or_none()
    if row is None or row.attachment is None:
        return None
    return row.attachment_name or "file", row.attachment_type or "application/octet-stream", row.attachment

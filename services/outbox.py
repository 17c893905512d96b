"""The outbox: every notice any feature wants to say goes through here, once.

Features call ``enqueue`` inside their own transaction, so a notice exists exactly when the state
change that caused it was committed (a hold became ready, a reflection was approved), and its
unique ``key`` makes recording the same event twice harmless. Reminder planning
(``services/reminders.py``) enqueues in bulk with the same keys.

Delivery bookkeeping, safe with several sweepers and crashes (the database is the source of truth):

1. ``recover`` returns the claims of a dead sweeper: never attempted → pending again; attempted
   (the process died during the send) → ``uncertain``. A sweeper proves it is alive with a
   heartbeat (``beat``, every ``HEARTBEAT_EVERY``, in ``outbox_workers``); its claims are taken
   back once the heartbeat is ``HEARTBEAT_TIMEOUT`` old, so after a crash the rest goes out within
   a minute, not after the whole ``LEASE`` (which still bounds a claim held by a process that is
   alive but stuck). Clocks of the machines sharing a database must agree (NTP) to within a few
   seconds; a worker judged dead too early is harmless: a pending claim is no longer its own (its
   ``attempt`` finds nothing), an attempted one it still marks sent.
2. ``claim`` takes a batch (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, a conditional update on
   SQLite); ``attempt`` marks the notices just before the send call (committed first);
   ``mark_sent`` / ``mark_retry`` / ``mark_uncertain`` / ``mark_skipped`` / ``mark_failed`` record
   the outcome, ``release`` gives claims back untouched.

The uncertain rule: a notice whose request was written out but got no answer (a read timeout,
the connection closed after sending), or whose sweeper died between ``attempt`` and the outcome,
becomes ``uncertain`` and is never re-sent automatically — a duplicate reminder erodes trust more
than a missing one, and every reminder has a natural follow-up. (A failure before the request
was written — no connection, a reset before the last byte left — is "not sent" and retried.)
When the next notice about the same loan or hold (``subject``) is sent or itself becomes
uncertain, earlier uncertain ones become ``superseded``: no librarian needs to look at a "due
soon" that has become "due today". The rest are counted in ``status_counts``
(``docsach remind --status`` explains them) and a librarian may re-queue them on purpose with
``requeue_uncertain`` (which may deliver a second copy).

``recipients`` decides where a notice goes: the chat the patron used last among the channels
this process runs, falling back to their other chats when that one is unreachable.
"""

from __future__ import annotations

import re
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.common import Clock, aware
from services.db import Database, insert_for
from services.models import (
    ChatIdentity,
    Library,
    Notification,
    NotificationStatus,
    OutboxWorker,
    Patron,
    Role,
)
from services.patrons import Actor, require_staff

LEASE = timedelta(minutes=10)     # a claim older than this is taken back even from a live sweeper
HEARTBEAT_EVERY = timedelta(seconds=10)
HEARTBEAT_TIMEOUT = timedelta(seconds=30)   # three missed beats: the sweeper is dead
MAX_ATTEMPTS = 5                  # DeliveryFailed this often → failed for good


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


# -- claims and outcomes ------------------------------------------------------------------------

@dataclass
class Claimed:
    id: int
    key: str
    patron_id: int
    kind: str
    payload: dict[str, Any]
    attempts: int

async def beat(db: Database, clock: Clock, worker: str) -> None:
    """``worker`` (a claim token) is alive: register it, or renew its heartbeat."""
    now = clock.now().astimezone(UTC)
    async with db.transaction() as s:
        stmt = insert_for(s)(OutboxWorker).values(worker=worker[:64], started_at=now, heartbeat_at=now)
        await s.execute(stmt.on_conflict_do_update(index_elements=["worker"], set_={"heartbeat_at": now}))


async def retire(db: Database, clock: Clock, worker: str) -> None:
    """The sweep ended: forget the worker (and workers that died long ago)."""
    now = clock.now().astimezone(UTC)
    async with db.transaction() as s:
        await s.execute(delete(OutboxWorker).where(
            (OutboxWorker.worker == worker[:64]) | (OutboxWorker.heartbeat_at < now - timedelta(days=1))))


async def recover(db: Database, clock: Clock, lease: timedelta = LEASE,
                  heartbeat_timeout: timedelta = HEARTBEAT_TIMEOUT) -> tuple[int, int]:
    """Claims of dead sweepers (no heartbeat for ``heartbeat_timeout``; or the claim is older than
    ``lease``): never attempted → pending; attempted but unfinished → uncertain."""
    now = clock.now().astimezone(UTC)
    alive = select(OutboxWorker.worker).where(OutboxWorker.heartbeat_at >= now - heartbeat_timeout)
    stale = and_(Notification.status == NotificationStatus.CLAIMED, or_(
        Notification.claimed_at < now - lease,
        # a claim younger than the timeout is never judged: its worker may not have beaten yet
        and_(Notification.claimed_at < now - heartbeat_timeout, Notification.claimed_by.not_in(alive)),
    ))
    attempted = and_(Notification.attempted_at.is_not(None), Notification.attempted_at >= Notification.claimed_at)
    async with db.transaction() as s:
        released = await s.execute(
            update(Notification).where(stale, ~attempted)
            .values(status=NotificationStatus.PENDING, claimed_by=None, claimed_at=None)
        )
        lost = await s.execute(
            update(Notification).where(stale, attempted)
            .values(status=NotificationStatus.UNCERTAIN, last_error="sweeper stopped during the send")
        )
    return released.rowcount or 0, lost.rowcount or 0


def new_claim_token(worker: str = "sweeper") -> str:
    return f"{worker[:40]}:{uuid.uuid4().hex[:12]}"


async def claim(db: Database, clock: Clock, token: str, *, limit: int = 200,
                library_ids: Sequence[int] | None = None) -> list[Claimed]:
    """Claim up to ``limit`` due notices (plus the rest of the same patrons' due notices, so a
    digest is whole). Two sweepers never get the same row."""
    now = clock.now().astimezone(UTC)
    due = and_(Notification.status == NotificationStatus.PENDING, Notification.send_after <= now)
    if library_ids is not None:
        due = and_(due, Notification.patron_id.in_(
            select(Patron.id).where(Patron.library_id.in_(list(library_ids)))))
    columns = (Notification.id, Notification.key, Notification.patron_id, Notification.kind,
               Notification.payload, Notification.attempts)
    values = dict(status=NotificationStatus.CLAIMED, claimed_by=token, claimed_at=now)

    def pick(condition, n: int | None):
        sub = select(Notification.id).where(condition).order_by(Notification.patron_id, Notification.id)
        if n is not None:
            sub = sub.limit(n)
        if db.is_postgres:
            sub = sub.with_for_update(skip_locked=True)
        # The outer status check makes it a conditional update on SQLite (one writer at a time).
        return (update(Notification)
                .where(Notification.id.in_(sub.scalar_subquery()), Notification.status == NotificationStatus.PENDING)
                .values(**values).returning(*columns))

    async with db.transaction() as s:
        rows = list((await s.execute(pick(due, limit))).all())
        if rows:
            patrons_seen = {r.patron_id for r in rows}
            rows += list((await s.execute(pick(and_(due, Notification.patron_id.in_(patrons_seen)), None))).all())
    return [Claimed(r.id, r.key, r.patron_id, r.kind, dict(r.payload or {}), r.attempts) for r in rows]


async def attempt(db: Database, clock: Clock, token: str, ids: Sequence[int]) -> set[int]:
    """Write-ahead mark, committed before the send call. Returns the ids still ours."""
    now = clock.now().astimezone(UTC)
    async with db.transaction() as s:
        result = await s.execute(
            update(Notification)
            .where(Notification.id.in_(list(ids)), Notification.status == NotificationStatus.CLAIMED,
                   Notification.claimed_by == token)
            .values(attempted_at=now, attempts=Notification.attempts + 1)
            .returning(Notification.id)
        )
        return set(result.scalars())


async def _finish(db: Database, ids: Iterable[int], token: str | None, **values: Any) -> int:
    ids = list(ids)
    if not ids:
        return 0
    async with db.transaction() as s:
        condition = Notification.id.in_(ids)
        if token is not None:
            condition = and_(condition, Notification.claimed_by == token)
        result = await s.execute(update(Notification).where(condition).values(**values))
        return result.rowcount or 0


async def mark_sent(db: Database, clock: Clock, token: str, ids: Sequence[int], *, channel: str,
                    chat_id: str, message_ref: str | None) -> int:
    return await _finish(db, ids, token, status=NotificationStatus.SENT, sent_at=clock.now().astimezone(UTC),
                         channel=channel, chat_id=chat_id, message_ref=message_ref, last_error=None)


async def mark_uncertain(db: Database, token: str, ids: Sequence[int], error: str) -> int:
    return await _finish(db, ids, token, status=NotificationStatus.UNCERTAIN, last_error=error[:500])


# "due_soon:loan=12:2026-12-03", "overdue:loan=12:…:7" → loan=12; "pickup_tomorrow:hold=5:…",
# "hold_ready:5", "hold_expired:5" → hold=5. Notices without a subject are never superseded.
_SUBJECT = re.compile(r"^[a-z_]+:(?P<kind>loan|hold)=(?P<id>\d+)(?::|$)|^hold_(?:ready|expired):(?P<hold>\d+)$")


def subject(key: str) -> str | None:
    """What a notice is about, for superseding: "loan=12", "hold=5", or None."""
    match = _SUBJECT.match(key or "")
    if match is None:
        return None
    return f"hold={match['hold']}" if match["hold"] else f"{match['kind']}={match['id']}"


async def supersede(db: Database, ids: Sequence[int]) -> int:
    """Earlier uncertain notices about the same subject as ``ids`` (just sent, or uncertain
    themselves) → superseded: the reader has a newer word about that loan or hold. The sweeper
    calls it once per batch; usually one indexed query that finds nothing."""
    ids = list(ids)
    if not ids:
        return 0
    async with db.transaction() as s:
        return await _supersede(s, ids)


async def _supersede(s: AsyncSession, ids: list[int]) -> int:
    patrons_of = select(Notification.patron_id).where(Notification.id.in_(ids))
    older = (await s.execute(select(Notification.id, Notification.patron_id, Notification.key).where(
        Notification.status == NotificationStatus.UNCERTAIN, Notification.patron_id.in_(patrons_of),
        Notification.id.not_in(ids)))).all()
    if not older:
        return 0
    newer = (await s.execute(select(Notification.id, Notification.patron_id, Notification.key)
                             .where(Notification.id.in_(ids)))).all()
    wanted = {(pid, subject(key)): (nid, key) for nid, pid, key in newer if subject(key)}
    done = 0
    for nid, pid, key in older:
        by = wanted.get((pid, subject(key)))
        if by is not None and nid < by[0]:
            await s.execute(update(Notification).where(
                Notification.id == nid, Notification.status == NotificationStatus.UNCERTAIN).values(
                status=NotificationStatus.SUPERSEDED, last_error=f"superseded by {by[1]}"[:500]))
            done += 1
    return done


async def mark_skipped(db: Database, token: str | None, ids: Sequence[int], reason: str) -> int:
    return await _finish(db, ids, token, status=NotificationStatus.SKIPPED, last_error=reason[:500])


async def mark_failed(db: Database, token: str | None, ids: Sequence[int], reason: str) -> int:
    return await _finish(db, ids, token, status=NotificationStatus.FAILED, last_error=reason[:500])


async def release(db: Database, token: str, ids: Sequence[int], *, not_before: datetime | None = None) -> int:
    """Give claims back untouched (the sweep stopped before reaching them, or they are for a
    channel this process does not run: ``not_before`` keeps it from claiming them again at once)."""
    extra = {"send_after": not_before.astimezone(UTC)} if not_before is not None else {}
    return await _finish(db, ids, token, status=NotificationStatus.PENDING, claimed_by=None, claimed_at=None,
                         **extra)


def backoff(attempts: int) -> timedelta:
    """1, 4, 16, 64 minutes … capped at 6 hours."""
    return timedelta(minutes=min(4 ** max(attempts - 1, 0), 360))


async def mark_retry(db: Database, clock: Clock, token: str, ids: Sequence[int], error: str, *,
                     retry_after: float | None = None) -> int:
    """Definitely not delivered: pending again after a backoff, or failed after MAX_ATTEMPTS."""
    now = clock.now().astimezone(UTC)
    ids = list(ids)
    async with db.transaction() as s:
        rows = (await s.execute(select(Notification.id, Notification.attempts)
                                .where(Notification.id.in_(ids), Notification.claimed_by == token))).all()
        for notice_id, attempts in rows:
            if attempts >= MAX_ATTEMPTS:
                values = dict(status=NotificationStatus.FAILED)
            else:
                wait = timedelta(seconds=retry_after) if retry_after else backoff(attempts)
                values = dict(status=NotificationStatus.PENDING, send_after=now + wait,
                              claimed_by=None, claimed_at=None)
            await s.execute(update(Notification).where(Notification.id == notice_id)
                            .values(last_error=error[:500], **values))
    return len(rows)

# -- who receives it -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Recipient:
    patron_id: int
    library_id: int
    library_code: str
    timezone: str
    language: str | None
    role: Role
    full_name: str
    class_name: str | None
    preferences: dict[str, Any]
    identity_id: int | None = None
    channel: str | None = None
    chat_id: str | None = None
    external_id: str | None = None
    unreachable: bool = False          # has chats, but every one refused delivery

    def actor(self, default_language: str = "vi") -> Actor:
        return Actor(identity_id=self.identity_id, channel=self.channel or "", chat_id=self.chat_id or "",
                     language=self.language or default_language, patron_id=self.patron_id,
                     library_id=self.library_id, library_code=self.library_code, role=self.role,
                     full_name=self.full_name, class_name=self.class_name)


async def recipients(db: Database, patron_ids: Iterable[int], channels: Sequence[str]) -> dict[int, Recipient]:
    """Each patron and the chat to write to: among their chats on ``channels`` (the ones this
    process runs) that still accept messages, the one they used last; ``channels``' order only
    breaks ties between chats never used. A chat that refuses delivery is marked unreachable, so
    the next claim falls back to the person's other chats."""
    patron_ids = list(set(patron_ids))
    found: dict[int, Recipient] = {}
    if not patron_ids:
        return found
    async with db.session() as s:
        people = (await s.execute(
            select(Patron, Library.code, Library.timezone).join(Library, Library.id == Patron.library_id)
            .where(Patron.id.in_(patron_ids))
        )).all()
        chats = (await s.execute(
            select(ChatIdentity).where(ChatIdentity.patron_id.in_(patron_ids))
        )).scalars().all()
    by_patron: dict[int, list[ChatIdentity]] = defaultdict(list)
    for chat in chats:
        by_patron[chat.patron_id].append(chat)
    rank = {name: i for i, name in enumerate(channels)}
    epoch = datetime.min.replace(tzinfo=UTC)

    def recency(chat: ChatIdentity) -> tuple:
        seen = aware(chat.last_seen_at) or aware(chat.linked_at) or epoch
        return (-seen.timestamp() if seen is not epoch else 0.0, rank[chat.channel], -chat.id)

    for patron, code, tz in people:
        own = [c for c in by_patron[patron.id] if c.channel in rank]
        usable = sorted((c for c in own if c.unreachable_at is None), key=recency)
        chat = usable[0] if usable else None
        found[patron.id] = Recipient(
            patron_id=patron.id, library_id=patron.library_id, library_code=code, timezone=tz,
            language=patron.language or (chat.language if chat else None), role=patron.role,
            full_name=patron.full_name, class_name=patron.class_name, preferences=patron.preferences or {},
            identity_id=chat.id if chat else None, channel=chat.channel if chat else None,
            chat_id=chat.chat_id if chat else None, external_id=chat.external_id if chat else None,
            unreachable=bool(own) and not usable,
        )
    return found


# -- what librarians see --------------------------------------------------------------------------

@dataclass(frozen=True)
class UnreachableChat:
    patron_id: int
    full_name: str
    card_number: str
    class_name: str | None
    channel: str
    since: datetime


async def unreachable_chats(db: Database, actor: Actor | None, *, library_id: int | None = None,
                            limit: int = 200) -> list[UnreachableChat]:
    """Patrons whose chat refused delivery (blocked the bot). Staff of that library only;
    ``actor=None`` is the operator's CLI on the server."""
    if actor is not None:
        require_staff(actor)
        library_id = actor.library_id
    query = (select(Patron.id, Patron.full_name, Patron.card_number, Patron.class_name,
                    ChatIdentity.channel, ChatIdentity.unreachable_at)
             .join(ChatIdentity, ChatIdentity.patron_id == Patron.id)
             .where(ChatIdentity.unreachable_at.is_not(None))
             .order_by(Patron.class_name, Patron.full_name).limit(limit))
    if library_id is not None:
        query = query.where(Patron.library_id == library_id)
    async with db.session() as s:
        rows = (await s.execute(query)).all()
    return [UnreachableChat(pid, name, card, cls, channel, aware(since))
            for pid, name, card, cls, channel, since in rows]

async def status_counts(db: Database) -> dict[str, int]:
    async with db.session() as s:
        rows = (await s.execute(select(Notification.status, func.count()).group_by(Notification.status))).all()
    return {str(getattr(status, "value", status)): count for status, count in rows}


async def requeue_uncertain(db: Database, clock: Clock, ids: Sequence[int] | None = None) -> int:
    """A librarian decided these should be sent again (the only way an uncertain notice is re-sent)."""
    condition = Notification.status == NotificationStatus.UNCERTAIN
    if ids is not None:
        condition = and_(condition, Notification.id.in_(list(ids)))
    async with db.transaction() as s:
        result = await s.execute(update(Notification).where(condition).values(
            status=NotificationStatus.PENDING, claimed_by=None, claimed_at=None,
            send_after=clock.now().astimezone(UTC)))
        return result.rowcount or 0


async def pending_due(db: Database, clock: Clock, library_ids: Sequence[int]) -> list[Claimed]:
    """For dry runs: what a claim would take now, without claiming it."""
    now = clock.now().astimezone(UTC)
    async with db.session() as s:
        rows = (await s.execute(
            select(Notification.id, Notification.key, Notification.patron_id, Notification.kind,
                   Notification.payload, Notification.attempts)
            .join(Patron, Patron.id == Notification.patron_id)
            .where(Notification.status == NotificationStatus.PENDING, Notification.send_after <= now,
                   Patron.library_id.in_(list(library_ids)))
            .order_by(Notification.patron_id, Notification.id)
        )).all()
    return [Claimed(*r) for r in rows]

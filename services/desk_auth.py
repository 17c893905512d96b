"""Who is at the desk: one-time sign-in links, server-side sessions, optional passwords.

Public API:
- ``issue_link(db, actor, *, clock, ttl=LINK_TTL) -> str``: a one-time token for the staff
  member behind ``actor`` (a linked chat, or the operator's ``docsach staff-login CARD``).
- ``operator_link(db, library_code, card, *, clock) -> str`` (the server's own CLI).
- ``redeem_link(db, token, *, clock, user_agent=None) -> NewSession``: consumes the token once.
- ``password_sign_in(db, library_code, card, password, *, client, clock, user_agent=None) -> NewSession``.
- ``set_password(db, actor, password, *, clock)`` / ``clear_password(db, actor)``: one's own.
- ``load(db, token, *, clock, idle=…) -> DeskUser | None``: the session behind a cookie, or None
  when unknown, revoked, idle too long, past its absolute end, or its person is no longer staff.
- ``list_sessions(db, actor, *, clock)``, ``revoke(db, actor, session_id, *, clock)``, ``sign_out``.

Why these choices:
- Tokens are 256-bit random strings; the database keeps only their SHA-256, so a leaked backup
  cannot open a session or use a link.
- A link is consumed by a conditional UPDATE (single use, even with two clicks racing) and is only
  ever consumed by a POST: chat apps fetch links for previews, and a GET must not burn them.
- Desk sessions are for staff: librarians and admins, and teachers (who moderate reflections and
  see their classes). Students never get one, and a session dies the moment its person stops
  being staff or is deactivated, because every request re-reads the patron row.
- Password guesses are limited per client address and per card, in the database (every worker
  shares the count). A flood against one card blocks only password sign-in for that card; the
  chat link still works, so an attacker cannot lock a librarian out of the desk.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, update

from services import audit
from services.accounts import _hit
from services.common import Clock, DomainError, NotFound, PermissionDenied, aware
from services.db import Database, insert_for
from services.models import DeskPassword, DeskSession, DeskSignInLink, Library, Patron, RateCounter, Role
from services.patrons import Actor

CHANNEL = "web"
LINK_TTL = timedelta(minutes=10)
IDLE = timedelta(hours=2)            # no request for this long: signed out
ABSOLUTE = timedelta(hours=12)       # a school day, whatever the activity
TOUCH_EVERY = timedelta(seconds=60)  # last_seen_at is written at most this often
DESK_ROLES = (Role.TEACHER, Role.LIBRARIAN, Role.ADMIN)
MIN_PASSWORD = 10
MAX_PASSWORD = 200
CLIENT_LIMIT = (20, 15 * 60)         # password attempts per client address per 15 minutes
CARD_LIMIT = (10, 15 * 60)           # … per card


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class NewSession:
    token: str          # for the cookie; never stored
    session_id: int
    csrf_token: str
    expires_at: datetime


@dataclass(frozen=True)
class DeskUser:
    """The person behind a desk request, as the services see them (``actor``)."""

    session_id: int
    csrf_token: str
    actor: Actor
    library_name: str
    expires_at: datetime

    @property
    def role(self) -> Role:
        assert self.actor.role is not None
        return self.actor.role


@dataclass(frozen=True)
class SessionView:
    session_id: int
    method: str
    user_agent: str | None
    created_at: datetime
    last_seen_at: datetime
    current: bool


def _require_desk_role(role: Role | None) -> None:
    if role not in DESK_ROLES:
        raise PermissionDenied("desk.students_no_desk")


async def issue_link(db: Database, actor: Actor, *, clock: Clock, ttl: timedelta = LINK_TTL) -> str:
    """A one-time sign-in token for the actor themselves (staff only)."""
    if not actor.is_linked:
        raise DomainError("link.required")
    _require_desk_role(actor.role)
    token = secrets.token_urlsafe(32)
    now = clock.now()
    async with db.transaction() as s:
        s.add(DeskSignInLink(token_hash=_digest(token), patron_id=actor.patron_id, created_at=now,
                             expires_at=now + ttl, channel=actor.channel[:16]))
        audit.record(s, "desk.link_issue", "patron", actor.patron_id, actor_patron_id=actor.patron_id,
                     library_id=actor.library_id, channel=actor.channel)
    return token


async def operator_link(db: Database, library_code: str, card: str, *, clock: Clock) -> tuple[str, str]:
    """For ``docsach staff-login CARD`` on the server: (token, full name) for that staff member."""
    async with db.session() as s:
        row = (await s.execute(
            select(Patron, Library).join(Library, Library.id == Patron.library_id)
            .where(Library.code == library_code, func.upper(Patron.card_number) == card.strip().upper(),
                   Patron.active.is_(True)))).first()
    if row is None:
        raise NotFound("desk.card_unknown", card=card[:32], library=library_code[:32])
    patron, library = row
    actor = Actor(identity_id=None, channel="cli", chat_id="cli", language=patron.language or "vi",
                  patron_id=patron.id, library_id=library.id, library_code=library.code, role=patron.role,
                  full_name=patron.full_name)
    return await issue_link(db, actor, clock=clock), patron.full_name


async def _open_session(s, patron_id: int, method: str, *, now: datetime, user_agent: str | None,
                        absolute: timedelta) -> NewSession:
    token = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    row = DeskSession(token_hash=_digest(token), csrf_token=csrf, patron_id=patron_id, method=method,
                      user_agent=(user_agent or "")[:200] or None, created_at=now, last_seen_at=now,
                      expires_at=now + absolute)
    s.add(row)
    await s.flush()
    return NewSession(token, row.id, csrf, now + absolute)


async def redeem_link(db: Database, token: str, *, clock: Clock, user_agent: str | None = None,
                      absolute: timedelta = ABSOLUTE) -> NewSession:
    """Consume a sign-in link and open a session for its staff member."""
    now = clock.now()
    if not token or len(token) > 100:
        raise DomainError("desk.link_invalid")
    async with db.transaction() as s:
        claimed = (await s.execute(
            update(DeskSignInLink).where(DeskSignInLink.token_hash == _digest(token),
                                         DeskSignInLink.used_at.is_(None), DeskSignInLink.expires_at > now)
            .values(used_at=now).returning(DeskSignInLink.patron_id))).first()
        if claimed is None:
            known = (await s.execute(select(DeskSignInLink).where(
                DeskSignInLink.token_hash == _digest(token)))).scalar_one_or_none()
            if known is None:
                raise DomainError("desk.link_invalid")
            raise DomainError("desk.link_used" if known.used_at is not None else "desk.link_expired")
        patron = await s.get(Patron, claimed[0])
        if patron is None or not patron.active:
            raise DomainError("desk.link_invalid")
        _require_desk_role(patron.role)
        new = await _open_session(s, patron.id, "link", now=now, user_agent=user_agent, absolute=absolute)
        audit.record(s, "desk.sign_in", "desk_session", new.session_id, actor_patron_id=patron.id,
                     library_id=patron.library_id, channel=CHANNEL, method="link")
        return new


def _hasher():
    from argon2 import PasswordHasher

    return PasswordHasher()  # argon2id with the library's current recommended parameters


async def set_password(db: Database, actor: Actor, password: str, *, clock: Clock) -> None:
    """Set one's own desk password (at least 10 characters)."""
    _require_desk_role(actor.role)
    if len(password or "") < MIN_PASSWORD:
        raise DomainError("desk.password_short", length=MIN_PASSWORD)
    if len(password) > MAX_PASSWORD:
        raise DomainError("desk.password_long", length=MAX_PASSWORD)
    hashed = _hasher().hash(password)
    now = clock.now()
    async with db.transaction() as s:
        stmt = insert_for(s)(DeskPassword).values(patron_id=actor.patron_id, password_hash=hashed, updated_at=now)
        stmt = stmt.on_conflict_do_update(index_elements=["patron_id"],
                                          set_={"password_hash": hashed, "updated_at": now})
        await s.execute(stmt)
        audit.record(s, "desk.password_set", "patron", actor.patron_id, actor_patron_id=actor.patron_id,
                     library_id=actor.library_id, channel=actor.channel)


async def clear_password(db: Database, actor: Actor) -> bool:
    _require_desk_role(actor.role)
    async with db.transaction() as s:
        row = await s.get(DeskPassword, actor.patron_id)
        if row is None:
            return False
        await s.delete(row)
        audit.record(s, "desk.password_clear", "patron", actor.patron_id, actor_patron_id=actor.patron_id,
                     library_id=actor.library_id, channel=actor.channel)
        return True


async def has_password(db: Database, actor: Actor) -> bool:
    async with db.session() as s:
        return await s.get(DeskPassword, actor.patron_id) is not None


async def password_sign_in(db: Database, library_code: str, card: str, password: str, *, client: str,
                           clock: Clock, user_agent: str | None = None,
                           absolute: timedelta = ABSOLUTE) -> NewSession:
    """Check a card's desk password; every attempt counts against the client's and the card's limits."""
    now = clock.now()
    library_code = (library_code or "").strip()[:32]
    card = (card or "").strip()[:32]
    async with db.transaction() as s:
        await s.execute(delete(RateCounter).where(
            RateCounter.key.like("desk:%"), RateCounter.window_start < int(now.timestamp()) - 86400))
        client_count, client_left = await _hit(s, f"desk:ip:{client[:60]}", CLIENT_LIMIT[1], now)
        card_count, card_left = await _hit(s, f"desk:card:{library_code.lower()}:{card.upper()}"[:80],
                                           CARD_LIMIT[1], now)
    if client_count > CLIENT_LIMIT[0] or card_count > CARD_LIMIT[0]:
        left = client_left if client_count > CLIENT_LIMIT[0] else card_left
        raise DomainError("desk.too_many_attempts", minutes=max(1, -(-left // 60)))
    async with db.session() as s:
        row = (await s.execute(
            select(Patron, DeskPassword.password_hash).join(Library, Library.id == Patron.library_id)
            .outerjoin(DeskPassword, DeskPassword.patron_id == Patron.id)
            .where(Library.code == library_code, func.upper(Patron.card_number) == card.upper(),
                   Patron.active.is_(True)))).first()
    hasher = _hasher()
    stored = row[1] if row is not None else None
    from argon2.exceptions import InvalidHashError, VerificationError

    try:
        # Without a password, a check against a throw-away hash spends the same time, so timing
        # does not tell which cards have one.
        hasher.verify(stored or _dummy_hash(), password if stored else "\0")
        ok = stored is not None
    except (VerificationError, InvalidHashError):
        ok = False
    if not ok:
        raise DomainError("desk.password_wrong")
    patron = row[0]
    _require_desk_role(patron.role)
    async with db.transaction() as s:
        if hasher.check_needs_rehash(stored):
            await s.execute(update(DeskPassword).where(DeskPassword.patron_id == patron.id)
                            .values(password_hash=hasher.hash(password)))
        new = await _open_session(s, patron.id, "password", now=now, user_agent=user_agent, absolute=absolute)
        audit.record(s, "desk.sign_in", "desk_session", new.session_id, actor_patron_id=patron.id,
                     library_id=patron.library_id, channel=CHANNEL, method="password")
        return new


_dummy: list[str] = []


def _dummy_hash() -> str:
    if not _dummy:
        _dummy.append(_hasher().hash(secrets.token_urlsafe(16)))
    return _dummy[0]


async def load(db: Database, token: str | None, *, clock: Clock, idle: timedelta = IDLE) -> DeskUser | None:
    """The live session behind a cookie token, with its person re-read (role, library, active)."""
    if not token or len(token) > 100:
        return None
    now = clock.now()
    async with db.session() as s:
        row = (await s.execute(
            select(DeskSession, Patron, Library).join(Patron, Patron.id == DeskSession.patron_id)
            .join(Library, Library.id == Patron.library_id)
            .where(DeskSession.token_hash == _digest(token)))).first()
    if row is None:
        return None
    session, patron, library = row
    if (session.revoked_at is not None or aware(session.expires_at) <= now
            or aware(session.last_seen_at) + idle <= now or not patron.active or patron.role not in DESK_ROLES):
        return None
    if now - aware(session.last_seen_at) >= TOUCH_EVERY:
        async with db.transaction() as s:
            await s.execute(update(DeskSession).where(DeskSession.id == session.id).values(last_seen_at=now))
    actor = Actor(identity_id=None, channel=CHANNEL, chat_id=f"web:{session.id}",
                  language=patron.language or "vi", patron_id=patron.id, library_id=library.id,
                  library_code=library.code, role=patron.role, full_name=patron.full_name,
                  class_name=patron.class_name)
    return DeskUser(session.id, session.csrf_token, actor, library.name, aware(session.expires_at))


async def list_sessions(db: Database, actor: Actor, *, clock: Clock, current_id: int | None = None,
                        idle: timedelta = IDLE) -> list[SessionView]:
    """One's own live sessions, newest first."""
    _require_desk_role(actor.role)
    now = clock.now()
    async with db.session() as s:
        rows = (await s.execute(
            select(DeskSession).where(DeskSession.patron_id == actor.patron_id, DeskSession.revoked_at.is_(None),
                                      DeskSession.expires_at > now, DeskSession.last_seen_at > now - idle)
            .order_by(DeskSession.last_seen_at.desc(), DeskSession.id.desc()))).scalars().all()
    return [SessionView(r.id, r.method, r.user_agent, aware(r.created_at), aware(r.last_seen_at), r.id == current_id)
            for r in rows]


async def revoke(db: Database, actor: Actor, session_id: int, *, clock: Clock) -> bool:
    """End a session: one's own, or (admins) any of a staff member of the same library."""
    _require_desk_role(actor.role)
    now = clock.now()
    async with db.transaction() as s:
        row = (await s.execute(select(DeskSession, Patron.library_id).join(Patron, Patron.id == DeskSession.patron_id)
                               .where(DeskSession.id == session_id))).first()
        if row is None:
            raise NotFound("desk.session_unknown")
        session, library_id = row
        mine = session.patron_id == actor.patron_id
        if not mine and not (actor.role == Role.ADMIN and library_id == actor.library_id):
            raise NotFound("desk.session_unknown")
        if session.revoked_at is not None:
            return False
        session.revoked_at = now
        audit.record(s, "desk.sign_out" if mine else "desk.revoke", "desk_session", session.id,
                     actor_patron_id=actor.patron_id, library_id=library_id, channel=CHANNEL)
        return True


async def sign_out(db: Database, user: DeskUser, *, clock: Clock) -> None:
    await revoke(db, user.actor, user.session_id, clock=clock)


async def revoke_all(db: Database, actor: Actor, *, clock: Clock) -> int:
    """Sign out everywhere (e.g. a desk PC was left signed in)."""
    _require_desk_role(actor.role)
    async with db.transaction() as s:
        result = await s.execute(update(DeskSession).where(
            DeskSession.patron_id == actor.patron_id, DeskSession.revoked_at.is_(None)).values(revoked_at=clock.now()))
        audit.record(s, "desk.sign_out_all", "patron", actor.patron_id, actor_patron_id=actor.patron_id,
                     library_id=actor.library_id, channel=CHANNEL, count=result.rowcount or 0)
        return result.rowcount or 0

"""Self-check kiosks: their SIP2 logins, what they may look up, and the receipts of what they lend.

A kiosk acts for one library only, as that library's staff would at the desk: every loan change
goes through ``services.circulation`` with an :class:`Actor` whose channel is ``sip2:<kiosk>``
(so the audit log says which machine did it). Passwords are stored as salted scrypt hashes;
failed logins are limited per kiosk name *and* sender address, so someone guessing from one
machine cannot lock the real kiosk out, and per address overall, so they cannot try every name.

Receipts: every kiosk checkout, renewal and return of one patron session adds an item to one
pending ``kiosk_receipt`` notice in the same transaction as the loan change. The notice is sent by
the reminder sweeper (once, on the reader's chat) when the session ends or has been quiet for
``RECEIPT_QUIET``; several items make a digest. If the sweeper already took the notice, the next
item starts a new one, so nothing is lost or told twice.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services import audit, circulation, outbox
from services.common import Clock, DomainError, NotFound
from services.db import Database, insert_for
from services.models import (
    Copy,
    CopyStatus,
    Hold,
    HoldStatus,
    Kiosk,
    Library,
    Loan,
    Location,
    Notification,
    NotificationStatus,
    Patron,
    RateCounter,
    Role,
    Title,
)
from services.patrons import Actor
from services.rules import rules_for

# "sip2:" + name must fit the audit log's 16-character channel column.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,10}$")
MIN_PASSWORD = 8
SCRYPT = {"n": 2 ** 14, "r": 8, "p": 1}        # ~16 MB and tens of ms per check
NAME_LIMIT = (5, 15 * 60)      # failed logins per (kiosk name, address) per window (seconds)
ADDRESS_LIMIT = (20, 15 * 60)  # failed logins per address, whatever the name
RECEIPT_KIND = "kiosk_receipt"
RECEIPT_QUIET = timedelta(minutes=2)
CHANNEL_PREFIX = "sip2:"


# -- passwords -----------------------------------------------------------------------------------

def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, maxmem=64 * 2 ** 20, **SCRYPT)
    enc = base64.b64encode
    return f"scrypt${SCRYPT['n']}${SCRYPT['r']}${SCRYPT['p']}${enc(salt).decode()}${enc(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                             dklen=len(expected), maxmem=64 * 2 ** 20)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


_DUMMY_HASH = hash_password(secrets.token_urlsafe(12))


def new_password() -> str:
    return secrets.token_urlsafe(12)


# -- accounts -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class KioskInfo:
    id: int
    name: str
    library_id: int
    library_code: str
    library_name: str
    timezone: str
    enabled: bool
    created_at: datetime | None
    last_login_at: datetime | None

    @property
    def channel(self) -> str:
        return CHANNEL_PREFIX + self.name

    def actor(self, language: str) -> Actor:
        """The kiosk as the domain sees it: staff of its own library, no card of its own."""
        return Actor(identity_id=None, channel=self.channel, chat_id=self.name, language=language,
                     library_id=self.library_id, library_code=self.library_code, role=Role.LIBRARIAN,
                     full_name=self.name)


def _info(kiosk: Kiosk, library: Library) -> KioskInfo:
    return KioskInfo(kiosk.id, kiosk.name, library.id, library.code, library.name, library.timezone,
                     kiosk.enabled, kiosk.created_at, kiosk.last_login_at)


async def add_kiosk(db: Database, library_code: str, name: str, password: str | None = None) -> tuple[KioskInfo, str]:
    """Create a kiosk login. Returns it and the password (generated when not given)."""
    if not NAME_RE.match(name or ""):
        raise DomainError("sip2.kiosk_bad_name", name=(name or "")[:40])
    if password is None:
        password = new_password()
    if len(password) < MIN_PASSWORD or any(ch in password for ch in "|\r\n") or password != password.strip():
        raise DomainError("sip2.kiosk_bad_password", length=MIN_PASSWORD)
    hashed = await asyncio.to_thread(hash_password, password)
    async with db.transaction() as s:
        library = (await s.execute(select(Library).where(Library.code == library_code))).scalar_one_or_none()
        if library is None:
            raise DomainError("sip2.no_library", library=library_code[:40])
        taken = await s.scalar(select(Kiosk.id).where(func.lower(Kiosk.name) == name.lower()))
        if taken is not None:
            raise DomainError("sip2.kiosk_exists", name=name)
        kiosk = Kiosk(library_id=library.id, name=name, password_hash=hashed, enabled=True)
        s.add(kiosk)
        await s.flush()
        audit.record(s, "kiosk.add", "kiosk", kiosk.id, library_id=library.id, channel="cli", name=name)
        await s.refresh(kiosk)
        return _info(kiosk, library), password


async def list_kiosks(db: Database, library_code: str | None = None) -> list[KioskInfo]:
    async with db.session() as s:
        query = select(Kiosk, Library).join(Library, Library.id == Kiosk.library_id).order_by(Library.code, Kiosk.name)
        if library_code:
            query = query.where(Library.code == library_code)
        return [_info(k, lib) for k, lib in (await s.execute(query)).all()]


async def set_enabled(db: Database, name: str, enabled: bool) -> KioskInfo:
    """Disable (or enable again) a kiosk. A disabled kiosk's next message is refused, even on an
    open connection."""
    async with db.transaction() as s:
        row = (await s.execute(select(Kiosk, Library).join(Library, Library.id == Kiosk.library_id)
                               .where(func.lower(Kiosk.name) == (name or "").lower()))).first()
        if row is None:
            raise DomainError("sip2.kiosk_not_found", name=(name or "")[:40])
        kiosk, library = row
        kiosk.enabled = enabled
        audit.record(s, "kiosk.enable" if enabled else "kiosk.disable", "kiosk", kiosk.id, library_id=library.id,
                     channel="cli", name=kiosk.name)
        await s.flush()
        return _info(kiosk, library)


async def _failures(s: AsyncSession, key: str, window: int, now: datetime) -> int:
    epoch = int(now.timestamp())
    return int(await s.scalar(select(RateCounter.count).where(
        RateCounter.key == key, RateCounter.window_start == epoch - epoch % window)) or 0)


async def _fail(s: AsyncSession, key: str, window: int, now: datetime) -> None:
    epoch = int(now.timestamp())
    insert = insert_for(s)
    await s.execute(insert(RateCounter).values(key=key, window_start=epoch - epoch % window, count=1)
                    .on_conflict_do_update(index_elements=["key", "window_start"],
                                           set_={"count": RateCounter.count + 1}))


class LoginRefused(DomainError):
    """Wrong name or password, disabled kiosk, or too many failures (the kiosk is not told which)."""

    def __init__(self, reason: str) -> None:
        super().__init__("sip2.login_refused")
        self.reason = reason


async def authenticate(db: Database, name: str, password: str, *, address: str, clock: Clock) -> KioskInfo:
    """The kiosk for this login, or :class:`LoginRefused`. Every refusal costs the same scrypt time."""
    now = clock.now()
    name = (name or "")[:64]
    name_key = f"sip2:login:{name.lower()}@{address}"[:80]
    address_key = f"sip2:login:*@{address}"[:80]
    async with db.session() as s:
        limited = (await _failures(s, name_key, NAME_LIMIT[1], now) >= NAME_LIMIT[0]
                   or await _failures(s, address_key, ADDRESS_LIMIT[1], now) >= ADDRESS_LIMIT[0])
        row = (await s.execute(select(Kiosk, Library).join(Library, Library.id == Kiosk.library_id)
                               .where(Kiosk.name == name))).first()
    stored = row[0].password_hash if row is not None else _DUMMY_HASH
    ok = await asyncio.to_thread(verify_password, password or "", stored)
    if limited:
        raise LoginRefused("rate limited")
    if row is None or not ok:
        async with db.transaction() as s:
            await s.execute(delete(RateCounter).where(RateCounter.key.like("sip2:login:%"),
                                                      RateCounter.window_start < int(now.timestamp()) - 86400))
            await _fail(s, name_key, NAME_LIMIT[1], now)
            await _fail(s, address_key, ADDRESS_LIMIT[1], now)
        raise LoginRefused("wrong name or password")
    kiosk, library = row
    if not kiosk.enabled:
        raise LoginRefused("disabled")
    async with db.transaction() as s:
        await s.execute(update(Kiosk).where(Kiosk.id == kiosk.id).values(last_login_at=now))
    return _info(kiosk, library)


async def still_enabled(db: Database, kiosk_id: int) -> bool:
    async with db.session() as s:
        return bool(await s.scalar(select(Kiosk.enabled).where(Kiosk.id == kiosk_id)))


# -- what a kiosk may look up ----------------------------------------------------------------------

@dataclass(frozen=True)
class ItemLine:
    barcode: str | None
    title: str
    due_date: date | None = None
    loan_id: int | None = None
    renewals: int = 0


@dataclass(frozen=True)
class PatronView:
    patron_id: int
    card_number: str
    full_name: str
    role: Role
    language: str | None
    active: bool
    charged: list[ItemLine]
    overdue: list[ItemLine]
    holds_ready: list[ItemLine]
    holds_waiting: list[ItemLine]
    max_loans: int
    max_holds: int
    blocked_overdue: bool         # a loan more than block_overdue_days late: no new loans
    at_loan_limit: bool

    @property
    def may_borrow(self) -> bool:
        return self.active and not self.blocked_overdue and not self.at_loan_limit


@dataclass(frozen=True)
class PatronBrief:
    """Enough to lend to someone (the checks themselves are circulation's)."""

    patron_id: int
    card_number: str
    full_name: str
    language: str | None
    active: bool


async def find_patron_brief(db: Database, kiosk: KioskInfo, card: str) -> PatronBrief:
    """One query: the patron of this card in the kiosk's library (another library's card: not found)."""
    card = " ".join((card or "").split())[:32]
    async with db.session() as s:
        cols = (Patron.id, Patron.card_number, Patron.full_name, Patron.language, Patron.active)
        row = (await s.execute(select(*cols).where(Patron.library_id == kiosk.library_id,
                                                   Patron.card_number == card))).first() if card else None
        if row is None and card:
            row = (await s.execute(select(*cols).where(Patron.library_id == kiosk.library_id,
                                                       func.upper(Patron.card_number) == card.upper()))).first()
    if row is None:
        raise NotFound("circulation.patron_not_found", ref=card)
    return PatronBrief(*row)


async def copy_location(s: AsyncSession, copy_id: int) -> str | None:
    """The shelf a returned copy belongs on (inside the caller's transaction)."""
    return await s.scalar(select(Location.name).join(Copy, Copy.location_id == Location.id)
                          .where(Copy.id == copy_id))


async def find_patron(db: Database, kiosk: KioskInfo, card: str, *, clock: Clock) -> PatronView:
    """A patron of the kiosk's library by card number, with loans and holds. Another library's
    card is simply not found."""
    card = " ".join((card or "").split())[:32]
    if not card:
        raise NotFound("circulation.patron_not_found", ref="")
    async with db.session() as s:
        library = await s.get(Library, kiosk.library_id)
        query = select(Patron).where(Patron.library_id == kiosk.library_id)
        patron = (await s.execute(query.where(Patron.card_number == card))).scalar_one_or_none()
        if patron is None:
            patron = (await s.execute(query.where(func.upper(Patron.card_number) == card.upper()))).scalars().first()
        if patron is None:
            raise NotFound("circulation.patron_not_found", ref=card)
        today = clock.today(library.timezone)
        rules = rules_for(library, patron.role)
        loans = (await s.execute(
            select(Loan, Copy.barcode, Title.title).join(Copy, Copy.id == Loan.copy_id)
            .join(Title, Title.id == Copy.title_id)
            .where(Loan.patron_id == patron.id, Loan.returned_at.is_(None)).order_by(Loan.due_date, Loan.id))).all()
        holds = await circulation._active_holds(s, patron.id)
    charged = [ItemLine(barcode, title, loan.due_date, loan.id, loan.renewals) for loan, barcode, title in loans]
    overdue = [item for item in charged if item.due_date < today]
    oldest = min((item.due_date for item in charged), default=None)
    return PatronView(
        patron.id, patron.card_number, patron.full_name, patron.role, patron.language, patron.active, charged,
        overdue,
        [ItemLine(barcode, title, hold.pickup_deadline) for hold, title, barcode in holds
         if hold.status == HoldStatus.READY],
        [ItemLine(None, title) for hold, title, _ in holds if hold.status == HoldStatus.WAITING],
        rules.max_loans, rules.max_holds,
        oldest is not None and (today - oldest).days > rules.block_overdue_days,
        len(charged) >= rules.max_loans,
    )


@dataclass(frozen=True)
class ItemView:
    copy_id: int
    barcode: str
    title: str
    status: CopyStatus
    location: str | None
    due_date: date | None
    holds_waiting: int
    held_for_card: str | None
    pickup_deadline: date | None


async def find_item(db: Database, kiosk: KioskInfo, barcode: str) -> ItemView:
    """A copy of the kiosk's library by barcode (another library's copy is not found)."""
    barcode = " ".join((barcode or "").split())[:32]
    if not barcode:
        raise NotFound("circulation.copy_not_found", ref="")
    async with db.session() as s:
        query = select(Copy).where(Copy.library_id == kiosk.library_id)
        copy = (await s.execute(query.where(Copy.barcode == barcode))).scalar_one_or_none()
        if copy is None:
            copy = (await s.execute(query.where(func.upper(Copy.barcode) == barcode.upper()))).scalars().first()
        if copy is None:
            raise NotFound("circulation.copy_not_found", ref=barcode)
        title = await s.get(Title, copy.title_id)
        location = await s.get(Location, copy.location_id) if copy.location_id else None
        due = await s.scalar(select(Loan.due_date).where(Loan.copy_id == copy.id, Loan.returned_at.is_(None)))
        waiting = int(await s.scalar(select(func.count()).select_from(Hold).where(
            Hold.library_id == copy.library_id, Hold.title_id == copy.title_id,
            Hold.status == HoldStatus.WAITING)) or 0)
        held = (await s.execute(select(Patron.card_number, Hold.pickup_deadline).join(Hold, Hold.patron_id == Patron.id)
                                .where(Hold.copy_id == copy.id, Hold.status == HoldStatus.READY))).first()
        return ItemView(copy.id, copy.barcode, title.title if title else "", copy.status,
                        location.name if location else None, due, waiting, held[0] if held else None,
                        held[1] if held else None)


async def loan_of(db: Database, kiosk: KioskInfo, patron_id: int, *, barcode: str | None = None,
                  title: str | None = None) -> ItemLine | None:
    """The patron's open loan of a copy (by barcode) or of a title (by its exact name)."""
    async with db.session() as s:
        query = (select(Loan, Copy.barcode, Title.title).join(Copy, Copy.id == Loan.copy_id)
                 .join(Title, Title.id == Copy.title_id)
                 .where(Loan.patron_id == patron_id, Loan.library_id == kiosk.library_id,
                        Loan.returned_at.is_(None)))
        if barcode:
            query = query.where(func.upper(Copy.barcode) == barcode.strip().upper()[:32])
        elif title:
            query = query.where(Title.title == title.strip())
        else:
            return None
        row = (await s.execute(query.order_by(Loan.due_date, Loan.id).limit(1))).first()
    if row is None:
        return None
    loan, code, name = row
    return ItemLine(code, name, loan.due_date, loan.id, loan.renewals)


async def block_patron(db: Database, kiosk: KioskInfo, card: str, reason: str, *, clock: Clock) -> PatronView:
    """SIP2 Block Patron (01): the kiosk kept or flagged a card. The card is switched off (like a
    librarian deactivating it) and the audit log keeps the kiosk's reason."""
    view = await find_patron(db, kiosk, card, clock=clock)
    async with db.transaction() as s:
        await s.execute(update(Patron).where(Patron.id == view.patron_id).values(active=False))
        audit.record(s, "patron.block", "patron", view.patron_id, library_id=kiosk.library_id,
                     channel=kiosk.channel, reason=(reason or "")[:200] or None)
    return await find_patron(db, kiosk, card, clock=clock)


# -- receipts ----------------------------------------------------------------------------------------

class Receipts:
    """The receipt notice of one patron session at one kiosk (see the module docstring)."""

    def __init__(self, kiosk: KioskInfo, patron_id: int, session: str, clock: Clock) -> None:
        self.kiosk = kiosk
        self.patron_id = patron_id
        self.session = session
        self.clock = clock
        self.notice_id: int | None = None
        self.part = 0
        self.items = 0
        self._pending: tuple[int, int] | None = None   # (notice id, part) of the transaction in flight

    async def _add(self, s: AsyncSession, entry: dict) -> None:
        now = self.clock.now()
        if self.notice_id is not None:
            notice = (await s.execute(
                select(Notification).where(Notification.id == self.notice_id,
                                           Notification.status == NotificationStatus.PENDING)
                .with_for_update().execution_options(populate_existing=True))).scalar_one_or_none()
            if notice is not None:
                items = list((notice.payload or {}).get("items") or [])
                notice.payload = {**notice.payload, "items": items + [entry]}
                notice.send_after = now + RECEIPT_QUIET
                await s.flush()
                self._pending = (notice.id, self.part)
                return
        part = self.part + 1
        key = f"kiosk:{self.session}:{self.patron_id}:{part}"
        await outbox.enqueue(s, patron_id=self.patron_id, kind=RECEIPT_KIND, key=key,
                                    send_after=now + RECEIPT_QUIET,
                                    payload={"items": [entry], "kiosk": self.kiosk.name,
                                             "library_id": self.kiosk.library_id})
        notice_id = await s.scalar(select(Notification.id).where(Notification.key == key))
        self._pending = (notice_id, part)

    def committed(self) -> None:
        """The loan change (and its receipt item) was committed: remember the notice to grow."""
        if self._pending is not None:
            self.notice_id, self.part = self._pending
            self._pending = None
            self.items += 1

    def rolled_back(self) -> None:
        self._pending = None

    async def release(self, db: Database) -> bool:
        """The session ended: send what is pending now instead of after the quiet period."""
        if self.notice_id is None:
            return False
        async with db.transaction() as s:
            result = await s.execute(update(Notification).where(
                Notification.id == self.notice_id, Notification.status == NotificationStatus.PENDING)
                .values(send_after=self.clock.now()))
        self.notice_id = None
        return bool(result.rowcount)


class ReceiptBook:
    """The receipts of one kiosk connection, one :class:`Receipts` per patron session. Returns at a
    kiosk often come without a card, so the reader is learned from the loan inside the transaction."""

    def __init__(self, kiosk: KioskInfo, clock: Clock) -> None:
        self.kiosk = kiosk
        self.clock = clock
        self.open: dict[int, Receipts] = {}
        self._touched: list[Receipts] = []

    def hook(self, action: str, patron_id: int | None = None) -> Callable[[AsyncSession, object], Awaitable[None]]:
        """For ``circulation.check_out/check_in/renew_loan(within=…)``: add one item in that transaction."""

        async def within(s: AsyncSession, result: object) -> None:
            pid = patron_id
            if pid is None:
                pid = await s.scalar(select(Loan.patron_id).where(Loan.id == result.loan_id))
            receipts = self.open.get(pid)
            if receipts is None:
                receipts = Receipts(self.kiosk, pid, secrets.token_hex(8), self.clock)
            self._touched = [receipts]
            await receipts._add(s, {"action": action, **_result_fields(result)})

        self._touched = []
        return within

    MAX_OPEN = 500   # readers whose returns went through one connection and who never ended a session

    def committed(self) -> None:
        for receipts in self._touched:
            receipts.committed()
            self.open.pop(receipts.patron_id, None)
            self.open[receipts.patron_id] = receipts      # most recent last
        while len(self.open) > self.MAX_OPEN:            # the oldest has long been sent or will be: a
            self.open.pop(next(iter(self.open)))         # later item just starts a new receipt
        self._touched = []

    def rolled_back(self) -> None:
        for receipts in self._touched:
            receipts.rolled_back()
        self._touched = []

    async def end(self, db: Database, patron_id: int | None = None) -> int:
        """A patron session (or, with no patron, the whole connection) ended: send now."""
        ids = [patron_id] if patron_id is not None else list(self.open)
        sent = 0
        for pid in ids:
            receipts = self.open.pop(pid, None)
            if receipts is not None and await receipts.release(db):
                sent += 1
        return sent


def _result_fields(result) -> dict:
    fields = {"loan_id": getattr(result, "loan_id", None), "title": getattr(result, "title", None)}
    if getattr(result, "barcode", None):
        fields["barcode"] = result.barcode
    due = getattr(result, "due_date", None)
    if due is not None:
        fields["due_date"] = due.isoformat()
    if getattr(result, "renewals", None) is not None and hasattr(result, "renewals_left"):
        fields["renewals"] = result.renewals
    return fields

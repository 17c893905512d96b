"""Accounts: patrons imported from the school, and chats linked to them with single-use codes.

Public API:
- ``import_patrons(db, path, library_code) -> ImportReport``: CSV from the school office
  (card/student id, full name, class, grade, role; Vietnamese or English headers; ``,`` or ``;``).
  Idempotent: a second run with the same file changes nothing. Bad rows are reported, not guessed.
- ``issue_link_codes(db, actor, *, class_name=None, patron_ids=None, clock, key=None) -> list[IssuedCode]``
  (staff of that library). Issuing revokes the patron's earlier unused codes.
- ``redeem_link_code(db, actor, code, *, clock, key=None) -> LinkResult`` (an unlinked chat).
- ``code_key(secret) -> bytes``: the key for link-code digests, derived from DOCSACH_SECRET_KEY.
- ``unlink(db, actor, *, identity_id=None, card=None, clock)``: yourself, or staff of that library.
- ``find_patrons(db, actor, query)`` (staff), ``profile(db, actor, *, clock)`` (yourself),
  ``operator_actor(db, library_code)`` (CLI tools on the server act as the library's admin).
- ``looks_like_code(text)``, ``normalize_code(text)``, ``format_code(code)``.

Link codes: 8 characters from a 31-letter alphabet without look-alikes (no 0/O, 1/I/L), shown
as ``XXXX-XXXX`` (~40 bits), valid 14 days, single use (a conditional UPDATE consumes it), stored
only as a digest: HMAC-SHA-256 under a key derived from DOCSACH_SECRET_KEY (``key``), so a leaked
database or backup does not give away codes that are still valid (40 bits fall quickly to an
offline search of a plain hash). Without a stable secret (none configured, so every process would
invent its own) codes use the plain SHA-256 digest, and a keyed deployment still accepts those,
so codes printed before the key was set keep working until they expire. Changing the secret
invalidates the codes issued under the old one (as it does buttons already in chats).

Guessing is rate-limited in the database (so every worker agrees), in an order that one attacker
cannot turn against everyone else: each chat identity (one platform account) has 5 attempts per
15 minutes, and each ``source`` the adapter names (the web chat's client address) 30 wrong guesses
(right ones do not count, so a whole class may link from one school network); an attempt refused
by a limit counts nowhere. Wrong guesses are also counted deployment-wide; past 200 in
10 minutes, guesses spread over many chats are slowed: a wrong guess then uses up its chat's
whole window at once. The global count never refuses a chat that is under its own limit, so a
valid code from such a chat always links it. A wrong guess cannot tell which library it was
aimed at, so the global count covers every library at once.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import hmac
import io
import re
import secrets
import unicodedata
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services import audit, spreadsheets
from services.common import Clock, DomainError, NotFound, PermissionDenied, Reason
from services.db import Database, insert_for
from services.models import (
    ChatIdentity,
    Hold,
    HoldStatus,
    Library,
    LinkCode,
    Loan,
    Patron,
    RateCounter,
    Role,
)
from services.patrons import Actor, require_linked, require_staff
from services.rules import Rules, rules_for
from services.textfold import fold_accents as fold

ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
CODE_LENGTH = 8
CODE_TTL = timedelta(days=14)
CHAT_LIMIT = (5, 15 * 60)        # attempts, window in seconds
SOURCE_LIMIT = (30, 15 * 60)     # wrong guesses per client address (web chat): a school may share one
GLOBAL_LIMIT = (200, 10 * 60)    # wrong guesses deployment-wide before guessing is slowed
MAX_IMPORT_ROWS = 20_000


# -- link codes -------------------------------------------------------------------------------------

def new_code() -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))


def format_code(code: str) -> str:
    return f"{code[:4]}-{code[4:]}"


def normalize_code(text: str) -> str | None:
    """"abcd-efgh", "ABCD EFGH", "k ABCDEFGH" from a deep link → "ABCDEFGH"; None if it cannot be a code."""
    raw = re.sub(r"[\s\-_.]", "", text or "").upper()
    if len(raw) == CODE_LENGTH + 1 and raw.startswith("K"):  # the deep-link payload "k<code>"
        raw = raw[1:]
    if len(raw) != CODE_LENGTH or any(ch not in ALPHABET for ch in raw):
        return None
    return raw


def looks_like_code(text: str) -> bool:
    """Plain text that is surely a code, not a book search: XXXX-XXXX, or 8 code letters that are
    upper case or mix letters and digits (so "tieuthuyet" or "harrypot" still go to search)."""
    text = (text or "").strip()
    if normalize_code(text) is None or len(text) > CODE_LENGTH + 2:
        return False
    if re.fullmatch(r"\w{4}[\s\-]\w{4}", text):
        return True
    compact = text.replace(" ", "")
    has_digit = any(ch.isdigit() for ch in compact)
    has_alpha = any(ch.isalpha() for ch in compact)
    return compact.isupper() or (has_digit and has_alpha)


def code_key(secret: bytes) -> bytes:
    """A key for link codes only, derived from the deployment secret (which also signs buttons)."""
    return hmac.new(secret, b"docsach link codes v1", hashlib.sha256).digest()


def hash_code(code: str, key: bytes | None = None) -> str:
    message = f"docsach-link:{code}".encode()
    if key is None:
        return hashlib.sha256(message).hexdigest()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _digests(code: str, key: bytes | None) -> list[str]:
    """What a typed code may be stored as: keyed, and the plain digest of codes printed before."""
    return [hash_code(code, key), hash_code(code)] if key is not None else [hash_code(code)]


@dataclass(frozen=True)
class IssuedCode:
    patron_id: int
    card_number: str
    full_name: str
    class_name: str | None
    code: str                    # formatted, XXXX-XXXX
    payload: str                 # deep-link payload: "k" + code without the dash
    expires_at: datetime


@dataclass(frozen=True)
class LinkResult:
    patron_id: int
    full_name: str
    class_name: str | None
    role: Role
    library_name: str


async def issue_link_codes(db: Database, actor: Actor, *, class_name: str | None = None,
                           patron_ids: list[int] | None = None, clock: Clock,
                           ttl: timedelta = CODE_TTL, key: bytes | None = None,
                           deliver: Callable[[list[IssuedCode]], Awaitable[None]] | None = None,
                           ) -> list[IssuedCode]:
    """New single-use codes for a class or for given patrons of the staff member's library.
    ``deliver`` (e.g. write the slips file) runs inside the transaction: if it fails, nothing
    is issued and the earlier unused codes stay valid, so no live code is left unseen."""
    require_staff(actor)
    if not class_name and not patron_ids:
        raise DomainError("account.codes_need_class")
    now = clock.now()
    async with db.transaction() as s:
        query = select(Patron).where(Patron.library_id == actor.library_id, Patron.active.is_(True))
        if class_name:  # a class's slips are for its students; a homeroom teacher gets their own
            query = query.where(func.upper(Patron.class_name) == class_name.strip().upper(),
                                Patron.role == Role.STUDENT)
        if patron_ids:
            query = query.where(Patron.id.in_(patron_ids))
        people = list((await s.execute(query.order_by(Patron.full_name, Patron.id))).scalars())
        if patron_ids and len(people) != len(set(patron_ids)):
            raise NotFound("account.patron_not_found")
        if not people:
            raise DomainError("account.class_empty", name=(class_name or "")[:32])
        await s.execute(update(LinkCode).where(
            LinkCode.patron_id.in_([p.id for p in people]), LinkCode.used_at.is_(None),
            LinkCode.revoked_at.is_(None)).values(revoked_at=now))
        issued = []
        for patron in people:
            code = new_code()
            s.add(LinkCode(library_id=patron.library_id, patron_id=patron.id, code_hash=hash_code(code, key),
                           expires_at=now + ttl, created_by=actor.patron_id))
            issued.append(IssuedCode(patron.id, patron.card_number, patron.full_name, patron.class_name,
                                     format_code(code), f"k{code}", now + ttl))
            audit.record(s, "account.code_issue", "patron", patron.id, actor_patron_id=actor.patron_id,
                         library_id=patron.library_id, channel=actor.channel)
        await s.flush()  # a (vanishingly rare) duplicate digest fails the whole batch: just run it again
        if deliver is not None:
            await deliver(issued)
        return issued


def _window(now: datetime, window: int) -> tuple[int, int]:
    """(start of the fixed window containing ``now``, seconds left in it)."""
    epoch = int(now.timestamp())
    start = epoch - epoch % window
    return start, start + window - epoch


async def _take(s: AsyncSession, key: str, window: int, limit: int, now: datetime,
                cost: int = 1) -> tuple[int | None, int]:
    """Use ``cost`` attempts of ``key``'s current window if it has any left: (count now, or None
    when the window is already full and nothing was counted; seconds left in the window)."""
    start, left = _window(now, window)
    insert = insert_for(s)
    stmt = insert(RateCounter).values(key=key, window_start=start, count=cost)
    stmt = stmt.on_conflict_do_update(index_elements=["key", "window_start"],
                                      set_={"count": RateCounter.count + cost},
                                      where=RateCounter.count < limit).returning(RateCounter.count)
    return (await s.execute(stmt)).scalar_one_or_none(), left


async def _hit(s: AsyncSession, key: str, window: int, now: datetime) -> tuple[int, int]:
    """Count one attempt against ``key`` in the current fixed window: (count so far, seconds left).
    (Unconditional; the desk's sign-in uses it. Link codes use :func:`_take`.)"""
    start, left = _window(now, window)
    insert = insert_for(s)
    stmt = insert(RateCounter).values(key=key, window_start=start, count=1)
    stmt = stmt.on_conflict_do_update(index_elements=["key", "window_start"],
                                      set_={"count": RateCounter.count + 1}).returning(RateCounter.count)
    return (await s.execute(stmt)).scalar_one(), left


def _wait(left: int) -> DomainError:
    return DomainError("account.too_many_attempts", minutes=max(1, -(-left // 60)))


async def redeem_link_code(db: Database, actor: Actor, code: str, *, clock: Clock,
                           key: bytes | None = None, source: str | None = None) -> LinkResult:
    """Link this chat to the patron the code was issued for. Each attempt that is not refused
    counts against the chat's (and ``source``'s) limit; a wrong one also against the global count."""
    if actor.identity_id is None:
        raise DomainError("account.link_failed")
    if actor.is_linked:
        raise DomainError("account.already_linked")
    normalized = normalize_code(code)
    if normalized is None:
        raise DomainError("account.code_invalid")   # not a code at all: probes nothing, counts nothing
    now = clock.now()
    chat_key = f"link:chat:{actor.identity_id}"
    source_key = f"link:src:{source[:60]}" if source else None
    async with db.transaction() as s:   # a refusal rolls back every count taken here
        await s.execute(delete(RateCounter).where(
            RateCounter.key.like("link:%"), RateCounter.window_start < int(now.timestamp()) - 86400))
        taken, left = await _take(s, chat_key, CHAT_LIMIT[1], CHAT_LIMIT[0], now)
        if taken is None:
            raise _wait(left)
        if source_key is not None:   # only wrong guesses count here: a class linking from one lab is fine
            start, left = _window(now, SOURCE_LIMIT[1])
            wrong = await s.scalar(select(RateCounter.count).where(RateCounter.key == source_key,
                                                                   RateCounter.window_start == start))
            if (wrong or 0) >= SOURCE_LIMIT[0]:
                raise _wait(left)
    try:
        return await _claim(db, actor, normalized, key, now)
    except DomainError as refusal:
        if refusal.key in ("account.code_invalid", "account.code_used", "account.code_expired"):
            await _count_wrong_guess(db, chat_key, source_key, now)
        raise


async def _count_wrong_guess(db: Database, chat_key: str, source_key: str | None, now: datetime) -> None:
    """Count a wrong guess for its address and deployment-wide; past the global limit, it uses up
    its chat's window."""
    async with db.transaction() as s:
        if source_key is not None:
            await _take(s, source_key, SOURCE_LIMIT[1], 1 << 30, now)
        start, _ = _window(now, GLOBAL_LIMIT[1])
        insert = insert_for(s)
        count = (await s.execute(insert(RateCounter).values(key="link:wrong", window_start=start, count=1)
                                 .on_conflict_do_update(index_elements=["key", "window_start"],
                                                        set_={"count": RateCounter.count + 1})
                                 .returning(RateCounter.count))).scalar_one()
        if count > GLOBAL_LIMIT[0]:
            await _take(s, chat_key, CHAT_LIMIT[1], CHAT_LIMIT[0], now, cost=CHAT_LIMIT[0])


async def _claim(db: Database, actor: Actor, normalized: str, key: bytes | None, now: datetime) -> LinkResult:
    digests = _digests(normalized, key)
    async with db.transaction() as s:
        claimed = (await s.execute(
            update(LinkCode).where(LinkCode.code_hash.in_(digests), LinkCode.used_at.is_(None),
                                   LinkCode.revoked_at.is_(None), LinkCode.expires_at > now)
            .values(used_at=now, used_by_identity_id=actor.identity_id)
            .returning(LinkCode.patron_id, LinkCode.library_id)
        )).first()
        if claimed is None:
            known = (await s.execute(select(LinkCode).where(LinkCode.code_hash.in_(digests)))).scalars().first()
            if known is None:
                raise DomainError("account.code_invalid")
            if known.used_at is not None:
                raise DomainError("account.code_used")
            raise DomainError("account.code_expired")
        patron_id, library_id = claimed
        patron = await s.get(Patron, patron_id)
        library = await s.get(Library, library_id)
        if patron is None or not patron.active:
            raise DomainError("account.code_invalid")
        # One chat per patron and platform: a new link replaces an older one (e.g. a new phone).
        previous = list((await s.execute(select(ChatIdentity.id).where(
            ChatIdentity.patron_id == patron.id, ChatIdentity.channel == actor.channel))).scalars())
        if previous:
            await s.execute(update(ChatIdentity).where(ChatIdentity.id.in_(previous))
                            .values(patron_id=None, linked_at=None))
        linked = await s.execute(update(ChatIdentity).where(
            ChatIdentity.id == actor.identity_id, ChatIdentity.patron_id.is_(None))
            .values(patron_id=patron.id, linked_at=now))
        if linked.rowcount != 1:
            raise DomainError("account.already_linked")  # another message linked it first
        audit.record(s, "account.link", "patron", patron.id, actor_patron_id=patron.id, library_id=library_id,
                     channel=actor.channel, identity_id=actor.identity_id, replaced=previous or None)
        return LinkResult(patron.id, patron.full_name, patron.class_name, patron.role, library.name)


async def unlink(db: Database, actor: Actor, *, identity_id: int | None = None, card: str | None = None,
                 clock: Clock) -> int:
    """Unlink a chat. Without arguments: this chat. ``card``: every chat of that patron (staff of
    their library). ``identity_id``: one chat of yours, or of a patron in your library (staff)."""
    require_linked(actor)
    now = clock.now()
    async with db.transaction() as s:
        if card is not None:
            require_staff(actor)
            patron = (await s.execute(select(Patron).where(
                Patron.library_id == actor.library_id, func.upper(Patron.card_number) == card.strip().upper())
            )).scalars().first()
            if patron is None:
                raise NotFound("account.patron_not_found")
            ids = list((await s.execute(select(ChatIdentity.id).where(ChatIdentity.patron_id == patron.id))).scalars())
            patron_id = patron.id
        else:
            target = await s.get(ChatIdentity, identity_id if identity_id is not None else actor.identity_id)
            if target is None or target.patron_id is None:
                raise DomainError("account.not_linked")
            patron = await s.get(Patron, target.patron_id)
            if target.patron_id != actor.patron_id and not (actor.is_staff and patron.library_id == actor.library_id):
                raise PermissionDenied()
            ids, patron_id = [target.id], target.patron_id
        if not ids:
            raise DomainError("account.not_linked")
        await s.execute(update(ChatIdentity).where(ChatIdentity.id.in_(ids)).values(patron_id=None, linked_at=None))
        audit.record(s, "account.unlink", "patron", patron_id, actor_patron_id=actor.patron_id,
                     library_id=actor.library_id, channel=actor.channel, identities=ids, at=now.isoformat())
        return len(ids)


# -- people -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PatronView:
    patron_id: int
    card_number: str
    full_name: str
    class_name: str | None
    role: Role


async def find_patrons(db: Database, actor: Actor, query: str, limit: int = 8) -> list[PatronView]:
    """Patrons of the staff member's library by card (exact) or by name (accents optional)."""
    require_staff(actor)
    query = " ".join((query or "").split())[:100]
    if not query:
        return []
    async with db.session() as s:
        base = select(Patron).where(Patron.library_id == actor.library_id, Patron.active.is_(True))
        exact = (await s.execute(base.where(func.upper(Patron.card_number) == query.upper()))).scalars().first()
        if exact is not None:
            return [PatronView(exact.id, exact.card_number, exact.full_name, exact.class_name, exact.role)]
        wanted = fold(query)
        words = wanted.split()
        ranked = []
        for p in (await s.execute(base.order_by(Patron.full_name, Patron.id))).scalars():
            name = fold(p.full_name)
            parts = name.split()
            if not all(w in parts or w in name for w in words):
                continue
            # The exact full name first, then every word whole (in order), whole words, then pieces.
            if name == wanted:
                rank = 0
            elif all(w in parts for w in words):
                rank = 1 if " ".join(words) in name else 2
            else:
                rank = 3
            ranked.append((rank, p))
        ranked.sort(key=lambda item: item[0])  # stable: by name within a rank
        return [PatronView(p.id, p.card_number, p.full_name, p.class_name, p.role) for _, p in ranked[:limit]]


@dataclass(frozen=True)
class Profile:
    full_name: str
    card_number: str
    class_name: str | None
    role: Role
    library_name: str
    loans: int
    overdue: int
    holds: int
    rules: Rules


async def profile(db: Database, actor: Actor, *, clock: Clock) -> Profile:
    """The actor's own card, counts and the rules that apply to them."""
    require_linked(actor)
    async with db.session() as s:
        patron = await s.get(Patron, actor.patron_id)
        library = await s.get(Library, patron.library_id)
        today = clock.today(library.timezone)
        loans = list((await s.execute(select(Loan.due_date).where(
            Loan.patron_id == patron.id, Loan.returned_at.is_(None)))).scalars())
        holds = await s.scalar(select(func.count()).select_from(Hold).where(
            Hold.patron_id == patron.id, Hold.status.in_((HoldStatus.WAITING, HoldStatus.READY))))
        return Profile(patron.full_name, patron.card_number, patron.class_name, patron.role, library.name,
                       len(loans), sum(1 for d in loans if d < today), int(holds or 0),
                       rules_for(library, patron.role))


async def operator_actor(db: Database, library_code: str) -> Actor:
    """The identity of a command run on the server itself: the library's administrator."""
    async with db.session() as s:
        library = (await s.execute(select(Library).where(Library.code == library_code))).scalar_one_or_none()
    if library is None:
        raise DomainError("rules.library_unknown", library=library_code)
    return Actor(identity_id=None, channel="cli", chat_id="cli", language="vi", patron_id=None,
                 library_id=library.id, library_code=library.code, role=Role.ADMIN, full_name="operator")


# -- import from the school office -----------------------------------------------------------------------

HEADERS = {
    "card": {"card", "cardnumber", "cardno", "card_number", "studentid", "student_id", "id", "mathe", "sothe",
             "mahocsinh", "mahs", "mssv", "mahs_gv", "maso", "ma", "sobadoc", "mabandoc", "mathethuvien"},
    "name": {"name", "fullname", "full_name", "hoten", "hovaten", "ten", "hotenhocsinh", "hovatenhocsinh"},
    "class": {"class", "classname", "class_name", "lop", "tenlop"},
    "grade": {"grade", "khoi", "khoilop"},
    "role": {"role", "vaitro", "chucvu", "loai", "doituong", "type"},
}
ROLES = {
    "student": Role.STUDENT, "hocsinh": Role.STUDENT, "hs": Role.STUDENT, "pupil": Role.STUDENT,
    "teacher": Role.TEACHER, "giaovien": Role.TEACHER, "gv": Role.TEACHER,
    "librarian": Role.LIBRARIAN, "thuthu": Role.LIBRARIAN, "tt": Role.LIBRARIAN, "nhanvienthuvien": Role.LIBRARIAN,
    "admin": Role.ADMIN, "quantri": Role.ADMIN, "quantrivien": Role.ADMIN,
}
_CARD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/\-]{0,31}$")


def _key(text: str) -> str:
    return re.sub(r"[^a-z0-9_]", "", fold(text).replace(" ", ""))


@dataclass(frozen=True)
class RejectedRow:
    line: int
    reason: Reason      # translated by whoever shows it (CLI, desk)
    card: str = ""


@dataclass
class ImportReport:
    library_code: str
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: list[RejectedRow] = field(default_factory=list)
    encoding: str = "utf-8"

    def summary(self) -> Reason:
        """The counts as a message (the caller translates it)."""
        params = {"library": self.library_code, "created": self.created, "updated": self.updated,
                  "unchanged": self.unchanged, "rejected": len(self.rejected)}
        if self.encoding == "utf-8":
            return Reason("imports.patrons_summary", params)
        return Reason("imports.patrons_summary_encoding", {**params, "encoding": self.encoding})


def _read_small(path: Path, limit: int) -> bytes:
    """The file, refusing a device (/dev/zero), a folder or more than ``limit`` bytes."""
    import stat

    info = path.stat()
    if not stat.S_ISREG(info.st_mode) and not stat.S_ISFIFO(info.st_mode):
        raise DomainError("import.not_a_file", path=str(path)[:200])
    with path.open("rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise DomainError("import.file_too_big", megabytes=limit // 2**20)
    return data


def _numbered_csv(data: str, dialect) -> Iterator[tuple[int, list[str]]]:
    """Each CSV row with the line it starts on (a quoted cell may span lines)."""
    reader = csv.reader(io.StringIO(data, newline=""), dialect)
    start = 1
    for row in reader:
        yield start, row
        start = reader.line_num + 1


def _read_rows(data: str | list[list[str]]) -> tuple[dict[str, str], list[tuple[int, dict[str, str]]], list[RejectedRow]]:
    """The roster's columns and rows, from CSV text or from a sheet's rows (an Excel roster)."""
    if isinstance(data, str):
        try:
            dialect = csv.Sniffer().sniff(data[:4096], delimiters=",;\t")
        except csv.Error:
            dialect = csv.excel
        numbered: Iterator[tuple[int, list[str]]] = _numbered_csv(data, dialect)
    else:
        numbered = iter(enumerate(data, 1))
    _, header = next(numbered, (0, None))
    if not header:
        raise DomainError("import.empty")
    columns: dict[str, int] = {}
    for index, name in enumerate(header):
        key = _key(name)
        for field_name, names in HEADERS.items():
            if key in names and field_name not in columns:
                columns[field_name] = index
    missing = [f for f in ("card", "name") if f not in columns]
    if missing:
        raise DomainError("import.missing_columns", columns=", ".join(missing), found=", ".join(header)[:200])
    rows = []
    for line, row in numbered:
        if any(cell.strip() for cell in row):
            values = {f: (row[i].strip() if i < len(row) else "") for f, i in columns.items()}
            rows.append((line, values))
    rejected = []
    if rows and isinstance(data, str) and spreadsheets.ends_inside_quotes(data, dialect):
        line, values = rows.pop()   # cut short inside quotes: the partial row is not a person
        rejected.append(RejectedRow(line, Reason("imports.unclosed_quotes"),
                                    values.get("card", "")[:40]))
    return columns, rows, rejected


MAX_IMPORT_BYTES = 32 * 1024 * 1024      # 20,000 rows are about 2 MB
VIETNAMESE_VOWELS = set("aăâeêioôơuưyAĂÂEÊIOÔƠUƯY")
TONE_MARKS = {"\u0300", "\u0301", "\u0303", "\u0309", "\u0323"}   # cp1258 writes tones as separate marks


def xlsx_rows(raw: bytes) -> list[list[str]]:
    """The first sheet with cells of an Excel workbook, as text cells, so a roster saved from
    Excel reads like its CSV export. A damaged or chart-only workbook is one clear refusal."""
    from openpyxl import load_workbook

    try:
        book = load_workbook(io.BytesIO(raw), read_only=True, data_only=True)
    except Exception as exc:   # zip, XML or openpyxl's own: the workbook is unreadable
        raise DomainError("import.xlsx_unreadable", error=exc.__class__.__name__) from None
    sheet = next((ws for ws in book.worksheets if hasattr(ws, "iter_rows")), None)
    if sheet is None:
        raise DomainError("import.xlsx_charts_only")
    rows: list[list[str]] = []
    try:
        for row in sheet.iter_rows(values_only=True):
            rows.append(["" if v is None else str(v).strip() for v in row])
    except Exception:   # read lazily: a sheet cut short fails mid-way
        raise DomainError("import.xlsx_damaged", row=len(rows)) from None
    return rows


def decode_patron_file(raw: bytes, encoding: str | None = None) -> tuple[str, str]:
    """(text, encoding used). UTF-8 (with or without BOM) is read as is; ``encoding`` when the
    office says so. Otherwise a file is taken as Windows-1258 (old Vietnamese Windows exports)
    only when it reads as Vietnamese does in that code page: tone marks, each right after a
    vowel. Anything else is refused rather than guessed (Latin-1 «Hélène Þór» would silently
    become «Hélène ̃ór»)."""
    if encoding:
        try:
            return unicodedata.normalize("NFC", raw.decode(encoding)).lstrip("\ufeff"), encoding
        except LookupError:
            raise DomainError("import.encoding_unknown", encoding=encoding[:30]) from None
        except UnicodeDecodeError as exc:
            raise DomainError("import.encoding_wrong", encoding=encoding[:30],
                              line=raw[:exc.start].count(b"\n") + 1) from None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):     # UTF-16 with its byte-order mark (Excel's "Unicode text")
        try:
            return unicodedata.normalize("NFC", raw.decode("utf-16")).lstrip("\ufeff"), "utf-16"
        except UnicodeDecodeError as exc:
            raise DomainError("import.encoding_wrong", encoding="utf-16", line=1) from exc
    try:
        return raw.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
    try:
        text = raw.decode("cp1258")
    except UnicodeDecodeError:
        raise DomainError("import.encoding_unsure", line=line) from None
    marks = [(i, ch) for i, ch in enumerate(text) if ch in TONE_MARKS]
    if not marks or any(i == 0 or text[i - 1] not in VIETNAMESE_VOWELS for i, _ in marks):
        raise DomainError("import.encoding_unsure", line=line)
    return unicodedata.normalize("NFC", text), "cp1258"


async def import_patrons(db: Database, path: str | Path, library_code: str, *,
                         actor: Actor | None = None, encoding: str | None = None) -> ImportReport:
    """Create or update the library's patrons from a CSV file; rows that do not make sense are reported.
    ``actor``: a staff member of that library (the desk); None: the operator's CLI on the server.
    The file's encoding is detected or refused, never guessed (see :func:`decode_patron_file`)."""
    if actor is not None:
        require_staff(actor)
        if actor.library_code != library_code:
            raise PermissionDenied()
    raw = await asyncio.to_thread(_read_small, Path(path), MAX_IMPORT_BYTES)
    if raw.startswith(b"PK\x03\x04"):      # an Excel workbook (a zip), as school offices often send
        data, used = await asyncio.to_thread(xlsx_rows, raw), "xlsx"
    else:
        data, used = decode_patron_file(raw, encoding)
    _, rows, broken = _read_rows(data)
    report = ImportReport(library_code, encoding=used)
    report.rejected.extend(broken)
    if len(rows) > MAX_IMPORT_ROWS:
        raise DomainError("import.too_many", limit=MAX_IMPORT_ROWS)
    async with db.transaction() as s:
        library = (await s.execute(select(Library).where(Library.code == library_code))).scalar_one_or_none()
        if library is None:
            raise DomainError("rules.library_unknown", library=library_code)
        existing = {p.card_number: p for p in (await s.execute(
            select(Patron).where(Patron.library_id == library.id))).scalars()}
        seen: set[str] = set()
        for line, values in rows:
            card = values.get("card", "")
            name = " ".join(unicodedata.normalize("NFC", values.get("name", "")).split())
            if not card:
                report.rejected.append(RejectedRow(line, Reason("imports.missing_card")))
                continue
            if not _CARD.match(card):
                report.rejected.append(RejectedRow(line, Reason("imports.card_characters"), card[:40]))
                continue
            if card in seen:
                report.rejected.append(RejectedRow(line, Reason("imports.card_twice"), card))
                continue
            if not name or len(name) > 200:
                report.rejected.append(RejectedRow(line, Reason("imports.name_missing"), card))
                continue
            role_text = _key(values.get("role", "")).replace("_", "")
            role = ROLES.get(role_text) if role_text else Role.STUDENT
            if role is None:
                report.rejected.append(RejectedRow(line, Reason("imports.unknown_role",
                                                                  {"role": values.get("role", "")[:30]}), card))
                continue
            class_name = " ".join(values.get("class", "").split()).upper() or None
            if class_name and len(class_name) > 32:
                report.rejected.append(RejectedRow(line, Reason("imports.class_too_long"), card))
                continue
            grade_text = values.get("grade", "")
            grade = None
            if grade_text:
                if not grade_text.isdigit() or not 1 <= int(grade_text) <= 12:
                    report.rejected.append(RejectedRow(line, Reason("imports.grade_range",
                                                                      {"grade": grade_text[:10]}), card))
                    continue
                grade = int(grade_text)
            elif class_name and (m := re.match(r"^(\d{1,2})", class_name)) and 1 <= int(m.group(1)) <= 12:
                grade = int(m.group(1))
            seen.add(card)
            wanted = {"full_name": name, "class_name": class_name, "grade": grade, "role": role, "active": True}
            patron = existing.get(card)
            if patron is None:
                s.add(Patron(library_id=library.id, card_number=card, preferences={}, **wanted))
                report.created += 1
            elif any(getattr(patron, k) != v for k, v in wanted.items()):
                for k, v in wanted.items():
                    setattr(patron, k, v)
                report.updated += 1
            else:
                report.unchanged += 1
        audit.record(s, "patrons.import", "library", library.id, library_id=library.id,
                     channel=actor.channel if actor else "cli", actor_patron_id=actor.patron_id if actor else None,
                     created=report.created, updated=report.updated, unchanged=report.unchanged,
                     rejected=len(report.rejected))
    report.rejected.sort(key=lambda row: row.line)
    return report

"""The catalog: book cards, what is on a shelf, finding a copy by barcode — and staff adding one
title and its copies by hand (``add_title``, ``add_copy``, ``add_book``; ``title_by_isbn`` to look
before adding).

Plain data out (dataclasses), so handlers render them and other features (reservations,
circulation, QR labels, the web desk) reuse them without SQL of their own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import date

from sqlalchemy import case, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services import audit
from services.common import Clock, DomainError, NotFound
from services.db import Database
from services.models import Copy, CopyStatus, Hold, HoldStatus, Library, Location, Title
from services.patrons import Actor, require_staff
from services.textfold import fold, normalize_isbn


@dataclass(frozen=True)
class CopyLine:
    id: int
    barcode: str
    status: CopyStatus
    library_id: int
    library_code: str
    location_id: int | None
    location_name: str | None


@dataclass(frozen=True)
class TitleCard:
    id: int
    title: str
    authors: str
    year: int | None
    isbn13: str | None
    publisher: str | None
    call_number: str | None
    language: str | None
    subjects: str
    copies: list[CopyLine] = field(default_factory=list)
    available: int = 0
    holds_waiting: int = 0


@dataclass(frozen=True)
class ShelfItem:
    title_id: int
    title: str
    authors: str
    copies: int
    available: int


@dataclass(frozen=True)
class ShelfList:
    location_id: int
    code: str
    name: str
    kind: str
    library_id: int
    items: list[ShelfItem]


async def library_id(db: Database, code: str) -> int | None:
    """The id of the library with this code, or None."""
    async with db.session() as s:
        return await s.scalar(select(Library.id).where(Library.code == code))


async def library_name(db: Database, library_id: int | None) -> str | None:
    """A library's name (printed on slips), or None."""
    if library_id is None:
        return None
    async with db.session() as s:
        return await s.scalar(select(Library.name).where(Library.id == library_id))


async def get_title_card(db: Database, title_id: int, library_id: int | None = None) -> TitleCard:
    """A title with its copies (in ``library_id``, or in every library when None) and its hold queue."""
    async with db.session() as s:
        title = await s.get(Title, title_id)
        if title is None:
            raise NotFound("search.no_such_book")
        query = (select(Copy.id, Copy.barcode, Copy.status, Copy.library_id, Library.code,
                        Copy.location_id, Location.name)
                 .join(Library, Library.id == Copy.library_id)
                 .outerjoin(Location, Location.id == Copy.location_id)
                 .where(Copy.title_id == title_id)
                 .order_by(Copy.library_id, Copy.barcode))
        holds = select(func.count()).select_from(Hold).where(
            Hold.title_id == title_id, Hold.status == HoldStatus.WAITING)
        if library_id is not None:
            query = query.where(Copy.library_id == library_id)
            holds = holds.where(Hold.library_id == library_id)
        copies = [CopyLine(*row) for row in (await s.execute(query)).all()]
        waiting = await s.scalar(holds) or 0
    return TitleCard(
        id=title.id, title=title.title, authors=title.authors or "", year=title.year, isbn13=title.isbn13,
        publisher=title.publisher, call_number=title.call_number, language=title.language,
        subjects=title.subjects or "", copies=copies,
        available=sum(1 for c in copies if c.status == CopyStatus.AVAILABLE), holds_waiting=waiting,
    )


async def titles_at_location(db: Database, location_id: int, *, limit: int = 200) -> ShelfList:
    """What a shelf or classroom reading corner holds (its QR code opens this)."""
    async with db.session() as s:
        location = await s.get(Location, location_id)
        if location is None:
            raise NotFound("search.no_such_place")
        available = func.sum(case((Copy.status == CopyStatus.AVAILABLE, 1), else_=0))
        rows = (await s.execute(
            select(Title.id, Title.title, Title.authors, func.count(Copy.id), available)
            .join(Copy, Copy.title_id == Title.id)
            .where(Copy.location_id == location_id)
            .group_by(Title.id, Title.title, Title.authors)
            .order_by(Title.title, Title.id)
            .limit(limit)
        )).all()
    return ShelfList(location.id, location.code, location.name, location.kind, location.library_id,
                     [ShelfItem(r[0], r[1], r[2] or "", r[3], int(r[4] or 0)) for r in rows])


async def find_copy(db: Database, library_id: int, barcode_or_id: str | int) -> CopyLine | None:
    """A copy of this library by its barcode (as printed) or, failing that, its numeric id."""
    value = str(barcode_or_id).strip()
    if not value:
        return None
    async with db.session() as s:
        base = (select(Copy.id, Copy.barcode, Copy.status, Copy.library_id, Library.code,
                       Copy.location_id, Location.name)
                .join(Library, Library.id == Copy.library_id)
                .outerjoin(Location, Location.id == Copy.location_id)
                .where(Copy.library_id == library_id))
        row = (await s.execute(base.where(func.upper(Copy.barcode) == value.upper()[:32]))).first()
        if row is None and value.isdigit() and len(value) < 10:
            row = (await s.execute(base.where(Copy.id == int(value)))).first()
    return CopyLine(*row) if row else None


async def title_for_copy(db: Database, copy_id: int) -> int | None:
    """The title id a copy belongs to (a copy QR code opens the book card)."""
    async with db.session() as s:
        return await s.scalar(select(Copy.title_id).where(Copy.id == copy_id))


async def availability(db: Database, title_ids: list[int], library_id: int | None = None) -> dict[int, tuple[int, int]]:
    """{title id: (copies, available)} in one library, or everywhere when None."""
    if not title_ids:
        return {}
    available = func.sum(case((Copy.status == CopyStatus.AVAILABLE, 1), else_=0))
    query = (select(Copy.title_id, func.count(Copy.id), available)
             .where(Copy.title_id.in_(title_ids)).group_by(Copy.title_id))
    if library_id is not None:
        query = query.where(Copy.library_id == library_id)
    async with db.session() as s:
        return {r[0]: (r[1], int(r[2] or 0)) for r in (await s.execute(query)).all()}


# -- staff: one title and its copies, by hand ------------------------------------------------------

@dataclass(frozen=True)
class NewTitle:
    """What a librarian types (or scans) for a book the catalog does not have yet."""

    title: str = ""
    authors: str = ""
    isbn: str | None = None
    publisher: str | None = None
    year: int | str | None = None
    language: str | None = None
    subjects: str = ""
    call_number: str | None = None


@dataclass(frozen=True)
class AddedTitle:
    title_id: int
    title: str
    authors: str
    isbn13: str | None
    created: bool                 # False: the shared catalog already had it (same ISBN or same book)


@dataclass(frozen=True)
class AddedCopy:
    copy_id: int
    barcode: str
    title_id: int
    title: str
    location_name: str | None
    held_for_name: str | None = None      # someone was waiting: the new copy is set aside for them
    held_for_card: str | None = None


@dataclass(frozen=True)
class AddedBook:
    title: AddedTitle
    copies: list[AddedCopy]


MAX_COPIES_AT_ONCE = 50
_BARCODE_SHAPE = re.compile(r"^(.*?)(\d+)$")


def _one_line(value: object, limit: int) -> str:
    return " ".join(str(value or "").split())[:limit]


def _parse_isbn(raw: str | None) -> str | None:
    if raw is None or not str(raw).strip():
        return None
    isbn = normalize_isbn(str(raw).strip())
    if isbn is None:
        raise DomainError("catalog.bad_isbn", isbn=_one_line(raw, 40))
    return isbn


def _parse_year(raw: int | str | None) -> int | None:
    if raw is None or str(raw).strip() == "":
        return None
    text = str(raw).strip()
    if not text.isdigit() or not 1400 <= int(text) <= date.today().year + 1:
        raise DomainError("catalog.bad_year", year=text[:12])
    return int(text)


async def title_by_isbn(db: Database, isbn: str, library_id: int | None = None) -> TitleCard | None:
    """The shared catalog's title with this ISBN (10 or 13 digits, hyphens allowed), or None.
    Raises ``catalog.bad_isbn`` for a number that is not an ISBN (wrong check digit)."""
    isbn13 = _parse_isbn(isbn)
    if isbn13 is None:
        return None
    async with db.session() as s:
        title_id = await s.scalar(select(Title.id).where(Title.isbn13 == isbn13).order_by(Title.id).limit(1))
    return await get_title_card(db, title_id, library_id) if title_id is not None else None


async def _add_title(s: AsyncSession, actor: Actor, new: NewTitle) -> AddedTitle:
    from services.importer import Record, db_clock  # the importer's key rules: re-imports match these titles

    isbn13 = _parse_isbn(new.isbn)
    if isbn13 is not None:
        existing = (await s.execute(select(Title).where(Title.isbn13 == isbn13).order_by(Title.id).limit(1))
                    ).scalar_one_or_none()
        if existing is not None:
            return AddedTitle(existing.id, existing.title, existing.authors or "", existing.isbn13, False)
    name = _one_line(new.title, 1000)
    if not name:
        raise DomainError("catalog.title_needed")
    record = Record(position="manual", title=name, authors=_one_line(new.authors, 500), isbn13=isbn13,
                    publisher=_one_line(new.publisher, 300) or None, year=_parse_year(new.year),
                    language=(_one_line(new.language, 8).lower() or None),
                    subjects=_one_line(new.subjects, 1000), call_number=_one_line(new.call_number, 64) or None)
    existing = (await s.execute(select(Title).where(Title.source_key == record.key))).scalar_one_or_none()
    if existing is not None:  # the same title, authors and year typed before (here or in another school)
        return AddedTitle(existing.id, existing.title, existing.authors or "", existing.isbn13, False)
    title = Title(source_key=record.key, **record.values())
    s.add(title)
    await s.flush()
    # Stamped with the database clock so every worker's search index picks it up (see services/search.py).
    await s.execute(update(Title).where(Title.id == title.id).values(updated_at=db_clock(s))
                    .execution_options(synchronize_session=False))
    audit.record(s, "title.add", "title", title.id, actor_patron_id=actor.patron_id, library_id=actor.library_id,
                 channel=actor.channel, isbn13=isbn13, title=name[:120])
    return AddedTitle(title.id, title.title, title.authors or "", title.isbn13, True)


async def _location(s: AsyncSession, library_id: int, ref: str | None) -> Location | None:
    ref = _one_line(ref, 200)
    if not ref:
        return None
    rows = (await s.execute(select(Location).where(Location.library_id == library_id).order_by(Location.id))
            ).scalars().all()
    wanted = fold(ref)
    for loc in rows:
        if fold(loc.code) == wanted:
            return loc
    for loc in rows:
        if fold(loc.name) == wanted:
            return loc
    raise DomainError("catalog.location_unknown", location=ref[:40],
                      codes=", ".join(loc.code for loc in rows[:12]))


async def _next_barcodes(s: AsyncSession, library_id: int, count: int) -> list[str]:
    """Continue the library's own numbering (``DS000341`` → ``DS000342``), same prefix and width."""
    recent = (await s.execute(select(Copy.barcode).where(Copy.library_id == library_id)
                              .order_by(Copy.id.desc()).limit(200))).scalars().all()
    shapes: dict[tuple[str, int], int] = {}
    for barcode in recent:
        match = _BARCODE_SHAPE.match(barcode)
        if match and not barcode.startswith("AUTO-"):
            key = (match.group(1), len(match.group(2)))
            shapes[key] = shapes.get(key, 0) + 1
    prefix, width = max(shapes, key=shapes.get) if shapes else ("", 6)
    similar = (await s.execute(select(Copy.barcode).where(
        Copy.library_id == library_id, Copy.barcode.like(f"{prefix}%") if prefix else Copy.barcode.isnot(None)))
    ).scalars().all()
    highest = 0
    taken = set(similar)
    for barcode in similar:
        match = _BARCODE_SHAPE.match(barcode)
        if match and match.group(1) == prefix and len(match.group(2)) == width:
            highest = max(highest, int(match.group(2)))
    out: list[str] = []
    n = highest
    while len(out) < count:
        n += 1
        candidate = f"{prefix}{n:0{width}d}"
        if candidate not in taken:
            out.append(candidate)
    return out


async def _add_copies(s: AsyncSession, actor: Actor, title_id: int, count: int, barcode: str | None,
                      location: str | None, clock: Clock | None) -> list[AddedCopy]:
    title = await s.get(Title, title_id)
    if title is None:
        raise NotFound("circulation.title_not_found")
    if not 1 <= count <= MAX_COPIES_AT_ONCE:
        raise DomainError("catalog.bad_copy_count", high=MAX_COPIES_AT_ONCE)
    barcode = _one_line(barcode, 64) or None
    if barcode is not None:
        if count != 1:
            raise DomainError("catalog.one_barcode_one_copy")
        if len(barcode) > 32 or not barcode.isprintable():
            raise DomainError("catalog.bad_barcode", barcode=barcode[:40])
        taken = await s.scalar(select(Copy.title_id).where(
            Copy.library_id == actor.library_id, or_(Copy.barcode == barcode,
                                                     func.upper(Copy.barcode) == barcode.upper())).limit(1))
        if taken is not None:
            raise DomainError("catalog.barcode_taken", barcode=barcode)
        barcodes = [barcode]
    else:
        barcodes = await _next_barcodes(s, actor.library_id, count)
    where = await _location(s, actor.library_id, location)
    added = []
    for code in barcodes:
        copy = Copy(title_id=title.id, library_id=actor.library_id, barcode=code,
                    location_id=where.id if where else None, status=CopyStatus.AVAILABLE)
        s.add(copy)
        await s.flush()
        audit.record(s, "copy.add", "copy", copy.id, actor_patron_id=actor.patron_id, library_id=actor.library_id,
                     channel=actor.channel, title_id=title.id, barcode=code,
                     location_id=where.id if where else None)
        added.append(AddedCopy(copy.id, code, title.id, title.title, where.name if where else None))
    from services.circulation import give_to_queue  # circulation owns the hold queue

    held = await give_to_queue(s, actor, actor.library_id, title.id, clock=clock or Clock())
    return [replace(a, held_for_name=held[a.copy_id].full_name, held_for_card=held[a.copy_id].card_number)
            if a.copy_id in held else a for a in added]


async def add_title(db: Database, actor: Actor, new: NewTitle) -> AddedTitle:
    """Add a title to the shared catalog (staff). An ISBN the catalog knows returns that title
    unchanged (``created=False``): records are shared by every school, so one school's typing
    does not overwrite them."""
    require_staff(actor)
    return await _write(db, lambda s: _add_title(s, actor, new))


async def add_copy(db: Database, actor: Actor, title_id: int, *, count: int = 1, barcode: str | None = None,
                   location: str | None = None, clock: Clock | None = None) -> list[AddedCopy]:
    """Add copies of a title to the staff member's library: a given barcode (one copy) or the
    next numbers of the library's own barcode series; ``location`` is a shelf/corner code or name.
    Readers waiting for the title get the new copies first (set aside, as a returned copy is)."""
    require_staff(actor)
    return await _write(db, lambda s: _add_copies(s, actor, title_id, count, barcode, location, clock))


async def add_book(db: Database, actor: Actor, new: NewTitle, *, count: int = 1, barcode: str | None = None,
                   location: str | None = None, clock: Clock | None = None) -> AddedBook:
    """Title and copies in one transaction: either both are there afterwards or neither."""
    require_staff(actor)

    async def work(s: AsyncSession) -> AddedBook:
        title = await _add_title(s, actor, new)
        return AddedBook(title, await _add_copies(s, actor, title.title_id, count, barcode, location, clock))

    return await _write(db, work)


async def _write(db: Database, work):
    """One transaction; a unique key lost to a concurrent writer (the same barcode or the same new
    title at the same moment) rolls everything back and asks to try again."""
    try:
        async with db.transaction() as s:
            return await work(s)
    except IntegrityError:
        raise DomainError("catalog.busy") from None


async def locations(db: Database, library_id: int) -> list[tuple[str, str, str]]:
    """(code, name, kind) of a library's shelves, rooms and classroom corners."""
    async with db.session() as s:
        rows = (await s.execute(select(Location.code, Location.name, Location.kind)
                                .where(Location.library_id == library_id).order_by(Location.kind, Location.code)))
        return [tuple(r) for r in rows.all()]

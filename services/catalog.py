"""The catalog's read side: book cards, what is on a shelf, finding a copy by barcode.

Plain data out (dataclasses), so handlers render them and other features (reservations,
circulation, QR labels) reuse them without SQL of their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import case, func, select

from services.common import NotFound
from services.db import Database
from services.models import Copy, CopyStatus, Hold, HoldStatus, Library, Location, Title


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

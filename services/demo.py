"""The demo library: real Library of Congress records with invented copies, shelves and people.

Deterministic, so the terminal chat and tests see the same library every time.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select

from services import importer
from services.db import Database
from services.importer import parse_isbn as isbn13  # noqa: F401  (kept for callers)
from services.models import Copy, Library, Location, Patron, Role

DEMO_CATALOG = Path(__file__).resolve().parent / "demo_data" / "catalog.csv"
DEMO_CODE = "demo"

SHELVES = [
    ("KE-A", "Kệ A — Văn học Việt Nam", "PL"),
    ("KE-B", "Kệ B — Thiếu nhi", "PZ"),
    ("KE-C", "Kệ C — Lịch sử, Địa lý", "D"),
    ("KE-D", "Kệ D — Khoa học, Kỹ thuật", "Q"),
    ("KE-E", "Kệ E — Tổng hợp", ""),
]
CLASSROOMS = [("LOP-10A1", "Góc đọc lớp 10A1"), ("LOP-11A1", "Góc đọc lớp 11A1")]

PEOPLE = [
    ("HS001", "Nguyễn Văn An", Role.STUDENT, "10A1", 10),
    ("HS002", "Lò Thị Hoa", Role.STUDENT, "10A1", 10),
    ("HS003", "Giàng A Páo", Role.STUDENT, "11A1", 11),
    ("HS004", "Trần Minh Châu", Role.STUDENT, "11A1", 11),
    ("GV001", "Phạm Thu Hà", Role.TEACHER, "10A1", None),
    ("TT001", "Hoàng Minh Tuấn", Role.LIBRARIAN, None, None),
    ("AD001", "Vũ Quang Huy", Role.ADMIN, None, None),
]


@dataclass
class DemoSummary:
    created: bool
    titles: int
    copies: int
    patrons: int


def _shelf_for(call_number: str, language: str) -> str:
    if language == "vie":
        return "KE-A"
    for code, _, prefix in SHELVES:
        if prefix and call_number.startswith(prefix):
            return code
    return "KE-E"


async def load_demo(db: Database, *, path: Path = DEMO_CATALOG) -> DemoSummary:
    """Create the demo library unless it exists. Idempotent: a second call changes nothing."""
    async with db.transaction() as s:
        library = (await s.execute(select(Library).where(Library.code == DEMO_CODE))).scalar_one_or_none()
        if library is not None:
            counts = await _counts(s, library.id)
            return DemoSummary(False, *counts)
        library = Library(code=DEMO_CODE, name="Trường THPT Demo Lào Cai", timezone="Asia/Ho_Chi_Minh",
                          settings={})
        s.add(library)
        await s.flush()
        locations = {}
        for code, name, _ in SHELVES:
            locations[code] = Location(library_id=library.id, code=code, name=name, kind="shelf")
        for code, name in CLASSROOMS:
            locations[code] = Location(library_id=library.id, code=code, name=name, kind="classroom")
        s.add_all(locations.values())
        for card, name, role, class_name, grade in PEOPLE:
            s.add(Patron(library_id=library.id, card_number=card, full_name=name, role=role,
                         class_name=class_name, grade=grade, preferences={}))
        await s.flush()

        # The catalog goes through the one import path (services/importer.py); the copies are the
        # demo's own invention: 1–3 per title, some third copies in a classroom reading corner.
        _, records, _ = importer.parse_file(path)
        applied = await importer.apply_records(s, records)
        rng = random.Random(2026)
        barcode = 0
        for record, title_id in zip(records, applied.title_ids, strict=True):
            shelf = locations[_shelf_for(record.call_number or "", record.language or "")]
            for n in range(rng.choice((1, 1, 2, 2, 3))):
                barcode += 1
                where = shelf
                if n == 2:  # some third copies live in a classroom reading corner
                    where = locations[rng.choice(CLASSROOMS)[0]]
                s.add(Copy(title_id=title_id, library_id=library.id, location_id=where.id,
                           barcode=f"DS{barcode:06d}"))
        await s.flush()
        return DemoSummary(True, *await _counts(s, library.id))


async def _counts(s, library_id: int) -> tuple[int, int, int]:
    copies = await s.scalar(select(func.count()).select_from(Copy).where(Copy.library_id == library_id))
    titles = await s.scalar(select(func.count(func.distinct(Copy.title_id))).where(Copy.library_id == library_id))
    people = await s.scalar(select(func.count()).select_from(Patron).where(Patron.library_id == library_id))
    return titles or 0, copies or 0, people or 0

"""The demo library: real Library of Congress records with invented copies, shelves and people.

Deterministic, so the terminal chat and tests see the same library every time.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select

from services.db import Database
from services.models import Copy, Library, Location, Patron, Role, Title

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


def isbn13(raw: str) -> str | None:
    """ISBN-10 or -13 (possibly with a qualifier, e.g. "0786805609 (pbk.)") to ISBN-13, if valid."""
    digits = "".join(ch for ch in raw.upper().split(" ")[0] if ch.isdigit() or ch == "X")
    if len(digits) == 10 and "X" not in digits[:9]:
        total = sum((10 - i) * (10 if c == "X" else int(c)) for i, c in enumerate(digits))
        if total % 11:
            return None
        digits = "978" + digits[:9]
        check = (10 - sum((3 if i % 2 else 1) * int(c) for i, c in enumerate(digits)) % 10) % 10
        return digits + str(check)
    if len(digits) == 13 and digits.isdigit():
        return digits if sum((3 if i % 2 else 1) * int(c) for i, c in enumerate(digits)) % 10 == 0 else None
    return None


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

        rng = random.Random(2026)
        existing = set((await s.execute(select(Title.source_key))).scalars())
        barcode = 0
        with path.open(encoding="utf-8-sig", newline="") as fh:
            for row in csv.DictReader(fh):
                key = f"lccn:{row['lccn'].strip()}"
                if key in existing:
                    title = (await s.execute(select(Title).where(Title.source_key == key))).scalar_one()
                else:
                    title = Title(
                        source_key=key, title=row["title"].strip(), authors=row["author"].strip(),
                        isbn13=isbn13(row["isbn"]) if row["isbn"] else None,
                        publisher=row["publisher"].strip() or None,
                        year=int(row["year"]) if row["year"].strip().isdigit() else None,
                        language=row["language"].strip() or None,
                        subjects=row["subjects"].strip(), call_number=row["lc_class"].strip() or None,
                    )
                    s.add(title)
                    await s.flush()
                shelf = locations[_shelf_for(row["lc_class"], row["language"])]
                for n in range(rng.choice((1, 1, 2, 2, 3))):
                    barcode += 1
                    where = shelf
                    if n == 2:  # some third copies live in a classroom reading corner
                        where = locations[rng.choice(CLASSROOMS)[0]]
                    s.add(Copy(title_id=title.id, library_id=library.id, location_id=where.id,
                               barcode=f"DS{barcode:06d}"))
        await s.flush()
        return DemoSummary(True, *await _counts(s, library.id))


async def _counts(s, library_id: int) -> tuple[int, int, int]:
    copies = await s.scalar(select(func.count()).select_from(Copy).where(Copy.library_id == library_id))
    titles = await s.scalar(select(func.count(func.distinct(Copy.title_id))).where(Copy.library_id == library_id))
    people = await s.scalar(select(func.count()).select_from(Patron).where(Patron.library_id == library_id))
    return titles or 0, copies or 0, people or 0

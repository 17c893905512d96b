"""The demo library: a Lào Cai high school's shelves — the books a Vietnamese school actually lends
(literature taught in school, current-programme textbooks, children's classics in translation; a
hand-compiled list, see demo_data/SOURCES.md) next to real Library of Congress records — with
invented copies, shelves, classroom corners and people.

``load_demo(db)`` makes the catalog, shelves and the seven people the tests know (deterministic).
``load_demo(db, school_life=True)`` (what ``docsach run``, ``chat`` and ``demo-data`` load) adds
what a school in its first months looks like: more classes and students, loans (some overdue),
a hold, a running reading campaign with reflections (approved and one awaiting moderation), and a
neighbouring school that holds a book this one lacks. Everything goes through the services, as a
librarian's work would.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

from sqlalchemy import func, select, update

from services import importer
from services.common import Clock
from services.db import Database
from services.importer import parse_isbn as isbn13  # noqa: F401  (kept for callers)
from services.models import Copy, Library, Location, Notification, NotificationStatus, Patron, Role, Title
from services.patrons import Actor

DEMO_CATALOG = Path(__file__).resolve().parent / "demo_data" / "catalog.csv"
SCHOOL_BOOKS = Path(__file__).resolve().parent / "demo_data" / "school_books.csv"
DEMO_CODE = "demo"
NEIGHBOUR_CODE = "demo2"

SHELVES = [
    ("KE-A", "Kệ A — Văn học Việt Nam", "PL"),
    ("KE-B", "Kệ B — Thiếu nhi", "PZ"),
    ("KE-C", "Kệ C — Lịch sử, Địa lý", "D"),
    ("KE-D", "Kệ D — Khoa học, Kỹ thuật", "Q"),
    ("KE-E", "Kệ E — Tổng hợp", ""),
    ("KE-G", "Kệ G — Sách giáo khoa", ""),
]
CLASSROOMS = [("LOP-10A1", "Góc đọc lớp 10A1"), ("LOP-11A1", "Góc đọc lớp 11A1")]
# Classroom reading corners a school adds once the first ones work (school life only).
MORE_CLASSROOMS = [("LOP-10A2", "Góc đọc lớp 10A2"), ("LOP-11A2", "Góc đọc lớp 11A2"),
                   ("LOP-12A1", "Góc đọc lớp 12A1")]

PEOPLE = [
    ("HS001", "Nguyễn Văn An", Role.STUDENT, "10A1", 10),
    ("HS002", "Lò Thị Hoa", Role.STUDENT, "10A1", 10),
    ("HS003", "Giàng A Páo", Role.STUDENT, "11A1", 11),
    ("HS004", "Trần Minh Châu", Role.STUDENT, "11A1", 11),
    ("GV001", "Phạm Thu Hà", Role.TEACHER, "10A1", None),
    ("TT001", "Hoàng Minh Tuấn", Role.LIBRARIAN, None, None),
    ("AD001", "Vũ Quang Huy", Role.ADMIN, None, None),
]
# The rest of the school (school life): Kinh, Hmông, Dao, Tày, Giáy and Thái names, as in Lào Cai.
MORE_PEOPLE = [
    ("HS005", "Sùng Thị Mai", Role.STUDENT, "10A1", 10),
    ("HS006", "Hoàng Văn Nam", Role.STUDENT, "10A1", 10),
    ("HS007", "Lý Thị Xuân", Role.STUDENT, "10A2", 10),
    ("HS008", "Vàng A Dình", Role.STUDENT, "10A2", 10),
    ("HS009", "Đặng Thu Trang", Role.STUDENT, "10A2", 10),
    ("HS010", "Nông Thị Hằng", Role.STUDENT, "11A1", 11),
    ("HS011", "Phạm Đức Anh", Role.STUDENT, "11A2", 11),
    ("HS012", "Thào Thị Dợ", Role.STUDENT, "11A2", 11),
    ("HS013", "Bùi Ngọc Linh", Role.STUDENT, "12A1", 12),
    ("HS014", "Lục Văn Tùng", Role.STUDENT, "12A1", 12),
    ("HS015", "Tẩn Láo Mẩy", Role.STUDENT, "12A1", 12),
    ("HS016", "Ngô Minh Khôi", Role.STUDENT, "12A1", 12),
    ("GV002", "Lò Văn Sơn", Role.TEACHER, "11A1", None),
    ("GV003", "Nguyễn Thị Thanh", Role.TEACHER, "12A1", None),
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


def school_records() -> list[importer.Record]:
    """The hand-compiled school shelf (demo_data/school_books.csv), as import records."""
    records = []
    with SCHOOL_BOOKS.open(encoding="utf-8", newline="") as fh:
        for n, row in enumerate(csv.DictReader(fh), 2):
            record = importer.Record(
                position=f"school_books.csv:{n}", title=row["title"], authors=row["authors"],
                publisher=row["publisher"] or None, year=int(row["year"]) if row["year"] else None,
                language=row["language"] or None, subjects=row["subjects"])
            record.shelf = row["shelf"]
            record.min_copies = int(row["copies"])
            records.append(record)
    return records


async def load_demo(db: Database, *, path: Path = DEMO_CATALOG, school_life: bool = False,
                    clock: Clock | None = None) -> DemoSummary:
    """Create the demo library unless it exists. Idempotent: a second call changes nothing
    (``school_life`` is added once, to a demo that lacks it)."""
    summary = await _load_catalog(db, path)
    if school_life:
        await _school_life(db, clock or Clock())
        async with db.session() as s:
            library = (await s.execute(select(Library).where(Library.code == DEMO_CODE))).scalar_one()
            summary = DemoSummary(summary.created, *await _counts(s, library.id))
    return summary


async def _load_catalog(db: Database, path: Path) -> DemoSummary:
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
        # The school's own shelf: a fixed number of copies each (textbooks by the class set).
        school = school_records()
        applied = await importer.apply_records(s, school)
        for record, title_id in zip(school, applied.title_ids, strict=True):
            for _ in range(record.min_copies):
                barcode += 1
                s.add(Copy(title_id=title_id, library_id=library.id, location_id=locations[record.shelf].id,
                           barcode=f"DS{barcode:06d}"))
        await s.flush()
        return DemoSummary(True, *await _counts(s, library.id))


async def _counts(s, library_id: int) -> tuple[int, int, int]:
    copies = await s.scalar(select(func.count()).select_from(Copy).where(Copy.library_id == library_id))
    titles = await s.scalar(select(func.count(func.distinct(Copy.title_id))).where(Copy.library_id == library_id))
    people = await s.scalar(select(func.count()).select_from(Patron).where(Patron.library_id == library_id))
    return titles or 0, copies or 0, people or 0


# -- school life: a school a few months into the year --------------------------------------------------

def _actor(patron: Patron, library: Library) -> Actor:
    return Actor(identity_id=None, channel="demo", chat_id=f"demo:{patron.card_number}", language="vi",
                 patron_id=patron.id, library_id=library.id, library_code=library.code, role=patron.role,
                 full_name=patron.full_name, class_name=patron.class_name)


REFLECTIONS = [
    # (card, book, rating, text, approved)
    ("HS001", "Dế Mèn phiêu lưu ký", 5,
     "Em thích nhất đoạn Dế Mèn hối hận vì trò nghịch dại đã làm chị Cốc giận và khiến Dế Choắt chết. "
     "Từ một chú dế kiêu căng, Dế Mèn lớn lên qua từng chuyến phiêu lưu, biết nhận lỗi và biết sống vì bạn bè. "
     "Tô Hoài tả thiên nhiên và loài vật rất sinh động, đọc xong em muốn ra đồng ngắm cỏ cây. "
     "Em sẽ giới thiệu cuốn sách này cho em trai em vì nó vừa vui vừa dạy mình bài học về lòng tốt.", True),
    ("HS002", "Tắt đèn", 4,
     "Chị Dậu là người mẹ, người vợ thương chồng thương con hết mực. Cảnh chị phải bán con và bán cả ổ chó "
     "để nộp sưu cho chồng làm em rất xúc động. Ngô Tất Tố cho em thấy cuộc sống cơ cực của người nông dân "
     "trước Cách mạng và sức mạnh của người phụ nữ khi bị dồn đến bước đường cùng. Đoạn chị Dậu chống lại "
     "tên cai lệ là đoạn em nhớ nhất trong cả cuốn sách.", True),
    ("HS005", "Tôi thấy hoa vàng trên cỏ xanh", 5,
     "Cuốn sách kể về tuổi thơ của hai anh em Thiều và Tường ở một làng quê nghèo. Em thấy mình trong những "
     "lần Thiều ghen tị rồi lại hối hận, và em thương Tường vì cậu bé hiền lành quá. Nguyễn Nhật Ánh viết "
     "nhẹ nhàng, có đoạn buồn nhưng đọc xong em thấy ấm áp. Em học được rằng phải biết trân trọng người thân "
     "khi còn ở bên cạnh mình.", True),
    ("HS004", "Lão Hạc", 5,
     "Lão Hạc nghèo nhưng giàu lòng tự trọng. Lão thà ăn bả chó để chết chứ không muốn tiêu vào tiền dành dụm "
     "cho con trai. Chi tiết lão khóc vì phải bán cậu Vàng làm em nghẹn ngào. Qua truyện, Nam Cao giúp em hiểu "
     "rằng không nên nhìn người bằng vẻ ngoài mà phải hiểu hoàn cảnh của họ, giống như ông giáo đã hiểu lão Hạc.",
     False),
]


async def _school_life(db: Database, clock: Clock) -> None:
    """People, loans, a hold, a running campaign and reflections, done through the services at
    past dates so the demo looks like a school in its third month. Added once."""
    from services import accounts, campaigns, reflections
    from services import circulation as circ

    async with db.session() as s:
        library = (await s.execute(select(Library).where(Library.code == DEMO_CODE))).scalar_one()
        if await s.scalar(select(func.count()).select_from(Patron).where(
                Patron.library_id == library.id, Patron.card_number == MORE_PEOPLE[0][0])):
            return
    today = clock.today(library.timezone)

    def at(days_ago: int, hour: int = 9) -> Clock:
        local = datetime.combine(today - timedelta(days=days_ago), time(hour, 0))
        return Clock(fixed=(local - timedelta(hours=7)).replace(tzinfo=UTC))

    async with db.transaction() as s:
        for code, name in MORE_CLASSROOMS:
            s.add(Location(library_id=library.id, code=code, name=name, kind="classroom"))
        for card, name, role, class_name, grade in MORE_PEOPLE:
            s.add(Patron(library_id=library.id, card_number=card, full_name=name, role=role,
                         class_name=class_name, grade=grade, preferences={}))
        # a neighbouring school on the same provincial system, holding a book this one lacks
        neighbour = Library(code=NEIGHBOUR_CODE, name="Trường THCS Demo Bắc Cường", timezone=library.timezone,
                            settings={})
        s.add(neighbour)
        await s.flush()
        s.add(Patron(library_id=neighbour.id, card_number="TT101", full_name="Đỗ Thị Bích",
                     role=Role.LIBRARIAN, preferences={}))
        hp = importer.Record(position="neighbour", title="Harry Potter và Hòn đá Phù thủy",
                             authors="J. K. Rowling; Lý Lan (dịch)", publisher="Nhà xuất bản Trẻ", year=1997,
                             language="vie", subjects="Văn học Anh | Văn học thiếu nhi | Sách dịch")
        hp_id = (await importer.apply_records(s, [hp])).title_ids[0]
        s.add_all(Copy(title_id=hp_id, library_id=neighbour.id, barcode=f"BC{n:06d}") for n in (1, 2))
        kieu = await s.scalar(select(Title.id).where(Title.title == "Truyện Kiều"))
        s.add(Copy(title_id=kieu, library_id=neighbour.id, barcode="BC000003"))

    async with db.session() as s:
        people = {p.card_number: p for p in (await s.execute(
            select(Patron).where(Patron.library_id == library.id))).scalars()}
        titles = {t.title: t.id for t in (await s.execute(select(Title).where(Title.title.in_(
            [r[1] for r in REFLECTIONS] + ["Cho tôi xin một vé đi tuổi thơ", "Đất rừng phương Nam",
                                          "Hoàng tử bé", "Số đỏ", "Mắt biếc"])))).scalars()}

    async def copy_of(title: str) -> str:
        async with db.session() as s:
            return (await s.execute(select(Copy.barcode).where(
                Copy.library_id == library.id, Copy.title_id == titles[title], Copy.status == "available")
                .order_by(Copy.id).limit(1))).scalar_one()

    desk = await accounts.operator_actor(db, DEMO_CODE)
    librarian = _actor(people["TT001"], library)
    # a running campaign: the school round of the Reading Culture Ambassador contest
    campaign = await campaigns.create(
        db, librarian, name="Đại sứ Văn hoá đọc — vòng trường", theme="Sách về tuổi thơ và quê hương",
        starts_on=today - timedelta(days=30), ends_on=today + timedelta(days=90), goal_books=2,
        goal_reflections=1, clock=at(31))
    for card in ("HS001", "HS002", "HS004", "HS005", "HS007", "HS013"):
        await campaigns.join(db, _actor(people[card], library), campaign.id, clock=at(28))
    # loans a month back: read and returned, then the reflections on them
    for card, title, _, body, approved in REFLECTIONS:
        barcode = await copy_of(title)
        await circ.check_out(db, desk, barcode, card, clock=at(27))
        await circ.check_in(db, desk, barcode, clock=at(12))
        writer = _actor(people[card], library)
        draft = await reflections.start(db, writer, titles[title], clock=at(11))
        await reflections.append_text(db, writer, draft.id, body)
        await reflections.set_rating(db, writer, draft.id, next(r[2] for r in REFLECTIONS if r[0] == card))
        await reflections.submit(db, writer, draft.id, clock=at(11, 20))
        if approved:
            await reflections.moderate(db, _actor(people["GV001"], library), draft.id, "approve", clock=at(10))
    # books out now: some due soon, some overdue (so /overdue has a list), and a queue
    for card, title, days_ago in (("HS003", "Đất rừng phương Nam", 20), ("HS008", "Hoàng tử bé", 24),
                                  ("HS014", "Số đỏ", 3), ("HS006", "Mắt biếc", 9),
                                  ("HS001", "Cho tôi xin một vé đi tuổi thơ", 5)):
        await circ.check_out(db, desk, await copy_of(title), card, clock=at(days_ago))
    for card, title in (("HS009", "Mắt biếc"), ("HS011", "Mắt biếc")):
        await circ.place_hold(db, _actor(people[card], library), titles[title], clock=at(2))
    # Nobody in the demo has a chat yet: notices of these past events are not news to deliver later.
    async with db.transaction() as s:
        await s.execute(update(Notification).where(Notification.status == NotificationStatus.PENDING)
                        .values(status=NotificationStatus.SKIPPED, last_error="demo history"))

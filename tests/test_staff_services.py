"""Staff work that used to need the database: a copy's condition, adding one book, cancelling a
reader's hold, the overdue list, quiet hours and reminder days — through the service layer that
chat commands and the web desk both call (roles and library checked here; audit with the channel)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, time

import pytest
from sqlalchemy import func, select

from services import catalog, reminders, rules
from services import circulation as circ
from services.common import DomainError, NotFound, PermissionDenied
from services.models import AuditEntry, Copy, CopyStatus, Hold, HoldStatus, Library, Loan, Notification, Title
from tests.conftest import Libraries


async def refused(coro) -> DomainError:
    with pytest.raises(DomainError) as info:
        await coro
    return info.value


async def audits(db, action: str) -> list[AuditEntry]:
    async with db.session() as s:
        return list((await s.execute(select(AuditEntry).where(AuditEntry.action == action)
                                     .order_by(AuditEntry.id))).scalars())


async def copy_status(db, barcode: str) -> CopyStatus:
    async with db.session() as s:
        return (await s.execute(select(Copy.status).where(Copy.barcode == barcode))).scalar_one()


# -- a copy's condition -------------------------------------------------------------------------

async def test_mark_a_copy_lost_damaged_in_repair_withdrawn_and_back(libs: Libraries, clock):
    db = libs.db
    librarian = replace(await libs.actor("TT001"), channel="web")
    _, [barcode] = await libs.title_with_copies(1)

    for status in ("damaged", CopyStatus.IN_REPAIR, "withdrawn", "lost", "available"):
        result = await circ.set_copy_status(db, librarian, barcode, status, clock=clock, note="  bìa   rách ")
        assert result.changed and result.status == CopyStatus(status)
        assert await copy_status(db, barcode) == CopyStatus(status)
    again = await circ.set_copy_status(db, librarian, barcode, "available", clock=clock)
    assert not again.changed

    entries = await audits(db, "copy.status")
    assert [(e.details["previous"], e.details["status"]) for e in entries] == [
        ("available", "damaged"), ("damaged", "in_repair"), ("in_repair", "withdrawn"),
        ("withdrawn", "lost"), ("lost", "available")]
    assert {e.channel for e in entries} == {"web"} and entries[0].details["note"] == "bìa rách"
    assert all(e.actor_patron_id == librarian.patron_id for e in entries)

    # not a state staff set by hand; not a state at all
    assert (await refused(circ.set_copy_status(db, librarian, barcode, "on_loan", clock=clock))).key == \
        "circulation.status_not_settable"
    assert (await refused(circ.set_copy_status(db, librarian, barcode, "broken", clock=clock))).key == \
        "circulation.status_unknown"


async def test_copy_status_is_for_staff_of_that_library(libs: Libraries, clock):
    db = libs.db
    _, [barcode] = await libs.title_with_copies(1)
    with pytest.raises(PermissionDenied):
        await circ.set_copy_status(db, await libs.actor("HS001"), barcode, "lost", clock=clock)
    with pytest.raises(PermissionDenied):
        await circ.set_copy_status(db, await libs.actor("GV001"), barcode, "lost", clock=clock)
    with pytest.raises(NotFound):  # another school's librarian does not even see it
        await circ.set_copy_status(db, await libs.actor("OT001", "other"), barcode, "lost", clock=clock)
    assert await copy_status(db, barcode) == CopyStatus.AVAILABLE
    assert await audits(db, "copy.status") == []


async def test_a_lent_copy_can_only_be_declared_lost_which_closes_the_loan(libs: Libraries, clock):
    db = libs.db
    librarian = await libs.actor("TT001")
    _, [barcode] = await libs.title_with_copies(1)
    out = await circ.check_out(db, librarian, barcode, "HS001", clock=clock)

    err = await refused(circ.set_copy_status(db, librarian, barcode, "damaged", clock=clock))
    assert err.key == "circulation.status_on_loan" and err.params["barcode"] == barcode

    lost = await circ.set_copy_status(db, librarian, barcode, "lost", clock=clock)
    assert lost.closed_loan_id == out.loan_id and lost.loan_card_number == "HS001"
    assert await circ.my_loans(db, await libs.actor("HS001"), clock=clock) == []
    async with db.session() as s:
        loan = await s.get(Loan, out.loan_id)
        assert loan.returned_at is not None and loan.returned_by == librarian.patron_id
    [entry] = await audits(db, "loan.lost")
    assert entry.details["patron_id"] == out.patron_id


async def test_losing_a_set_aside_copy_gives_the_hold_another_copy_or_its_place_back(libs: Libraries, clock):
    db = libs.db
    librarian = await libs.actor("TT001")
    an, hoa = await libs.actor("HS001"), await libs.actor("HS002")
    title_id, [first, second] = await libs.title_with_copies(2)
    await circ.check_out(db, librarian, second, "HS003", clock=clock)
    ready = await circ.place_hold(db, an, title_id, clock=clock)
    assert ready.status == HoldStatus.READY and ready.barcode == first
    waiting = await circ.place_hold(db, hoa, title_id, clock=clock)
    assert waiting.position == 1

    # the set-aside copy is found damaged: An goes back to the head of the queue (ahead of Hoa)
    result = await circ.set_copy_status(db, librarian, first, "damaged", clock=clock)
    assert result.requeued_hold_id == ready.hold_id and result.held_for_card is None
    assert [(h.status, h.position) for h in await circ.my_holds(db, an)] == [(HoldStatus.WAITING, 1)]
    assert [h.position for h in await circ.my_holds(db, hoa)] == [2]
    # "available" cannot be used to take a set-aside copy from its reader
    back = await circ.set_copy_status(db, librarian, first, "available", clock=clock)
    assert back.held_for_card == "HS001" and back.pickup_deadline == date(2026, 12, 4)
    assert (await refused(circ.set_copy_status(db, librarian, first, "available", clock=clock))).key == \
        "circulation.status_on_hold_shelf"
    # the other copy comes back: it goes to Hoa; then it breaks, and Hoa waits again
    await circ.check_in(db, librarian, second, clock=clock)
    [hoa_hold] = await circ.my_holds(db, hoa)
    assert hoa_hold.status == HoldStatus.READY and hoa_hold.barcode == second
    await circ.set_copy_status(db, librarian, second, "in_repair", clock=clock)
    [hoa_hold] = await circ.my_holds(db, hoa)
    assert hoa_hold.status == HoldStatus.WAITING and hoa_hold.position == 1
    assert await copy_status(db, second) == CopyStatus.IN_REPAIR
    assert len(await audits(db, "hold.requeue")) == 2
    # a new copy bought for the title goes to Hoa at once
    [bought] = await catalog.add_copy(db, librarian, title_id, clock=clock)
    assert bought.held_for_card == "HS002"
    [hoa_hold] = await circ.my_holds(db, hoa)
    assert hoa_hold.status == HoldStatus.READY and hoa_hold.barcode == bought.barcode
    # An's copy is lost while a copy is on the shelf: An gets that one at once
    await circ.set_copy_status(db, librarian, second, "available", clock=clock)
    lost = await circ.set_copy_status(db, librarian, first, "lost", clock=clock)
    assert lost.requeued_hold_id == ready.hold_id
    [an_hold] = await circ.my_holds(db, an)
    assert an_hold.status == HoldStatus.READY and an_hold.barcode == second


# -- adding one book ------------------------------------------------------------------------------

async def test_add_a_book_by_hand_with_copies_continuing_the_barcode_series(libs: Libraries, clock):
    db = libs.db
    librarian = replace(await libs.actor("TT001"), channel="web")
    async with db.session() as s:
        before = set((await s.execute(select(Copy.barcode).where(Copy.barcode.like("DS%")))).scalars())
    highest = max(int(b[2:]) for b in before)

    new = catalog.NewTitle(title="  Tiếng Việt 5,  tập một ", authors="Bùi Mạnh Hùng (Tổng chủ biên)",
                           publisher="Nhà xuất bản Giáo dục Việt Nam", year="2024", language="VIE")
    book = await catalog.add_book(db, librarian, new, count=2, location="ke-a")
    assert book.title.created and book.title.title == "Tiếng Việt 5, tập một"
    assert [c.barcode for c in book.copies] == [f"DS{highest + 1:06d}", f"DS{highest + 2:06d}"]
    assert {c.location_name for c in book.copies} == {"Kệ A — Văn học Việt Nam"}
    card = await catalog.get_title_card(db, book.title.title_id, librarian.library_id)
    assert card.available == 2 and card.language == "vie" and card.year == 2024

    # the same book typed again is the same record, not a duplicate
    again = await catalog.add_title(db, librarian, new)
    assert not again.created and again.title_id == book.title.title_id
    # a barcode of one's own
    [own] = await catalog.add_copy(db, librarian, book.title.title_id, barcode="GK-0001", location="Góc đọc lớp 10A1")
    assert own.barcode == "GK-0001" and own.location_name == "Góc đọc lớp 10A1"
    assert (await refused(catalog.add_copy(db, librarian, book.title.title_id, barcode="gk-0001"))).key == \
        "catalog.barcode_taken"
    assert len(await audits(db, "title.add")) == 1
    copies = await audits(db, "copy.add")
    assert len(copies) == 3 and {e.channel for e in copies} == {"web"}

    # the search finds the new book (through the same polling every worker uses)
    from services.search import CatalogSearch

    search = CatalogSearch(db)
    await search.ensure_ready()
    await search.refresh(force=True)
    found = await search.search("tieng viet 5 tap mot", limit=3)
    assert found.hits and found.hits[0].id == book.title.title_id


async def test_add_by_isbn_reuses_the_shared_record_and_refuses_bad_input(libs: Libraries, clock):
    db = libs.db
    librarian = await libs.actor("TT001")
    other = await libs.actor("OT001", "other")
    async with db.session() as s:
        known_id, isbn = (await s.execute(select(Title.id, Title.isbn13).where(Title.isbn13.is_not(None))
                                          .order_by(Title.id).limit(1))).one()
    card = await catalog.title_by_isbn(db, f"{isbn[:3]}-{isbn[3:]}")
    assert card is not None and card.id == known_id
    # another school adds its copy of the province's record: no second title, and typed fields do not overwrite it
    book = await catalog.add_book(db, other, catalog.NewTitle(isbn=isbn, title="Something else"))
    assert not book.title.created and book.title.title_id == known_id
    assert [c.barcode for c in book.copies] == ["OC0002"]

    assert (await refused(catalog.add_title(db, librarian, catalog.NewTitle(isbn="978-604-0-00000-1")))).key == \
        "catalog.bad_isbn"
    # a valid ISBN the catalog does not know: a title must be typed
    assert (await refused(catalog.add_title(db, librarian, catalog.NewTitle(isbn="9786040000002")))).key == \
        "catalog.title_needed"
    typed = await catalog.add_title(db, librarian, catalog.NewTitle(isbn="9786040000002", title="Ngữ văn 6, tập một"))
    assert typed.created and typed.isbn13 == "9786040000002"
    assert (await catalog.title_by_isbn(db, "978-604-0-00000-2")).id == typed.title_id
    assert (await refused(catalog.add_title(db, librarian, catalog.NewTitle(title="A", year="20x4")))).key == \
        "catalog.bad_year"
    assert (await refused(catalog.add_book(db, librarian, catalog.NewTitle(title="Sách mới"), location="KE-Z"))).key \
        == "catalog.location_unknown"
    assert (await refused(catalog.add_book(db, librarian, catalog.NewTitle(title="Sách mới"), count=0))).key == \
        "catalog.bad_copy_count"
    # nothing half-written: the refused add_book calls left no title behind
    async with db.session() as s:
        assert await s.scalar(select(func.count()).select_from(Title).where(Title.title == "Sách mới")) == 0
    with pytest.raises(PermissionDenied):
        await catalog.add_book(db, await libs.actor("HS001"), catalog.NewTitle(title="Sách của em"))
    with pytest.raises(PermissionDenied):
        await catalog.add_copy(db, await libs.actor("GV001"), known_id)


# -- cancelling a reader's hold ---------------------------------------------------------------------

async def test_staff_cancel_a_readers_hold_and_the_reader_is_told(libs: Libraries, clock):
    db = libs.db
    librarian = replace(await libs.actor("TT001"), channel="web")
    an, hoa = await libs.actor("HS001"), await libs.actor("HS002")
    title_id, [barcode] = await libs.title_with_copies(1)
    ready = await circ.place_hold(db, an, title_id, clock=clock)
    await circ.place_hold(db, hoa, title_id, clock=clock)

    listing = await circ.reader_holds(db, librarian, "hs001")
    assert listing.card_number == "HS001" and [h.hold_id for h in listing.holds] == [ready.hold_id]
    with pytest.raises(PermissionDenied):
        await circ.reader_holds(db, hoa, "HS001")
    with pytest.raises(NotFound):
        await circ.staff_cancel_hold(db, await libs.actor("OT001", "other"), ready.hold_id, clock=clock)
    with pytest.raises(PermissionDenied):
        await circ.staff_cancel_hold(db, hoa, ready.hold_id, clock=clock)

    result = await circ.staff_cancel_hold(db, librarian, ready.hold_id, clock=clock, reason="Sách cần cho lớp 12")
    assert result.was_ready
    [hoa_hold] = await circ.my_holds(db, hoa)  # the set-aside copy passed to the next reader
    assert hoa_hold.status == HoldStatus.READY and hoa_hold.barcode == barcode
    assert (await refused(circ.staff_cancel_hold(db, librarian, ready.hold_id, clock=clock))).key == \
        "circulation.hold_not_active"
    async with db.session() as s:
        notice = (await s.execute(select(Notification).where(Notification.kind == "hold_cancelled"))).scalar_one()
        assert (await s.get(Hold, ready.hold_id)).status == HoldStatus.CANCELLED
    assert notice.patron_id == an.patron_id and notice.payload["reason"] == "Sách cần cho lớp 12"
    [entry] = await audits(db, "hold.cancel")
    assert entry.channel == "web" and entry.details["by_staff"] is True and entry.details["patron_id"] == an.patron_id


async def test_the_reader_gets_the_cancelled_hold_notice_once_in_their_language(libs: Libraries, clock):
    from bot.scheduler import Sweeper
    from handlers.messages import CollectingChannel
    from tests.test_reminders import link

    db = libs.db
    libs.app.deps.outbound["test"] = channel = CollectingChannel("test")
    await link(db, "HS001", language="vi")
    await link(db, "HS002", language="en")
    librarian = await libs.actor("TT001")
    title_id, _ = await libs.title_with_copies(1)
    first = await circ.place_hold(db, await libs.actor("HS001"), title_id, clock=clock)
    second = await circ.place_hold(db, await libs.actor("HS002"), title_id, clock=clock)
    await circ.staff_cancel_hold(db, librarian, first.hold_id, clock=clock, reason="sách dành cho đội tuyển")
    await circ.staff_cancel_hold(db, librarian, second.hold_id, clock=clock)
    channel.sent.clear()  # the "ready" notice of the first hold is not what this test is about
    async with db.transaction() as s:
        await s.execute(Notification.__table__.delete().where(Notification.kind == "hold_ready"))

    await Sweeper(libs.app.router, worker="test").sweep()
    await Sweeper(libs.app.router, worker="test").sweep()
    texts = {chat: reply.text for chat, reply in channel.sent}
    assert len(channel.sent) == 2
    assert texts["HS001"].startswith("Thư viện đã hủy lượt đặt trước «") and "đội tuyển" in texts["HS001"]
    assert texts["HS002"].startswith("The library cancelled your hold on «")


# -- the overdue list ---------------------------------------------------------------------------------

async def test_overdue_list_by_class_with_days_overdue(libs: Libraries, clock):
    db = libs.db
    librarian = await libs.actor("TT001")
    _, [a] = await libs.title_with_copies(1)
    async with db.session() as s:
        more = list((await s.execute(select(Copy.barcode).where(Copy.library_id == librarian.library_id,
                                                                Copy.barcode != a).order_by(Copy.id).limit(3)
                                     )).scalars())
    await circ.check_out(db, librarian, a, "HS001", clock=clock)           # 10A1, due 15 Dec
    await circ.check_out(db, librarian, more[0], "HS003", clock=clock)     # 11A1
    clock.set(datetime(2026, 12, 8, 2, 0, tzinfo=UTC))
    await circ.check_out(db, librarian, more[1], "HS002", clock=clock)     # 10A1, due 22 Dec
    await circ.check_out(db, librarian, more[2], "GV001", clock=clock)     # a teacher: no class of her own loans

    clock.set(datetime(2026, 12, 20, 2, 0, tzinfo=UTC))                   # Sunday 20 Dec, 09:00 in Lào Cai
    report = await circ.overdue_list(db, librarian, clock=clock)
    assert report.today == date(2026, 12, 20)
    assert [(line.card_number, line.days_overdue) for line in report.lines] == [("HS001", 5), ("HS003", 5)]
    assert [cls for cls, _ in report.by_class()] == ["10A1", "11A1"]

    clock.set(datetime(2026, 12, 28, 2, 0, tzinfo=UTC))
    report = await circ.overdue_list(db, librarian, clock=clock)
    assert [(line.class_name, line.card_number, line.days_overdue) for line in report.lines] == [
        ("10A1", "HS001", 13), ("10A1", "HS002", 6), ("11A1", "HS003", 13), (None, "GV001", 6)]
    assert [line.role for line in report.lines] == ["student"] * 3 + ["teacher"]
    only = await circ.overdue_list(db, librarian, clock=clock, class_name=" 10a1 ")
    assert [line.card_number for line in only.lines] == ["HS001", "HS002"] and only.class_name == " 10a1 "

    # the homeroom teacher of 10A1 sees her class and nobody else's; students see none
    teacher = await libs.actor("GV001")
    mine = await circ.overdue_list(db, teacher, clock=clock)
    assert [line.card_number for line in mine.lines] == ["HS001", "HS002"]
    with pytest.raises(PermissionDenied):
        await circ.overdue_list(db, teacher, clock=clock, class_name="11A1")
    with pytest.raises(PermissionDenied):
        await circ.overdue_list(db, await libs.actor("HS001"), clock=clock)
    assert (await circ.overdue_list(db, await libs.actor("OT001", "other"), clock=clock)).lines == []


# -- quiet hours and reminder days ----------------------------------------------------------------------

async def test_quiet_hours_and_reminder_days_are_stored_with_the_library(libs: Libraries, clock):
    db = libs.db
    librarian = replace(await libs.actor("TT001"), channel="web")
    student = await libs.actor("HS001")
    start = await rules.reminder_settings(db, student)
    assert (start.quiet_start, start.quiet_end, start.before_days, start.overdue_days) == \
        (time(20, 0), time(7, 0), 2, (1, 7, 14))

    changed = await rules.set_quiet_hours(db, librarian, "21h", "6:30")
    assert (changed.quiet_start, changed.quiet_end) == (time(21, 0), time(6, 30))
    changed = await rules.set_reminder_days(db, librarian, before_days="1", overdue_days="3, 10 ,3")
    assert changed.before_days == 1 and changed.overdue_days == (3, 10)
    # the reminder sweeper reads the same settings
    async with db.session() as s:
        library = await s.get(Library, librarian.library_id)
    effective = reminders.Rules.of(library)
    assert (effective.quiet_start, effective.quiet_end, effective.before_days, effective.overdue_days) == \
        (time(21, 0), time(6, 30), 1, (3, 10))
    assert await reminders.quiet_hours(db, student) == (time(21, 0), time(6, 30))
    # circulation rules in the same settings column are untouched, and the other way round
    await rules.set_rule(db, librarian, "loan_days", 21)
    assert (await rules.reminder_settings(db, student)).overdue_days == (3, 10)
    assert (await rules.get_rules(db, librarian.library_id)).loan_days == 21

    for bad, key in ((("25:00", "07:00"), "rules.bad_time"), (("soon", "07:00"), "rules.bad_time"),
                     (("7h", "07:00"), "rules.quiet_empty")):
        assert (await refused(rules.set_quiet_hours(db, librarian, *bad))).key == key
    assert (await refused(rules.set_reminder_days(db, librarian, overdue_days="0"))).key == "rules.bad_days"
    assert (await refused(rules.set_reminder_days(db, librarian, overdue_days="1,2,3,4,5,6,7"))).key == \
        "rules.bad_days"
    assert (await refused(rules.set_reminder_days(db, librarian, before_days="30"))).key == "rules.out_of_range"
    assert (await refused(rules.set_reminder_days(db, librarian))).key == "rules.nothing_to_change"
    with pytest.raises(PermissionDenied):
        await rules.set_quiet_hours(db, student, "22:00", "06:00")
    with pytest.raises(PermissionDenied):
        await rules.set_reminder_days(db, await libs.actor("GV001"), before_days=3)

    reset = await rules.reset_reminder_settings(db, librarian, "quiet_hours")
    assert (reset.quiet_start, reset.quiet_end, reset.overdue_days) == (time(20, 0), time(7, 0), (3, 10))
    # another school keeps its own settings
    assert (await rules.reminder_settings(db, await libs.actor("OT001", "other"))).overdue_days == (1, 7, 14)
    entries = await audits(db, "reminders.quiet_hours") + await audits(db, "reminders.days") + \
        await audits(db, "reminders.reset")
    assert len(entries) == 3 and {e.channel for e in entries} == {"web"}
    assert entries[0].details["quiet_hours"] == ["21:00", "06:30"]

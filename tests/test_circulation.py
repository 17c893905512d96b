"""Holds, loans, rules, the school calendar and library scoping, through the service layer."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from sqlalchemy import func, select

from services import circulation as circ
from services import outbox, rules
from services.common import DomainError, NotFound, PermissionDenied
from services.models import AuditEntry, Copy, CopyStatus, Hold, HoldStatus, Loan, Notification
from tests.conftest import Libraries


async def refused(coro) -> DomainError:
    with pytest.raises(DomainError) as info:
        await coro
    return info.value


async def audit_count(db, action: str) -> int:
    async with db.session() as s:
        return int(await s.scalar(select(func.count()).select_from(AuditEntry).where(AuditEntry.action == action)))


async def test_hold_queue_checkout_return_and_pickup_deadline(libs: Libraries, clock):
    db = libs.db
    an, hoa, lib = await libs.actor("HS001"), await libs.actor("HS002"), await libs.actor("TT001")
    title_id, [barcode] = await libs.title_with_copies(1)

    first = await circ.place_hold(db, an, title_id, clock=clock)
    assert first.status == HoldStatus.READY and first.position == 0 and first.barcode == barcode
    assert first.pickup_deadline == date(2026, 12, 4)  # Monday + 3 school days
    second = await circ.place_hold(db, hoa, title_id, clock=clock)
    assert second.status == HoldStatus.WAITING and second.position == 1
    assert (await refused(circ.place_hold(db, hoa, title_id, clock=clock))).key == "circulation.already_holding"

    # the copy is set aside for An: Hoa cannot take it
    assert (await refused(circ.check_out(db, lib, barcode, "HS002", clock=clock))).key == \
        "circulation.copy_held_for_other"
    out = await circ.check_out(db, lib, barcode, "HS001", clock=clock)
    assert out.fulfilled_hold_id == first.hold_id and out.due_date == date(2026, 12, 15)
    assert (await refused(circ.place_hold(db, an, title_id, clock=clock))).key == "circulation.already_borrowed"
    # someone waits: no renewal
    assert (await refused(circ.renew_loan(db, an, out.loan_id, clock=clock))).key == \
        "circulation.renew_holds_waiting"

    back = await circ.check_in(db, lib, barcode, clock=clock)
    assert back.held_for_card == "HS002" and back.pickup_deadline == date(2026, 12, 4)
    assert (await refused(circ.check_in(db, lib, barcode, clock=clock))).key == "circulation.not_on_loan"
    [view] = await circ.my_holds(db, hoa)
    assert view.status == HoldStatus.READY and view.barcode == barcode
    assert await circ.my_holds(db, an) == []

    async with db.session() as s:
        kinds = sorted((await s.execute(select(Notification.kind, Notification.key))).all())
    assert kinds == [("hold_ready", f"hold_ready:{first.hold_id}"), ("hold_ready", f"hold_ready:{second.hold_id}")]

    # Hoa does not come: the hold expires after the deadline and the copy goes back to the shelf
    clock.set(datetime(2026, 12, 4, 16, 0, tzinfo=UTC))  # 23:00 on the deadline day: still hers
    assert (await circ.expire_holds(db, clock=clock)).expired == []
    clock.set(datetime(2026, 12, 5, 2, 0, tzinfo=UTC))
    report = await circ.expire_holds(db, clock=clock)
    assert report.expired == [second.hold_id] and report.passed_on == []
    assert (await circ.find_copy(db, lib, barcode)).status == CopyStatus.AVAILABLE
    assert await audit_count(db, "hold.expire") == 1
    assert (await circ.expire_holds(db, clock=clock)).expired == []


async def test_expired_hold_passes_the_copy_to_the_next_in_queue(libs: Libraries, clock):
    db = libs.db
    title_id, [barcode] = await libs.title_with_copies(1)
    a, b, c = [await libs.actor(card) for card in ("HS001", "HS002", "HS003")]
    ready = await circ.place_hold(db, a, title_id, clock=clock)
    await circ.place_hold(db, b, title_id, clock=clock)
    third = await circ.place_hold(db, c, title_id, clock=clock)
    assert third.position == 2
    clock.set(datetime(2026, 12, 8, 2, 0, tzinfo=UTC))
    report = await circ.expire_holds(db, clock=clock)
    assert report.expired == [ready.hold_id] and len(report.passed_on) == 1
    [hb] = await circ.my_holds(db, b)
    assert hb.status == HoldStatus.READY and hb.pickup_deadline == date(2026, 12, 11)
    [hc] = await circ.my_holds(db, c)
    assert hc.position == 1
    # cancelling a READY hold passes the copy on too
    await circ.cancel_hold(db, b, hb.hold_id, clock=clock)
    [hc] = await circ.my_holds(db, c)
    assert hc.status == HoldStatus.READY
    assert (await refused(circ.cancel_hold(db, b, hb.hold_id, clock=clock))).key == "circulation.hold_not_active"
    async with db.session() as s:
        expired = (await s.execute(select(Notification).where(Notification.kind == "hold_expired"))).scalar_one()
    assert expired.payload["hold_id"] == ready.hold_id and expired.payload["title_id"] == title_id


async def test_limits_and_refusals(libs: Libraries, clock):
    db = libs.db
    an, lib = await libs.actor("HS001"), await libs.actor("TT001")
    await rules.set_rule(db, lib, "max_holds", 2)
    await rules.set_rule(db, lib, "max_loans", 1, role="student")
    titles = []
    async with db.session() as s:
        titles = list((await s.execute(select(Copy.title_id).distinct().order_by(Copy.title_id).limit(6))).scalars())
    await circ.place_hold(db, an, titles[0], clock=clock)
    await circ.place_hold(db, an, titles[1], clock=clock)
    err = await refused(circ.place_hold(db, an, titles[2], clock=clock))
    assert err.key == "circulation.hold_limit" and err.params["limit"] == 2

    async with db.session() as s:
        free = list((await s.execute(select(Copy.barcode).where(
            Copy.title_id.in_(titles[3:]), Copy.status == CopyStatus.AVAILABLE).order_by(Copy.id))).scalars())
    await circ.check_out(db, lib, free[0], "HS001", clock=clock)
    err = await refused(circ.check_out(db, lib, free[1], "HS001", clock=clock))
    assert err.key == "circulation.loan_limit" and err.params["limit"] == 1
    # teachers keep their own limit
    await circ.check_out(db, lib, free[1], "GV001", clock=clock)
    assert (await refused(circ.check_out(db, lib, free[1], "GV001", clock=clock))).key == \
        "circulation.already_lent_to_patron"

    # renewals: limit, then blocked for overdue
    [loan] = await circ.my_loans(db, an, clock=clock)
    r1 = await circ.renew_loan(db, an, loan.loan_id, clock=clock)
    assert r1.due_date == date(2026, 12, 29) and r1.renewals_left == 1
    # a double tap carrying the old count renews once only
    assert (await refused(circ.renew_loan(db, an, loan.loan_id, clock=clock, expected_renewals=0))).key == \
        "circulation.already_renewed"
    await circ.renew_loan(db, an, loan.loan_id, clock=clock, expected_renewals=1)
    assert (await refused(circ.renew_loan(db, an, loan.loan_id, clock=clock))).key == "circulation.renew_limit"
    clock.set(datetime(2027, 2, 1, 2, 0, tzinfo=UTC))
    [loan] = await circ.my_loans(db, an, clock=clock)
    assert loan.overdue_days > 7
    assert (await refused(circ.place_hold(db, an, titles[5], clock=clock))).key == "circulation.blocked_overdue"
    await rules.reset_rule(db, lib, "max_loans", role="student")
    assert (await refused(circ.check_out(db, lib, free[2], "HS001", clock=clock))).key == \
        "circulation.blocked_overdue"
    # bad rule values are refused with a reason
    assert (await refused(rules.set_rule(db, lib, "loan_days", "abc"))).key == "rules.bad_value"
    assert (await refused(rules.set_rule(db, lib, "loan_days", 0))).key == "rules.out_of_range"
    assert (await refused(rules.set_rule(db, lib, "nope", 1))).key == "rules.unknown"
    with pytest.raises(PermissionDenied):
        await rules.set_rule(db, an, "loan_days", 3)


async def test_calendar_moves_due_dates_and_pickup_deadlines(libs: Libraries, clock):
    db = libs.db
    lib = await libs.actor("TT001")
    # Tết 2027 holiday around the due date of a loan made today (15 Dec)
    await rules.add_closed_days(db, lib, date(2026, 12, 14), date(2026, 12, 18), "Nghỉ giữa kỳ")
    await rules.add_closed_days(db, lib, date(2026, 12, 2), None, "Ngày hội")
    cal = await rules.calendar_for(db, lib.library_id)
    assert cal.is_closed(date(2026, 12, 2)) and cal.is_closed(date(2026, 12, 5)) and not cal.is_closed(date(2026, 12, 3))
    assert cal.add_school_days(date(2026, 12, 1), 3) == date(2026, 12, 7)  # skips Wed 2, Sat, Sun
    assert await rules.add_school_days(db, lib.library_id, date(2026, 12, 1), 1) == date(2026, 12, 3)
    assert await rules.is_closed(db, lib.library_id, date(2026, 12, 16))
    _, [barcode] = await libs.title_with_copies(1)
    out = await circ.check_out(db, lib, barcode, "HS001", clock=clock)
    assert out.due_date == date(2026, 12, 21)  # 15 Dec is closed until Fri 18, then the weekend
    # weekends are configurable: a six-day school week
    await rules.set_rule(db, lib, "weekend", "sun")
    cal = await rules.calendar_for(db, lib.library_id)
    assert not cal.is_closed(date(2026, 12, 5)) and cal.is_closed(date(2026, 12, 6))
    ranges = await rules.list_closed_days(db, lib)
    assert [r.name for r in ranges] == ["Ngày hội", "Nghỉ giữa kỳ"]
    await rules.remove_closed_days(db, lib, ranges[0].id)
    assert (await refused(rules.remove_closed_days(db, lib, ranges[0].id))).key == "calendar.not_found"
    assert (await refused(rules.add_closed_days(db, lib, date(2026, 12, 9), date(2026, 12, 1), "x"))).key == \
        "calendar.bad_range"


async def test_libraries_are_scoped(libs: Libraries, clock):
    """Staff of one school cannot see or change another's; students see only their own."""
    db = libs.db
    an, hoa, lib = await libs.actor("HS001"), await libs.actor("HS002"), await libs.actor("TT001")
    other_lib, other_student = await libs.actor("OT001", "other"), await libs.actor("OS001", "other")
    title_id, [barcode] = await libs.title_with_copies(1)
    hold = await circ.place_hold(db, an, title_id, clock=clock)
    out = await circ.check_out(db, lib, barcode, "HS001", clock=clock)

    # the other school's librarian cannot find our copy, patron, loan or hold
    with pytest.raises(NotFound):
        await circ.check_out(db, other_lib, barcode, "HS002", clock=clock)
    with pytest.raises(NotFound):
        await circ.check_out(db, other_lib, "OC0001", "HS002", clock=clock)
    with pytest.raises(NotFound):
        await circ.check_in(db, other_lib, barcode, clock=clock)
    with pytest.raises(NotFound):
        await circ.renew_loan(db, other_lib, out.loan_id, clock=clock)
    with pytest.raises(NotFound):
        await circ.patron_history(db, other_lib, "HS001")
    with pytest.raises(NotFound):
        await circ.copy_history(db, other_lib, out.copy_id)
    closed = await rules.add_closed_days(db, lib, date(2027, 1, 1), None, "Tết Dương lịch")
    assert (await refused(rules.remove_closed_days(db, other_lib, closed.id))).key == "calendar.not_found"
    assert await rules.list_closed_days(db, other_lib) == []
    # a student cannot touch another student's loan or hold, nor use staff functions
    with pytest.raises(NotFound):
        await circ.renew_loan(db, hoa, out.loan_id, clock=clock)
    with pytest.raises(NotFound):
        await circ.cancel_hold(db, hoa, hold.hold_id, clock=clock)
    with pytest.raises(PermissionDenied):
        await circ.patron_history(db, hoa, "HS001")
    with pytest.raises(PermissionDenied):
        await circ.check_out(db, hoa, barcode, "HS002", clock=clock)
    assert await circ.my_loans(db, hoa, clock=clock) == []
    # the other school's own copy lends to its own students, with its own rules
    await rules.set_rule(db, other_lib, "loan_days", 7)
    other_out = await circ.check_out(db, other_lib, "OC0001", "OS001", clock=clock)
    assert other_out.due_date == date(2026, 12, 8)
    assert (await circ.my_loans(db, other_student, clock=clock))[0].barcode == "OC0001"
    # and our loan periods did not change
    assert (await rules.get_rules(db, lib.library_id, "student")).loan_days == 14
    name, history = await circ.patron_history(db, lib, "HS001")
    assert name == "Nguyễn Văn An" and [h.barcode for h in history] == [barcode]
    view, history = await circ.copy_history(db, lib, barcode)
    assert view.status == CopyStatus.ON_LOAN and history[0].card_number == "HS001"


async def test_notifications_are_recorded_once(libs: Libraries, clock):
    db = libs.db
    async with db.transaction() as s:
        patron_id = (await libs.actor("HS001")).patron_id
        assert await outbox.enqueue(s, patron_id=patron_id, kind="hold_ready", key="hold_ready:x",
                                           send_after=clock.now())
        assert not await outbox.enqueue(s, patron_id=patron_id, kind="hold_ready", key="hold_ready:x",
                                               send_after=clock.now())


# -- concurrency ---------------------------------------------------------------------------------------

async def check_invariants(db) -> None:
    """A copy is on loan to at most one patron and held for at most one READY hold; statuses agree
    with loans and holds; nobody waits while a copy sits on the shelf; the audit log matches."""
    async with db.session() as s:
        copies = list((await s.execute(select(Copy))).scalars())
        open_loans = list((await s.execute(select(Loan).where(Loan.returned_at.is_(None)))).scalars())
        holds = list((await s.execute(select(Hold))).scalars())
        loans_all = list((await s.execute(select(Loan))).scalars())
        audit = dict((await s.execute(select(AuditEntry.action, func.count()).group_by(AuditEntry.action))).all())
    loans_by_copy: dict[int, int] = {}
    for loan in open_loans:
        loans_by_copy[loan.copy_id] = loans_by_copy.get(loan.copy_id, 0) + 1
    ready_by_copy: dict[int, int] = {}
    for hold in holds:
        if hold.status == HoldStatus.READY:
            ready_by_copy[hold.copy_id] = ready_by_copy.get(hold.copy_id, 0) + 1
    for copy in copies:
        assert loans_by_copy.get(copy.id, 0) == (1 if copy.status == CopyStatus.ON_LOAN else 0), copy.id
        assert ready_by_copy.get(copy.id, 0) == (1 if copy.status == CopyStatus.ON_HOLD_SHELF else 0), copy.id
    active = [(h.patron_id, h.title_id) for h in holds if h.status in (HoldStatus.WAITING, HoldStatus.READY)]
    assert len(active) == len(set(active))
    waiting_titles = {(h.library_id, h.title_id) for h in holds if h.status == HoldStatus.WAITING}
    for copy in copies:
        assert (copy.library_id, copy.title_id) not in waiting_titles or copy.status != CopyStatus.AVAILABLE
    assert audit.get("hold.place", 0) == len(holds)
    assert audit.get("hold.ready", 0) == sum(1 for h in holds if h.copy_id is not None)
    assert audit.get("loan.checkout", 0) == len(loans_all)
    assert audit.get("loan.return", 0) == sum(1 for loan in loans_all if loan.returned_at is not None)
    assert audit.get("loan.renew", 0) == sum(loan.renewals for loan in loans_all)


async def positions_are_consistent(db, actors, title_id) -> None:
    positions = []
    for actor in actors:
        for view in await circ.my_holds(db, actor):
            if view.title_id == title_id and view.status == HoldStatus.WAITING:
                positions.append(view.position)
    assert sorted(positions) == list(range(1, len(positions) + 1))


async def gather(*coros):
    import asyncio

    return await asyncio.gather(*coros, return_exceptions=True)


def outcomes(results) -> tuple[list, list[str]]:
    wins = [r for r in results if not isinstance(r, BaseException)]
    errors = [r for r in results if isinstance(r, BaseException)]
    unexpected = [e for e in errors if not isinstance(e, DomainError)]
    assert not unexpected, unexpected[:3]
    return wins, [e.key for e in errors]


async def test_hundred_students_reserve_the_last_copy(libs: Libraries, clock):
    db = libs.db
    cards = await libs.add_students(100)
    actors = [await libs.actor(c) for c in cards]
    title_id, _ = await libs.title_with_copies(1)
    wins, refusals = outcomes(await gather(*(circ.place_hold(db, a, title_id, clock=clock) for a in actors)))
    assert not refusals and len(wins) == 100
    assert sum(1 for w in wins if w.status == HoldStatus.READY) == 1
    assert sorted(w.position for w in wins if w.status == HoldStatus.WAITING) == list(range(1, 100))
    await check_invariants(db)
    await positions_are_consistent(db, actors, title_id)


async def test_double_tapped_reserve_makes_one_hold(libs: Libraries, clock):
    db = libs.db
    an = await libs.actor("HS001")
    title_id, _ = await libs.title_with_copies(2)
    wins, refusals = outcomes(await gather(*(circ.place_hold(db, an, title_id, clock=clock) for _ in range(100))))
    assert len(wins) == 1 and set(refusals) == {"circulation.already_ready"}
    await check_invariants(db)


async def test_concurrent_checkouts_of_one_copy(libs: Libraries, clock):
    db = libs.db
    cards = await libs.add_students(100)
    lib = await libs.actor("TT001")
    _, [barcode] = await libs.title_with_copies(1)
    wins, refusals = outcomes(await gather(*(circ.check_out(db, lib, barcode, c, clock=clock) for c in cards)))
    assert len(wins) == 1 and set(refusals) == {"circulation.copy_on_loan"}
    await check_invariants(db)
    assert await audit_count(db, "loan.checkout") == 1


async def test_return_racing_renewals(libs: Libraries, clock):
    db = libs.db
    an, lib = await libs.actor("HS001"), await libs.actor("TT001")
    _, [barcode] = await libs.title_with_copies(1)
    out = await circ.check_out(db, lib, barcode, "HS001", clock=clock)
    jobs = []
    for i in range(100):
        if i % 2:
            jobs.append(circ.check_in(db, lib, barcode, clock=clock))
        else:
            jobs.append(circ.renew_loan(db, an, out.loan_id, clock=clock, expected_renewals=0))
    wins, refusals = outcomes(await gather(*jobs))
    returns = [w for w in wins if isinstance(w, circ.CheckinResult)]
    renewals = [w for w in wins if isinstance(w, circ.RenewResult)]
    assert len(returns) == 1 and len(renewals) <= 1
    assert set(refusals) <= {"circulation.not_on_loan", "circulation.already_returned",
                             "circulation.already_renewed"}
    await check_invariants(db)


async def test_mixed_traffic_keeps_the_invariants(libs: Libraries, clock):
    """Reserve, cancel, check out and return on a two-copy title, all at once, from 20 students."""
    import random

    db = libs.db
    cards = await libs.add_students(20)
    actors = [await libs.actor(c) for c in cards]
    lib = await libs.actor("TT001")
    title_id, barcodes = await libs.title_with_copies(2)
    rng = random.Random(5)

    async def cancel_own(actor):
        for view in await circ.my_holds(db, actor):
            await circ.cancel_hold(db, actor, view.hold_id, clock=clock)

    for _round in range(1):
        jobs = []
        for i in range(100):
            actor, card = rng.choice(list(zip(actors, cards, strict=True)))
            kind = i % 4
            if kind == 0:
                jobs.append(circ.place_hold(db, actor, title_id, clock=clock))
            elif kind == 1:
                jobs.append(cancel_own(actor))
            elif kind == 2:
                jobs.append(circ.check_out(db, lib, rng.choice(barcodes), card, clock=clock))
            else:
                jobs.append(circ.check_in(db, lib, rng.choice(barcodes), clock=clock))
        outcomes(await gather(*jobs))
        await check_invariants(db)
        await positions_are_consistent(db, actors, title_id)

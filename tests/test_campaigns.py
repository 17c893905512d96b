"""Campaigns: goals and progress, leaderboards, badges, certificate, shortlist, export, and the
issue's "done when" path end to end."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, timedelta

import pypdfium2
import pytest
from openpyxl import load_workbook
from sqlalchemy import select

from bot import cli
from handlers.core import Context
from handlers.messages import CollectingChannel, Incoming
from services import campaigns, reflections
from services.common import DomainError, PermissionDenied
from services.models import Notification, Title
from tests.test_reflections import TEXT_60, actor_for, lend, some_titles, written


def pdf_text(data: bytes) -> str:
    doc = pypdfium2.PdfDocument(data)
    try:
        return "\n".join(page.get_textpage().get_text_range() for page in doc)
    finally:
        doc.close()


async def new_campaign(app, librarian, **kw):
    today = app.deps.clock.today()
    args = dict(name="Mùa đọc mùa đông", theme="Tình bạn", starts_on=today - timedelta(days=10),
                ends_on=today + timedelta(days=30), goal_books=2, goal_reflections=1)
    args.update(kw)
    return await campaigns.create(app.db, librarian, clock=app.deps.clock, **args)


async def test_create_validates_and_is_staff_only(demo_app):
    app = demo_app
    student = await actor_for(app.db, "s1", "HS001")
    librarian = await actor_for(app.db, "l1", "TT001")
    with pytest.raises(PermissionDenied):
        await new_campaign(app, student)
    for bad, key in ((dict(name="  "), "campaigns.name_required"),
                     (dict(ends_on=date(2020, 1, 1)), "campaigns.dates_order"),
                     (dict(goal_books=0, goal_reflections=0), "campaigns.goal_required"),
                     (dict(goal_books=1000), "campaigns.goal_range"),
                     (dict(min_words=500, max_words=100), "campaigns.words_order"),
                     (dict(title_ids=[999999]), "campaigns.unknown_books")):
        with pytest.raises(DomainError) as e:
            await new_campaign(app, librarian, **bad)
        assert e.value.key == key
    c = await new_campaign(app, librarian)
    view, new = await campaigns.join(app.db, student, c.id, app.deps.clock)
    assert new and view.members == 1
    _, again = await campaigns.join(app.db, student, c.id, app.deps.clock)
    assert not again
    with pytest.raises(DomainError):
        await campaigns.join(app.db, librarian, c.id, app.deps.clock)  # students only


async def test_progress_counts_returns_and_approved_reflections_in_dates_and_subjects(demo_app):
    app = demo_app
    now = app.deps.clock.now()
    librarian = await actor_for(app.db, "l1", "TT001")
    student = await actor_for(app.db, "s1", "HS001")
    async with app.db.session() as s:
        rows = (await s.execute(select(Title.id, Title.subjects).where(Title.language == "vie")
                                .order_by(Title.id))).all()
    poetry = [tid for tid, subj in rows if "poetry" in subj.lower()][:2]
    other = [tid for tid, subj in rows if "poetry" not in subj.lower()][:2]
    c = await new_campaign(app, librarian, subjects=["Poetry"], goal_books=2, goal_reflections=1,
                           min_words=20, max_words=200)
    await campaigns.join(app.db, student, c.id, app.deps.clock)
    await lend(app.db, "HS001", poetry[0], now - timedelta(days=8), now - timedelta(days=2))   # counts
    await lend(app.db, "HS001", other[0], now - timedelta(days=8), now - timedelta(days=2))    # wrong subject
    await lend(app.db, "HS001", poetry[1], now - timedelta(days=40), now - timedelta(days=30))  # before start
    [p] = await campaigns.my_progress(app.db, student, app.deps.clock)
    assert (p.books, p.reflections, p.complete) == (1, 0, False)
    # a reflection on a campaign book uses the campaign's length rules
    d = await reflections.start(app.db, student, poetry[0], app.deps.clock)
    assert (d.min_words, d.max_words, d.campaign_id) == (20, 200, c.id)
    await reflections.append_text(app.db, student, d.id, TEXT_60)
    await reflections.set_rating(app.db, student, d.id, 5)
    await reflections.submit(app.db, student, d.id, app.deps.clock)
    await reflections.moderate(app.db, librarian, d.id, "approve", clock=app.deps.clock)
    await lend(app.db, "HS001", poetry[1], now - timedelta(days=5), now - timedelta(days=1))
    [p] = await campaigns.my_progress(app.db, student, app.deps.clock)
    assert (p.books, p.reflections, p.complete) == (2, 1, True)
    async with app.db.session() as s:
        kinds = set((await s.execute(select(Notification.kind)
                                     .where(Notification.patron_id == student.patron_id))).scalars())
    assert {"campaign_completed", "reflection_approved", "badge_earned"} <= kinds
    pdf = await campaigns.certificate_pdf(app.db, student, c.id, app.deps.catalogs.translator("vi"), app.deps.clock)
    text = pdf_text(pdf)
    assert "Nguyễn Văn An" in text and "GIẤY CHỨNG NHẬN" in text and "Mùa đọc mùa đông" in text
    other_student = await actor_for(app.db, "s2", "HS002")
    with pytest.raises(DomainError) as e:
        await campaigns.certificate_pdf(app.db, other_student, c.id, app.deps.catalogs.translator("vi"))
    assert e.value.key == "campaigns.not_joined"


async def test_badges_are_defined_precisely(demo_app):
    app = demo_app
    student = await actor_for(app.db, "s1", "HS001")
    titles = await some_titles(app.db, 6)
    monday = datetime(2026, 10, 5, 3, 0, tzinfo=UTC)  # a Monday, 10:00 in Lào Cai
    # weeks 1, 2, 3 active, week 4 empty, then weeks 5-8 active: the streak completes in week 8
    for week in (0, 1, 2, 4, 5, 6):
        await lend(app.db, "HS001", titles[week % 6], monday + timedelta(weeks=week, days=2),
                   monday + timedelta(weeks=week, days=3))
    assert [b.code for b in await campaigns.badges(app.db, student)] == ["five_books"]
    await lend(app.db, "HS001", titles[0], monday + timedelta(weeks=7, days=6), monday + timedelta(weeks=7, days=6))
    badges = {b.code: b.earned_on for b in await campaigns.badges(app.db, student)}
    assert badges["month_streak"] == date(2026, 11, 23)  # the Monday of the fourth week in a row
    assert badges["five_books"] == date(2026, 11, 12)    # the day the fifth different book came back
    assert campaigns._streak_start([date(2026, 12, 1), date(2026, 12, 8), date(2026, 12, 15)]) is None


async def test_leaderboards_hide_names_and_rank_classes(demo_app, link_chat):
    app = demo_app
    now = app.deps.clock.now()
    librarian = await actor_for(app.db, "l1", "TT001")
    c = await new_campaign(app, librarian, goal_books=3, goal_reflections=1)
    titles = await some_titles(app.db, 4)
    for user, card, books in (("s1", "HS001", 1), ("s2", "HS002", 3), ("s3", "HS003", 2)):
        actor = await actor_for(app.db, user, card)
        await campaigns.join(app.db, actor, c.id, app.deps.clock)
        for i in range(books):
            await lend(app.db, card, titles[i], now - timedelta(days=5), now - timedelta(days=1))
    hoa = await link_chat("s2", "HS002", language="en")
    await hoa.say("/leaderboard")
    assert "1. Hoa (10A1) — 3 points" in hoa.text and "← you" in hoa.text
    assert "1. Class 10A1 — 4 points (2 students)" in hoa.text
    await hoa.press("Hide my name")
    assert "hidden" in hoa.text and "1. Anonymous reader (10A1)" in hoa.text
    an = await link_chat("s1", "HS001")
    await an.say("/leaderboard")
    assert "Bạn đọc ẩn danh" in an.text and "Hoa" not in an.text
    await an.press("Lớp em")
    assert "lớp 10A1" in an.text and "Páo" not in an.text


async def test_newcampaign_flow_and_bad_input(demo_app, link_chat):
    lib = await link_chat("l1", "TT001")
    await lib.say("/newcampaign")
    await lib.say("Đại sứ Văn hóa đọc 2026")
    await lib.say("ngày mai")
    assert "Chưa đọc được ngày" in lib.text
    await lib.say("01/12/2026 - 31/01/2027")
    await lib.say("năm")
    assert "hai số" in lib.text
    await lib.say("5 3")
    await lib.press("Bỏ qua")          # theme
    await lib.say("Văn học, Thơ")      # subjects
    await lib.say("100 800")           # words
    assert "Đã tạo chiến dịch" in lib.text and "Đại sứ Văn hóa đọc 2026" in lib.text
    student = await link_chat("s1", "HS001")
    await student.say("/campaigns")
    await student.press("Tham gia")
    assert "Em đã tham gia" in student.text
    await student.say("/newcampaign")
    assert "quyền" in student.text.lower() or "không" in student.text.lower()


async def test_newcampaign_checks_each_answer_keeps_them_on_a_refusal_and_can_be_cancelled(demo_app, link_chat):
    app = demo_app
    lib = await link_chat("l1", "TT001")
    await lib.say("/newcampaign")
    await lib.say("Mùa đọc")
    await lib.say("31/01/2027 - 01/12/2026")          # backwards: told now, not after five questions
    assert "Ngày kết thúc phải sau ngày bắt đầu" in lib.text
    await lib.say("01/12/2026 - 31/01/2027")
    await lib.say("0 0")
    assert "Cần ít nhất một mục tiêu" in lib.text
    await lib.say("3 2")
    await lib.press("Bỏ qua")                          # theme
    await lib.say("#999999 #1")                        # a book that does not exist
    await lib.say("100 800")
    # refused at the end: only the books are asked again, every other answer is kept
    assert "Không có sách số: 999999" in lib.text and "Giới hạn theo sách" in lib.text
    [first] = await some_titles(app.db, 1)
    await lib.say(f"#{first}")
    assert "Đã tạo chiến dịch" in lib.text
    [c] = await campaigns.list_campaigns(app.db, await actor_for(app.db, "l1", "TT001"), app.deps.clock)
    assert (c.name, c.goal_books, c.goal_reflections) == ("Mùa đọc", 3, 2)
    async with app.db.session() as s:
        from services.models import Campaign

        row = await s.get(Campaign, c.id)
    assert row.title_ids == [first] and (row.min_words, row.max_words) == (100, 800)
    # a librarian who walks away can leave with a button; later text is a plain search again
    await lib.say("/newcampaign")
    await lib.press("Huỷ")
    assert "Đã huỷ" in lib.text
    await lib.say("truyen kieu")
    assert "Từ ngày nào" not in lib.text
    assert len(await campaigns.list_campaigns(app.db, await actor_for(app.db, "l1", "TT001"), app.deps.clock)) == 1


async def test_done_when_reflection_to_leaderboard_and_export(demo_app, link_chat, tmp_path, monkeypatch):
    """The issue's "done when", through the chat layer: write with a prompt, approve, notified,
    on the book card and the leaderboard, and in the export (CLI, all three formats)."""
    app = demo_app
    now = app.deps.clock.now()
    lib = await actor_for(app.db, "l1", "TT001")
    await new_campaign(app, lib, name="Đại sứ Văn hóa đọc", goal_books=1, goal_reflections=1)
    [title] = await some_titles(app.db, 1)
    await lend(app.db, "HS002", title, now - timedelta(days=6), now - timedelta(days=1))
    student = await link_chat("s2", "HS002")
    await student.say("/join")
    assert "Đại sứ Văn hóa đọc" in student.text
    await student.say("/reflect")
    await student.press((await reflections.title_name(app.db, title))[:15])
    await student.press("2.")
    await student.say(TEXT_60)
    await student.press("Xong")
    await student.press("5 ⭐")
    await student.press("Nộp bài")
    assert "Đã nộp" in student.text
    librarian = await link_chat("l1", "TT001")
    await librarian.say("/moderate")
    assert "Lò Thị Hoa" in librarian.text and "nhân vật" in librarian.text
    await librarian.press("Duyệt")
    assert "Đã duyệt" in librarian.text
    # the student is told: the notice is in the outbox and reads right
    async with app.db.session() as s:
        notice = (await s.execute(select(Notification).where(Notification.kind == "reflection_approved"))
                  ).scalar_one()
    ctx = await app.router.context_for(Incoming(channel="test", chat_id="s2", user_id="s2"))
    reply = await app.router.notices[notice.kind](ctx, notice.payload)
    assert "đã được duyệt" in reply.text
    # on the book card
    ctx2: Context = ctx
    rows = [row for provider in app.router.card_buttons for row in await provider(ctx2, title)]
    assert any("Cảm nhận (1)" in b.label for row in rows for b in row)
    # on the leaderboard, and the campaign is complete with a certificate
    await student.say("/leaderboard")
    assert "1. Hoa (10A1) — 3 điểm" in student.text
    await student.say("/progress")
    assert "Hoàn thành" in student.text
    await student.press("Giấy chứng nhận")
    assert "Lò Thị Hoa" in pdf_text(student.last[0].attachment.data)
    # shortlisted and exported
    await librarian.say("/shortlist")
    await librarian.press("Chọn: Lò Thị Hoa")
    assert "★ Lò Thị Hoa" in librarian.text
    await librarian.press("XLSX")
    sheet = load_workbook(io.BytesIO(librarian.last[0].attachment.data)).active
    assert sheet["A2"].value == "Lò Thị Hoa" and sheet["H2"].value == "có"
    monkeypatch.setenv("DOCSACH_DATABASE_URL", app.db.url)
    monkeypatch.setenv("DOCSACH_SECRET_KEY", "x" * 32)
    for fmt in ("csv", "xlsx", "pdf"):
        out = tmp_path / f"export.{fmt}"
        assert await cli._main(["export", "reflections", "--campaign", "Đại sứ Văn hóa đọc", "--format", fmt,
                                "--output", str(out)]) == 0
        data = out.read_bytes()
        if fmt == "csv":
            [header, row] = list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))
            assert header[:6] == ["Học sinh", "Lớp", "Sách", "Số chữ", "Số sao", "Nội dung"]
            assert row[0] == "Lò Thị Hoa" and row[1] == "10A1" and row[4] == "5" and "vùng cao" in row[5]
            assert int(row[3]) == reflections.count_words(TEXT_60)
        elif fmt == "pdf":
            assert "Lò Thị Hoa" in pdf_text(data) and "vùng cao" in pdf_text(data)
    assert await cli._main(["export", "reflections", "--campaign", "nope", "--output", str(tmp_path / "x")]) == 2


async def test_publication_failure_keeps_the_approval(demo_app):
    app = demo_app

    class Broken(CollectingChannel):
        async def send(self, chat_id, reply):
            raise ConnectionError("down")

    app.deps.outbound["telegram"] = Broken("telegram")
    from services.models import Library

    async with app.db.transaction() as s:
        (await s.execute(select(Library))).scalar_one().publish_chat_id = "-1"
    student = await actor_for(app.db, "s1", "HS001")
    lib = await actor_for(app.db, "l1", "TT001")
    [title] = await some_titles(app.db, 1)
    d = await reflections.submit(app.db, student, (await written(app, student, title)).id, app.deps.clock)
    from handlers.reflections import publish

    await reflections.moderate(app.db, lib, d.id, "approve", clock=app.deps.clock)
    ctx = await app.router.context_for(Incoming(channel="test", chat_id="l1", user_id="l1"))
    assert await publish(ctx, d.id) is False
    assert (await reflections.publication(app.db, d.id)) is not None  # still to be published

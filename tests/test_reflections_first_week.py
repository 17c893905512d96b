"""Reflections as students meet them in the first week: «Done» says how many words are missing,
a revision replaces the text in one message (after seeing the current text to copy), a stale
«please revise» notice is never delivered once the reflection was approved, the star buttons read
alike, and /progress says which reading counts."""

from __future__ import annotations

from bot.scheduler import Sweeper
from handlers.messages import CollectingChannel
from services import reflections
from services.models import Notification, NotificationStatus, ReflectionStatus
from tests.test_reflections import TEXT_60, actor_for, lend, some_titles, written


async def test_done_below_the_minimum_says_how_many_words_are_missing(demo_app, link_chat):
    from datetime import timedelta

    now = demo_app.deps.clock.now()
    [title] = await some_titles(demo_app.db, 1)
    await lend(demo_app.db, "HS001", title, now - timedelta(days=20), now - timedelta(days=6))
    student = await link_chat("s1", "HS001")
    await student.say("/camnhan")
    book = await reflections.title_name(demo_app.db, title)
    await student.press(book[:20])
    await student.press("Tự viết")
    await student.say("Cuốn sách này rất hay và cảm động.")          # 8 words of the 50 needed
    await student.press("Xong")
    assert "Bài mới có 8 chữ, còn thiếu 42 chữ nữa mới đủ 50 chữ" in student.text
    assert "mấy sao" not in student.text
    await student.say(TEXT_60)                                      # still writing: the text is added
    assert "Đã lưu" in student.text
    await student.press("Xong")
    assert "mấy sao" in student.text
    assert [b.label for r in student.last for row in r.buttons for b in row] == [f"{n} ⭐" for n in range(1, 6)]


async def test_a_revision_replaces_the_text_in_one_message(demo_app, link_chat):
    app = demo_app
    [title] = await some_titles(app.db, 1)
    student_actor = await actor_for(app.db, "s1", "HS001")
    draft = await written(app, student_actor, title)
    await reflections.submit(app.db, student_actor, draft.id, app.deps.clock)
    teacher = await actor_for(app.db, "t1", "GV001")
    await reflections.moderate(app.db, teacher, draft.id, "changes", "Em kể thêm về nhân vật chính nhé.",
                               app.deps.clock)

    student = await link_chat("s1", "HS001")
    await student.say("/bannhap")
    await student.press(draft.title[:15])
    assert "Em kể thêm về nhân vật chính" in student.text
    await student.press("Thay bằng bản đã sửa")
    assert len(student.last) == 2 and student.last[1].text == TEXT_60   # the current text, to copy
    corrected = TEXT_60 + " Nhân vật chính là một cậu bé dũng cảm, luôn giúp đỡ bạn bè."
    await student.say(corrected)
    assert "Đã thay bài bằng bản mới" in student.text
    view = await reflections.get(app.db, student_actor, draft.id)
    assert view.body == corrected                                     # replaced, not appended
    await student.press("Nộp bài")
    assert "Đã nộp" in student.text


async def test_a_stale_please_revise_notice_is_not_delivered_after_approval(demo_app):
    app = demo_app
    app.deps.outbound["test"] = channel = CollectingChannel("test")
    [title] = await some_titles(app.db, 1)
    student = await actor_for(app.db, "x-s1", "HS001")
    teacher = await actor_for(app.db, "x-t1", "GV001")
    draft = await written(app, student, title)
    await reflections.submit(app.db, student, draft.id, app.deps.clock)
    await reflections.moderate(app.db, teacher, draft.id, "changes", "Thêm một đoạn kết.", app.deps.clock)
    # before any sweep ran, the student revised, resubmitted and the teacher approved
    await reflections.append_text(app.db, student, draft.id, "Đoạn kết: em sẽ đọc lại cuốn sách này.")
    await reflections.submit(app.db, student, draft.id, app.deps.clock)
    await reflections.moderate(app.db, teacher, draft.id, "approve", clock=app.deps.clock)
    assert (await reflections.get(app.db, student, draft.id)).status == ReflectionStatus.APPROVED

    await Sweeper(app.router, worker="test").sweep()
    texts = [reply.text for _, reply in channel.sent]
    assert any("đã được duyệt" in text for text in texts)
    assert not any("góp ý" in text for text in texts)
    async with app.db.session() as s:
        from sqlalchemy import select

        status = (await s.execute(select(Notification.status).where(
            Notification.kind == "reflection_changes_requested"))).scalar_one()
    assert status == NotificationStatus.SKIPPED


async def test_progress_says_which_reading_counts(demo_app, link_chat):
    from datetime import timedelta

    from services import campaigns
    from tests.test_campaigns import actor_for as campaign_actor

    lib = await campaign_actor(demo_app.db, "l1", "TT001")
    today = demo_app.deps.clock.today()
    c = await campaigns.create(demo_app.db, lib, name="Đọc cùng quê hương", starts_on=today - timedelta(days=10),
                               ends_on=today + timedelta(days=20), goal_books=1, goal_reflections=1,
                               clock=demo_app.deps.clock)
    student = await link_chat("s1", "HS001")
    await student.say(f"/join {c.id}")
    await student.say("/tiendo")
    start = (today - timedelta(days=10)).strftime("%d/%m/%Y")
    assert f"từ {start}" in student.text and "kể cả trước khi tham gia" in student.text

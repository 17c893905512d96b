"""Reflections: drafts, limits, moderation, abuse, notices, the chat flow and the book card."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import func, select

from handlers.core import Context
from handlers.messages import CollectingChannel, Incoming
from services import patrons, reflections
from services.common import DomainError, PermissionDenied
from services.models import Copy, Library, Loan, Notification, Patron, Reflection, ReflectionStatus, Title

TEXT_60 = ("Cuốn sách kể về tình bạn giữa những đứa trẻ vùng cao, em rất xúc động khi đọc. " * 4).strip()


async def actor_for(db, user: str, card: str, library: str = "demo"):
    actor = await patrons.resolve_actor(db, "test", user, user)
    return await patrons.link_trusted(db, actor, library, card)


async def some_titles(db, n: int) -> list[int]:
    async with db.session() as s:
        return list((await s.execute(select(Title.id).order_by(Title.id).limit(n))).scalars())


async def lend(db, card: str, title_id: int, out: datetime, back: datetime | None = None) -> None:
    """A loan written straight into the tables (circulation is another feature)."""
    async with db.transaction() as s:
        patron = (await s.execute(select(Patron).where(Patron.card_number == card))).scalar_one()
        copy = (await s.execute(select(Copy).where(Copy.title_id == title_id).order_by(Copy.id))).scalars().first()
        s.add(Loan(library_id=patron.library_id, copy_id=copy.id, patron_id=patron.id, checked_out_at=out,
                   due_date=(out + timedelta(days=14)).date(), returned_at=back))


async def written(app, actor, title_id: int, text: str = TEXT_60, rating: int = 5):
    d = await reflections.start(app.db, actor, title_id, app.deps.clock)
    await reflections.append_text(app.db, actor, d.id, text)
    return await reflections.set_rating(app.db, actor, d.id, rating)


def test_word_count_and_flags():
    assert reflections.count_words("Em rất thích cuốn sách này!") == 6
    assert reflections.count_words("😀😀 🎉 !!! ...") == 0
    assert reflections.count_words("well-known don't 2026") == 3
    assert reflections.find_flags("Truyện hay, không có gì xấu.") == []
    assert reflections.find_flags("Thằng đó ĐỒ NGU  như vậy, what the FUCK") == ["đồ ngu", "fuck"]
    # whole words only: "đi" (go) is not "đĩ", "dickens" is not "dick"
    assert reflections.find_flags("Em đi đọc Dickens") == []
    assert reflections.find_flags("một từ riêng", extra=["từ riêng"]) == ["từ riêng"]


async def test_draft_resume_edit_and_submit(demo_app):
    app = demo_app
    student = await actor_for(app.db, "s1", "HS001")
    [title] = await some_titles(app.db, 1)
    d = await reflections.start(app.db, student, title, app.deps.clock)
    assert d.status == ReflectionStatus.DRAFT and (d.min_words, d.max_words) == (50, 1000)
    again = await reflections.start(app.db, student, title, app.deps.clock)
    assert again.id == d.id  # one draft per student and book: resumed
    with pytest.raises(DomainError) as e:
        await reflections.append_text(app.db, student, d.id, "🙂🙂🙂")
    assert e.value.key == "reflections.no_words"
    with pytest.raises(DomainError):
        await reflections.append_text(app.db, student, d.id, "   ")
    await reflections.append_text(app.db, student, d.id, "Phần một của bài viết.")
    d = await reflections.append_text(app.db, student, d.id, "Phần hai.")
    assert d.body == "Phần một của bài viết.\n\nPhần hai." and d.word_count == 7
    with pytest.raises(DomainError) as e:
        await reflections.submit(app.db, student, d.id, app.deps.clock)
    assert e.value.key == "reflections.too_short" and e.value.params == {"count": 7, "min": 50}
    await reflections.append_text(app.db, student, d.id, TEXT_60)
    with pytest.raises(DomainError) as e:
        await reflections.submit(app.db, student, d.id, app.deps.clock)
    assert e.value.key == "reflections.rating_missing"
    with pytest.raises(DomainError):
        await reflections.set_rating(app.db, student, d.id, 6)
    await reflections.set_rating(app.db, student, d.id, 4)
    await reflections.set_prompt(app.db, student, d.id, "d1")
    await reflections.set_photo(app.db, student, d.id, "AgACAgIAAx-photo")
    d = await reflections.submit(app.db, student, d.id, app.deps.clock)
    assert d.status == ReflectionStatus.SUBMITTED and d.prompt == "reflections.prompt_character"
    # editing while submitted takes it back out of the queue
    d = await reflections.append_text(app.db, student, d.id, "Thêm một câu.")
    assert d.withdrawn and d.status == ReflectionStatus.DRAFT
    # someone else cannot see or touch it
    other = await actor_for(app.db, "s2", "HS002")
    with pytest.raises(DomainError):
        await reflections.append_text(app.db, other, d.id, "xin chào")
    with pytest.raises(PermissionDenied):
        await reflections.get(app.db, other, d.id)


async def test_too_long_is_refused_without_losing_text(demo_app):
    app = demo_app
    student = await actor_for(app.db, "s1", "HS001")
    [title] = await some_titles(app.db, 1)
    d = await reflections.start(app.db, student, title, app.deps.clock)
    await reflections.append_text(app.db, student, d.id, "chữ " * 990)
    with pytest.raises(DomainError) as e:
        await reflections.append_text(app.db, student, d.id, "thêm " * 20)
    assert e.value.key == "reflections.too_long" and e.value.params["max"] == 1000
    assert (await reflections.get(app.db, student, d.id)).word_count == 990


async def test_concurrent_starts_make_one_draft(demo_app):
    app = demo_app
    student = await actor_for(app.db, "s1", "HS001")
    [title] = await some_titles(app.db, 1)
    views = await asyncio.gather(*(reflections.start(app.db, student, title, app.deps.clock) for _ in range(8)))
    assert len({v.id for v in views}) == 1


async def test_moderation_rules_and_notices(demo_app):
    app = demo_app
    clock = app.deps.clock
    student = await actor_for(app.db, "s1", "HS001")
    teacher = await actor_for(app.db, "t1", "GV001")
    librarian = await actor_for(app.db, "l1", "TT001")
    [t1, t2, t3] = await some_titles(app.db, 3)
    d = await written(app, student, t1, TEXT_60 + " Thằng đó đồ ngu.")
    d = await reflections.submit(app.db, student, d.id, clock)
    # the student (forged button or not) cannot approve: the service checks the role
    with pytest.raises(PermissionDenied):
        await reflections.moderate(app.db, student, d.id, "approve", clock=clock)
    # staff of another library cannot either
    async with app.db.transaction() as s:
        other = Library(code="other", name="Trường khác", settings={})
        s.add(other)
        await s.flush()
        s.add(Patron(library_id=other.id, card_number="TT900", full_name="Ngô Văn Khác", role="librarian",
                     preferences={}))
    outsider = await actor_for(app.db, "x1", "TT900", library="other")
    with pytest.raises(PermissionDenied):
        await reflections.moderate(app.db, outsider, d.id, "approve", clock=clock)
    # a teacher's own reflection is not theirs to approve
    own = await reflections.submit(app.db, teacher, (await written(app, teacher, t2)).id, clock)
    with pytest.raises(PermissionDenied):
        await reflections.moderate(app.db, teacher, own.id, "approve", clock=clock)
    queue, total = await reflections.queue(app.db, librarian)
    assert total == 2 and queue[0].id == d.id and queue[0].flags == ["đồ ngu"]
    with pytest.raises(DomainError) as e:
        await reflections.moderate(app.db, librarian, d.id, "reject", "  ", clock=clock)
    assert e.value.key == "reflections.reason_required"
    await reflections.moderate(app.db, teacher, d.id, "changes", "Bỏ câu cuối nhé.", clock=clock)
    d = await reflections.clear_text(app.db, student, d.id)
    await reflections.append_text(app.db, student, d.id, TEXT_60)
    clock.set(clock.now() + timedelta(minutes=5))
    await reflections.submit(app.db, student, d.id, clock)
    approved = await reflections.moderate(app.db, librarian, d.id, "approve", clock=clock)
    assert approved.status == ReflectionStatus.APPROVED
    # a second moderator's late tap is refused politely; edits after approval are refused
    with pytest.raises(DomainError) as e:
        await reflections.moderate(app.db, teacher, d.id, "reject", "muộn", clock=clock)
    assert e.value.key == "reflections.not_in_queue"
    with pytest.raises(DomainError) as e:
        await reflections.append_text(app.db, student, d.id, "sửa lén")
    assert e.value.key == "reflections.locked_approved"
    with pytest.raises(DomainError) as e:
        await reflections.start(app.db, student, t1, clock)
    assert e.value.key == "reflections.already_approved"
    # a rejected reflection is final, and a new one on the same book may be written
    r3 = await reflections.submit(app.db, student, (await written(app, student, t3)).id, clock)
    await reflections.moderate(app.db, librarian, r3.id, "reject", "Bài chép mạng.", clock=clock)
    fresh = await reflections.start(app.db, student, t3, clock)
    assert fresh.id != r3.id
    async with app.db.session() as s:
        kinds = [n.kind for n in (await s.execute(
            select(Notification).where(Notification.patron_id == student.patron_id).order_by(Notification.id)
        )).scalars()]
    assert kinds[:2] == ["reflection_changes_requested", "reflection_approved"]
    assert "reflection_rejected" in kinds and "badge_earned" in kinds  # first reflection badge


async def test_fifty_submissions_in_a_minute_are_rate_limited(demo_app):
    app = demo_app
    student = await actor_for(app.db, "s1", "HS001")
    titles = await some_titles(app.db, 50)
    drafts = [await written(app, student, t) for t in titles]
    results = await asyncio.gather(*(reflections.submit(app.db, student, d.id, app.deps.clock) for d in drafts),
                                   return_exceptions=True)
    ok = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, DomainError)]
    assert len(ok) == reflections.RATE_LIMIT and len(refused) == 45
    assert {r.key for r in refused} == {"reflections.rate_limited"}
    async with app.db.session() as s:
        submitted = await s.scalar(select(func.count()).select_from(Reflection)
                                   .where(Reflection.status == ReflectionStatus.SUBMITTED))
    assert submitted == 5
    app.deps.clock.set(app.deps.clock.now() + timedelta(hours=1, minutes=1))
    await reflections.submit(app.db, student, drafts[-1].id, app.deps.clock)


async def test_prompts_are_editable_per_library(demo_app):
    app = demo_app
    librarian = await actor_for(app.db, "l1", "TT001")
    student = await actor_for(app.db, "s1", "HS001")
    defaults = await reflections.list_prompts(app.db, librarian.library_id)
    assert [p.message_key for p in defaults] == list(reflections.DEFAULT_PROMPTS)
    with pytest.raises(PermissionDenied):
        await reflections.add_prompt(app.db, student, "Không được")
    custom = await reflections.add_prompt(app.db, librarian, "Cuốn sách gợi cho em kỷ niệm nào?")
    await reflections.remove_prompt(app.db, librarian, "d2")
    prompts = await reflections.list_prompts(app.db, librarian.library_id)
    assert len(prompts) == 4 and prompts[-1].text == custom.text
    assert "reflections.prompt_share" not in [p.message_key for p in prompts]


async def test_renderers_in_both_languages(demo_app, catalogs):
    app = demo_app
    for lang, expect in (("vi", "đã được duyệt"), ("en", "was approved")):
        actor = await patrons.resolve_actor(app.db, "test", f"r-{lang}", f"r-{lang}", language_hint=lang)
        ctx = Context(app.deps, actor, Incoming(channel="test", chat_id=f"r-{lang}", user_id=f"r-{lang}"),
                      app.router)
        reply = await app.router.notices["reflection_approved"](ctx, {"title": "Dế Mèn", "reflection_id": 1})
        assert expect in reply.text and "Dế Mèn" in reply.text
        reply = await app.router.notices["reflection_changes_requested"](
            ctx, {"title": "Dế Mèn", "reflection_id": 1, "note": "Thêm ví dụ"})
        assert "Thêm ví dụ" in reply.text and reply.buttons
        reply = await app.router.notices["reflection_rejected"](ctx, {"title": "X", "note": "Chép mạng"})
        assert "Chép mạng" in reply.text
        reply = await app.router.notices["campaign_completed"](ctx, {"campaign_id": 1, "name": "Mùa đọc"})
        assert "Mùa đọc" in reply.text
        reply = await app.router.notices["badge_earned"](ctx, {"badge": "five_books"})
        assert ("5" in reply.text) if lang == "vi" else ("Five books" in reply.text)


async def test_reflect_flow_in_chat_moderation_card_and_publication(demo_app, link_chat):
    app = demo_app
    now = app.deps.clock.now()
    [on_loan, returned] = await some_titles(app.db, 2)
    await lend(app.db, "HS001", on_loan, now - timedelta(days=3))
    await lend(app.db, "HS001", returned, now - timedelta(days=20), now - timedelta(days=6))
    channel = CollectingChannel("telegram")
    app.deps.outbound["telegram"] = channel
    async with app.db.transaction() as s:
        library = (await s.execute(select(Library).where(Library.code == "demo"))).scalar_one()
        library.publish_chat_id = "-100123"
    student = await link_chat("s1", "HS001")
    await student.say("/camnhan")
    assert "cuốn sách nào" in student.text
    book = await reflections.title_name(app.db, returned)
    await student.press(book[:20])
    assert "gợi ý" in student.text
    await student.press("1.")
    assert "Điều gì trong cuốn sách" in student.text
    await student.say("😀😀😀")
    assert "biểu tượng cảm xúc" in student.text
    await student.say(TEXT_60[:120])
    assert "Đã lưu" in student.text
    await student.say(TEXT_60)
    await app.router.dispatch(Incoming(channel="test", chat_id="s1", user_id="s1", photo_ref="AgAC-drawing"))
    await student.press("Xong")
    assert "mấy sao" in student.text
    await student.press("4 ⭐")
    assert "★★★★☆" in student.text and "chữ" in student.text
    await student.say("/drafts")
    assert book[:20] in student.text and "bản nháp" in student.text
    await student.press("Viết tiếp")
    await student.press("Nộp bài")
    assert "Đã nộp" in student.text

    # a forged approve: a genuine-looking payload for the student's own chat is refused by the service
    [mine] = await reflections.my_open(app.db, await actor_for(app.db, "s1", "HS001"))
    await student.press(app.router.encode("s1", "ma", mine.id))
    assert "không có quyền" in student.text
    assert (await reflections.get(app.db, await actor_for(app.db, "s1", "HS001"), mine.id)).status == "submitted"

    teacher = await link_chat("t1", "GV001", language="en")
    await teacher.say("/moderate")
    assert "Nguyễn Văn An" in teacher.text and "Waiting for review: 1" in teacher.text
    await teacher.press("Approve")
    assert "Approved" in teacher.text and "Nothing waiting" in teacher.text
    assert "Published" in teacher.text
    [(chat_id, post)] = channel.sent
    assert chat_id == "-100123" and "An, lớp 10A1" in post.text and "Nguyễn Văn" not in post.text
    assert post.photo == "AgAC-drawing"                  # the drawing is published with the text

    # the book card shows "Reflections (1)" and lists it
    ctx = await app.router.context_for(Incoming(channel="test", chat_id="s2", user_id="s2"))
    other = await link_chat("s2", "HS002")
    ctx = await app.router.context_for(Incoming(channel="test", chat_id="s2", user_id="s2"))
    rows = [row for provider in app.router.card_buttons for row in await provider(ctx, returned)]
    labels = [b.label for row in rows for b in row]
    assert "💬 Cảm nhận (1)" in labels and "✍️ Viết cảm nhận" in labels
    other.last = [type(student.last[0])("card", buttons=rows)]
    await other.press("Cảm nhận (1)")
    assert "An, lớp 10A1" in other.text and "vùng cao" in other.text
    # editing after approval is refused in chat too
    await student.say("/camnhan")
    await student.press(book[:20])
    assert "đã được duyệt" in student.text


async def test_moderator_reject_and_changes_through_chat(demo_app, link_chat):
    app = demo_app
    student = await actor_for(app.db, "s1", "HS001")
    [title] = await some_titles(app.db, 1)
    d = await reflections.submit(app.db, student, (await written(app, student, title)).id, app.deps.clock)
    librarian = await link_chat("l1", "TT001")
    await librarian.say("/moderate")
    await librarian.press("Yêu cầu sửa")
    assert "cần sửa gì" in librarian.text
    await librarian.say("Em hãy kể thêm.")
    assert "Gửi góp ý này" in librarian.text and "«Em hãy kể thêm.»" in librarian.text
    # the note waits for a confirmation: text typed now (a search) decides nothing
    await librarian.say("truyen kieu")
    assert "chưa làm gì" in librarian.text and "«Em hãy kể thêm.»" in librarian.text
    assert (await reflections.get(app.db, student, d.id)).status == ReflectionStatus.SUBMITTED
    await librarian.press("Viết lại")
    await librarian.say("Em hãy kể thêm về nhân vật chính.")
    confirm = librarian.find_button("Gửi góp ý")
    await librarian.press(confirm)
    assert "Đã gửi góp ý" in librarian.text
    view = await reflections.get(app.db, student, d.id)
    assert view.status == ReflectionStatus.CHANGES_REQUESTED and view.moderation_note == "Em hãy kể thêm về nhân vật chính."
    await librarian.press(confirm)                      # a double tap
    assert "hết hạn" in librarian.text
    # a rejection (final) can be called off before it is confirmed
    d2 = await reflections.submit(app.db, student, (await written(app, student, (await some_titles(app.db, 2))[1])).id,
                                  app.deps.clock)
    await librarian.say("/moderate")
    await librarian.press("Từ chối")
    await librarian.say("Bài chép mạng.")
    assert "Xác nhận từ chối" in " ".join(b.label for r in librarian.last for row in r.buttons for b in row)
    await librarian.press("Huỷ")
    assert "Đã huỷ, bài vẫn chờ duyệt" in librarian.text
    await librarian.say("truyen kieu")                  # the chat is free again: a plain search
    assert (await reflections.get(app.db, student, d2.id)).status == ReflectionStatus.SUBMITTED
    # guests and students cannot open the queue
    guest = type(librarian)(app, user="guest")
    await guest.say("/moderate")
    assert "liên kết" in guest.text.lower() or "link" in guest.text.lower()


async def test_photo_goes_to_the_open_draft(demo_app, link_chat):
    app = demo_app
    [title] = await some_titles(app.db, 1)
    student = await link_chat("s1", "HS001")
    await student.say("/camnhan")
    await student.press("x")  # no such button: nothing happens but a friendly reply
    draft = await reflections.start(app.db, await actor_for(app.db, "s1", "HS001"), title, app.deps.clock)
    await student.app.router.dispatch(Incoming(channel="test", chat_id="s1", user_id="s1", photo_ref="PHOTO1"))
    await student.say("/drafts")
    await student.press("Viết tiếp")
    await student.press("Tự viết")
    replies = await app.router.dispatch(Incoming(channel="test", chat_id="s1", user_id="s1", photo_ref="PHOTO1"))
    assert "Đã đính kèm ảnh" in replies[0].text
    view = await reflections.get(app.db, await actor_for(app.db, "s1", "HS001"), draft.id)
    assert view.photo_ref == "PHOTO1"


def test_dates_of_loans_are_utc(clock):
    # the fixed test clock is Monday 1 Dec 2026, 09:00 in Lào Cai
    assert clock.today() == date(2026, 12, 1) and clock.now().tzinfo == UTC


def reply_labels(driver) -> list[str]:
    return [b.label for r in driver.last for row in r.buttons for b in row]


async def test_text_after_the_preview_is_never_added_nor_withdraws_a_submitted_one(demo_app, link_chat):
    """After «Done» the chat is in the review step: stray text (a search typed later) gets a short
    reply with the buttons; only «Write more» goes back to writing."""
    app = demo_app
    [title] = await some_titles(app.db, 1)
    me = await actor_for(app.db, "s1", "HS001")
    student = await link_chat("s1", "HS001")
    await student.say("/camnhan")
    await student.press(app.router.encode("s1", "rfb", title))
    await student.press("Tự viết")
    await student.say(TEXT_60)
    await student.press("Xong")
    stars = student.find_button("4 ⭐")
    await student.say("de men phieu luu ky")            # while the stars are shown
    assert "chưa thêm tin nhắn" in student.text
    assert {"📨 Nộp bài", "✍️ Viết thêm", "✖️ Thoát (giữ bản nháp)"} <= set(reply_labels(student))
    await student.press("Nộp bài")                       # no stars yet: asked for them, not refused flatly
    assert "chấm sao" in student.text and "4 ⭐" in reply_labels(student)
    await student.press(stars)
    assert "★★★★☆" in student.text
    await student.say("de men phieu luu ky")            # after the preview
    assert "chưa thêm tin nhắn" in student.text
    [draft] = await reflections.my_open(app.db, me)
    assert draft.body == TEXT_60
    await student.press("Viết thêm")                     # back to writing, on purpose
    await student.say("Thêm một câu nữa.")
    assert "Đã lưu" in student.text
    await student.press("Xong")                          # rated already: straight to the preview
    submit = student.find_button("Nộp bài")
    await student.press(submit)
    assert "Đã nộp" in student.text
    await student.press(submit)                          # a double tap
    assert "đã được nộp" in student.text
    await student.say("de men phieu luu ky")            # the chat is free again: a catalog search
    assert "chưa thêm" not in student.text and "Nộp bài" not in reply_labels(student)
    # resuming the submitted one, then stray text, or a stale star button: it stays in the queue
    await student.say("/drafts")
    await student.press("Viết tiếp")
    await student.say("de men phieu luu ky")
    assert "đang chờ thầy cô duyệt" in student.text and "Nộp bài" not in reply_labels(student)
    await student.press(stars)
    assert "không dùng được nữa" in student.text
    view = await reflections.get(app.db, me, draft.id)
    assert view.status == ReflectionStatus.SUBMITTED and view.body.endswith("Thêm một câu nữa.")
    assert view.rating == 4
    await student.press(app.router.encode("s1", "rfx"))
    assert "/bannhap" in student.text


async def test_book_search_in_reflect_uses_the_catalog_rules_and_the_students_library(demo_app, link_chat):
    app = demo_app
    async with app.db.session() as s:
        title_id = (await s.execute(select(Title.id).where(Title.title == "Nỗi cô đơn còn lại : tiểu thuyết"))
                    ).scalar_one()
    student = await link_chat("s1", "HS001", language="en")
    await student.say("/reflect")
    await student.say("n")
    assert "at least 2 characters" in student.text and not [b for b in reply_labels(student) if "Nỗi" in b]
    await student.say("😀!!")
    assert "not by symbols" in student.text
    await student.say("noi co don con lai")              # no diacritics: the catalog search finds it
    assert "Nỗi cô đơn còn lại : tiểu thuyết" in reply_labels(student)
    # once the library's only copy belongs to another school, it is not offered here
    async with app.db.transaction() as s:
        other = Library(code="other", name="Trường khác", settings={})
        s.add(other)
        await s.flush()
        for copy in (await s.execute(select(Copy).where(Copy.title_id == title_id))).scalars():
            copy.library_id = other.id
    await student.say("noi co don con lai")
    assert "Nỗi cô đơn còn lại : tiểu thuyết" not in reply_labels(student)


def test_labels_are_shortened_on_a_word_boundary():
    from handlers.text import short

    prompt = "Điều gì trong cuốn sách làm em xúc động nhất? Vì sao?"
    assert short(prompt, 40) == "Điều gì trong cuốn sách làm em xúc động…"
    assert short(prompt, 100) == prompt
    assert short("Nỗi cô đơn còn lại : tiểu thuyết", 24) == "Nỗi cô đơn còn lại…"
    assert short("Supercalifragilistic", 8) == "Superca…"     # one long word: cut inside it
    assert all(len(short(prompt, n)) <= n for n in range(2, 60))


async def test_prompt_buttons_end_with_an_ellipsis(demo_app, link_chat):
    app = demo_app
    librarian = await actor_for(app.db, "l1", "TT001")
    long_prompt = "Nếu được gặp tác giả, em muốn hỏi điều gì về đoạn kết của cuốn sách này và vì sao?"
    await reflections.add_prompt(app.db, librarian, long_prompt)
    [title] = await some_titles(app.db, 1)
    student = await link_chat("s1", "HS001")
    await student.say("/camnhan")
    await student.press(app.router.encode("s1", "rfb", title))
    [label] = [b for b in reply_labels(student) if b.startswith("5. ")]
    assert label.endswith("…") and long_prompt.startswith(label[3:-1])
    assert long_prompt[len(label) - 3 - 1] == " "         # the cut fell between two words

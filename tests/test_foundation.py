"""The foundation: migrations, identities, languages, routing and bad input."""

from __future__ import annotations

import asyncio

from sqlalchemy import func, select

from handlers.messages import ChannelProfile, Incoming
from services import patrons
from services.demo import isbn13, load_demo
from services.models import ChatIdentity, Copy, Library, Patron, Title
from tests.conftest import ChatDriver


async def test_start_and_help_in_vietnamese_then_english(chat: ChatDriver):
    await chat.say("/start")
    assert "docsach" in chat.text and "Xin chào" in chat.text
    await chat.say("/help")
    assert "/language" in chat.text and "các lệnh" in chat.text
    await chat.say("/language en")
    assert chat.text == "Switched to English."
    await chat.say("/help")
    assert "the commands you can use" in chat.text
    # remembered: a brand-new dispatch for the same user still answers in English
    await chat.say("/start")
    assert "Hello!" in chat.text


async def test_language_buttons_and_unsupported_language(chat: ChatDriver):
    await chat.say("/language")
    assert len(chat.last[0].buttons[0]) == 2
    await chat.press("English")
    assert chat.last[0].edit and chat.text == "Switched to English."
    await chat.say("/language fr")
    assert "not supported" in chat.text


async def test_telegram_language_code_is_the_default(app):
    driver = ChatDriver(app, user="en-user", language="en-GB")
    await driver.say("/start")
    assert "Hello!" in driver.text


async def test_bad_input_gets_helpful_replies(chat: ChatDriver):
    await chat.say("/nosuchcommand")
    assert "/nosuchcommand" in chat.text and "/help" in chat.text
    await chat.say("")
    assert "/help" in chat.text
    await chat.say("   \u200b\u202e  ")
    assert "/help" in chat.text
    await chat.say("x" * 10_000)
    assert "4096" in chat.text
    await chat.say("\x00\x07/help\x1b")
    assert "/language" in chat.text


async def test_forged_and_foreign_buttons_are_refused(app, chat: ChatDriver):
    await chat.press("1:lang:en~AAAAAAAA")
    assert "hết hạn" in chat.text
    # a genuine payload made for another chat is refused too
    other = app.router.encode("someone-else", "lang", "en")
    await chat.press(other)
    assert "hết hạn" in chat.text
    await chat.press("garbage-without-mac")
    assert "hết hạn" in chat.text
    genuine = app.router.encode(chat.user, "lang", "en")
    assert len(genuine.encode()) <= 64
    await chat.press(genuine)
    assert chat.text == "Switched to English."


async def test_concurrent_first_messages_create_one_identity(app, db):
    events = [Incoming(channel="test", chat_id="c1", user_id="same", text="/start") for _ in range(10)]
    replies = await asyncio.gather(*(app.router.dispatch(e) for e in events))
    assert all("Xin chào" in r[0].text for r in replies)
    async with db.session() as s:
        count = await s.scalar(select(func.count()).select_from(ChatIdentity))
    assert count == 1


async def test_database_that_went_away_gets_a_friendly_reply(app, db):
    await db.dispose()
    # point the router at a database that cannot be reached
    from services.db import Database

    app.deps.db = Database("postgresql+asyncpg://nobody@127.0.0.1:1/none")
    replies = await app.router.dispatch(Incoming(channel="test", chat_id="c", user_id="c", text="/help"))
    await app.deps.db.dispose()
    assert "tạm gián đoạn" in replies[0].text


async def test_demo_library_is_idempotent_and_real(db):
    first = await load_demo(db)
    second = await load_demo(db)
    assert first.created and not second.created
    assert first.titles == second.titles == 341
    async with db.session() as s:
        assert await s.scalar(select(func.count()).select_from(Library)) == 1
        assert await s.scalar(select(func.count()).select_from(Copy)) == first.copies
        kieu = (await s.execute(select(Title).where(Title.language == "vie").limit(1))).scalar_one()
        assert kieu.title and any(ch in kieu.title for ch in "ăâđêôơưáàảãạ")
        librarian = (await s.execute(select(Patron).where(Patron.card_number == "TT001"))).scalar_one()
        assert librarian.role.value == "librarian"


async def test_linking_changes_help_by_role(demo_app):
    driver = ChatDriver(demo_app, user="lib")
    actor = await patrons.resolve_actor(demo_app.db, "test", "lib", "lib")
    await patrons.link_trusted(demo_app.db, actor, "demo", "TT001")
    await driver.say("/help")
    assert "thủ thư" in driver.text
    await driver.say("/start")
    assert "Hoàng Minh Tuấn" in driver.text


def test_isbn13():
    assert isbn13("0786805609") == "9780786805600"
    assert isbn13("0-7868-0560-9 (pbk.)") == "9780786805600"
    assert isbn13("9780786805600") == "9780786805600"
    assert isbn13("0786805608") is None


async def test_enqueue_records_a_notice_once(demo_app, clock):
    from services.models import Notification
    from services.outbox import enqueue

    async with demo_app.db.transaction() as s:
        patron = (await s.execute(select(Patron).where(Patron.card_number == "HS001"))).scalar_one()
        first = await enqueue(s, patron_id=patron.id, kind="test", key="test:1", send_after=clock.now())
        again = await enqueue(s, patron_id=patron.id, kind="test", key="test:1", send_after=clock.now())
    assert first and not again
    async with demo_app.db.session() as s:
        assert await s.scalar(select(func.count()).select_from(Notification)) == 1


async def test_prefilters_run_before_the_fallback(app, chat: ChatDriver):
    from handlers.messages import Reply

    async def take_codes(event, ctx):
        return Reply("code!") if event.text.startswith("CODE") else None

    async def fallback(event, ctx):
        return Reply("searched")

    app.router.prefilter_text(take_codes)
    app.router.fallback_text(fallback)
    await chat.say("CODE-1234")
    assert chat.text == "code!"
    await chat.say("truyen kieu")
    assert chat.text == "searched"


async def test_group_chats_never_see_personal_commands_or_flows(demo_app):
    """Students are minors: in a group only catalog commands work; the rest points to a private chat."""
    app = demo_app
    actor = await patrons.resolve_actor(app.db, "test", "an", "an")
    await patrons.link_trusted(app.db, actor, "demo", "HS001")
    app.deps.channels["test"] = ChannelProfile(name="test", home="https://t.me/docsach_bot")

    async def say(text: str, button: str | None = None):
        return await app.router.dispatch(Incoming(channel="test", chat_id="-100", user_id="an", text=text,
                                                  button=button, chat_type="group"))

    for command in ("/loans", "/holds", "/me", "/reflect", "/drafts", "/link ABCD-EFGH"):
        replies = await say(command)
        assert "nhắn riêng" in replies[0].text, command
        assert replies[0].buttons[0][0].url == "https://t.me/docsach_bot"
    assert "/language" in (await say("/help"))[0].text
    # a personal button pressed in the group is refused, a catalog button works
    hold = app.router.encode("-100", "hold", 1)
    assert "nhắn riêng" in (await say("", button=hold))[0].toast
    book = app.router.encode("-100", "book", 1)
    assert "nhắn riêng" not in (await say("", button=book))[0].text
    # the member's private chat still belongs to them (reminders go there, not to the group)
    async with app.db.session() as s:
        identity = (await s.execute(select(ChatIdentity).where(ChatIdentity.external_id == "an"))).scalar_one()
    assert identity.chat_id == "an"

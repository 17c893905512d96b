"""The pieces under the Zalo adapter: text splitting, update parsing, outcome classification,
and the database-backed choices, repeated-delivery guard and expiring downloads."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from bot.channels.zalo import classify, split_text
from bot.channels.zalo_api import ZaloApi, ZaloApiError, ZaloNotSent, ZaloUncertain, parse_updates
from services import choices, downloads, inbound
from tests.fake_zalo_api import FakeZaloApi

# -- splitting ----------------------------------------------------------------------------------


def test_short_text_is_one_part_and_empty_text_is_never_sent_empty():
    assert split_text("Xin chào") == ["Xin chào"]
    assert split_text("") == ["…"] and split_text("   \n ") == ["…"]


def test_split_prefers_paragraphs_then_lines_then_sentences_then_spaces():
    paragraphs = "\n\n".join(["A" * 900, "B" * 900, "C" * 900])
    assert split_text(paragraphs) == ["A" * 900 + "\n\n" + "B" * 900, "C" * 900]
    lines = "\n".join(["x" * 1500, "y" * 1500])
    assert split_text(lines) == ["x" * 1500, "y" * 1500]
    sentences = ("Một câu khá dài về sách. " * 120).strip()
    parts = split_text(sentences)
    assert all(len(p) <= 2000 for p in parts) and all(p.endswith(".") for p in parts)
    assert " ".join(parts) == sentences


def test_a_single_huge_word_is_cut_hard_and_emoji_count_twice():
    assert [len(p) for p in split_text("x" * 4500)] == [2000, 2000, 500]
    emoji = "📚" * 1500                          # 3,000 UTF-16 units
    parts = split_text(emoji)
    assert [len(p) for p in parts] == [1000, 500] and "".join(parts) == emoji


def test_no_letter_is_separated_from_its_accent():
    decomposed = "a" * 1999 + "e\u0301" + "o" * 10        # NFC composes é: nothing to separate
    assert all(len(p) <= 2000 for p in split_text(decomposed))
    combining = "a" * 1999 + "\u1ea1\u0300" * 3             # ạ + a combining grave that stays separate
    for part in split_text(combining):
        assert len(part) <= 2000 and not part[0] == "\u0300"


# -- updates ------------------------------------------------------------------------------------

UPDATE = {"event_name": "message.text.received",
          "message": {"message_id": "16f6366b3f02645a3d15", "date": 1766619597466,
                      "chat": {"id": "e4ea2cd5189df1c3a88c", "chat_type": "PRIVATE"},
                      "from": {"id": "e4ea2cd5189df1c3a88c", "display_name": "Nguyen Van A", "is_bot": False},
                      "text": "Xin chào"}}


def test_updates_with_and_without_the_envelope():
    [bare] = parse_updates(UPDATE)
    [wrapped] = parse_updates({"ok": True, "result": UPDATE})
    assert bare == wrapped
    assert (bare.kind, bare.text, bare.chat_id, bare.chat_type, bare.message_id, bare.date_ms) == (
        "text", "Xin chào", "e4ea2cd5189df1c3a88c", "private", "16f6366b3f02645a3d15", 1766619597466)


def test_images_stickers_hidden_content_and_unknown_events_parse():
    image = {"event_name": "message.image.received",
             "message": dict(UPDATE["message"], photo="https://cdn.example/p.jpg", caption="trang 1")}
    del image["message"]["text"]
    [parsed] = parse_updates(image)
    assert (parsed.kind, parsed.photo_url, parsed.text) == ("image", "https://cdn.example/p.jpg", "trang 1")
    hidden = {"event_name": "message.unsupported.received",
              "message": {k: v for k, v in UPDATE["message"].items() if k != "text"}}
    assert parse_updates(hidden)[0].kind == "unsupported"
    assert parse_updates({"event_name": "user.joined", "message": {}})[0].kind == "unknown"
    group = {"event_name": "message.text.received",
             "message": dict(UPDATE["message"], chat={"id": "g1", "chat_type": "GROUP"})}
    assert parse_updates(group)[0].chat_type == "group"


@pytest.mark.parametrize("junk", [None, [], {}, "x", 3, {"ok": True, "result": None}, {"event_name": 5},
                                  {"ok": True, "result": [1, "a"]}])
def test_junk_is_not_an_update(junk):
    assert parse_updates(junk) == []


def test_odd_field_types_do_not_crash():
    odd = {"event_name": "message.text.received",
           "message": {"message_id": 12345, "chat": "nope", "from": {"id": 7, "display_name": None},
                       "text": ["not", "text"], "date": "yesterday"}}
    [parsed] = parse_updates(odd)
    assert (parsed.message_id, parsed.chat_id, parsed.user_id, parsed.text, parsed.date_ms) == (
        "12345", "7", "7", "", None)


# -- outcomes -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("error", "state"), [
    (ZaloNotSent("x"), "retry"),
    (ZaloUncertain("x"), "uncertain"),
    (ZaloApiError("sendMessage", 429, "Quota exceeded"), "retry"),
    (ZaloApiError("sendMessage", 429, "", http_status=429), "retry"),
    (ZaloApiError("sendMessage", 502, "Bad Gateway", http_status=502), "retry"),
    (ZaloApiError("sendMessage", 500, "Internal error"), "retry"),
    (ZaloApiError("sendMessage", 504, "Gateway Timeout", http_status=504), "uncertain"),
    (ZaloApiError("sendMessage", 408, "Request timeout"), "uncertain"),
    (ZaloApiError("sendMessage", 403, "Forbidden"), "unreachable"),
    (ZaloApiError("sendMessage", 400, "text is invalid"), "failed"),
    (ZaloApiError("sendMessage", 401, "Unauthorized"), "failed"),
])
def test_outcome_classification(error, state):
    assert classify(error).state == state


async def test_the_client_reads_ok_and_keeps_the_token_out_of_errors():
    async with FakeZaloApi() as api:
        client = ZaloApi(api.token, api.base_url)
        try:
            assert (await client.get_me())["id"] == api.bot_id
            api.fail_next("sendMessage", 400, description=f"bad chat for bot{api.token}")
            with pytest.raises(ZaloApiError) as refused:
                await client.send_message("c1", "xin chào")
            assert api.token not in str(refused.value) and refused.value.error_code == 400
            assert await client.get_updates(timeout=0) == []           # idle: ok:false 408
            api.idle = "empty"
            assert await client.get_updates(timeout=0) == []           # idle: an empty result
        finally:
            await client.close()
        dead = ZaloApi(api.token, "http://127.0.0.1:1/bot")
        try:
            with pytest.raises(ZaloNotSent) as not_sent:
                await dead.send_message("c1", "xin chào")
            assert api.token not in str(not_sent.value)
        finally:
            await dead.close()


# -- numbered choices ---------------------------------------------------------------------------

async def test_choices_fresh_replace_and_pushed_ones_continue(db, clock):
    now = clock.now()
    first = await choices.remember(db, "zalo", "c1", [("Sách A", "p:a"), ("Sách B", "p:b")], now=now, fresh=True)
    assert [c.n for c in first] == [1, 2]
    pushed = await choices.remember(db, "zalo", "c1", [("Gia hạn", "p:renew")], now=now, fresh=False)
    assert [c.n for c in pushed] == [3]                     # "1" and "2" still mean the books
    assert (await choices.pick(db, "zalo", "c1", "2", now=now)).choice.payload == "p:b"
    assert (await choices.pick(db, "zalo", "c1", "3.", now=now)).choice.payload == "p:renew"
    assert (await choices.pick(db, "zalo", "c1", "#3", now=now)).kind == "text"          # a title id
    assert (await choices.pick(db, "zalo", "c1", "gia han", now=now)).choice.payload == "p:renew"
    off = await choices.pick(db, "zalo", "c1", "9", now=now)
    assert (off.kind, off.number, off.highest) == ("unknown_number", 9, 3)
    assert (await choices.pick(db, "zalo", "c1", "sach C", now=now)).kind == "text"
    assert (await choices.pick(db, "zalo", "c1", "9780000000002", now=now)).kind == "text"   # an ISBN
    again = await choices.remember(db, "zalo", "c1", [("Khác", "p:x")], now=now, fresh=True)
    assert [c.n for c in again] == [1]
    assert (await choices.pick(db, "zalo", "c1", "2", now=now)).kind == "unknown_number"
    assert (await choices.pick(db, "zalo", "other", "1", now=now)).kind == "no_list"
    quiet = now + choices.IDLE + timedelta(minutes=1)       # a notice into a quiet chat starts at 1
    assert [c.n for c in await choices.remember(db, "zalo", "c2", [("A", "p:a")], now=now, fresh=True)] == [1]
    assert [c.n for c in await choices.remember(db, "zalo", "c2", [("B", "p:b")], now=quiet, fresh=False)] == [1]
    later = now + choices.TTL + timedelta(minutes=1)
    assert (await choices.pick(db, "zalo", "c1", "1", now=later)).kind == "stale"
    assert [c.n for c in await choices.remember(db, "zalo", "c1", [("Mới", "p:n")], now=later, fresh=False)] == [1]
    assert await choices.prune(db, now=later + choices.TTL + timedelta(days=1)) == 2


async def test_a_label_keeps_its_own_number_when_it_is_free(db, clock):
    page2 = [("6. Đối thoại sử học", "p:6"), ("7. Đồng đội tôi", "p:7"), ("◀ Trước", "p:prev"), ("Tiếp ▶", "p:next")]
    numbered = await choices.remember(db, "zalo", "c1", page2, now=clock.now(), fresh=True)
    assert [(c.n, c.label) for c in numbered] == [(6, "Đối thoại sử học"), (7, "Đồng đội tôi"), (8, "◀ Trước"),
                                                   (9, "Tiếp ▶")]
    pushed = await choices.remember(db, "zalo", "c1", [("1. Gia hạn", "p:r")], now=clock.now(), fresh=False)
    assert [c.n for c in pushed] == [1]                    # free, so kept
    clash = await choices.remember(db, "zalo", "c1", [("6. Khác", "p:k")], now=clock.now(), fresh=False)
    assert [c.n for c in clash] == [10]                    # 6 is taken: counted on instead
    assert (await choices.pick(db, "zalo", "c1", "doi thoai su hoc", now=clock.now())).choice.payload == "p:6"


async def test_concurrent_pushes_never_share_a_number(db, clock):
    now = clock.now()
    await choices.remember(db, "zalo", "c1", [("A", "p:a")], now=now, fresh=True)
    results = await asyncio.gather(*(choices.remember(db, "zalo", "c1", [(f"N{i}", f"p:{i}")], now=now, fresh=False)
                                     for i in range(6)))
    numbers = sorted(c.n for batch in results for c in batch)
    assert numbers == [2, 3, 4, 5, 6, 7]
    for batch in results:
        [c] = batch
        assert (await choices.pick(db, "zalo", "c1", str(c.n), now=now)).choice.payload == c.payload


# -- repeated deliveries and downloads -------------------------------------------------------------

async def test_a_message_id_is_first_exactly_once_across_concurrent_workers(db, clock):
    firsts = await asyncio.gather(*(inbound.first_delivery(db, "zalo", "m1", now=clock.now()) for _ in range(8)))
    assert firsts.count(True) == 1
    assert await inbound.first_delivery(db, "telegram", "m1", now=clock.now())   # per channel
    assert await inbound.prune(db, now=clock.now() + inbound.KEEP + timedelta(seconds=1)) == 2


async def test_download_links_are_signed_and_expire(db, clock):
    key = b"k" * 32
    path, expires_at = await downloads.store(db, "giấy chứng nhận.pdf", "application/pdf", b"%PDF", key=key,
                                             now=clock.now())
    _, _, did, expires, sig, name = path.split("/")
    assert name == "giay_chung_nhan.pdf" and expires_at == clock.now() + downloads.TTL
    found = await downloads.fetch(db, int(did), int(expires), sig, key=key, now=clock.now())
    assert found is not None and found.data == b"%PDF"
    assert await downloads.fetch(db, int(did), int(expires) + 3600, sig, key=key, now=clock.now()) is None
    assert await downloads.fetch(db, int(did), int(expires), sig, key=b"other" * 8, now=clock.now()) is None
    assert await downloads.fetch(db, int(did) + 1, int(expires), sig, key=key, now=clock.now()) is None
    late = clock.now() + downloads.TTL + timedelta(seconds=1)
    assert await downloads.fetch(db, int(did), int(expires), sig, key=key, now=late) is None
    assert await downloads.prune(db, now=late) == 1


async def test_a_lease_has_one_holder_until_it_lapses_or_is_released(db, clock):
    from services import leases

    now, ttl = clock.now(), timedelta(seconds=60)
    assert await leases.acquire(db, "zalo-poll:1", "a", now=now, ttl=ttl)
    assert not await leases.acquire(db, "zalo-poll:1", "b", now=now, ttl=ttl)
    assert await leases.acquire(db, "zalo-poll:1", "a", now=now + timedelta(seconds=30), ttl=ttl)   # renewed
    assert not await leases.acquire(db, "zalo-poll:1", "b", now=now + timedelta(seconds=80), ttl=ttl)
    assert await leases.acquire(db, "zalo-poll:1", "b", now=now + timedelta(seconds=91), ttl=ttl)   # lapsed
    await leases.release(db, "zalo-poll:1", "a")                     # not a's any more: nothing happens
    assert not await leases.acquire(db, "zalo-poll:1", "a", now=now + timedelta(seconds=92), ttl=ttl)
    await leases.release(db, "zalo-poll:1", "b")
    assert await leases.acquire(db, "zalo-poll:1", "a", now=now + timedelta(seconds=92), ttl=ttl)
    results = await asyncio.gather(*(leases.acquire(db, "other", f"w{i}", now=now, ttl=ttl) for i in range(6)))
    assert results.count(True) == 1


async def test_the_zalo_profile_says_what_zalo_cannot_do(app):
    from bot.channels import zalo

    bare = zalo.profile(app)
    assert (bare.max_text, bare.buttons, bare.edits, bare.toasts, bare.documents) == (2000, False, False, False, False)
    assert bare.photos is False and bare.link("k1234") is None and bare.home is None
    app.settings.public_url, app.settings.zalo_bot_link = "https://thuvien.example.vn", "https://zalo.me/s/123/"
    full = zalo.profile(app)
    assert full.photos and full.home == "https://zalo.me/s/123/" and full.link("t12") == "https://zalo.me/s/123/"
    assert not full.printable                         # it opens the bot, not the book: never on a label
    app.settings.public_url = None
    app.deps.channels["zalo"] = zalo.profile(app)
    assert app.deps.printed_link("t12") is None

"""Regression tests for the adversarial pass (issue 16): each reproduces one finding."""

from __future__ import annotations

import pytest

from services import accounts, patrons
from services.common import DomainError
from tests.conftest import Libraries


async def chat_actor(libs: Libraries, user: str):
    return await patrons.resolve_actor(libs.db, "test", user, user)


async def _refusal(coro) -> str:
    with pytest.raises(DomainError) as info:
        await coro
    return info.value.key


# -- 1. one account cannot lock linking for everyone ------------------------------------------------

async def test_a_locked_chat_cannot_fill_the_global_limit(libs: Libraries, clock):
    db = libs.db
    attacker = await chat_actor(libs, "attacker")
    keys = [await _refusal(accounts.redeem_link_code(db, attacker, f"AAAA-AAA{n % 8 + 2}", clock=clock))
            for n in range(accounts.GLOBAL_LIMIT[0] + 20)]
    assert keys[:5] == ["account.code_invalid"] * 5
    assert set(keys[5:]) == {"account.too_many_attempts"}
    # A different chat with a valid code is not told to wait.
    lib = await libs.actor("TT001")
    [slip] = await accounts.issue_link_codes(db, lib, patron_ids=[(await libs.actor("HS001")).patron_id],
                                             clock=clock)
    linked = await accounts.redeem_link_code(db, await chat_actor(libs, "student"), slip.code, clock=clock)
    assert linked.patron_id == (await libs.actor("HS001")).patron_id


async def test_guesses_spread_over_many_chats_are_slowed_but_valid_codes_still_link(
        libs: Libraries, clock, monkeypatch):
    db = libs.db
    monkeypatch.setattr(accounts, "GLOBAL_LIMIT", (3, 600))
    for n in range(3):   # under the global count: each chat keeps its 5 attempts
        await _refusal(accounts.redeem_link_code(db, await chat_actor(libs, f"bot{n}"), "AAAA-AAAB", clock=clock))
    busy = await chat_actor(libs, "bot0")
    assert await _refusal(accounts.redeem_link_code(db, busy, "AAAA-AAAC", clock=clock)) == "account.code_invalid"
    # Past it, a wrong guess uses up its chat's window at once.
    fresh = await chat_actor(libs, "bot9")
    assert await _refusal(accounts.redeem_link_code(db, fresh, "AAAA-AAAD", clock=clock)) == "account.code_invalid"
    assert await _refusal(accounts.redeem_link_code(db, fresh, "AAAA-AAAE", clock=clock)) \
        == "account.too_many_attempts"
    # A chat under its own limit with a valid code always links, however busy the guessers are.
    lib = await libs.actor("TT001")
    [slip] = await accounts.issue_link_codes(db, lib, patron_ids=[(await libs.actor("HS002")).patron_id],
                                             clock=clock)
    typo = await chat_actor(libs, "student")
    assert await _refusal(accounts.redeem_link_code(db, typo, "AAAA-AAAF", clock=clock)) == "account.code_invalid"
    typo = await chat_actor(libs, "student2")
    assert (await accounts.redeem_link_code(db, typo, slip.code, clock=clock)).full_name


async def test_one_address_has_its_own_limit_and_refusals_count_nowhere(libs: Libraries, clock, monkeypatch):
    db = libs.db
    monkeypatch.setattr(accounts, "SOURCE_LIMIT", (3, 900))
    for n in range(3):
        await _refusal(accounts.redeem_link_code(db, await chat_actor(libs, f"web{n}"), "AAAA-AAAB",
                                                 clock=clock, source="ip:203.0.113.9"))
    web = await chat_actor(libs, "web9")
    assert await _refusal(accounts.redeem_link_code(db, web, "AAAA-AAAC", clock=clock, source="ip:203.0.113.9")) \
        == "account.too_many_attempts"
    # That refusal did not use one of web9's own five attempts.
    for _ in range(5):
        assert await _refusal(accounts.redeem_link_code(db, web, "AAAA-AAAC", clock=clock)) == "account.code_invalid"
    assert await _refusal(accounts.redeem_link_code(db, web, "AAAA-AAAC", clock=clock)) == "account.too_many_attempts"


# -- 3. link codes (and every personal answer) never run in a group -----------------------------------

async def test_a_link_code_deep_link_in_a_group_is_refused_and_not_used_up(libs: Libraries, clock):
    from handlers.messages import Incoming

    app = libs.app
    lib = await libs.actor("TT001")
    student = await libs.actor("HS001")
    [slip] = await accounts.issue_link_codes(libs.db, lib, patron_ids=[student.patron_id], clock=clock)

    async def say(text: str, chat_type: str, chat_id: str) -> str:
        replies = await app.router.dispatch(Incoming(channel="test", chat_id=chat_id, user_id="u7", text=text,
                                                     chat_type=chat_type))
        return "\n".join(r.text for r in replies)

    said = await say(f"/start {slip.payload}", "supergroup", "-100")
    assert student.full_name not in said and (student.class_name or "") not in said
    assert "riêng" in said   # "private chat only", in the group's language
    assert not (await chat_actor(libs, "u7")).is_linked
    # Catalog deep links still work in groups (nothing personal in a book card).
    assert "📖" in await say("/start t1", "group", "-100")
    # The same code, in the private chat, still links: it was not consumed.
    said = await say(f"/start {slip.payload}", "private", "u7")
    assert student.full_name in said and (await chat_actor(libs, "u7")).is_linked
    assert student.full_name not in await say("/start", "group", "-100")   # no greeting by name either

"""Patron import, link codes (single use, expiry, rate limits) and the accounts/circulation CLI."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from bot import cli
from services import accounts, patrons
from services.common import DomainError, PermissionDenied
from services.models import ChatIdentity, LinkCode, Patron, Role
from tests.conftest import Libraries

CSV_VI = """Mã HS;Họ và tên;Lớp;Khối;Vai trò
HS101;Nguyễn Thị Mai;10a2;;học sinh
HS102;  Lý   Văn  Sử ;10A2;10;HS
GV101;Đỗ Thị Lan;;;giáo viên
;Không Có Mã;10A2;;
HS101;Trùng Mã;10A2;;
HS103;Sai Vai Trò;10A2;;hiệu trưởng
HS104;Sai Khối;10A2;13;
HS 105;Mã Có Dấu Cách;10A2;;
"""


async def test_import_patrons_is_idempotent_and_reports_bad_rows(libs: Libraries, tmp_path):
    path = tmp_path / "hs.csv"
    path.write_text(CSV_VI, encoding="utf-8-sig")
    report = await accounts.import_patrons(libs.db, path, "demo")
    assert (report.created, report.updated, report.unchanged) == (3, 0, 0)
    assert [r.line for r in report.rejected] == [5, 6, 7, 8, 9]
    assert report.rejected[1].reason.key == "imports.card_twice"
    assert report.rejected[2].reason.key == "imports.unknown_role"
    assert report.rejected[2].reason.params == {"role": "hiệu trưởng"}
    again = await accounts.import_patrons(libs.db, path, "demo")
    assert (again.created, again.updated, again.unchanged) == (0, 0, 3)
    async with libs.db.session() as s:
        su = (await s.execute(select(Patron).where(Patron.card_number == "HS102"))).scalar_one()
        lan = (await s.execute(select(Patron).where(Patron.card_number == "GV101"))).scalar_one()
    assert su.full_name == "Lý Văn Sử" and su.class_name == "10A2" and su.grade == 10
    assert lan.role == Role.TEACHER
    # English headers, comma separated, a change of class
    path.write_text("student_id,full_name,class,grade,role\nHS101,Nguyễn Thị Mai,11A2,,student\n", encoding="utf-8")
    changed = await accounts.import_patrons(libs.db, path, "demo")
    assert changed.updated == 1 and not changed.rejected
    path.write_text("name,colour\nx,y\n", encoding="utf-8")
    with pytest.raises(DomainError) as info:
        await accounts.import_patrons(libs.db, path, "demo")
    assert info.value.key == "import.missing_columns"


def test_what_looks_like_a_code():
    assert accounts.looks_like_code("ABCD-EFGH") and accounts.looks_like_code("abcd efgh")
    assert accounts.looks_like_code("A2C4E6G8") and accounts.looks_like_code("a2c4e6g8")
    assert not accounts.looks_like_code("harrypot")      # a search, not a code
    assert not accounts.looks_like_code("toán học")
    assert not accounts.looks_like_code("ABCD-EFG0")     # 0 is not in the alphabet
    assert accounts.normalize_code("kABCDEFGH") == "ABCDEFGH"
    codes = {accounts.new_code() for _ in range(200)}
    assert len(codes) == 200 and all(set(c) <= set(accounts.ALPHABET) for c in codes)


async def chat_actor(libs: Libraries, user: str):
    return await patrons.resolve_actor(libs.db, "test", user, user)


async def test_link_codes_are_single_use_expire_and_are_stored_hashed(libs: Libraries, clock):
    db = libs.db
    lib = await libs.actor("TT001")
    [first] = await accounts.issue_link_codes(db, lib, patron_ids=[(await libs.actor("HS001")).patron_id], clock=clock)
    [second] = await accounts.issue_link_codes(db, lib, patron_ids=[(await libs.actor("HS001")).patron_id],
                                               clock=clock)
    async with db.session() as s:
        stored = list((await s.execute(select(LinkCode.code_hash))).scalars())
    assert first.code.replace("-", "") not in "".join(stored)
    with pytest.raises(DomainError) as info:  # the reissue revoked the first slip
        await accounts.redeem_link_code(db, await chat_actor(libs, "a"), first.code, clock=clock)
    assert info.value.key == "account.code_expired"
    # two chats racing with the same code: exactly one is linked
    racers = [await chat_actor(libs, f"r{i}") for i in range(10)]
    results = await asyncio.gather(*(accounts.redeem_link_code(db, a, second.code, clock=clock) for a in racers),
                                   return_exceptions=True)
    assert sum(1 for r in results if isinstance(r, accounts.LinkResult)) == 1
    assert {r.key for r in results if isinstance(r, DomainError)} == {"account.code_used"}
    # expiry
    third, *_ = await accounts.issue_link_codes(db, lib, class_name="11A1", clock=clock)
    clock.set(datetime(2026, 12, 16, 2, 0, tzinfo=UTC))
    with pytest.raises(DomainError) as info:
        await accounts.redeem_link_code(db, await chat_actor(libs, "late"), third.code, clock=clock)
    assert info.value.key == "account.code_expired"


async def test_link_codes_are_keyed_by_the_deployment_secret(libs: Libraries, clock, settings):
    """With DOCSACH_SECRET_KEY set, a stored digest cannot be checked against guesses without the
    key; codes printed before the key was set still work; a code needs the key it was issued under."""
    from bot.app import build_app

    db = libs.db
    lib = await libs.actor("TT001")
    key, other_key = accounts.code_key(b"secret one"), accounts.code_key(b"secret two")
    ids = [(await libs.actor(card)).patron_id for card in ("HS001", "HS002", "HS003")]
    [keyed] = await accounts.issue_link_codes(db, lib, patron_ids=ids[:1], clock=clock, key=key)
    [legacy] = await accounts.issue_link_codes(db, lib, patron_ids=ids[1:2], clock=clock)
    [lost] = await accounts.issue_link_codes(db, lib, patron_ids=ids[2:], clock=clock, key=key)
    async with db.session() as s:
        stored = set((await s.execute(select(LinkCode.code_hash))).scalars())
    raw = keyed.code.replace("-", "")
    assert accounts.hash_code(raw, key) in stored and accounts.hash_code(raw) not in stored
    for wrong in (None, other_key):   # no key, or after the secret changed: refused, not guessed
        with pytest.raises(DomainError) as info:
            await accounts.redeem_link_code(db, await chat_actor(libs, f"x{wrong is None}"), lost.code,
                                            clock=clock, key=wrong)
        assert info.value.key == "account.code_invalid"
    assert (await accounts.redeem_link_code(db, await chat_actor(libs, "k"), keyed.code, clock=clock,
                                            key=key)).patron_id == ids[0]
    assert (await accounts.redeem_link_code(db, await chat_actor(libs, "l"), legacy.code, clock=clock,
                                            key=key)).patron_id == ids[1]
    # The composition root keys codes only with a configured secret: a random per-process one
    # would break every slip the CLI prints before the bot (another process) redeems it.
    assert build_app(settings, db=db).deps.link_code_key == accounts.code_key(settings.secret_key)
    settings.secret_key_is_ephemeral = True
    assert build_app(settings, db=db).deps.link_code_key is None


async def test_relinking_replaces_the_old_chat_and_staff_can_unlink(libs: Libraries, clock):
    db = libs.db
    lib = await libs.actor("TT001")
    hs = (await libs.actor("HS001")).patron_id
    [c1] = await accounts.issue_link_codes(db, lib, patron_ids=[hs], clock=clock)
    await accounts.redeem_link_code(db, await chat_actor(libs, "old-phone"), c1.code, clock=clock)
    [c2] = await accounts.issue_link_codes(db, lib, patron_ids=[hs], clock=clock)
    await accounts.redeem_link_code(db, await chat_actor(libs, "new-phone"), c2.code, clock=clock)
    assert not (await chat_actor(libs, "old-phone")).is_linked
    linked = await chat_actor(libs, "new-phone")
    assert linked.patron_id == hs
    with pytest.raises(DomainError):
        await accounts.redeem_link_code(db, linked, c2.code, clock=clock)  # already linked
    # a student cannot unlink someone else; the other school's staff cannot either
    hoa = await libs.actor("HS002")
    with pytest.raises(PermissionDenied):
        await accounts.unlink(db, hoa, card="HS001", clock=clock)
    with pytest.raises(DomainError):
        await accounts.unlink(db, await libs.actor("OT001", "other"), card="HS001", clock=clock)
    with pytest.raises(PermissionDenied):
        await accounts.issue_link_codes(db, hoa, class_name="10A1", clock=clock)
    assert await accounts.unlink(db, lib, card="HS001", clock=clock) == 1
    async with db.session() as s:
        assert (await s.execute(select(ChatIdentity.patron_id).where(
            ChatIdentity.external_id == "new-phone"))).scalar_one() is None


async def test_rate_limit_is_shared_by_every_worker(libs: Libraries, clock):
    """Two Database handles (as two worker processes would have) count against the same limit."""
    from services.db import Database

    other_worker = Database(libs.db.url)
    try:
        actor = await chat_actor(libs, "guesser")
        keys = []
        for i in range(6):
            db = libs.db if i % 2 else other_worker
            with pytest.raises(DomainError) as info:
                await accounts.redeem_link_code(db, actor, f"AAAA-AAA{i + 2}", clock=clock)
            keys.append(info.value.key)
        assert keys == ["account.code_invalid"] * 5 + ["account.too_many_attempts"]
    finally:
        await other_worker.dispose()


async def test_a_roster_saved_from_excel_or_as_utf16_imports_like_its_csv(libs: Libraries, tmp_path, monkeypatch,
                                                                          capsys):
    from openpyxl import Workbook

    book = Workbook()
    for row in CSV_VI.splitlines():
        book.active.append(row.split(";"))
    xlsx = tmp_path / "hs.xlsx"
    book.save(xlsx)
    report = await accounts.import_patrons(libs.db, xlsx, "demo")
    assert (report.created, [r.line for r in report.rejected]) == (3, [5, 6, 7, 8, 9])
    utf16 = tmp_path / "hs16.csv"
    utf16.write_text(CSV_VI.replace("Nguyễn Thị Mai", "Nguyễn Thị Mai Anh"), encoding="utf-16")
    again = await accounts.import_patrons(libs.db, utf16, "demo")
    assert (again.updated, again.unchanged) == (1, 2)
    broken = tmp_path / "cut.xlsx"
    broken.write_bytes(xlsx.read_bytes()[:300])
    with pytest.raises(DomainError) as info:
        await accounts.import_patrons(libs.db, broken, "demo")
    assert info.value.key == "import.xlsx_unreadable"
    # The CLI: one translated sentence and a non-zero exit, for a damaged workbook and a missing file.
    monkeypatch.setenv("DOCSACH_DATABASE_URL", libs.db.url)
    monkeypatch.setenv("DOCSACH_DEFAULT_LANGUAGE", "en")
    assert await cli._main(["import-patrons", str(broken), "--library", "demo"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("This Excel file cannot be read")
    assert await cli._main(["import-patrons", str(tmp_path / "none.csv"), "--library", "demo"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        f"Cannot read {tmp_path / 'none.csv'}: No such file or directory. Nothing was imported."


async def test_cli_import_rules_calendar_and_codes(libs: Libraries, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DOCSACH_DATABASE_URL", libs.db.url)
    path = tmp_path / "hs.csv"
    path.write_text(CSV_VI, encoding="utf-8")
    assert await cli._main(["import-patrons", str(path), "--library", "demo"]) == 0
    out = capsys.readouterr().out
    # The operator's language (DOCSACH_DEFAULT_LANGUAGE, Vietnamese by default) for counts and reasons.
    assert "demo: tạo mới 3, cập nhật 0, không đổi 0, từ chối 5" in out
    assert "  dòng 6: số thẻ xuất hiện hai lần trong tệp (HS101)" in out
    assert "  dòng 7: vai trò không rõ: «hiệu trưởng» (HS103)" in out and "card number" not in out
    assert await cli._main(["rules", "--library", "demo", "set", "loan_days", "21", "--role", "teacher"]) == 0
    out = capsys.readouterr().out
    assert "teacher   loan_days=21" in out and "student   loan_days=14" in out
    assert await cli._main(["rules", "--library", "demo", "set", "weekend", "sun"]) == 0
    assert "weekend   sun" in capsys.readouterr().out
    assert await cli._main(["rules", "--library", "demo", "set", "max_loans", "999"]) == 2
    assert await cli._main(["calendar", "--library", "demo", "add", "2027-02-05", "2027-02-12",
                            "--name", "Tết Nguyên đán"]) == 0
    assert await cli._main(["calendar", "--library", "demo", "list"]) == 0
    assert "2027-02-05\t2027-02-12\tTết Nguyên đán" in capsys.readouterr().out
    assert await cli._main(["calendar", "--library", "demo", "add", "5/2/2027"]) == 0   # day first, as in chat
    assert "05/02/2027" in capsys.readouterr().out
    assert await cli._main(["calendar", "--library", "demo", "add", "31/02/2027"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        "Ngày «31/02/2027» không hợp lệ: viết ngày/tháng/năm, ví dụ 12/02/2027."
    out_file = tmp_path / "codes.csv"
    assert await cli._main(["link-codes", "--class", "10A2", "--library", "demo", "--out", str(out_file),
                            "--bot", "docsach_bot"]) == 0
    text = out_file.read_text(encoding="utf-8-sig")
    assert "HS101" in text and "https://t.me/docsach_bot?start=k" in text
    assert await cli._main(["expire-holds"]) == 0

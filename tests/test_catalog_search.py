"""Finding books through the chat, the CLI and a second worker: forgiving queries, paging, the
book card, QR deep links, bad input, and an index that follows the database without a restart."""

from __future__ import annotations

import json
import sys
from io import StringIO

from sqlalchemy import select, update

from handlers.core import Context
from handlers.messages import Button
from services import importer
from services.models import Copy, CopyStatus, Hold, HoldStatus, Location, Patron, Title
from services.search import CatalogSearch
from tests.conftest import ChatDriver


async def _title(db, title: str) -> Title:
    async with db.session() as s:
        return (await s.execute(select(Title).where(Title.title == title))).scalar_one()


def _first_result(chat: ChatDriver) -> str:
    lines = [line for line in chat.text.splitlines() if line.startswith("1. ")]
    assert lines, chat.text
    return lines[0]


async def test_vietnamese_queries_forgive_accents_telex_typos_order_and_authors(demo_app):
    chat = ChatDriver(demo_app)
    for query in ("nguoi tai dat viet", "Người tài đất Việt", "NGUOI TAI DAT VIET!!",
                  "nguwowif taif ddaats vieetj",            # raw telex
                  "ngươì tài đât viêt"):                     # stray marks
        await chat.say(query)
        assert _first_result(chat).startswith("1. Người tài đất Việt"), (query, chat.text)
    await chat.say("hien tai la nguyen khi quoc gai")       # typo (transposition) in the last word
    assert "Hiền tài là nguyên khí quốc gia" in _first_result(chat)
    await chat.say("khi nguyen quoc gia hien tai")         # any word order
    assert "Hiền tài là nguyên khí quốc gia" in _first_result(chat)
    await chat.say("/tim giang quan")                       # author, /tim alias
    assert "Hà Nội phố phường" in _first_result(chat) and "Giang Quân" in _first_result(chat)
    await chat.say("/search Quân, Giang")                   # "Surname, Given"
    assert "Hà Nội phố phường" in _first_result(chat)
    await chat.say("padington on tpo")                      # English typos
    assert "Paddington on top" in _first_result(chat)


async def test_isbn_in_either_form_with_or_without_hyphens(demo_app):
    chat = ChatDriver(demo_app)
    for query in ("0-921870-76-0", "0921870760", "978-0-921870-76-0", "9780921870760", "ISBN 0921870760"):
        await chat.say(query)
        assert "Terra incognita" in _first_result(chat), query


async def test_results_page_with_buttons_and_book_card(demo_app):
    chat = ChatDriver(demo_app)
    await chat.say("viet nam")
    first_page = chat.last[0]
    assert "1–5" in first_page.text
    book_buttons = [row[0] for row in first_page.buttons if row[0].label[0].isdigit()]
    assert len(book_buttons) == 5
    assert all(len(b.payload.encode()) <= 64 for row in first_page.buttons for b in row)
    await chat.press("Tiếp")
    assert chat.last[0].edit and "6–10" in chat.text
    second_page_titles = [line for line in chat.text.splitlines() if line[:2] in ("6.", "7.")]
    assert second_page_titles
    await chat.press("Trước")
    assert "1–5" in chat.text
    # a book button opens the card
    await chat.say("ha noi pho phuong")
    await chat.press("1. Hà Nội phố phường")
    card = chat.text
    assert card.startswith("📖 Hà Nội phố phường")
    assert "Giang Quân" in card and "1999" in card and "DS559.93.H36 G53 1999" in card
    assert "Kệ A — Văn học Việt Nam" in card and "có sẵn" in card and "DS0" in card
    assert "Chưa có ai đặt trước" in card


async def test_card_shows_status_hold_queue_and_other_features_buttons(demo_app, clock):
    db = demo_app.db
    title = await _title(db, "Biển tình")
    async with db.transaction() as s:
        copy = (await s.execute(select(Copy).where(Copy.title_id == title.id).order_by(Copy.id))).scalars().first()
        copy.status = CopyStatus.ON_LOAN
        student = (await s.execute(select(Patron).where(Patron.card_number == "HS001"))).scalar_one()
        s.add(Hold(library_id=student.library_id, title_id=title.id, patron_id=student.id,
                   status=HoldStatus.WAITING, queued_at=clock.now()))

    async def reserve(ctx: Context, title_id: int) -> list[list[Button]]:
        return [[ctx.button("Đặt trước", "book", title_id)]]

    async def broken(ctx: Context, title_id: int) -> list[list[Button]]:
        raise RuntimeError("a bug in another feature")

    demo_app.router.book_card_buttons(reserve)
    demo_app.router.book_card_buttons(broken)
    chat = ChatDriver(demo_app)
    await chat.say(f"/start t{title.id}")
    assert "đang được mượn" in chat.text and "Hàng chờ đặt trước: 1 người" in chat.text
    assert chat.find_button("Đặt trước")
    # English
    english = ChatDriver(demo_app, user="en", language="en")
    await english.say(f"/start t{title.id}")
    assert "on loan" in english.text and "Hold queue: 1 waiting" in english.text


async def test_deep_links_for_title_copy_and_shelf(demo_app):
    db = demo_app.db
    title = await _title(db, "Người tài đất Việt")
    async with db.session() as s:
        copy = (await s.execute(select(Copy).where(Copy.title_id == title.id))).scalars().first()
        corner = (await s.execute(select(Location).where(Location.code == "LOP-10A1"))).scalar_one()
    chat = ChatDriver(demo_app)
    await chat.say(f"/start c{copy.id}")
    assert "📖 Người tài đất Việt" in chat.text and f"Vừa quét bản {copy.barcode}" in chat.text
    await chat.say(f"/start l{corner.id}")
    assert chat.text.startswith("📚 Góc đọc lớp 10A1") and "đầu sách" in chat.text
    listed = [row[0] for row in chat.last[0].buttons if row[0].label[0].isdigit()]
    assert 1 <= len(listed) <= 10
    if chat.find_button("Tiếp"):
        await chat.press("Tiếp")
        assert chat.text.startswith("📚 Góc đọc lớp 10A1")
    await chat.press(listed[0].payload)
    assert chat.text.startswith("📖 ")
    for bad in ("t999999", "c999999", "l999999", "tabc", "c", "l-1"):
        await chat.say(f"/start {bad}")
        assert chat.text and "lỗi" not in chat.text, bad
        assert "Không tìm thấy" in chat.text or "không đọc được" in chat.text, (bad, chat.text)


async def test_bad_input_gets_friendly_replies(demo_app):
    chat = ChatDriver(demo_app)
    cases = {
        "/search": "Muốn tìm sách gì",
        "/tim    ": "Muốn tìm sách gì",
        "a": "ít nhất 2 ký tự",
        "/search đ": "ít nhất 2 ký tự",
        "😀😀🎉": "không theo biểu tượng",
        "/search \u200b\u202e\u2066": "Muốn tìm sách gì",
        "x" * 5000: "4096",
        "?!...": "không theo biểu tượng",
    }
    for text, expected in cases.items():
        await chat.say(text)
        assert expected in chat.text, (text[:20], chat.text)
    await chat.say("người " * 600)   # 3,600 characters: under the message limit, over the query limit
    assert "200 ký tự đầu" in chat.text
    await chat.say("'; DROP TABLE titles; --")
    assert "lỗi" not in chat.text
    await chat.say("zzqxj vvkpw")
    assert "Thư viện có vẻ chưa có sách «" in chat.text and "Mẹo" in chat.text
    await chat.say("nguoi tai dat viet")
    assert "Người tài đất Việt" in chat.text       # the catalog is intact
    from handlers.messages import Incoming

    in_group = await demo_app.router.dispatch(Incoming(channel="test", chat_id="g1", user_id="u9",
                                                       text="nguoi tai dat viet", chat_type="group"))
    assert in_group == []    # plain chatter in a group is not a search; /search is
    forged = demo_app.router.encode(chat.user, "sp", 999999, 5)
    await chat.press(forged)
    assert "đã cũ" in chat.text
    await chat.press(demo_app.router.encode(chat.user, "book", "abc"))
    assert "Không tìm thấy cuốn sách này" in chat.text


async def test_did_you_mean_when_the_match_is_weak(demo_app):
    chat = ChatDriver(demo_app, language="en")
    await chat.say("elefant party")
    assert chat.text.startswith("Did you mean: “When Elephant goes to a party”?")
    assert "1. When Elephant goes to a party" in chat.text
    await chat.say("when elephant goes to a party")
    assert "Did you mean" not in chat.text


CSV_NEW = "title,author,isbn,year\nNhững ngày thơ ấu,Nguyên Hồng,978-604-2-08848-0,2019\n"


async def test_index_follows_imports_and_loans_without_restart_also_in_a_second_worker(demo_app, tmp_path):
    db = demo_app.db
    chat = ChatDriver(demo_app)
    search: CatalogSearch = demo_app.deps.extras["search"]
    search.refresh_every = 0            # poll before every search (default: every 5 s)
    other_worker = CatalogSearch(db, refresh_every=0)   # another process sharing the database
    await other_worker.ensure_ready()
    await chat.say("nhung ngay tho au")
    assert "Những ngày thơ ấu" not in chat.text

    path = tmp_path / "new.csv"
    path.write_text(CSV_NEW, encoding="utf-8")
    summary = await importer.import_file(db, path)
    assert summary.added == 1
    await chat.say("nhung ngay tho au")
    assert _first_result(chat).startswith("1. Những ngày thơ ấu")
    found = await other_worker.search("nhung ngay tho", limit=3)
    assert found.hits and found.hits[0].title == "Những ngày thơ ấu"
    # an edit of the title shows up too
    async with db.transaction() as s:
        title = (await s.execute(select(Title).where(Title.isbn13 == "9786042088480"))).scalar_one()
        title.title = "Những ngày thơ ấu (tái bản)"
    assert (await other_worker.search("nhung ngay tho au tai ban", limit=1)).hits[0].title.endswith("(tái bản)")
    # a loan (copy status change) is seen by the poller, once
    target = await _title(db, "Biển tình")
    async with db.transaction() as s:
        await s.execute(update(Copy).where(Copy.title_id == target.id).values(status=CopyStatus.ON_LOAN))
    assert await other_worker.refresh(force=True) == 1
    assert await other_worker.refresh(force=True) == 0
    hit = (await other_worker.search("bien tinh", limit=1)).hits[0]
    assert hit.id == target.id and hit.available == 0 and hit.copies >= 1


async def test_snapshot_restart_then_catch_up(demo_app, tmp_path):
    db = demo_app.db
    snap = tmp_path / "index.snapshot"
    first = CatalogSearch(db, snapshot=snap)
    await first.ensure_ready()
    await first.snapshot_written()                    # written in the background once ready
    assert snap.exists()
    path = tmp_path / "new.csv"
    path.write_text(CSV_NEW, encoding="utf-8")
    await importer.import_file(db, path)
    restarted = CatalogSearch(db, snapshot=snap)      # loads the snapshot, then polls what changed
    results = await restarted.search("nhung ngay tho au", limit=1)
    assert results.hits and results.hits[0].title == "Những ngày thơ ấu"


def _run_cli(monkeypatch, capsys, db_url: str, argv: list[str], stdin: str = "") -> tuple[int, str, str]:
    from bot import cli

    monkeypatch.setenv("DOCSACH_DATABASE_URL", db_url)
    monkeypatch.setattr(sys, "stdin", StringIO(stdin))
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_search_stdin_json_and_import(demo_app, monkeypatch, capsys, tmp_path):
    url = demo_app.db.url
    code, out, _ = _run_cli(monkeypatch, capsys, url, ["search", "--stdin", "--json", "--limit", "3"],
                            "nguoi tai dat viet\n0-921870-76-0\n\n😀\n")
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(lines) == 4
    assert lines[0]["query"] == "nguoi tai dat viet" and lines[0]["results"][0]["title"] == "Người tài đất Việt"
    assert set(lines[0]["results"][0]) == {"id", "title", "authors", "isbn", "score"}
    assert len(lines[0]["results"]) <= 3 and lines[0]["took_ms"] >= 0
    assert lines[1]["results"][0]["isbn"] == "9780921870760"
    assert lines[2]["results"] == [] and lines[3]["results"] == []
    code, out, _ = _run_cli(monkeypatch, capsys, url, ["search", "paddington"])
    assert code == 0 and "Paddington on top" in out

    path = tmp_path / "new.csv"
    path.write_text(CSV_NEW + "No ISBN,X,12345,2000\n", encoding="utf-8")
    code, out, _ = _run_cli(monkeypatch, capsys, url, ["import", str(path), "--quiet"])
    assert code == 0 and "thêm 1," in out and "từ chối 1;" in out and "new.csv.rejected.csv" in out
    bad = tmp_path / "bad.mrc"
    bad.write_bytes(b"00042 this is not marc")
    code, _, err = _run_cli(monkeypatch, capsys, url, ["import", str(bad), "--quiet"])
    assert code == 2 and "Nothing was changed" in err


async def test_catalog_read_side_for_other_features(demo_app):
    from services import catalog
    from services.models import Library

    db = demo_app.db
    async with db.session() as s:
        library = (await s.execute(select(Library).where(Library.code == "demo"))).scalar_one()
        copy = (await s.execute(select(Copy).order_by(Copy.id).limit(1))).scalar_one()
    found = await catalog.find_copy(db, library.id, copy.barcode.lower())
    assert found is not None and found.id == copy.id and found.location_name
    assert (await catalog.find_copy(db, library.id, str(copy.id))).barcode == copy.barcode
    assert await catalog.find_copy(db, library.id + 1, copy.barcode) is None
    assert await catalog.find_copy(db, library.id, "  ") is None
    assert await catalog.title_for_copy(db, copy.id) == copy.title_id
    card = await catalog.get_title_card(db, copy.title_id, library.id)
    assert card.available == len(card.copies) >= 1 and card.holds_waiting == 0
    shelf = await catalog.titles_at_location(db, copy.location_id)
    assert any(item.title_id == copy.title_id for item in shelf.items)
    counts = await catalog.availability(db, [copy.title_id], library.id)
    assert counts[copy.title_id][0] == len(card.copies)

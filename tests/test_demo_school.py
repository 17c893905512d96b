"""The demo as a new school sees it: its shelves hold the books a Vietnamese school lends, the
search answers honestly, and every chat command the README and /help show works on it."""

from __future__ import annotations

import re
from pathlib import Path

from services.demo import load_demo
from tests.conftest import ChatDriver

ROOT = Path(__file__).resolve().parents[1]
ERRORS = ("Mình không biết lệnh", "không có quyền", "Xin lỗi, đã có lỗi", "không dùng được lệnh",
          "Việc này cần liên kết", "I don't know the command", "Sorry, something went wrong")


async def school(demo_app) -> None:
    await load_demo(demo_app.db, school_life=True, clock=demo_app.deps.clock)


async def test_the_honest_search_on_the_demo(demo_app, link_chat):
    guest = ChatDriver(demo_app, user="guest")
    await guest.say("truyen kieu")                       # the example in /help
    assert guest.text.splitlines()[1].startswith("1. Truyện Kiều — Nguyễn Du")
    await guest.say("harry potter")                      # not on this school's shelves
    assert guest.text.startswith("Thư viện có vẻ chưa có sách «harry potter».")
    assert "Here comes trouble" not in guest.text and "Có phải" not in guest.text
    await guest.say("de men phieu luu ky")
    assert "1. Dế Mèn phiêu lưu ký — Tô Hoài (1941)" in guest.text
    await guest.say("ngu van 10")
    assert "Ngữ văn 10 - Tập một" in guest.text


async def test_school_life_overdue_moderation_campaign_and_other_schools(demo_app, link_chat):
    await school(demo_app)
    again = await load_demo(demo_app.db, school_life=True, clock=demo_app.deps.clock)   # idempotent
    assert not again.created and again.patrons == 21

    librarian = await link_chat("lib", "TT001")
    await librarian.say("/overdue")
    assert "Sách quá hạn ngày 01/12/2026: 2 cuốn" in librarian.text
    assert "Vàng A Dình (HS008)" in librarian.text and "Giàng A Páo (HS003)" in librarian.text
    await librarian.say("/moderate")
    assert "Chờ duyệt: 1 bài" in librarian.text and "Lão Hạc" in librarian.text

    student = await link_chat("hs9", "HS009")
    await student.say("harry potter")
    assert "Có ở: Trường THCS Demo Bắc Cường" in student.text
    await student.say("mat biec")
    await student.press("1.")
    assert "Tất cả đang được mượn; bản sớm nhất hạn trả" in student.text or "hạn trả" in student.text
    an = await link_chat("an", "HS001")
    await an.say("/campaigns")
    assert "Đại sứ Văn hoá đọc — vòng trường" in an.text
    await an.say("/leaderboard")
    assert "← em" in an.text
    teacher = await link_chat("ha", "GV001")
    await teacher.say("/overdue")
    assert "Lớp 10A1 không có sách quá hạn" in teacher.text


def _readme_commands() -> list[tuple[str, str]]:
    """(who, command) from the README's chat-command tables: the first `/command` of each row."""
    rows = []
    for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if len(cells) < 3:
            continue
        found = re.search(r"`(/[a-z]+)", line)
        if found:
            rows.append((line, found.group(1)))
    return rows


async def test_every_readme_and_help_command_works_on_the_demo(demo_app, link_chat):
    await school(demo_app)
    people = {"staff": await link_chat("lib", "TT001"), "student": await link_chat("an", "HS001"),
              "teacher": await link_chat("gv", "GV001")}
    commands = _readme_commands()
    assert len(commands) > 15 and "/overdue" in [c for _, c in commands]
    for who, command in commands:
        if command in ("/link", "/unlink", "/newcampaign", "/cancel"):
            continue   # these change who the chat is, or open a long flow: covered by their own tests
        role = "staff" if "staff" in who or "librarian" in who else "teacher" if "teacher" in who else "student"
        driver = people[role]
        await driver.say(command)
        assert not any(e in driver.text for e in ERRORS), (who, command, driver.text[:200])
        await driver.say("/cancel")
    # every command /help lists for a librarian answers, too
    await people["staff"].say("/help")
    listed = re.findall(r"^(/[a-z]+)", people["staff"].text, re.MULTILINE)
    assert "/overdue" in listed and "/addbook" in listed
    for command in listed:
        if command in ("/link", "/unlink", "/newcampaign", "/cancel"):
            continue
        await people["staff"].say(command)
        assert not any(e in people["staff"].text for e in ERRORS), (command, people["staff"].text[:200])
        await people["staff"].say("/cancel")

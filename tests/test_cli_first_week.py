"""The command line as a new librarian meets it: one translated sentence and a non-zero exit on
every refusal, the database it uses said at start and kept in one data directory, quiet hours and
reminder days from `docsach rules`, and dates written the way schools write them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bot import cli
from tests.conftest import Libraries

ROOT = Path(__file__).resolve().parents[1]


async def test_rules_quiet_hours_and_reminder_days(libs: Libraries, monkeypatch, capsys):
    monkeypatch.setenv("DOCSACH_DATABASE_URL", libs.db.url)
    assert await cli._main(["rules", "--library", "demo", "quiet", "21h", "6:30"]) == 0
    assert "quiet_hours=21:00-06:30, before_days=2, overdue_days=1,7,14" in capsys.readouterr().out
    assert await cli._main(["rules", "--library", "demo", "reminders", "--before", "1", "--overdue", "3,10"]) == 0
    assert "quiet_hours=21:00-06:30, before_days=1, overdue_days=3,10" in capsys.readouterr().out
    assert await cli._main(["rules", "--library", "demo", "reset", "quiet_hours"]) == 0
    assert "quiet_hours=20:00-07:00" in capsys.readouterr().out

    assert await cli._main(["rules", "--library", "demo", "reminders", "--overdue", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "«0» không hợp lệ: cần từ 1 đến 6 số ngày, mỗi số từ 1 đến 365 (ví dụ: 1,7,14)."
    assert await cli._main(["rules", "--library", "demo", "quiet", "7", "7h"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "Giờ bắt đầu và kết thúc giờ yên lặng phải khác nhau."


async def test_refusals_are_one_translated_sentence(libs: Libraries, monkeypatch, capsys):
    monkeypatch.setenv("DOCSACH_DATABASE_URL", libs.db.url)
    for argv in (["rules", "--library", "nosuch", "show"], ["calendar", "--library", "nosuch", "list"],
                 ["link-codes", "--library", "nosuch", "--class", "10A1"]):
        assert await cli._main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1] == "Không có thư viện «nosuch».", argv
    assert await cli._main(["link-codes", "--library", "demo", "--class", "12Z9"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == "Lớp «12Z9» không có học sinh nào trong thư viện này."
    monkeypatch.setenv("DOCSACH_DEFAULT_LANGUAGE", "en")
    assert await cli._main(["calendar", "--library", "demo", "add", "12/13/2027"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == "The date «12/13/2027» is not valid: write day/month/year, for example 12/02/2027."
    assert await cli._main(["calendar", "--library", "demo", "add", "12/02/2027", "--name", "Tết"]) == 0
    assert "12 Feb 2027" in capsys.readouterr().out


def test_default_database_lives_in_the_data_directory_and_is_named_at_start(tmp_path):
    """Run from another folder with no configuration: the database goes to DOCSACH_DATA_DIR (here a
    temporary one), never ./docsach.db in the current folder, and the first line says which."""
    elsewhere = tmp_path / "somewhere"
    elsewhere.mkdir()
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCSACH_", "TELEGRAM_"))}
    env.update(DOCSACH_DATA_DIR=str(data), DOCSACH_DEFAULT_LANGUAGE="en")
    run = subprocess.run([sys.executable, "-m", "bot.cli", "demo-data"], cwd=elsewhere, env=env,
                         capture_output=True, text=True, timeout=300,
                         )
    assert run.returncode == 0, run.stderr
    assert f"docsach: database sqlite+aiosqlite:///{data / 'docsach.db'}" in run.stderr
    assert (data / "docsach.db").is_file() and not (elsewhere / "docsach.db").exists()
    assert list(elsewhere.iterdir()) == []

    bad = subprocess.run([sys.executable, "-m", "bot.cli", "rules", "show"], cwd=elsewhere,
                         env={**env, "DOCSACH_DATABASE_URL": "postgresql+asyncpg://nobody@127.0.0.1:1/none"},
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("Cannot open the database postgresql+asyncpg://")


async def test_terminal_chat_shows_pushed_notices_and_saves_files_in_the_data_dir(libs: Libraries, clock, tmp_path,
                                                                                  monkeypatch):
    import io

    from bot.channels.terminal import CHANNEL, run_terminal
    from bot.scheduler import Sweeper
    from services import circulation as circ
    from services import patrons

    monkeypatch.setenv("DOCSACH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    actor = await patrons.resolve_actor(libs.db, CHANNEL, "local", "local")
    await patrons.link_trusted(libs.db, actor, "demo", "TT001")
    title_id, _ = await libs.title_with_copies(1)
    student = await patrons.resolve_actor(libs.db, CHANNEL, "an", "an")
    await patrons.link_trusted(libs.db, student, "demo", "HS001")

    async def sweep() -> None:
        await Sweeper(libs.app.router, worker="terminal-chat").sweep()

    # the librarian prints link codes (a PDF) while a student's hold becomes ready in the background
    await circ.place_hold(libs.db, await libs.actor("HS001"), title_id, clock=clock)
    out = io.StringIO()
    await run_terminal(libs.app.router, user="local", stdin=io.StringIO("/codes 11A1\n/help\n"), out=out,
                       prompt=False, after_each=sweep)
    text = out.getvalue()
    assert "📦" in text and "sẵn sàng" in text           # the student's notice, pushed to their terminal chat
    assert "saved" not in text
    saved = list((tmp_path / "data" / "files").glob("*.pdf"))
    assert saved and f"📎 {saved[0]}" in text
    assert not list(tmp_path.glob("*.pdf"))


async def test_import_without_holdings_says_that_copies_exists(libs: Libraries, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("DOCSACH_DATABASE_URL", libs.db.url)
    path = tmp_path / "books.csv"
    path.write_text("title,author,year\nBỉ vỏ,Nguyên Hồng,1938\n", encoding="utf-8")
    assert await cli._main(["import", str(path), "--library", "demo"]) == 0
    err = capsys.readouterr().err
    assert "--copies N" in err and "chưa thêm bản nào vào thư viện demo" in err
    assert await cli._main(["import", str(path), "--library", "demo", "--copies", "2"]) == 0
    assert "--copies N" not in capsys.readouterr().err

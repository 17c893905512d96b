"""Logs for operators: one line per event with logger, level and id; JSON for collectors; a
rotating file; no tokens, link codes or progress bars; no third-party chatter."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from bot import logs
from tests.fake_bot_api import FakeBotApi

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "7312345678:AAF3k9-secret_Token_value_xyz0123456"


@pytest.fixture
def captured():
    stream = io.StringIO()
    logs.setup("INFO", fmt="json", stream=stream)
    yield stream
    logs.setup("WARNING", stream=sys.stderr)


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_json_lines_carry_logger_level_and_the_event_id(captured):
    log = logging.getLogger("docsach.test")
    with logs.bound("tg-4711"):
        log.info("handled %s in %d ms", "search", 12)
    log.warning("outside")
    first, second = lines(captured)
    assert first["logger"] == "docsach.test" and first["level"] == "INFO" and first["id"] == "tg-4711"
    assert first["msg"] == "handled search in 12 ms" and first["ts"].endswith("+00:00")
    assert second["id"] == "-" and second["level"] == "WARNING"


def test_text_format_is_one_line_with_the_id():
    stream = io.StringIO()
    logs.setup("INFO", fmt="text", stream=stream)
    try:
        with logs.bound("n-12"):
            logging.getLogger("docsach.sweep").info("sent")
    finally:
        logs.setup("WARNING")
    line = stream.getvalue().strip()
    assert "\n" not in line and line.endswith("INFO docsach.sweep [n-12] sent")


def test_tokens_link_codes_and_secrets_are_masked_even_in_tracebacks(captured):
    log = logging.getLogger("docsach.test")
    log.warning("POST https://api.telegram.org/bot%s/sendMessage failed", TOKEN)
    log.info("redeemed link code: K7PQ2MXA for chat 42")
    log.info("GET /webhook?access_token=zalo-secret-123&x=1")
    try:
        raise RuntimeError(f"boom at /bot{TOKEN}/getMe")
    except RuntimeError:
        log.exception("request failed")
    text = captured.getvalue()
    assert TOKEN not in text and "K7PQ2MXA" not in text and "zalo-secret-123" not in text
    assert "<token>" in text and "x=1" in text
    assert lines(captured)[-1]["exc"].startswith("Traceback")


async def test_httpx_request_urls_with_the_token_never_reach_the_log(captured):
    """httpx logs every request URL at INFO, and Telegram's URLs carry the token."""
    async with FakeBotApi(token=TOKEN) as api:
        async with httpx.AsyncClient() as client:
            response = await client.get(f"{api.base_url}{TOKEN}/getMe")
    assert response.json()["ok"]
    logging.getLogger("httpx").warning("HTTP Request: GET %s/bot%s/getMe", api.url, TOKEN)  # even at WARNING
    assert TOKEN not in captured.getvalue()
    assert all(entry["logger"] != "httpx" or "<token>" in entry["msg"] for entry in lines(captured))


def test_fonttools_stays_quiet_while_a_pdf_is_made(captured):
    from services.labels import Label, render_label_sheet

    pdf = render_label_sheet([Label("https://t.me/x?start=b1", ["Dế Mèn phiêu lưu ký", "Tô Hoài"])],
                             columns=3, rows=8, title="Thư viện — nhãn")
    assert pdf.startswith(b"%PDF")
    assert not [e for e in lines(captured) if e["logger"].startswith("fontTools")]


def test_log_file_rotates(tmp_path):
    path = tmp_path / "docsach.log"
    logs.setup("INFO", file=str(path), max_mb=0.001, backups=2, stream=io.StringIO())
    try:
        for n in range(200):
            logging.getLogger("docsach.test").info("event number %d with some padding text", n)
    finally:
        logs.setup("WARNING")
    rotated = sorted(p.name for p in tmp_path.iterdir())
    assert rotated == ["docsach.log", "docsach.log.1", "docsach.log.2"]
    assert path.stat().st_size <= 1100 and "event number 199" in path.read_text()


def test_no_progress_bar_when_stderr_is_not_a_terminal(tmp_path):
    """`docsach import` into a log (a pipe) writes its summary, not hundreds of bar lines."""
    env = dict(os.environ, DOCSACH_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'i.db'}",
               DOCSACH_LOG_FORMAT="json", DOCSACH_DEFAULT_LANGUAGE="en")
    done = subprocess.run([sys.executable, "-m", "bot.cli", "import", str(ROOT / "tests/data/catalog_sample.csv")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "added 621" in done.stdout
    assert done.stderr == ""   # without the check, tqdm wrote "importing: 100%|…" frames here
    assert not logs.progress_wanted(True, io.StringIO())


async def test_each_update_is_one_line_without_its_text(demo_app, captured):
    from tests.conftest import ChatDriver

    chat = ChatDriver(demo_app, user="log1", channel="logtest")
    await chat.say("my secret question about dế mèn")
    await chat.say("/help")
    handled = [e for e in lines(captured) if e["logger"] == "bot.observe"]
    assert [e["msg"].split(",")[0] for e in handled] == ["logtest text: ok", "logtest command /help: ok"]
    assert handled[0]["id"] != handled[1]["id"] and handled[0]["id"].startswith("lo-")
    assert "secret" not in captured.getvalue() and "dế mèn" not in captured.getvalue()

"""`docsach doctor`: each check in plain words, against real databases and the fake Bot API."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from bot import doctor
from bot.config import Settings
from services import ops
from services.db import Database, upgrade_async
from tests.fake_bot_api import FakeBotApi

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "7312345678:AAF3k9-doctor_Token_value_xyz01234"


def by_key(findings) -> dict[str, str]:
    return {f.key: f.status for f in findings}


async def test_a_healthy_installation_has_no_failure(app, catalogs):
    settings = dataclasses.replace(app.settings, public_url="https://thuvien.example.vn", secret_key=b"k" * 32,
                                   telegram_token=TOKEN)
    await ops.beat(app.db, ops.SWEEP, "host:1", seconds=0.4, clock=app.deps.clock)
    async with FakeBotApi(token=TOKEN) as api:
        settings.telegram_api_base_url = api.base_url
        findings = await doctor.diagnose(settings, app.db, app.deps.clock)
    found = by_key(findings)
    assert found["ops.doctor_secret_ok"] == found["ops.doctor_db_ok"] == doctor.OK
    assert found["ops.doctor_platform_ok"] == found["ops.doctor_sweep_ok"] == doctor.OK
    assert found["ops.doctor_public_url_ok"] == found["ops.doctor_timezone_ok"] == doctor.OK
    report, code = doctor.render(findings, catalogs.translator("en"))
    assert code == 0 and "Telegram: the token works, bot @docsach_test_bot." in report
    assert report.splitlines()[-1] == "Everything is fine."


async def test_a_wrong_token_a_late_sweep_and_no_secret_are_failures(app, catalogs):
    settings = dataclasses.replace(app.settings, secret_key_is_ephemeral=True, telegram_token="1234567:wrong",
                                   timezone="Asia/Lao_Cai")
    await ops.beat(app.db, ops.SWEEP, "host:2", clock=app.deps.clock)
    app.deps.clock.set(app.deps.clock.now() + timedelta(minutes=40))
    async with FakeBotApi(token=TOKEN) as api:
        settings.telegram_api_base_url = api.base_url
        findings = await doctor.diagnose(settings, app.db, app.deps.clock)
    found = by_key(findings)
    assert found["ops.doctor_secret_missing"] == found["ops.doctor_platform_token_refused"] == doctor.FAIL
    assert found["ops.doctor_sweep_late"] == found["ops.doctor_timezone_bad"] == doctor.FAIL
    assert found["ops.doctor_public_url_missing"] == doctor.WARN
    report, code = doctor.render(findings, catalogs.translator("vi"))
    assert code == 1
    assert "Lượt nhắc hạn gần nhất cách đây 40 phút (host:2)" in report
    assert "Telegram từ chối token của bot" in report and "1234567:wrong" not in report


async def test_an_unmigrated_or_old_database_says_to_upgrade(tmp_path, catalogs):
    url = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    db = Database(url)
    try:
        assert (await doctor.check_database(db))[0][0].key == "ops.doctor_db_not_migrated"
        await upgrade_async(url, "0005")
        [finding], reachable = await doctor.check_database(db)
        assert reachable and finding.key == "ops.doctor_db_old" and finding.params["level"] == "0005"
        assert "Run: docsach db upgrade" in catalogs.translator("en")(finding.key, **finding.params)
    finally:
        await db.dispose()


async def test_an_unreachable_database_is_a_failure():
    db = Database("postgresql+asyncpg://docsach:pw@127.0.0.1:1/nothing")
    try:
        [finding], reachable = await doctor.check_database(db)
    finally:
        await db.dispose()
    assert not reachable and finding.status == doctor.FAIL and finding.key == "ops.doctor_db_unreachable"
    assert "pw" not in str(finding.params)


async def test_disk_check_reports_free_space(tmp_path):
    finding = doctor.check_disk(Settings(database_url="sqlite://", files_dir=str(tmp_path / "files")))
    assert finding.key in ("ops.doctor_disk_ok", "ops.doctor_disk_low", "ops.doctor_disk_full")
    assert float(finding.params["free"]) > 0


def test_the_command_prints_sentences_and_exits_non_zero(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCSACH_", "TELEGRAM_"))}
    env.update(DOCSACH_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'd.db'}", DOCSACH_DEFAULT_LANGUAGE="en")
    done = subprocess.run([sys.executable, "-m", "bot.cli", "doctor"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "[FAIL] DOCSACH_SECRET_KEY is not set" in done.stdout
    assert "[FAIL] The database sqlite+aiosqlite:///" in done.stdout and "Run: docsach db upgrade" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr

"""``docsach doctor``: is this installation healthy, and if not, what exactly to fix.

Each check gives one line in plain words (the deployment's language) with a mark: ``OK``,
``WARN`` (works, but should be fixed) or ``FAIL`` (something is broken). The command exits
non-zero when any check fails, so it can guard a deployment script or a container start.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx

from bot.config import Settings
from services import ops
from services.common import Clock
from services.db import Database

OK, WARN, FAIL = "ok", "warn", "fail"
MIN_FREE_BYTES = 1 << 30          # below 1 GiB free, uploads and backups start failing
LOW_FREE_BYTES = 5 << 30
SWEEP_LATE = timedelta(minutes=15)


@dataclass
class Finding:
    status: str
    key: str
    params: dict[str, Any] = field(default_factory=dict)


def files_dir(settings: Settings) -> Path | None:
    """Where stored photos live (DOCSACH_FILES_DIR); None when they are kept in the database."""
    return Path(settings.files_dir) if settings.files_dir else None


def data_dir(settings: Settings) -> Path:
    """The directory whose disk fills up: the files directory, else the SQLite file's, else here."""
    directory = files_dir(settings)
    if directory is not None:
        return directory
    from sqlalchemy.engine import make_url

    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return Path(url.database).resolve().parent
    return Path.cwd()


def public_url(settings: Settings) -> str | None:
    return settings.public_url or None


def check_config(settings: Settings) -> list[Finding]:
    found = []
    if settings.secret_key_is_ephemeral:
        found.append(Finding(FAIL, "ops.doctor_secret_missing"))
    elif len(settings.secret_key) < 16:
        found.append(Finding(FAIL, "ops.doctor_secret_short"))
    else:
        found.append(Finding(OK, "ops.doctor_secret_ok"))
    try:
        ZoneInfo(settings.timezone)
        found.append(Finding(OK, "ops.doctor_timezone_ok", {"zone": settings.timezone}))
    except (ZoneInfoNotFoundError, ValueError):
        found.append(Finding(FAIL, "ops.doctor_timezone_bad", {"zone": settings.timezone}))
    url = public_url(settings)
    if not url:
        found.append(Finding(WARN, "ops.doctor_public_url_missing"))
    elif not url.startswith("https://"):
        found.append(Finding(WARN, "ops.doctor_public_url_http", {"url": url}))
    else:
        found.append(Finding(OK, "ops.doctor_public_url_ok", {"url": url}))
    return found


async def check_database(db: Database) -> tuple[list[Finding], bool]:
    """(findings, reachable)."""
    from bot.config import _redact_url

    where = _redact_url(db.url)
    try:
        level = await asyncio.wait_for(ops.migration_level(db), 15)
    except Exception as exc:  # any driver error means the same thing to the technician
        return [Finding(FAIL, "ops.doctor_db_unreachable", {"url": where, "error": type(exc).__name__})], False
    head = ops.head_revision()
    if level is None:
        return [Finding(FAIL, "ops.doctor_db_not_migrated", {"url": where})], True
    if level != head:
        return [Finding(FAIL, "ops.doctor_db_old", {"level": level, "head": head})], True
    return [Finding(OK, "ops.doctor_db_ok", {"url": where, "level": level})], True


async def telegram_get_me(token: str, base_url: str, wait: float = 10) -> Finding:
    """Ask the Bot API who we are: proves the token and the network path."""
    try:
        async with httpx.AsyncClient(timeout=wait) as client:
            response = await client.get(f"{base_url}{token}/getMe")
    except httpx.HTTPError as exc:
        return Finding(FAIL, "ops.doctor_platform_unreachable", {"platform": "Telegram", "error": type(exc).__name__})
    if response.status_code in (401, 403, 404):
        return Finding(FAIL, "ops.doctor_platform_token_refused",
                       {"platform": "Telegram", "status": response.status_code})
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code != 200 or not body.get("ok"):
        return Finding(FAIL, "ops.doctor_platform_error", {"platform": "Telegram", "status": response.status_code})
    username = (body.get("result") or {}).get("username") or "?"
    return Finding(OK, "ops.doctor_platform_ok", {"platform": "Telegram", "name": "@" + username})


def platform_checks(settings: Settings) -> list[Callable[[], Awaitable[Finding]]]:
    """One check per configured platform token. Channels added later register theirs here."""
    checks: list[Callable[[], Awaitable[Finding]]] = []
    if settings.telegram_token:
        checks.append(lambda: telegram_get_me(settings.telegram_token, settings.telegram_api_base_url))
    return checks


async def check_sweep(db: Database, settings: Settings, clock: Clock) -> Finding:
    if not settings.reminders_enabled:
        return Finding(WARN, "ops.doctor_reminders_off")
    last = await ops.last_beat(db, ops.SWEEP)
    if last is None:
        return Finding(WARN, "ops.doctor_sweep_never")
    late_after = max(SWEEP_LATE, timedelta(minutes=3 * settings.reminder_interval_minutes))
    minutes = int((clock.now() - last.at).total_seconds() // 60)
    if clock.now() - last.at > late_after:
        return Finding(FAIL, "ops.doctor_sweep_late", {"minutes": minutes, "worker": last.worker})
    return Finding(OK, "ops.doctor_sweep_ok", {"minutes": minutes, "worker": last.worker})


def check_disk(settings: Settings) -> Finding:
    directory = data_dir(settings).resolve()
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    usage = shutil.disk_usage(probe)
    free_gb = f"{usage.free / (1 << 30):.1f}"
    params = {"path": str(directory), "free": free_gb}
    if usage.free < MIN_FREE_BYTES:
        return Finding(FAIL, "ops.doctor_disk_full", params)
    if usage.free < LOW_FREE_BYTES:
        return Finding(WARN, "ops.doctor_disk_low", params)
    return Finding(OK, "ops.doctor_disk_ok", params)


async def diagnose(settings: Settings, db: Database, clock: Clock | None = None) -> list[Finding]:
    clock = clock or Clock()
    findings = check_config(settings)
    db_findings, reachable = await check_database(db)
    findings += db_findings
    findings += list(await asyncio.gather(*(check() for check in platform_checks(settings))))
    if not settings.telegram_token and not platform_checks(settings):
        findings.append(Finding(WARN, "ops.doctor_no_platform"))
    if reachable and db_findings[0].status == OK:
        findings.append(await check_sweep(db, settings, clock))
    findings.append(check_disk(settings))
    return findings


MARKS = {OK: "OK  ", WARN: "WARN", FAIL: "FAIL"}


def render(findings: list[Finding], t) -> tuple[str, int]:
    """The report and the exit code (1 when anything failed)."""
    lines = [f"[{MARKS[f.status]}] {t(f.key, **f.params)}" for f in findings]
    failed = sum(f.status == FAIL for f in findings)
    warned = sum(f.status == WARN for f in findings)
    if failed:
        lines.append(t("ops.doctor_summary_fail", failed=failed, warned=warned))
    elif warned:
        lines.append(t("ops.doctor_summary_warn", warned=warned))
    else:
        lines.append(t("ops.doctor_summary_ok"))
    return "\n".join(lines), 1 if failed else 0

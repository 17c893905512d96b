"""`docsach backup` / `docsach restore`: back up, wipe, restore, and every table (and every stored
file) is exactly as it was — on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from bot import backup
from services import ops
from services.db import Database, create_engine
from services.models import Heartbeat
from tests.conftest import POSTGRES_URL

ROOT = Path(__file__).resolve().parents[1]


async def snapshot(db: Database) -> dict[str, list[tuple]]:
    """Every row of every table, in a stable order."""
    rows = {}
    async with db.engine.connect() as conn:
        for name in ops.tables():
            result = await conn.execute(text(f'SELECT * FROM "{name}"'))
            rows[name] = sorted((tuple(r) for r in result), key=repr)
    return rows


async def wipe(db: Database) -> None:
    """Make the database brand new and empty (no tables at all)."""
    await db.dispose()
    if db.is_sqlite:
        path = Path(make_url(db.url).database)
        for p in path.parent.glob(path.name + "*"):
            p.unlink()
        return
    server = make_url(POSTGRES_URL).render_as_string(hide_password=False)
    name = make_url(db.url).database
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        await admin.dispose()


async def test_backup_wipe_restore_gives_back_every_row_and_file(demo_app, tmp_path):
    db = demo_app.db
    await ops.beat(db, ops.SWEEP, "host:1", seconds=1.5, detail={"sent": 3})
    files = tmp_path / "files"
    (files / "photos" / "2026").mkdir(parents=True)
    (files / "photos" / "2026" / "r1.jpg").write_bytes(b"\xff\xd8photo-bytes\xff\xd9")
    (files / "upload.csv").write_text("Mã HS,Họ và tên\n", encoding="utf-8")
    before = await snapshot(db)
    assert sum(map(len, before.values())) > 900 and before["runtime_heartbeats"]

    archive = tmp_path / "backup.tar.gz"
    manifest = await backup.backup(db, archive, files)
    assert manifest.kind == ("sqlite" if db.is_sqlite else "postgresql")
    assert manifest.revision == ops.head_revision() and manifest.files == 2
    assert manifest.rows == {name: len(rows) for name, rows in before.items()}

    # A database with data is never overwritten by accident.
    with pytest.raises(backup.BackupError) as refused:
        await backup.restore(db, archive, tmp_path / "other-files")
    assert refused.value.key == "ops.restore_not_empty"

    await wipe(db)
    import shutil
    shutil.rmtree(files)
    restored_manifest = await backup.restore(db, archive, files)
    assert restored_manifest.rows == manifest.rows
    assert await snapshot(db) == before
    assert (files / "photos" / "2026" / "r1.jpg").read_bytes() == b"\xff\xd8photo-bytes\xff\xd9"
    assert (files / "upload.csv").read_text(encoding="utf-8") == "Mã HS,Họ và tên\n"

    # --force replaces what is there now (here: a changed heartbeat and an extra file).
    await ops.beat(db, ops.SWEEP, "elsewhere:9")
    (files / "stray.txt").write_text("x")
    with pytest.raises(backup.BackupError) as refused:
        await backup.restore(db, archive, files)
    assert refused.value.key == "ops.restore_not_empty"
    await backup.restore(db, archive, files, force=True)
    assert await snapshot(db) == before and not (files / "stray.txt").exists()
    async with db.session() as s:
        assert (await s.get(Heartbeat, ops.SWEEP)).worker == "host:1"


async def test_restore_refuses_what_is_not_a_backup_or_of_another_kind(db, tmp_path):
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tar file")
    with pytest.raises(backup.BackupError) as refused:
        await backup.restore(db, junk)
    assert refused.value.key == "ops.restore_not_backup"
    with pytest.raises(backup.BackupError) as refused:
        await backup.restore(db, tmp_path / "missing.tar.gz")
    assert refused.value.key == "ops.restore_no_file"
    other = backup.Manifest(kind="postgresql" if db.is_sqlite else "sqlite", revision="0005",
                            created_at="2026-12-01T00:00:00+00:00", rows={})
    import tarfile
    (tmp_path / backup.MANIFEST).write_text(other.to_json())
    with tarfile.open(tmp_path / "other.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / backup.MANIFEST, arcname=backup.MANIFEST)
    with pytest.raises(backup.BackupError) as refused:
        await backup.restore(db, tmp_path / "other.tar.gz")
    assert refused.value.key == "ops.restore_wrong_kind"


def test_pg_tool_refuses_a_client_older_than_the_server():
    if backup.shutil.which("pg_dump") is None:
        pytest.skip("pg_dump is not installed")
    with pytest.raises(backup.BackupError) as refused:
        backup.pg_tool("pg_dump", 99)
    assert refused.value.key == "ops.backup_tool_old" and refused.value.params["server"] == 99


def test_cli_backup_and_restore_speak_in_sentences(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCSACH_", "TELEGRAM_"))}
    env.update(DOCSACH_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'd.db'}", DOCSACH_DEFAULT_LANGUAGE="en")

    def docsach(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "bot.cli", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=180)

    assert docsach("demo-data").returncode == 0
    made = docsach("backup", "b.tar.gz")
    assert made.returncode == 0 and made.stdout.startswith("Backed up to b.tar.gz:"), made.stderr
    refused = docsach("restore", "b.tar.gz")
    assert refused.returncode == 2
    assert refused.stderr.strip() == ("The database holds data and a restore would replace it all. "
                                      "Add --force if that is what you want.")
    forced = docsach("restore", "b.tar.gz", "--force")
    assert forced.returncode == 0 and forced.stdout.startswith("Restored b.tar.gz"), forced.stderr
    missing = docsach("restore", "nope.tar.gz")
    assert missing.returncode == 2 and missing.stderr.strip() == "There is no file nope.tar.gz."

"""``docsach backup FILE`` / ``docsach restore FILE``: one archive with a consistent snapshot of
the database and the stored files (photos of reflections, uploads).

The archive is a gzip'd tar holding ``manifest.json`` (what, when, which migration, rows per
table), the database (``database.sqlite3`` made with SQLite's online backup API, or
``database.pgdump`` from ``pg_dump --format=custom``) and ``files/``. Both snapshots are
consistent while the bot keeps running. Restore refuses a database that holds any row (or a
files directory that holds anything) unless ``force``, restores the database in one
transaction, then brings it to the current migration level.

Passwords go to ``pg_dump``/``pg_restore`` through the environment, never on a command line.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url

from services import ops
from services.db import Database, upgrade

FORMAT = 1
MANIFEST = "manifest.json"
SQLITE_MEMBER = "database.sqlite3"
PG_MEMBER = "database.pgdump"
FILES_MEMBER = "files"


class BackupError(Exception):
    """A refusal or failure with a message key of the ``ops`` domain and its parameters."""

    def __init__(self, key: str, **params: Any) -> None:
        super().__init__(key)
        self.key = key
        self.params = params


@dataclass
class Manifest:
    kind: str                     # "sqlite" or "postgresql"
    revision: str | None
    created_at: str
    rows: dict[str, int]
    files: int = 0
    format: int = FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, ensure_ascii=False)

    @classmethod
    def from_json(cls, data: str) -> Manifest:
        raw = json.loads(data)
        return cls(**{k: raw[k] for k in ("kind", "revision", "created_at", "rows", "files", "format")
                      if k in raw}, extra=raw.get("extra", {}))


# -- helpers ----------------------------------------------------------------------------------------

def backend(url: str) -> str:
    return make_url(url).get_backend_name()


def sqlite_path(url: str) -> Path:
    database = make_url(url).database
    if not database or database == ":memory:":
        raise BackupError("ops.backup_memory_db")
    return Path(database)


def pg_environment(url: str) -> dict[str, str]:
    """libpq's variables for the SQLAlchemy URL (so no secret is on a command line)."""
    parsed = make_url(url)
    env = dict(os.environ)
    for var, value in (("PGHOST", parsed.host), ("PGPORT", parsed.port), ("PGUSER", parsed.username),
                       ("PGPASSWORD", parsed.password), ("PGDATABASE", parsed.database)):
        if value not in (None, ""):
            env[var] = str(value)
    return env


def _major(version_text: str) -> int | None:
    match = re.search(r"(\d+)(?:\.(\d+))?", version_text)
    return int(match.group(1)) if match else None


async def server_major(db: Database) -> int:
    async with db.engine.connect() as conn:
        number = int((await conn.execute(text("SHOW server_version_num"))).scalar_one())
    return number // 10000


def pg_tool(name: str, server: int) -> str:
    """The path of ``pg_dump``/``pg_restore``, refusing one older than the server (it cannot read it)."""
    path = shutil.which(name)
    if path is None:
        raise BackupError("ops.backup_tool_missing", tool=name)
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=False).stdout
    major = _major(out)
    if major is None or major < server:
        raise BackupError("ops.backup_tool_old", tool=name, version=out.strip() or "?", server=server)
    return path


def count_files(directory: Path | None) -> int:
    if directory is None or not directory.is_dir():
        return 0
    return sum(1 for p in directory.rglob("*") if p.is_file())


# -- backup -----------------------------------------------------------------------------------------

async def backup(db: Database, out: Path, files_dir: Path | None = None) -> Manifest:
    """Write the archive to ``out`` (through a temporary file: a failed backup leaves nothing)."""
    kind = backend(db.url)
    manifest = Manifest(kind=kind, revision=await ops.migration_level(db),
                        created_at=datetime.now(UTC).isoformat(timespec="seconds"), rows={})
    with tempfile.TemporaryDirectory(prefix="docsach-backup-") as tmp:
        work = Path(tmp)
        if kind == "sqlite":
            member = work / SQLITE_MEMBER
            await asyncio.to_thread(_sqlite_snapshot, sqlite_path(db.url), member)
            manifest.rows = await _rows_of_sqlite_file(member)
        elif kind == "postgresql":
            member = work / PG_MEMBER
            tool = pg_tool("pg_dump", await server_major(db))
            manifest.rows = await _pg_dump_in_snapshot(db, tool, member)
        else:
            raise BackupError("ops.backup_unsupported", backend=kind)
        manifest.files = count_files(files_dir)
        (work / MANIFEST).write_text(manifest.to_json(), encoding="utf-8")
        partial = out.with_name(out.name + ".partial")
        await asyncio.to_thread(_write_archive, partial, work, member, files_dir)
        os.replace(partial, out)
    return manifest


async def _pg_dump_in_snapshot(db: Database, tool: str, member: Path) -> dict[str, int]:
    """Count rows and dump inside one exported snapshot, so the manifest's counts are the dump's."""
    async with db.engine.connect() as plain:
        conn = await plain.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        await conn.begin()
        snapshot = (await conn.execute(text("SELECT pg_export_snapshot()"))).scalar_one()
        existing = set((await conn.execute(text(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"))).scalars())
        rows = {name: int((await conn.execute(text(f'SELECT count(*) FROM "{name}"'))).scalar_one())
                for name in ops.tables() if name in existing}
        await _run([tool, "--format=custom", "--no-owner", "--no-privileges", f"--snapshot={snapshot}",
                    "--file", str(member)], pg_environment(db.url), "pg_dump")
        await conn.commit()
    return rows


def _sqlite_snapshot(source: Path, target: Path) -> None:
    if not source.is_file():
        raise BackupError("ops.backup_no_database", path=str(source))
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)   # one consistent snapshot, even while the bot writes
    finally:
        dst.close()
        src.close()


async def _rows_of_sqlite_file(path: Path) -> dict[str, int]:
    db = Database(f"sqlite+aiosqlite:///{path}")
    try:
        return await ops.row_counts(db)
    finally:
        await db.dispose()


def _write_archive(out: Path, work: Path, member: Path, files_dir: Path | None) -> None:
    with tarfile.open(out, "w:gz", compresslevel=3) as tar:
        tar.add(work / MANIFEST, arcname=MANIFEST)
        tar.add(member, arcname=member.name)
        if files_dir is not None and files_dir.is_dir():
            tar.add(files_dir, arcname=FILES_MEMBER)


async def _run(argv: list[str], env: dict[str, str], name: str) -> None:
    proc = await asyncio.create_subprocess_exec(*argv, env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    if proc.returncode != 0:
        detail = err.decode(errors="replace").strip().splitlines()
        raise BackupError("ops.backup_tool_failed", tool=name, detail=(detail[-1] if detail else "?")[:300])


# -- restore ----------------------------------------------------------------------------------------

def read_manifest(archive: Path) -> Manifest:
    try:
        with tarfile.open(archive, "r:*") as tar:
            member = tar.extractfile(MANIFEST)
            if member is None:
                raise KeyError(MANIFEST)
            return Manifest.from_json(member.read().decode("utf-8"))
    except FileNotFoundError as exc:
        raise BackupError("ops.restore_no_file", path=str(archive)) from exc
    except (tarfile.TarError, KeyError, ValueError, TypeError, OSError) as exc:
        raise BackupError("ops.restore_not_backup", path=str(archive)) from exc


async def restore(db: Database, archive: Path, files_dir: Path | None = None, *, force: bool = False) -> Manifest:
    """Put the archive's database and files back. ``db`` is disposed (its connections closed)."""
    manifest = read_manifest(archive)
    kind = backend(db.url)
    if manifest.format > FORMAT:
        raise BackupError("ops.restore_newer_format")
    if manifest.kind != kind:
        raise BackupError("ops.restore_wrong_kind", archive=manifest.kind, database=kind)
    if manifest.files and files_dir is None:
        raise BackupError("ops.restore_files_nowhere", files=manifest.files)
    if not force:
        if await _has_rows(db):
            raise BackupError("ops.restore_not_empty")
        if count_files(files_dir):
            raise BackupError("ops.restore_files_not_empty", path=str(files_dir))
    with tempfile.TemporaryDirectory(prefix="docsach-restore-") as tmp:
        work = Path(tmp)
        await asyncio.to_thread(_extract, archive, work)
        if kind == "sqlite":
            await db.dispose()
            await asyncio.to_thread(_sqlite_restore, work / SQLITE_MEMBER, sqlite_path(db.url))
        else:
            tool = pg_tool("pg_restore", await server_major(db))
            await db.dispose()
            # --clean drops what is there (an empty, migrated schema or, with force, everything);
            # one transaction: on any error the database stays as it was.
            await _run([tool, "--clean", "--if-exists", "--no-owner", "--no-privileges", "--single-transaction",
                        "--exit-on-error", "--dbname", pg_environment(db.url).get("PGDATABASE", ""),
                        str(work / PG_MEMBER)], pg_environment(db.url), "pg_restore")
        if files_dir is not None:
            await asyncio.to_thread(_swap_files, work / FILES_MEMBER, files_dir)
    await asyncio.to_thread(upgrade, db.url)   # a backup from an older version: migrate it forward
    return manifest


async def _has_rows(db: Database) -> bool:
    try:
        return not await ops.is_empty(db)
    except Exception as exc:
        raise BackupError("ops.restore_db_unreachable", detail=type(exc).__name__) from exc


def _extract(archive: Path, work: Path) -> None:
    with tarfile.open(archive, "r:*") as tar:
        tar.extractall(work, filter="data")   # refuses absolute paths, .. and device files


def _sqlite_restore(source: Path, target: Path) -> None:
    if not source.is_file():
        raise BackupError("ops.restore_not_backup", path=str(source))
    target.parent.mkdir(parents=True, exist_ok=True)
    src = sqlite3.connect(source)
    dst = sqlite3.connect(target, timeout=30)
    try:
        src.backup(dst)   # replaces every page of the target in one step
    finally:
        dst.close()
        src.close()


def _swap_files(restored: Path, files_dir: Path) -> None:
    """Replace the files directory by the archive's (rename-based: never half old, half new)."""
    files_dir.parent.mkdir(parents=True, exist_ok=True)
    incoming = files_dir.with_name(files_dir.name + ".restoring")
    shutil.rmtree(incoming, ignore_errors=True)
    if restored.is_dir():
        shutil.copytree(restored, incoming)
    else:
        incoming.mkdir()
    old = files_dir.with_name(files_dir.name + ".before-restore")
    shutil.rmtree(old, ignore_errors=True)
    if files_dir.exists():
        files_dir.rename(old)
    incoming.rename(files_dir)
    shutil.rmtree(old, ignore_errors=True)

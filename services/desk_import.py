"""Catalog imports uploaded at the desk, with progress a page can poll.

``start(db, actor, filename, data, *, clock) -> ImportJob`` checks the role, keeps the upload in a
temporary file and imports it in the background: the file is read completely first (a malformed
file changes nothing), then applied in ONE transaction in batches of ``importer.BATCH`` titles,
the job's ``done``/``total`` advancing after each batch. ``job(actor, job_id)`` returns the job
to staff of the same library; ``rejected_csv(job, t)`` the rejected rows (formula-safe).

Jobs live in the process that took the upload (the progress of an open transaction cannot be read
from the database by anyone else); with several desk processes, route one desk session to one
process. The newest ``KEEP`` jobs are kept for their summary.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from services import audit, importer, tables
from services.common import Clock, DomainError, NotFound
from services.db import Database
from services.models import Library
from services.patrons import Actor, require_staff

log = logging.getLogger(__name__)

MAX_BYTES = 50 * 1024 * 1024
KEEP = 50
SUFFIXES = {".csv", ".tsv", ".txt", ".xlsx", ".xlsm", ".mrc", ".marc", ".dat", ".xml"}


@dataclass
class ImportJob:
    id: str
    library_id: int
    patron_id: int
    filename: str
    started_at: datetime
    state: str = "reading"            # reading | importing | done | failed
    done: int = 0
    total: int = 0
    summary: importer.ImportSummary | None = None
    error_key: str | None = None
    error_params: dict[str, Any] = field(default_factory=dict)
    task: asyncio.Task | None = None

    @property
    def percent(self) -> int:
        if self.state == "done":
            return 100
        # 100 % only once committed: the last batch is written before the transaction ends.
        return min(99, int(100 * self.done / self.total)) if self.total else 0


JOBS: dict[str, ImportJob] = {}


async def start(db: Database, actor: Actor, filename: str, data: bytes, *, clock: Clock,
                copies: int = 0) -> ImportJob:
    """``copies``: at least this many copies of each title in the actor's library (as ``--copies``),
    for files without holdings; 0 adds only the copies the file lists."""
    require_staff(actor)
    if not 0 <= copies <= 20:
        raise DomainError("rules.out_of_range", name="copies", low=0, high=20)
    name = Path(filename or "catalog.csv").name[:100] or "catalog.csv"
    if Path(name).suffix.lower() not in SUFFIXES:
        raise DomainError("desk.import_type", types="CSV, XLSX, MARC (.mrc), MARCXML (.xml)")
    if not data:
        raise DomainError("desk.file_needed")
    if len(data) > MAX_BYTES:
        raise DomainError("desk.file_too_large", mb=MAX_BYTES // 1024 // 1024)
    job = ImportJob(secrets.token_urlsafe(12), actor.library_id, actor.patron_id, name, clock.now())
    JOBS[job.id] = job
    for old in list(JOBS)[:-KEEP]:
        if JOBS[old].state in ("done", "failed"):
            del JOBS[old]
    job.task = asyncio.create_task(_run(db, actor, job, data, copies))
    return job


async def _run(db: Database, actor: Actor, job: ImportJob, data: bytes, copies: int) -> None:
    with tempfile.TemporaryDirectory(prefix="docsach-import-") as folder:
        path = Path(folder) / job.filename
        try:
            await asyncio.to_thread(path.write_bytes, data)
            fmt, records, rejected = await asyncio.to_thread(importer.parse_file, path)
            groups = importer._merge(records)   # one title's rows never straddle two batches
            job.total, job.state = len(groups), "importing"
            total = importer.ImportSummary(format=fmt, rejected=list(rejected))
            async with db.transaction() as s:
                library = await s.get(Library, job.library_id)
                for start in range(0, len(groups), importer.BATCH):
                    part = await importer.apply_records(s, groups[start:start + importer.BATCH], library=library,
                                                        copies=copies)
                    total.added += part.added
                    total.updated += part.updated
                    total.unchanged += part.unchanged
                    total.copies_added += part.copies_added
                    total.rejected.extend(part.rejected)
                    job.done = min(len(groups), start + importer.BATCH)
                    await asyncio.sleep(0)
                audit.record(s, "catalog.import", "title", None, actor_patron_id=actor.patron_id,
                             library_id=job.library_id, channel=actor.channel, file=job.filename, format=fmt,
                             added=total.added, updated=total.updated, unchanged=total.unchanged,
                             rejected=len(total.rejected), copies_added=total.copies_added)
            job.summary, job.state = total, "done"
        except DomainError as refusal:
            job.state, job.error_key, job.error_params = "failed", refusal.key, refusal.params
        except Exception:
            log.exception("desk import %s failed", job.filename)
            job.state, job.error_key = "failed", "error.internal"


def job(actor: Actor, job_id: str) -> ImportJob:
    require_staff(actor)
    found = JOBS.get(job_id)
    if found is None or found.library_id != actor.library_id:
        raise NotFound("desk.import_unknown")
    return found


def rejected_csv(found: ImportJob, t: importer.Translate) -> bytes:
    """The rejected rows with their reasons in the reader's language (``t``), formula-safe."""
    header, *rows = importer.report_table(found.summary.rejected if found.summary else [], t)
    return tables.to_csv(header, rows)

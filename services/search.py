"""Catalog search as a service: the in-memory :class:`SearchIndex`, derived from the database.

The database is the truth; the index is a cache each worker process builds at start (streaming
rows, or loading a snapshot) and keeps fresh by *polling*: every ``refresh_every`` seconds, before
a search, it asks for titles whose ``updated_at`` and copies whose ``updated_at`` moved past its
watermark. Several workers sharing one PostgreSQL therefore converge without talking to each
other. The watermark is the database's own clock at the previous poll, minus an ``overlap`` (longer than
any writing transaction) so a transaction that committed late (its rows stamped at its start) is
still seen; rows already seen with the same stamp and content are skipped.

Writers must bump those columns: the ORM does (``onupdate``), and bulk writers (the importer)
stamp ``updated_at`` with the database clock at the end of their transaction.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import case, func, select

from services.db import Database
from services.models import Copy, CopyStatus, Title
from services.search_index import IndexedTitle, SearchIndex

log = logging.getLogger(__name__)

CHUNK = 10_000
RESOLUTION = timedelta(seconds=1)   # coarsest timestamp tick among backends (SQLite CURRENT_TIMESTAMP)
MAX_QUERY = 200


@dataclass(frozen=True)
class Found:
    """One search result, with the copies of the asker's library (or of all libraries)."""

    id: int
    title: str
    authors: str
    year: int | None
    isbn13: str | None
    call_number: str | None
    score: float
    matched: str
    copies: int
    available: int


@dataclass(frozen=True)
class Results:
    query: str
    hits: list[Found]
    total: int
    offset: int
    limit: int
    suggestion: str | None
    kind: str            # "text", "isbn" or "empty"
    truncated: bool      # the query was longer than MAX_QUERY characters

    @property
    def has_more(self) -> bool:
        return self.offset + len(self.hits) < self.total


def _fingerprint(record: IndexedTitle) -> int:
    """Stable across processes (``hash()`` of str is salted per process; snapshots outlive it)."""
    return zlib.crc32(repr(tuple(getattr(record, f) for f in record.__slots__)).encode())


class CatalogSearch:
    """One per process (``deps.extras["search"]``); safe to share between coroutines."""

    def __init__(self, db: Database, *, refresh_every: float = 5.0, overlap: timedelta = timedelta(seconds=60),
                 snapshot: Path | str | None = None) -> None:
        self.db = db
        self.refresh_every = refresh_every
        self.overlap = overlap
        self.snapshot = Path(snapshot) if snapshot else None
        self.index: SearchIndex | None = None
        self.build_seconds: float | None = None
        self._snapshot_task: asyncio.Task | None = None
        self._write_lock = asyncio.Lock()   # index changes vs. a snapshot being written
        self._ready_lock = asyncio.Lock()
        self._refresh_lock = asyncio.Lock()
        self._last_poll = 0.0
        self._polled_at: datetime | None = None   # the database's clock at the last poll (or build)
        self._seen: dict[str, dict[int, datetime]] = {"titles": {}, "copies": {}}
        # hash of what the index holds, for titles changed recently (pruned with _seen)
        self._fingerprints: dict[int, int] = {}

    # -- building --------------------------------------------------------------------------
    async def ensure_ready(self) -> SearchIndex:
        if self.index is None:
            async with self._ready_lock:
                if self.index is None:
                    started = time.perf_counter()
                    if not await self._load_snapshot():
                        await self._build()
                    self.build_seconds = time.perf_counter() - started
                    self._last_poll = time.monotonic()
                    log.info("search index ready: %d titles in %.1f s", len(self.index), self.build_seconds)
        return self.index

    async def _build(self) -> None:
        """Stream titles from the database into the index, built in a worker thread so the event
        loop keeps answering (rows are fetched on the loop, in chunks, as the builder asks)."""
        loop = asyncio.get_running_loop()
        polled_at = await self._db_now()
        available = await self._available()
        recent = polled_at - self.overlap
        seen = self._seen["titles"]

        def rows():
            # the next chunk is read on the loop while the builder works on this one
            pending = asyncio.run_coroutine_threadsafe(self._chunk_after(0), loop)
            while True:
                chunk = pending.result()
                if not chunk:
                    return
                pending = asyncio.run_coroutine_threadsafe(self._chunk_after(chunk[-1][0]), loop)
                get = available.get
                # plain tuples (IndexedTitle's field order): the builder reads them column-wise
                yield [(r[0], r[1], r[2] or "", r[3], r[4] or "", r[5], get(r[0], 0)) for r in chunk]

        def build():
            return SearchIndex.build(record for chunk in rows() for record in chunk)

        # rows changed lately: the first refresh will see them again; remember what we hold
        async with self.db.session() as s:
            recent_rows = (await s.execute(
                select(Title.id, Title.title, Title.authors, Title.isbn13, Title.subjects, Title.year,
                       Title.updated_at).where(Title.updated_at >= recent))).all()
        self.index = await asyncio.to_thread(build)
        for r in recent_rows:
            seen[r[0]] = r[6]
            self._fingerprints[r[0]] = _fingerprint(
                IndexedTitle(r[0], r[1], r[2] or "", r[3], r[4] or "", r[5], available.get(r[0], 0)))
        self._polled_at = polled_at
        async with self.db.session() as s:
            self._seen["copies"].update((await s.execute(
                select(Copy.id, Copy.updated_at).where(Copy.updated_at >= recent))).all())
        if self.snapshot is not None:
            # ready now; the snapshot (for the next start) is written in the background
            self._snapshot_task = asyncio.create_task(self._save_snapshot_quietly())

    async def _chunk_after(self, last_id: int) -> list[tuple]:
        """The next titles by id. Read through the driver itself (aiosqlite, asyncpg): SQLAlchemy's
        per-row work was a fifth of the whole start-up, and these are plain columns."""
        sql = (f"SELECT id, title, authors, isbn13, subjects, year FROM {Title.__tablename__} WHERE id > {{}} "
               "ORDER BY id LIMIT {}")
        async with self.db.engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            if self.db.is_postgres and hasattr(driver, "fetch"):      # asyncpg
                return await driver.fetch(sql.format("$1", "$2"), last_id, CHUNK)
            if self.db.is_sqlite and hasattr(driver, "execute"):      # aiosqlite
                cursor = await driver.execute(sql.format("?", "?"), (last_id, CHUNK))
                try:
                    return await cursor.fetchall()
                finally:
                    await cursor.close()
            return list((await conn.execute(
                select(Title.id, Title.title, Title.authors, Title.isbn13, Title.subjects, Title.year)
                .where(Title.id > last_id).order_by(Title.id).limit(CHUNK))).all())

    async def _available(self, title_ids: list[int] | None = None) -> dict[int, int]:
        query = (select(Copy.title_id, func.count()).where(Copy.status == CopyStatus.AVAILABLE)
                 .group_by(Copy.title_id))
        if title_ids is not None:
            query = query.where(Copy.title_id.in_(title_ids))
        async with self.db.session() as s:
            return dict((await s.execute(query)).all())

    async def _db_now(self) -> datetime:
        """The database's own clock: stamps and watermarks never mix with this host's clock."""
        async with self.db.session() as s:
            return await s.scalar(select(func.now()))

    # -- snapshot (optional: a 1M-title deployment restarts in seconds) ---------------------------
    async def snapshot_written(self) -> None:
        """Wait for the snapshot being written after a build (if any)."""
        if self._snapshot_task is not None:
            await asyncio.shield(self._snapshot_task)

    async def _save_snapshot_quietly(self) -> None:
        # no poll and no index change while pickling: the snapshot and its watermarks must agree
        async with self._refresh_lock, self._write_lock:
            try:
                await asyncio.to_thread(self._save_snapshot)
            except OSError as exc:
                log.warning("search snapshot %s not written (%s)", self.snapshot, exc)

    def _save_snapshot(self) -> None:
        """The index (pickle, trusted local file) plus, beside it, the watermarks and what was
        recently seen, so the catch-up after a restart only re-reads, never re-indexes, the same rows."""
        assert self.snapshot is not None and self.index is not None
        tmp = self.snapshot.with_name(self.snapshot.name + ".tmp")
        self.index.save(tmp)
        state = {
            "polled_at": self._polled_at.isoformat() if self._polled_at else None,
            "seen": {name: {str(k): v.isoformat() for k, v in rows.items()} for name, rows in self._seen.items()},
            "fingerprints": {str(k): v for k, v in self._fingerprints.items()},
        }
        self.snapshot.with_name(self.snapshot.name + ".marks.json").write_text(json.dumps(state))
        tmp.replace(self.snapshot)

    async def _load_snapshot(self) -> bool:
        if self.snapshot is None or not self.snapshot.exists():
            return False
        try:
            state = json.loads(self.snapshot.with_name(self.snapshot.name + ".marks.json").read_text())
            self.index = await asyncio.to_thread(SearchIndex.load, self.snapshot)
            self._polled_at = datetime.fromisoformat(state["polled_at"]) if state["polled_at"] else None
            self._seen = {name: {int(k): datetime.fromisoformat(v) for k, v in rows.items()}
                          for name, rows in state["seen"].items()}
            self._fingerprints = {int(k): v for k, v in state["fingerprints"].items()}
        except (OSError, ValueError, EOFError, KeyError, AttributeError) as exc:
            log.warning("search snapshot %s unusable (%s); rebuilding", self.snapshot, exc)
            self.index = None
            return False
        await self.refresh(force=True)  # what changed while we were down
        return True

    # -- freshness -------------------------------------------------------------------------------
    async def refresh(self, *, force: bool = False) -> int:
        """Pull titles and copies changed since the watermark into the index. Cheap when nothing
        changed (two indexed range queries). Returns how many titles changed in the index."""
        if self.index is None:
            await self.ensure_ready()
            return 0
        if not force and (time.monotonic() - self._last_poll < self.refresh_every or self._refresh_lock.locked()):
            return 0
        async with self._refresh_lock:
            self._last_poll = time.monotonic()
            candidates: set[int] = set()
            previous = self._polled_at
            async with self.db.session() as s:
                now = await s.scalar(select(func.now()))
                for name, query in (
                    ("titles", select(Title.id, Title.id.label("title_id"), Title.updated_at)),
                    ("copies", select(Copy.id, Copy.title_id, Copy.updated_at)),
                ):
                    column = query.selected_columns[2]
                    if previous is not None:
                        # Rows committed since the last poll carry stamps no older than their
                        # transaction's start, so at most ``overlap`` before that poll.
                        query = query.where(column >= previous - self.overlap)
                    seen = self._seen[name]
                    for row_id, title_id, stamp in (await s.execute(query)).all():
                        if stamp is None:
                            continue
                        # A new stamp is a change. So may be an unchanged stamp from the last poll's
                        # tick: timestamps are coarse (SQLite: whole seconds), so a second edit in the
                        # same tick keeps the stamp; reindex() compares content and skips the same.
                        if seen.get(row_id) != stamp or (previous is not None and stamp >= previous - RESOLUTION):
                            seen[row_id] = stamp
                            candidates.add(title_id)
                    floor = now - self.overlap
                    for row_id in [k for k, v in seen.items() if v < floor]:
                        del seen[row_id]
                        if name == "titles":
                            self._fingerprints.pop(row_id, None)
            self._polled_at = now
            if len(self._fingerprints) > 200_000:  # bounded memory; costs one extra upsert each
                self._fingerprints.clear()
            return await self.reindex(sorted(candidates)) if candidates else 0

    async def reindex(self, title_ids: list[int]) -> int:
        """Re-read these titles (and their availability) into the index; gone ones are removed.
        Only titles whose indexed content differs are touched. Returns how many changed.
        Call it right after an in-process change for read-your-writes."""
        index = await self.ensure_ready()
        async with self._write_lock:
            return await self._reindex(index, title_ids)

    async def _reindex(self, index: SearchIndex, title_ids: list[int]) -> int:
        changed = 0
        for start in range(0, len(title_ids), 1000):
            chunk = title_ids[start:start + 1000]
            available = await self._available(chunk)
            async with self.db.session() as s:
                rows = {r[0]: r for r in (await s.execute(
                    select(Title.id, Title.title, Title.authors, Title.isbn13, Title.subjects, Title.year)
                    .where(Title.id.in_(chunk)))).all()}
            for title_id in chunk:
                r = rows.get(title_id)
                if r is None:
                    self._fingerprints.pop(title_id, None)
                    changed += bool(index.remove(title_id))
                    continue
                record = IndexedTitle(r[0], r[1], r[2] or "", r[3], r[4] or "", r[5], available.get(title_id, 0))
                fingerprint = _fingerprint(record)
                if self._fingerprints.get(title_id) == fingerprint:
                    continue
                self._fingerprints[title_id] = fingerprint
                index.upsert(record)
                changed += 1
        return changed

    # -- searching ---------------------------------------------------------------------------------
    async def search(self, query: str, *, limit: int = 10, offset: int = 0,
                     library_id: int | None = None) -> Results:
        """Ranked titles for free text or an ISBN; copies counted in ``library_id`` (all when None)."""
        index = await self.ensure_ready()
        await self.refresh()
        text = " ".join((query or "").split())
        truncated = len(text) > MAX_QUERY
        text = text[:MAX_QUERY]
        limit = max(1, min(int(limit), 100))
        offset = max(0, min(int(offset), 400))
        result = index.search(text, limit=limit, offset=offset)
        ids = [h.id for h in result.hits]
        found: list[Found] = []
        if ids:
            copies_q = (select(Copy.title_id, func.count(Copy.id),
                               func.sum(case((Copy.status == CopyStatus.AVAILABLE, 1), else_=0)))
                        .where(Copy.title_id.in_(ids)).group_by(Copy.title_id))
            if library_id is not None:
                copies_q = copies_q.where(Copy.library_id == library_id)
            async with self.db.session() as s:
                rows = {r[0]: r for r in (await s.execute(
                    select(Title.id, Title.title, Title.authors, Title.year, Title.isbn13, Title.call_number)
                    .where(Title.id.in_(ids)))).all()}
                counts = {r[0]: (r[1], int(r[2] or 0)) for r in (await s.execute(copies_q)).all()}
            for hit in result.hits:
                r = rows.get(hit.id)
                if r is None:  # deleted since the last refresh
                    index.remove(hit.id)
                    continue
                n, avail = counts.get(hit.id, (0, 0))
                found.append(Found(r[0], r[1], r[2] or "", r[3], r[4], r[5], round(hit.score, 1), hit.matched,
                                   n, avail))
        return Results(query=text, hits=found, total=result.total_estimate, offset=offset, limit=limit,
                       suggestion=result.suggestion, kind=result.query_kind, truncated=truncated)


# -- paging: a search's text behind a short id (button payloads hold at most 64 bytes) ---------------

async def remember_query(db: Database, text: str) -> int:
    """The id of this query text, stored once and shared by every worker."""
    from services.db import insert_for
    from services.models import SearchQuery

    text = text[:MAX_QUERY]
    digest = hashlib.sha1(text.encode()).hexdigest()
    async with db.transaction() as s:
        await s.execute(insert_for(s)(SearchQuery).values(digest=digest, text=text)
                        .on_conflict_do_nothing(index_elements=["digest"]))
        return await s.scalar(select(SearchQuery.id).where(SearchQuery.digest == digest))


async def recall_query(db: Database, query_id: int) -> str | None:
    from services.models import SearchQuery

    async with db.session() as s:
        return await s.scalar(select(SearchQuery.text).where(SearchQuery.id == query_id))

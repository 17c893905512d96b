"""How fast a bot process has its catalog search ready: ``CatalogSearch`` built from the database
(streaming titles), from a saved snapshot, and how cheap a freshness poll is.

    python bench/search_startup.py [--rows 280000] [--url DATABASE_URL] [--data DIR]

Fills a throw-away database (SQLite file by default; ``--url postgresql+asyncpg://…/db`` to use an
existing, migrated, EMPTY PostgreSQL database) with the real Library of Congress rows from the shared
data, padded with variants up to --rows, stamped an hour old (a restart, not the minute after an
import). The engine's own recall/latency figures come from ``bench/search.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import gzip
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqlalchemy import func, insert, select, text, update  # noqa: E402

from services.db import Database, upgrade_async  # noqa: E402
from services.models import Title  # noqa: E402
from services.search import CatalogSearch  # noqa: E402


def _rows(data: Path, n: int):
    base = []
    with gzip.open(data / "loc_booksall2016_250k.csv.gz", "rt", encoding="utf-8") as fh:
        for i, r in enumerate(csv.DictReader(fh)):
            base.append({"source_key": f"lccn:{r['lccn']}:{i}", "title": r["title"], "authors": r["author"],
                         "publisher": r["publisher"] or None, "language": r["language"] or None,
                         "year": int(r["year"]) if r["year"].isdigit() else None, "subjects": r["subjects"],
                         "call_number": r["lc_class"][:64] or None})
    for i in range(n):
        row = dict(base[i % len(base)])
        if i >= len(base):  # generated variants of real rows: another volume, another key
            row["source_key"] += f":v{i}"
            row["title"] += f" — tập {i // len(base) + 1}"
        yield row


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=280_000)
    parser.add_argument("--url", default=None, help="a migrated, empty database (default: a temp SQLite file)")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--keep-db", type=Path, default=None,
                        help="SQLite file to fill once and reuse on later runs (default: a temp file, deleted)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="docsach-startup-"))
    db_file = args.keep_db or tmp / "bench.db"
    url = args.url or f"sqlite+aiosqlite:///{db_file}"
    reuse = args.url is None and args.keep_db is not None and args.keep_db.exists()
    if not args.url and not reuse:
        await upgrade_async(url)
    db = Database(url)
    started = time.perf_counter()
    if reuse:
        async with db.session() as s:
            count = await s.scalar(select(func.count()).select_from(Title))
        print(f"{count:,} titles in SQLite file {db_file} (reused)")
    else:
        count = await _fill(db, args)
        print(f"{count:,} titles in {'SQLite' if db.is_sqlite else 'PostgreSQL'} "
              f"(loaded in {time.perf_counter() - started:.0f} s)")
    await _measure(db, tmp, count)
    await db.dispose()
    shutil.rmtree(tmp, ignore_errors=True)


async def _fill(db: Database, args) -> int:
    batch = []
    for row in _rows(args.data, args.rows):
        batch.append(row)
        if len(batch) == 5000:
            async with db.transaction() as s:
                await s.execute(insert(Title), batch)
            batch = []
    if batch:
        async with db.transaction() as s:
            await s.execute(insert(Title), batch)
    async with db.transaction() as s:
        old = text("datetime('now', '-1 hour')") if db.is_sqlite else text("now() - interval '1 hour'")
        await s.execute(update(Title).values(updated_at=old))
        return await s.scalar(select(func.count()).select_from(Title))


async def _measure(db: Database, tmp: Path, count: int) -> None:
    snapshot = tmp / "index.snapshot"
    search = CatalogSearch(db, snapshot=snapshot)
    t = time.perf_counter()
    c = time.process_time()
    await search.ensure_ready()
    built = time.perf_counter() - t
    built_cpu = time.process_time() - c
    if hasattr(search, "snapshot_written"):  # written after ready since issue 17; before, inside "ready"
        await search.snapshot_written()
    saved = time.perf_counter() - t - built
    t = time.perf_counter()
    await search.refresh(force=True)
    poll = (time.perf_counter() - t) * 1000
    t = time.perf_counter()
    results = await search.search("nguoi tai dat viet", limit=5)
    first = (time.perf_counter() - t) * 1000
    restarted = CatalogSearch(db, snapshot=snapshot)
    t = time.perf_counter()
    await restarted.ensure_ready()
    loaded = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("| rows | ready from DB (stream + build), wall (process CPU) | then snapshot written "
          "| ready from snapshot (load + catch-up) | idle poll | first search | peak RSS |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {count:,} | {built:.1f} s ({built_cpu:.1f} s) | +{saved:.1f} s | {loaded:.1f} s | {poll:.1f} ms "
          f"| {first:.1f} ms | {peak:.0f} MB |")
    print("process CPU = all threads of this process (event loop, driver thread, index builder); with other "
          "jobs sharing the cores, wall time includes waiting for one")
    assert results.hits and results.hits[0].title == "Người tài đất Việt"


if __name__ == "__main__":
    asyncio.run(main())

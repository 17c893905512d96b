"""Benchmark docsach's SearchIndex against Tantivy, PostgreSQL pg_trgm and brute-force rapidfuzz.

    python bench/search.py [--data DIR] [--rows 280000|1000000] [--queries 2000] [--repeat 3]
                           [--profile] [--skip-tantivy] [--skip-pg] [--skip-brute]

Loads the real catalogs from shared data (LoC Books All 2016 part 01, goodbooks-10k,
vi_books_all), pads them with generated variants of real rows up to --rows,
generates perturbed queries with known answers from a seeded RNG, and prints one
table. Latency is measured single-threaded, one query at a time; docsach and Tantivy
run query by query in turn for --repeat rounds and each query counts its best round.
Pin the process to one core with taskset (``make bench`` does).
"""

from __future__ import annotations

import argparse
import csv
import gc
import gzip
import math
import os
import random
import resource
import statistics
import sys
import threading
import time
import types
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rapidfuzz import fuzz, process  # noqa: E402

from services.search_index import IndexedTitle, SearchIndex  # noqa: E402
from services.textfold import fold, normalize_isbn  # noqa: E402

KINDS = ["exact", "no_diacritics", "telex", "typo", "partial", "author_title", "isbn"]


# ----------------------------------------------------------------------- data
def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class _PeakRss:
    """Sample RSS every 20 ms in a thread: VmHWM cannot be reset everywhere, so watch the build."""

    def __enter__(self):
        self.peak = _rss_mb()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss_mb())

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss_mb())


def _year(s: str) -> int | None:
    try:
        return int(float(s))
    except (TypeError, ValueError):
        return None


def load_real(data: Path) -> list[IndexedTitle]:
    rows: list[IndexedTitle] = []
    with gzip.open(data / "loc_booksall2016_250k.csv.gz", "rt", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            rows.append(IndexedTitle(len(rows) + 1, r["title"], r["author"], normalize_isbn(r["isbn"]) if r["isbn"] else None,
                                     r["subjects"], _year(r["year"]), 1))
    with open(data / "goodbooks10k_books.csv", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            rows.append(IndexedTitle(len(rows) + 1, r["title"], r["authors"], r["isbn13"] or None, "",
                                     _year(r["original_publication_year"]), 1))
    with open(data / "vi_books_all.csv", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            rows.append(IndexedTitle(len(rows) + 1, r["title"], r["authors"], r["isbn13"] or None, "", _year(r["year"]), 1))
    return rows


SUFFIXES = [" (Tái bản lần {n})", ", tập {n}", " : volume {n}", " ({n}th ed.)", " - Vol. {n}", " : phần {n}", " / {n}"]


def pad_with_variants(rows: list[IndexedTitle], target: int, rng: random.Random) -> list[IndexedTitle]:
    """Grow to ``target`` rows with edition/volume variants of real rows and shuffled author pairs."""
    real = len(rows)
    out = list(rows)
    while len(out) < target:
        src = rows[rng.randrange(real)]
        other = rows[rng.randrange(real)]
        authors = src.authors
        if other.authors and rng.random() < 0.5:
            pair = [src.authors, other.authors]
            rng.shuffle(pair)
            authors = "; ".join(a for a in pair if a)
        title = src.title + rng.choice(SUFFIXES).format(n=rng.randint(1, 12))
        out.append(IndexedTitle(len(out) + 1, title, authors, None, src.subjects, src.year, rng.randint(0, 3)))
    return out


# -------------------------------------------------------------------- queries
_TELEX_MARK = {"\u0302": None, "\u0306": "w", "\u031b": "w"}
_TELEX_TONE = {"\u0301": "s", "\u0300": "f", "\u0309": "r", "\u0303": "x", "\u0323": "j"}


def to_telex(s: str) -> str:
    """Type a Vietnamese string the way a telex user does without an IME (tone key at word end)."""
    words = []
    for word in s.lower().split():
        out, tone = [], ""
        for ch in unicodedata.normalize("NFD", word):
            if ch == "đ":
                out.append("dd")
            elif ch in _TELEX_TONE:
                tone = _TELEX_TONE[ch]
            elif ch == "\u0302":
                out.append(out[-1] if out else "")
            elif ch in ("\u0306", "\u031b"):
                out.append("w")
            elif unicodedata.combining(ch):
                continue
            else:
                out.append(ch)
        words.append("".join(out) + tone)
    return " ".join(words)


def typo(s: str, rng: random.Random, edits: int) -> str:
    chars = list(s)
    letters = "abcdefghijklmnopqrstuvwxyz"
    for _ in range(edits):
        pos = [i for i, c in enumerate(chars) if c.isalpha()]
        if len(pos) < 4:
            break
        i = rng.choice(pos)
        op = rng.choice(["ins", "del", "sub", "swap"])
        if op == "ins":
            chars.insert(i, rng.choice(letters))
        elif op == "del":
            del chars[i]
        elif op == "sub":
            chars[i] = rng.choice(letters.replace(chars[i], ""))
        elif i + 1 < len(chars) and chars[i + 1].isalpha():
            chars[i], chars[i + 1] = chars[i + 1], chars[i]
    return "".join(chars)


def make_queries(rows: list[IndexedTitle], n: int, rng: random.Random) -> list[tuple[str, str, int]]:
    """(kind, query, source row index) with the query derived from one real row."""
    df: Counter[str] = Counter()
    for r in rows:
        df.update(set(fold(r.title).split()))
    vi = [i for i, r in enumerate(rows) if r.title != fold(r.title) and fold(r.title) != r.title.lower()
          and any("\u0300" <= c <= "\u036f" or c in "đĐ" for c in unicodedata.normalize("NFD", r.title))]
    with_isbn = [i for i, r in enumerate(rows) if r.isbn13]
    short = [i for i, r in enumerate(rows) if 2 <= len(fold(r.title).split()) and len(r.title) <= 60]
    longer = [i for i, r in enumerate(rows) if len(fold(r.title).split()) >= 4]
    authored = [i for i, r in enumerate(rows) if fold(r.authors) and len(fold(r.title).split()) >= 2]
    out = []
    per = math.ceil(n / len(KINDS))
    for kind in KINDS:
        made = 0
        while made < per:
            if kind in ("no_diacritics", "telex"):
                i = rng.choice(vi)
            elif kind == "isbn":
                i = rng.choice(with_isbn)
            elif kind == "partial":
                i = rng.choice(longer)
            elif kind == "author_title":
                i = rng.choice(authored)
            else:
                i = rng.choice(short)
            r = rows[i]
            words = fold(r.title).split()
            if kind == "exact":
                q = r.title
            elif kind == "no_diacritics":
                q = fold(r.title)
            elif kind == "telex":
                q = to_telex(" ".join(r.title.split()[:8]))
            elif kind == "typo":
                q = typo(fold(r.title), rng, rng.choice([1, 2]))
            elif kind == "partial":
                k = rng.choice([2, 3])
                best = max(range(len(words) - k + 1), key=lambda j: sum(1 / df[w] for w in words[j : j + k]))
                q = " ".join(words[best : best + k])
            elif kind == "author_title":
                a = fold(r.authors).split()
                a = [w for w in a if not w.isdigit()]
                if not a:
                    continue
                surname = a[0] if "," in r.authors else a[-1]
                word = min((w for w in words if len(w) >= 4), key=lambda w: df[w], default=None)
                if word is None:
                    continue
                q = f"{surname} {word}"
            else:
                d = r.isbn13
                q = f"{d[:3]}-{d[3]}-{d[4:8]}-{d[8:12]}-{d[12]}" if rng.random() < 0.5 else (
                    d[3:12] + _isbn10_check(d[3:12]))
            out.append((kind, q, i))
            made += 1
    rng.shuffle(out)
    return out[:n] if n >= len(KINDS) else out


def _isbn10_check(d9: str) -> str:
    c = (11 - sum((10 - i) * int(x) for i, x in enumerate(d9)) % 11) % 11
    return "X" if c == 10 else str(c)


# --------------------------------------------------------------------- engines
def _score(name, queries, truth, ids_of, lat, cpu, note=""):
    hits1 = hits5 = 0
    by_kind: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for (kind, _q, i), ids in zip(queries, ids_of, strict=True):
        ans = truth[i]
        ok1 = bool(ids[:1]) and ids[0] in ans
        ok5 = any(x in ans for x in ids[:5])
        hits1 += ok1
        hits5 += ok5
        by_kind[kind][0] += ok5
        by_kind[kind][1] += 1
    lat = sorted(lat)
    cpu = sorted(cpu)
    n = len(queries)
    return {
        "name": name, "n": n, "r1": hits1 / n, "r5": hits5 / n,
        "p50": statistics.median(lat), "p95": lat[min(n - 1, int(0.95 * n))],
        "cpu50": statistics.median(cpu), "cpu95": cpu[min(n - 1, int(0.95 * n))],
        "kinds": {k: v[0] / v[1] for k, v in by_kind.items()}, "note": note,
    }


def evaluate(name, search_fn, queries, rows, truth, note=""):
    """One pass, one query at a time (the slow baselines)."""
    lat, cpu, ids_of = [], [], []
    for _kind, q, _i in queries:
        c = time.thread_time()
        t = time.perf_counter()
        ids = search_fn(q)
        lat.append((time.perf_counter() - t) * 1000)
        cpu.append((time.thread_time() - c) * 1000)
        ids_of.append(ids)
    return _score(name, queries, truth, ids_of, lat, cpu, note)


def evaluate_interleaved(engines, queries, truth, repeats: int):
    """The fast engines, query by query in turn (A, B, B, A, ...), ``repeats`` rounds; each query's
    time is its best round. A burst of another job's load then hits both engines alike, and the
    best of a few rounds is the query's cost on a free core (each query is deterministic work)."""
    n = len(queries)
    lat = {name: [math.inf] * n for name, _ in engines}
    cpu = {name: [math.inf] * n for name, _ in engines}
    ids_of = {name: [None] * n for name, _ in engines}
    for rnd in range(repeats):
        for j, (_kind, q, _i) in enumerate(queries):
            order = engines if (j + rnd) % 2 == 0 else engines[::-1]
            for name, fn in order:
                c = time.thread_time()
                t = time.perf_counter()
                ids = fn(q)
                dt = (time.perf_counter() - t) * 1000
                dc = (time.thread_time() - c) * 1000
                if dt < lat[name][j]:
                    lat[name][j] = dt
                if dc < cpu[name][j]:
                    cpu[name][j] = dc
                ids_of[name][j] = ids
    return {name: _score(name, queries, truth, ids_of[name], lat[name], cpu[name]) for name, _ in engines}


class TantivyBaseline:
    """Tantivy (``tantivy`` on PyPI) as a Python team would set it up for this job: one text field
    with the folded "title authors" (whitespace tokenizer, BM25), a raw ``isbn`` field; each
    folded query word is a term (BM25) OR a fuzzy term (edit distance 1 from 4 letters, 2 from 8,
    transposition = 1), the last word also as a fuzzy prefix; words are OR'ed. The writer uses
    one thread, so the build runs on one core like the others."""

    def __init__(self, rows):
        import tantivy

        self.t = tantivy
        sb = tantivy.SchemaBuilder()
        sb.add_text_field("doc", tokenizer_name="whitespace", index_option="freq")
        sb.add_text_field("isbn", tokenizer_name="raw")
        sb.add_integer_field("id", stored=True, indexed=False)
        self.schema = sb.build()
        self.index = tantivy.Index(self.schema)
        writer = self.index.writer(heap_size=500_000_000, num_threads=1)
        for r in rows:
            doc = tantivy.Document(doc=f"{fold(r.title)} {fold(r.authors)}".strip(), id=r.id)
            if r.isbn13:
                doc.add_text("isbn", r.isbn13)
            writer.add_document(doc)
        writer.commit()
        writer.wait_merging_threads()
        self.index.reload()
        self.searcher = self.index.searcher()

    def query(self, q: str):
        t, schema = self.t, self.schema
        Q, should = t.Query, t.Occur.Should
        words = list(dict.fromkeys(fold(q).split()))[:12]
        parts = []
        for k, w in enumerate(words):
            alts = [(should, Q.term_query(schema, "doc", w))]
            dist = 2 if len(w) >= 8 else 1 if len(w) >= 4 else 0
            if dist:
                alts.append((should, Q.fuzzy_term_query(schema, "doc", w, dist, True, False)))
            if k == len(words) - 1:
                alts.append((should, Q.fuzzy_term_query(schema, "doc", w, dist, True, True)))
            parts.append((should, Q.boolean_query(alts) if len(alts) > 1 else alts[0][1]))
        return Q.boolean_query(parts) if parts else None

    def search(self, q: str, limit: int = 5) -> list[int]:
        isbn = normalize_isbn(q)
        if isbn:
            hits = self.searcher.search(self.t.Query.term_query(self.schema, "isbn", isbn), limit, count=False).hits
            if hits:
                return [self.searcher.doc(a)["id"][0] for _, a in hits]
        query = self.query(q)
        if query is None:
            return []
        return [self.searcher.doc(a)["id"][0] for _, a in self.searcher.search(query, limit, count=False).hits]


def run_pg(rows, queries, truth, dsn_base: str, n_queries: int):
    import psycopg

    with psycopg.connect(dsn_base + " dbname=postgres", autocommit=True) as c:
        if not c.execute("SELECT 1 FROM pg_database WHERE datname='bench_search'").fetchone():
            c.execute("CREATE DATABASE bench_search")
    with psycopg.connect(dsn_base + " dbname=bench_search", autocommit=True) as c:
        c.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        c.execute("DROP TABLE IF EXISTS titles")
        c.execute("CREATE TABLE titles (id int PRIMARY KEY, isbn13 text, doc text NOT NULL)")
        t0 = time.perf_counter()
        with c.cursor() as cur, cur.copy("COPY titles (id, isbn13, doc) FROM STDIN") as cp:
            for r in rows:
                cp.write_row((r.id, r.isbn13, f"{fold(r.title)} {fold(r.authors)}".strip()))
        c.execute("CREATE INDEX ON titles USING gin (doc gin_trgm_ops)")
        c.execute("CREATE INDEX ON titles (isbn13)")
        c.execute("ANALYZE titles")
        build = time.perf_counter() - t0
        size = c.execute("SELECT pg_total_relation_size('titles')").fetchone()[0] / 2**20

        def search(q):
            isbn = normalize_isbn(q)
            if isbn:
                return [x[0] for x in c.execute("SELECT id FROM titles WHERE isbn13 = %s LIMIT 5", (isbn,))]
            fq = fold(q)
            if not fq:
                return []
            return [x[0] for x in c.execute(
                "SELECT id FROM titles WHERE %s <%% doc ORDER BY word_similarity(%s, doc) DESC, id LIMIT 5", (fq, fq))]

        sub = queries[:n_queries]
        note = "ISBN queries use an equality lookup on an isbn13 column"
        if len(sub) < len(queries):
            note += f"; on the first {len(sub)} queries only (slow)"
        res = evaluate("PostgreSQL pg_trgm (GIN, word_similarity)", search, sub, rows, truth, note)
        res["build"] = build
        res["cpu_na"] = True
        res["mem"] = f"{size:.0f} MB on disk (table+indexes)"
        return res


def _built(label, build_fn):
    """Build an engine, timing wall and CPU seconds and the process RSS growth (after; peak)."""
    gc.collect()
    rss0 = _rss_mb()
    with _PeakRss() as watch:
        t = time.perf_counter()
        c = time.process_time()
        engine = build_fn()
        build = time.perf_counter() - t
        build_cpu = time.process_time() - c
    gc.collect()
    peak, steady = watch.peak - rss0, _rss_mb() - rss0
    print(f"{label} built in {build:.1f}s wall, {build_cpu:.1f}s CPU; RSS +{steady:.0f} MB after, "
          f"peak +{peak:.0f} MB", flush=True)
    return engine, {"build": build, "build_cpu": build_cpu, "mem": f"RSS +{steady:.0f} MB (peak +{peak:.0f} MB)"}


def profile_stages(idx: SearchIndex, queries, rounds: int = 3) -> None:
    """Where a docsach query's time goes: the searching thread's CPU time per stage, each query's
    best of ``rounds`` (stages as timed by ``SearchIndex.search(timings=...)``)."""
    import services.search_index as engine

    saved = engine.time
    engine.time = types.SimpleNamespace(perf_counter=time.thread_time)  # CPU, not wall, per stage
    try:
        best: list[dict[str, float]] = []
        for rnd in range(rounds):
            for j, (_kind, q, _) in enumerate(queries):
                timings: dict[str, float] = {}
                idx.search(q, limit=5, timings=timings)
                if rnd == 0:
                    best.append(timings)
                else:
                    for k, v in timings.items():
                        best[j][k] = min(best[j].get(k, v), v)
    finally:
        engine.time = saved
    stages: dict[str, list[float]] = defaultdict(list)
    for timings in best:
        for k, v in timings.items():
            stages[k].append(v * 1000)
    total = sum(sum(v) for v in stages.values())
    print()
    print(f"docsach per-query stages over {len(queries)} queries (thread CPU ms, best of {rounds} rounds):")
    print("| stage | mean ms | p50 ms | p95 ms | share |")
    print("|---|---|---|---|---|")
    for k, v in stages.items():
        v = sorted(v + [0.0] * (len(queries) - len(v)))  # queries that ended before this stage
        print(f"| {k} | {sum(v) / len(v):.3f} | {statistics.median(v):.3f} | {v[int(0.95 * (len(v) - 1))]:.3f} | "
              f"{sum(v) / total:.0%} |")
    print(f"| all stages | {total / len(queries):.3f} | | | 100% |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_data = os.environ.get("DOCSACH_SHARED_DATA") or str(REPO.parent / "shared" / "data")
    ap.add_argument("--data", default=default_data)
    ap.add_argument("--rows", type=int, default=280_000)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--brute-queries", type=int, default=None, help="queries for the brute-force baseline (slow)")
    ap.add_argument("--pg-queries", type=int, default=None, help="queries for the pg_trgm baseline")
    ap.add_argument("--skip-pg", action="store_true")
    ap.add_argument("--skip-brute", action="store_true")
    ap.add_argument("--pg-dsn", default="host=127.0.0.1 port=5432 user=postgres")
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument("--save", default=None, help="also time save/load of a snapshot at this path")
    ap.add_argument("--skip-tantivy", action="store_true")
    ap.add_argument("--repeat", type=int, default=3,
                    help="interleaved rounds for docsach and Tantivy; each query's best round counts")
    ap.add_argument("--profile", action="store_true", help="also print where a docsach query's time goes")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    data = Path(args.data)
    if not (data / "vi_books_all.csv").exists() and Path("/work/shared/data/vi_books_all.csv").exists():
        data = Path("/work/shared/data")
    rng = random.Random(args.seed)

    t = time.perf_counter()
    real = load_real(data)
    if args.rows < len(real):
        real = real[: args.rows]
    rows = pad_with_variants(real, args.rows, rng) if args.rows > len(real) else real
    print(f"loaded {len(real):,} real rows, {len(rows):,} indexed ({time.perf_counter() - t:.1f}s)", flush=True)

    groups: dict[str, set[int]] = defaultdict(set)
    for r in rows:
        groups[fold(r.title)].add(r.id)
    queries = make_queries(real, args.queries, rng)
    truth = {i: groups[fold(real[i].title)] for _, _, i in queries}
    print(f"{len(queries)} queries: {dict(Counter(k for k, _, _ in queries))}", flush=True)

    results = []
    idx, res_idx = _built("SearchIndex", lambda: SearchIndex.build(rows))
    if args.save:
        t = time.perf_counter()
        idx.save(args.save)
        ts = time.perf_counter() - t
        t = time.perf_counter()
        SearchIndex.load(args.save)
        print(f"snapshot: save {ts:.1f}s, load {time.perf_counter() - t:.1f}s, "
              f"{os.path.getsize(args.save) / 2**20:.0f} MB", flush=True)
    engines = [("docsach SearchIndex", lambda q: [h.id for h in idx.search(q, limit=5).hits])]
    built = {"docsach SearchIndex": res_idx}
    if not args.skip_tantivy:
        tv, built["Tantivy 0.27 (BM25 + fuzzy)"] = _built("Tantivy", lambda: TantivyBaseline(rows))
        engines.append(("Tantivy 0.27 (BM25 + fuzzy)", tv.search))
    for _name, fn in engines:
        for _kind, q, _ in queries[:50]:  # warm caches
            fn(q)
    t = time.perf_counter()
    fast = evaluate_interleaved(engines, queries, truth, args.repeat)
    print(f"interleaved timing: {args.repeat} rounds in {time.perf_counter() - t:.0f}s", flush=True)
    for name, _fn in engines:
        res = fast[name]
        res.update(built[name])
        res["note"] = f"best of {args.repeat} interleaved rounds per query"
        results.append(res)
        print(_fmt_row(res), flush=True)
    if args.profile:
        profile_stages(idx, queries)

    if not args.skip_brute:
        nb = args.brute_queries or (100 if len(rows) <= 300_000 else 30)
        choices = [f"{fold(r.title)} {fold(r.authors)}".strip() for r in rows]
        ids = [r.id for r in rows]
        sub = queries[:nb]

        def brute(q):
            fq = fold(q)
            isbn = normalize_isbn(q)
            if isbn:
                return [r.id for r in rows if r.isbn13 == isbn][:5]
            return [ids[j] for _, _, j in process.extract(fq, choices, scorer=fuzz.WRatio, processor=None, limit=5)]

        res = evaluate("brute-force rapidfuzz WRatio", brute, sub, rows, truth,
                       f"on the first {len(sub)} queries only (slow); ISBN via linear scan")
        res["build"] = 0.0
        res["mem"] = "folded strings only"
        results.append(res)
        print(_fmt_row(res), flush=True)
        del choices

    if not args.skip_pg:
        try:
            npg = args.pg_queries or (len(queries) if len(rows) <= 300_000 else 500)
            res = run_pg(rows, queries, truth, args.pg_dsn, npg)
            results.append(res)
            print(_fmt_row(res), flush=True)
        except Exception as e:
            print(f"PostgreSQL baseline failed: {e!r}", flush=True)

    print()
    print(f"rows={len(rows):,} queries={len(queries)} seed={args.seed} cpu=1 thread, latency per query")
    print("| engine | queries | recall@1 | recall@5 | p50 ms | p95 ms | CPU p50 ms | CPU p95 ms | build s (CPU s) | memory |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(_fmt_row(r))
    print()
    print("recall@5 by query kind:")
    print("| engine | " + " | ".join(KINDS) + " |")
    print("|---" * (len(KINDS) + 1) + "|")
    for r in results:
        print(f"| {r['name']} | " + " | ".join(f"{r['kinds'].get(k, float('nan')):.3f}" for k in KINDS) + " |")
    for r in results:
        if r["note"]:
            print(f"note ({r['name']}): {r['note']}")
    print("latency: wall clock per query (p50/p95) and the searching thread's CPU time (CPU p50/p95), "
          "which is what one core costs when other jobs share the machine; PostgreSQL's CPU column "
          "is only the client's, its server work is in the wall figures")
    print("memory: SearchIndex = process RSS growth over the build (VmRSS after; peak sampled every 20 ms), "
          "the input records excluded; "
          f"max RSS of whole process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


def _fmt_row(r) -> str:
    build = f"{r['build']:.1f}" + (f" ({r['build_cpu']:.1f})" if "build_cpu" in r else "")
    return (f"| {r['name']} | {r['n']} | {r['r1']:.3f} | {r['r5']:.3f} | {r['p50']:.2f} | {r['p95']:.2f} | "
            + ("n/a | n/a | " if r.get("cpu_na") else f"{r['cpu50']:.2f} | {r['cpu95']:.2f} | ")
            + f"{build} | {r['mem']} |")


if __name__ == "__main__":
    main()

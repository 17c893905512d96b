"""In-memory catalog search: typo-, diacritics- and telex-tolerant, ~1M titles on one core.

Design (why it is fast): brute-force fuzzy matching over every title is O(N) per
query. Instead we keep

* an inverted index from folded word tokens to the titles holding them, as CSR
  numpy int32 arrays (no Python object per posting), plus small append-only
  deltas so ``upsert``/``remove`` need no rebuild;
* a deletion-neighbourhood table over the *vocabulary* (SymSpell style: every
  token and each of its 1-deletions, hashed and sorted; built vectorised with
  numpy) so a typo'd query word finds its intended tokens by binary search,
  then ``rapidfuzz`` verifies the edit distance. A word the catalog knows is
  taken as typed, but its most frequent one-edit neighbours count for 0.6 (a
  typo can make another valid syllable: "thanh" typed for "thằng");
* a token-overlap pre-score (IDF-weighted, vectorised) that narrows the
  candidates to a few hundred (a title equal to the query always stays), and
  only those are scored with rapidfuzz on their folded strings, plus bonuses
  (exact title, user's own diacritics, available copies break ties);
* when the query names no volume, volumes of one series among the first hits
  go shelf first, then lowest volume, and take at most two of those places.

All work per query is bounded: the query is cut to 200 characters and 12
words, each word expands to at most a few vocabulary tokens, and candidate
sets have fixed budgets. ``search`` is a synchronous CPU call of a few
milliseconds; it is safe to call from a single asyncio thread without locks
(do not mutate the index from another thread while searching).
"""

from __future__ import annotations

import bisect
import math
import pickle
import re
import time
import zlib
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
from rapidfuzz import fuzz, process
from rapidfuzz.distance import OSA

from services.textfold import (
    decode_words,
    fold,
    fold_keep_marks,
    looks_like_isbn,
    normalize_isbn,
    strip_invisible,
)

__all__ = ["IndexedTitle", "Hit", "SearchResult", "SearchIndex"]

MAX_QUERY_CHARS = 200
MAX_QUERY_WORDS = 12
MAX_FUZZY_PER_WORD = 8
MAX_PREFIX_PER_WORD = 12
GEN_BUDGET = 20_000  # postings read to generate candidates
PRESCORE_KEEP = 1_000  # candidates kept after the first, IDF-only scoring
RERANK_KEEP = 80  # candidates scored with rapidfuzz
# A volume in a folded title (see _volume)
_VOLUME_WORDS = frozenset("tap quyen cuon phan vol volume book part t".split())
_NUMBER = re.compile(r"\d{1,3}(?![^ ])").finditer
_HAS_DIGIT = re.compile(r"\d").search
_FIELDS = ((False, 1.0), (True, 0.5))  # (subject postings?, weight): subject hits count half
_FIELDS_MAIN = ((False, 1.0),)
SERIES_WINDOW = 20  # first hits among which volumes of one series are put in order
SERIES_CAP = 2  # of those, places one series may take before other works
NEIGHBOUR_WEIGHT = 0.6  # a known word's one-edit neighbours, vs 1.0 for the word itself
MAX_NEIGHBOURS = 6  # the most frequent ones
MIN_NEIGHBOUR_LEN = 4
WEAK_SCORE = 80.0  # below this the best hit is offered as "did you mean"


@dataclass(frozen=True, slots=True)
class IndexedTitle:
    """One catalog title as the index needs it (the app's DB row maps onto this)."""

    id: int
    title: str
    authors: str = ""
    isbn13: str | None = None
    subjects: str = ""
    year: int | None = None
    available: int = 0


@dataclass(frozen=True, slots=True)
class Hit:
    id: int
    score: float
    matched: str  # which field carried the match: "isbn", "title", "author", "title+author", "subject"


@dataclass(frozen=True, slots=True)
class SearchResult:
    hits: list[Hit]
    total_estimate: int
    suggestion: str | None
    query_kind: str  # "isbn", "text" or "empty"


@dataclass(slots=True)
class _Group:
    """One query word: the vocabulary tokens it may stand for, with a weight each."""

    variants: dict[int, float] = field(default_factory=dict)
    neighbours: set[int] = field(default_factory=set)  # a known word's neighbours: title+author only
    idf: float = 0.0
    size: int = 0


# Deletion-table keys: a polynomial hash mod 2**32 of the token's bytes, computed vectorised over the
# whole vocabulary at build (numpy) and per key at query time. A collision only adds a candidate
# that the edit-distance check then drops.
_HASH_P = 0x01000193
_HASH_LEN = 20  # longest token with typo expansion
_PW = np.array([pow(_HASH_P, j, 2**32) for j in range(_HASH_LEN + 1)], np.uint32)
_PW_INT = _PW.tolist()
SNAPSHOT_FORMAT = 4


def _hkey(s: str) -> int:
    return sum(c * p for c, p in zip(s.encode(), _PW_INT, strict=False)) & 0xFFFFFFFF


def _hkeys(keys: list[str]) -> np.ndarray:
    """``_hkey`` of many ASCII strings of at most ``_HASH_LEN`` letters, vectorised."""
    m = np.frombuffer(b"".join(k.encode().ljust(_HASH_LEN, b"\0") for k in keys), np.uint8)
    return (m.reshape(len(keys), _HASH_LEN).astype(np.uint32) * _PW[:_HASH_LEN]).sum(axis=1, dtype=np.uint32)


class _Vocab(dict):
    """token -> id, handing out the next id to a new token (one dict lookup per word at build)."""

    def __missing__(self, key: str) -> int:
        v = self[key] = len(self) - 1  # the row separator holds -1
        return v


_ROW_SEP = "\x01"  # never in folded text


def _deletes1(t: str) -> set[str]:
    return {t[:i] + t[i + 1 :] for i in range(len(t))}


def _fuzzy_token(t: str) -> bool:
    """Tokens that get typo expansion: folded Latin words of 3-20 letters (other scripts match exactly)."""
    return 3 <= len(t) <= 20 and t.isascii() and not t.isdigit()


def _author_key(authors: str) -> str:
    """Folded authors without life dates ("Aurand, Samuel, 1854-" → "aurand samuel")."""
    return " ".join(w for w in fold(authors).split() if not w.isdigit())


def _as_record(r) -> IndexedTitle:
    return r if isinstance(r, IndexedTitle) else IndexedTitle(*r)


class SearchIndex:
    """Catalog search index; build with :meth:`build`, then :meth:`search`."""

    def __init__(self) -> None:
        self._ids = array("q")
        self._title: list[str] = []  # as catalogued, for "did you mean"
        self._ftitle: list[str] = []  # folded
        self._fauth: list[str] = []  # folded, no dates
        self._fsubj: list[str] = []  # folded subject headings
        self._isbn = array("q")  # ISBN-13 as int, 0 if none
        self._avail = array("i")
        self._alive = bytearray()
        self._n_alive = 0
        # vocabulary
        self._vocab: dict[str, int] = {}
        self._tokens: list[str] = []
        self._sorted_tokens: list[str] = []
        # base postings (CSR) and deltas, for title+author tokens ("m") and subject tokens ("s")
        self._m_off = np.zeros(1, np.int64)
        self._m_docs = np.zeros(0, np.int32)
        self._s_off = np.zeros(1, np.int64)
        self._s_docs = np.zeros(0, np.int32)
        self._m_delta: dict[int, array] = {}
        self._s_delta: dict[int, array] = {}
        # deletion neighbourhood table: crc32(token or 1-deletion) -> token id
        self._del_keys = np.zeros(0, np.uint32)
        self._del_tok = np.zeros(0, np.int32)
        self._del_delta: dict[int, list[int]] = {}
        # id -> slot: sorted base arrays + dict for slots added after build
        self._base_ids = np.zeros(0, np.int64)
        self._base_slots = np.zeros(0, np.int32)
        self._slot_delta: dict[int, int] = {}
        self._isbn_keys = np.zeros(0, np.int64)
        self._isbn_slots = np.zeros(0, np.int32)
        self._isbn_delta: dict[int, list[int]] = {}
        # crc32 of each folded title -> slots, so a query equal to a title always reaches the rerank
        self._tkey_keys = np.zeros(0, np.uint32)
        self._tkey_slots = np.zeros(0, np.int32)
        self._tkey_delta: dict[int, list[int]] = {}
        self._n_base_tokens = 0
        self._dfs = array("i")  # postings per token (title+author and subject), deltas included

    # ------------------------------------------------------------------ build
    @classmethod
    def build(cls, records: Iterable) -> SearchIndex:
        """Build from ``IndexedTitle``s or tuples (id, title, authors, isbn13, subjects, year, available).

        If an id repeats, the last row wins.
        """
        idx = cls()
        vocab = _Vocab({_ROW_SEP: -1})
        pairs_m: list[np.ndarray] = []  # (token id << 32 | slot) per chunk
        pairs_s: list[np.ndarray] = []
        # authors and subject headings repeat across a catalog: fold each distinct one once
        a_cache: dict[str, str] = {}
        s_cache: dict[str, str] = {"": ""}
        start = 0
        for chunk in _chunks(records, 16384):
            ids, titles, authors, isbns, subjects, avail = _columns(chunk)
            titles = [t or "" for t in titles]
            fts = list(map(fold, titles))
            fas = [a_cache.get(a) or a_cache.setdefault(a, _author_key(a or "")) for a in authors]
            fss = [s_cache.get(x) or s_cache.setdefault(x, fold(x) if x else "") for x in subjects]
            idx._ids.extend(map(int, ids))
            idx._title.extend(titles)
            idx._isbn.extend([int(i) if i and len(i) == 13 and i.isdigit() else int(normalize_isbn(i) or 0)
                              if i else 0 for i in isbns])
            idx._avail.extend([max(0, int(a or 0)) for a in avail])
            idx._ftitle.extend(fts)
            idx._fauth.extend(fas)
            idx._fsubj.extend(fss)
            mains = [f"{t} {a}" if t and a else t or a for t, a in zip(fts, fas, strict=True)]
            pairs_m.append(_pairs(mains, vocab, start))
            pairs_s.append(_pairs(fss, vocab, start))
            start += len(chunk)
        del a_cache, s_cache
        del vocab[_ROW_SEP]
        idx._vocab = dict(vocab)
        del vocab
        idx._alive = bytearray(b"\x01") * start
        idx._n_alive = start
        idx._tokens = list(idx._vocab)  # ids were handed out in insertion order
        n_tok = len(idx._tokens)
        idx._m_off, idx._m_docs = _csr(pairs_m, n_tok)
        del pairs_m
        idx._s_off, idx._s_docs = _csr(pairs_s, n_tok)
        del pairs_s
        idx._n_base_tokens = n_tok
        idx._dfs = array("i", (np.diff(idx._m_off) + np.diff(idx._s_off)).astype(np.int32).tobytes())
        idx._sorted_tokens = sorted(idx._tokens)
        idx._build_deletes()
        idx._build_id_maps()
        return idx

    def _append_row(self, r: IndexedTitle, cache: dict[str, str] | None = None) -> int:
        slot = len(self._ids)
        self._ids.append(int(r.id))
        self._title.append(r.title or "")
        ft = fold(r.title or "")
        self._ftitle.append(ft)
        fa = fs = None
        if cache is not None:
            fa = cache.get("a" + (r.authors or ""))
            fs = cache.get("s" + (r.subjects or ""))
        if fa is None:
            fa = _author_key(r.authors or "")
            if cache is not None:
                cache["a" + (r.authors or "")] = fa
        if fs is None:
            fs = fold(r.subjects) if r.subjects else ""
            if cache is not None:
                cache["s" + (r.subjects or "")] = fs
        self._fauth.append(fa)
        self._fsubj.append(fs)
        isbn = r.isbn13 if r.isbn13 and len(r.isbn13) == 13 and r.isbn13.isdigit() else None
        isbn = isbn or (normalize_isbn(r.isbn13) if r.isbn13 else None)
        self._isbn.append(int(isbn) if isbn else 0)
        self._avail.append(max(0, int(r.available or 0)))
        self._alive.append(1)
        self._n_alive += 1
        return slot

    def _token_id(self, t: str) -> int:
        tid = self._vocab.get(t)
        if tid is None:
            tid = len(self._tokens)
            self._vocab[t] = tid
            self._tokens.append(t)
        return tid

    def _row_tokens(self, slot: int, r: IndexedTitle) -> tuple[list[int], list[int]]:
        main = set(self._ftitle[slot].split())
        main.update(self._fauth[slot].split())
        subj = set(self._fsubj[slot].split()) - main
        tid = self._token_id
        return [tid(t) for t in main], [tid(t) for t in subj]

    def _build_deletes(self) -> None:
        """Key of every ASCII token of at most 20 letters, and of each 1-deletion of the fuzzy ones,
        hashed for the whole vocabulary at once (a typo'd query word can only reach these)."""
        L, W = _HASH_LEN, 65536
        sel = [(tid, t) for tid, t in enumerate(self._tokens) if len(t) <= L and t.isascii()]
        parts = []
        for c in range(0, len(sel), W):
            part = sel[c : c + W]
            n = len(part)
            tids = np.fromiter((tid for tid, _ in part), np.int64, n)
            lens = np.fromiter((len(t) for _, t in part), np.int64, n)
            fuzzy = np.fromiter((_fuzzy_token(t) for _, t in part), bool, n)
            m = np.frombuffer(b"".join(t.encode().ljust(L, b"\0") for _, t in part), np.uint8)
            m = m.reshape(n, L).astype(np.uint32)
            pre = np.zeros((n, L + 1), np.uint32)  # pre[:, i]: hash of the first i letters
            np.cumsum(m * _PW[:L], axis=1, dtype=np.uint32, out=pre[:, 1:])
            suf = np.zeros((n, L + 1), np.uint32)  # suf[:, k]: letters from k on, each one place down
            suf[:, 1:L] = np.cumsum((m[:, 1:] * _PW[: L - 1])[:, ::-1], axis=1, dtype=np.uint32)[:, ::-1]
            full = pre[np.arange(n), lens]
            dels = pre[:, :L] + suf[:, 1:]  # dels[:, i]: hash of the token without its letter i
            ok = (np.arange(L)[None, :] < lens[:, None]) & fuzzy[:, None]
            parts.append((full.astype(np.uint64) << 32) | tids.astype(np.uint64))
            parts.append((dels[ok].astype(np.uint64) << 32) | np.broadcast_to(tids[:, None], (n, L))[ok].astype(np.uint64))
        packed = np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.uint64)
        self._del_keys = (packed >> 32).astype(np.uint32)
        self._del_tok = (packed & 0xFFFFFFFF).astype(np.int32)

    def _build_id_maps(self) -> None:
        ids = np.frombuffer(self._ids, np.int64)
        order = np.argsort(ids, kind="stable")
        sid = ids[order]
        dup = np.nonzero(sid[1:] == sid[:-1])[0]  # an earlier slot with the same id as the next one
        for s in order[dup].tolist():
            self._kill(s)
        keep = np.ones(len(order), bool)
        keep[dup] = False
        self._base_slots = order[keep].astype(np.int32)
        self._base_ids = sid[keep]
        alive = np.frombuffer(self._alive, np.uint8).astype(bool)
        slots = np.nonzero(alive)[0].astype(np.int32)
        isbn = np.frombuffer(self._isbn, np.int64)
        has = slots[isbn[slots] != 0]
        order = np.argsort(isbn[has], kind="stable")
        self._isbn_slots = has[order].astype(np.int32)
        self._isbn_keys = isbn[self._isbn_slots]
        crc = zlib.crc32
        tkeys = np.fromiter((crc(t.encode()) for t in self._ftitle), np.uint32, len(self._ftitle))
        order = np.argsort(tkeys, kind="stable")
        self._tkey_keys = tkeys[order]
        self._tkey_slots = order.astype(np.int32)

    # ---------------------------------------------------------- maintenance
    def __len__(self) -> int:
        return self._n_alive

    def _slot_of(self, rid: int) -> int | None:
        s = self._slot_delta.get(rid)
        if s is not None:
            return s if self._alive[s] else None
        i = int(np.searchsorted(self._base_ids, rid))
        if i < len(self._base_ids) and self._base_ids[i] == rid:
            s = int(self._base_slots[i])
            return s if self._alive[s] else None
        return None

    def _kill(self, slot: int) -> None:
        if self._alive[slot]:
            self._alive[slot] = 0
            self._n_alive -= 1

    def remove(self, id: int) -> bool:
        """Drop a title; returns False if it was not indexed. Its postings stay but are filtered out."""
        s = self._slot_of(int(id))
        if s is None:
            return False
        self._kill(s)
        return True

    def upsert(self, record) -> None:
        """Add or replace one title without rebuilding (new slot; the old one is tombstoned)."""
        r = _as_record(record)
        self.remove(r.id)
        slot = self._append_row(r)
        self._slot_delta[int(r.id)] = slot
        n_before = len(self._tokens)
        mt, st = self._row_tokens(slot, r)
        self._dfs.extend([0] * (len(self._tokens) - len(self._dfs)))
        for tid in mt:
            self._m_delta.setdefault(tid, array("i")).append(slot)
            self._dfs[tid] += 1
        for tid in st:
            self._s_delta.setdefault(tid, array("i")).append(slot)
            self._dfs[tid] += 1
        for tid in range(n_before, len(self._tokens)):  # tokens this row brought into the vocabulary
            t = self._tokens[tid]
            bisect.insort(self._sorted_tokens, t)
            if len(t) > _HASH_LEN or not t.isascii():
                continue
            for v in _deletes1(t) | {t} if _fuzzy_token(t) else {t}:
                self._del_delta.setdefault(_hkey(v), []).append(tid)
        if self._isbn[slot]:
            self._isbn_delta.setdefault(self._isbn[slot], []).append(slot)
        self._tkey_delta.setdefault(zlib.crc32(self._ftitle[slot].encode()), []).append(slot)

    def compact(self) -> SearchIndex:
        """Return a freshly built index of the live titles (drops tombstones and deltas after many edits)."""
        return SearchIndex.build(self.records())

    def records(self) -> Iterable[IndexedTitle]:
        """Live titles as indexed: authors and subjects come back folded (enough to re-index), no year."""
        for s in range(len(self._ids)):
            if self._alive[s]:
                isbn = self._isbn[s]
                yield IndexedTitle(self._ids[s], self._title[s], self._fauth[s], str(isbn) if isbn else None,
                                   self._fsubj[s], None, self._avail[s])

    # --------------------------------------------------------------- persist
    def save(self, path: str | Path) -> None:
        """Snapshot to one pickle file (numpy arrays pickle compactly); load with :meth:`load`."""
        with open(path, "wb") as f:
            pickle.dump({"format": SNAPSHOT_FORMAT, "state": dict(self.__dict__)}, f, protocol=5)

    @classmethod
    def load(cls, path: str | Path) -> SearchIndex:
        """Load a snapshot written by :meth:`save` (trusted files only: it is a pickle).

        Raises ValueError for a snapshot of another format (an older docsach): rebuild then.
        """
        idx = cls()
        with open(path, "rb") as f:
            state = pickle.load(f)
        if not isinstance(state, dict) or state.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"search snapshot {path} has another format; rebuild it")
        idx.__dict__.update(state["state"])
        return idx

    # ---------------------------------------------------------------- lookup
    def _postings(self, tid: int, subject: bool = False) -> np.ndarray:
        off, docs, delta = (self._s_off, self._s_docs, self._s_delta) if subject else (
            self._m_off, self._m_docs, self._m_delta)
        base = docs[off[tid] : off[tid + 1]] if tid < self._n_base_tokens else docs[:0]
        d = delta.get(tid)
        if d:
            return np.concatenate([base, np.frombuffer(d, np.int32)])
        return base

    def _df(self, tid: int) -> int:
        return self._dfs[tid]

    def _fuzzy(self, w: str, allow2: bool = True) -> list[tuple[int, int]]:
        """Vocabulary tokens within edit distance 1 (2 for long unknown words) of ``w``: [(token id, distance)]."""
        if not _fuzzy_token(w):
            return []
        maxd = 2 if allow2 and len(w) >= 7 else 1
        keys = _deletes1(w) | {w}
        if maxd == 2:
            keys |= {d2 for d1 in list(keys) for d2 in _deletes1(d1)}
        hs = _hkeys(list(keys))
        lo = np.searchsorted(self._del_keys, hs, "left")
        hi = np.searchsorted(self._del_keys, hs, "right")
        cand: set[int] = set()
        for a, b in zip(lo[hi > lo].tolist(), hi[hi > lo].tolist(), strict=True):
            cand.update(self._del_tok[a:b].tolist())
        if self._del_delta:
            for h in hs.tolist():
                cand.update(self._del_delta.get(h, ()))
        out = []
        for tid in cand:
            t = self._tokens[tid]
            if t == w:
                continue
            d = OSA.distance(w, t, score_cutoff=maxd)
            if d <= maxd:
                out.append((tid, d))
        out.sort(key=lambda x: (x[1], -self._df(x[0])))
        return out[:MAX_FUZZY_PER_WORD]

    def _prefix(self, w: str) -> list[int]:
        if len(w) < 3:
            return []
        i = bisect.bisect_left(self._sorted_tokens, w)
        out = []
        while i < len(self._sorted_tokens) and len(out) < 200:
            t = self._sorted_tokens[i]
            if not t.startswith(w):
                break
            if t != w:
                out.append(self._vocab[t])
            i += 1
        out.sort(key=lambda tid: -self._df(tid))
        return out[:MAX_PREFIX_PER_WORD]

    def _groups(self, words: list[str], alts: list[str | None]) -> list[_Group]:
        n = max(self._n_alive, 1)
        groups = []
        for i, (w, alt) in enumerate(zip(words, alts, strict=True)):
            g = _Group()
            exact_df = None
            for form, wt in ((w, 1.0), (alt, 1.0)):
                if not form:
                    continue
                tid = self._vocab.get(form)
                if tid is not None and self._df(tid):
                    g.variants[tid] = max(g.variants.get(tid, 0.0), wt)
                    exact_df = self._df(tid) if exact_df is None else min(exact_df, self._df(tid))
            for form in (w, alt):
                if not form:
                    continue
                # a word the catalog already uses often is taken as typed when other words carry
                # the query too, but a valid word may still be a typo for another one ("thanh"
                # typed for "thằng"): its neighbours count for less. Short words ("the", "of",
                # "va") never expand.
                if exact_df is not None and (exact_df > 50 and len(form) <= 4 or exact_df >= 20 and len(words) >= 2):
                    if len(form) >= MIN_NEIGHBOUR_LEN:
                        for tid, _d in self._fuzzy(form, False)[:MAX_NEIGHBOURS]:
                            if tid not in g.variants:
                                g.variants[tid] = NEIGHBOUR_WEIGHT
                                g.neighbours.add(tid)
                    continue
                for tid, d in self._fuzzy(form, exact_df is None):
                    g.variants.setdefault(tid, 0.85 if d == 1 else 0.7)
            if i == len(words) - 1:  # the last word may be unfinished
                for tid in self._prefix(w):
                    g.variants.setdefault(tid, 0.75)
            if not g.variants:
                continue
            dfs = [self._df(t) for t in g.variants]
            g.size = sum(dfs)
            df = exact_df if exact_df is not None else min(dfs)
            g.idf = math.log(1.0 + n / (df + 0.5))
            groups.append(g)
        return groups

    # ---------------------------------------------------------------- search
    def search(self, query: str, limit: int = 10, offset: int = 0,
               timings: dict[str, float] | None = None) -> SearchResult:
        """Best matches for a free-text or ISBN query; never raises on odd input, bounded work.

        ``timings``, if given, receives the seconds each stage took (for ``bench/search.py --profile``).
        """
        lap = _Laps(timings)
        limit = max(0, min(int(limit), 100))
        offset = max(0, min(int(offset), 400))
        # invisible characters are dropped before cutting, so they cannot use up the budget
        q = strip_invisible((query or "")[: MAX_QUERY_CHARS * 10])[:MAX_QUERY_CHARS]
        if looks_like_isbn(q):
            isbn = normalize_isbn(q)
            slots = self._isbn_lookup(int(isbn)) if isbn else []
            if slots:
                slots.sort(key=lambda s: (-self._avail[s], s))
                hits = [Hit(self._ids[s], 100.0, "isbn") for s in slots]
                lap("isbn lookup")
                return SearchResult(hits[offset : offset + limit], len(hits), None, "isbn")
            kind = "isbn"
        else:
            kind = "text"
        lap("isbn lookup")
        fq = fold(q)
        if not fq:
            return SearchResult([], 0, None, "empty")
        words = list(dict.fromkeys(fq.split()))[:MAX_QUERY_WORDS]
        alts: list[str | None] = []
        for w, dec in zip(words, decode_words(words), strict=True):
            fd = fold(dec) if dec else None
            alts.append(fd if fd and fd != w and " " not in fd else None)
        # groups use distinct words; the scored query string keeps them all ("harry potter ... harry potter 1")
        alt_of = {w: a for w, a in zip(words, alts, strict=True) if a}
        fq_alt = " ".join(alt_of.get(w, w) for w in fq.split()) if alt_of else None
        lap("fold + telex decode")
        groups = self._groups(words, alts)
        lap("word expansion (exact, fuzzy, prefix)")
        if not groups:
            return SearchResult([], 0, None, kind)
        cands, pre, total = self._candidates(groups)
        # titles equal to the query are candidates whatever the budgets dropped ("the rain" among
        # thousands of titles with both words), ranked first for the rerank's cut
        exact = self._title_lookup([fq] if fq_alt is None else [fq, fq_alt])
        if exact:
            ex = np.unique(np.array(exact, np.int32))
            pos = np.minimum(np.searchsorted(cands, ex), max(len(cands) - 1, 0))
            known = cands[pos] == ex if len(cands) else np.zeros(len(ex), bool)
            pre[pos[known]] = 1.001
            cands = np.concatenate([cands, ex[~known]])
            pre = np.concatenate([pre, np.full(int((~known).sum()), 1.001)])
        lap("candidates (postings, pre-score)")
        if len(cands) == 0:
            return SearchResult([], 0, None, kind)
        ranked = self._rerank(q, fq, fq_alt, cands, pre, max(RERANK_KEEP, offset + limit), offset + max(limit, 1),
                              lap)
        hits = ranked[offset : offset + limit]
        suggestion = None
        # "did you mean": a query word was not in the catalog's vocabulary, or the best match is weak
        corrected = any(self._vocab.get(w) is None and self._vocab.get(a or "") is None for w, a in zip(words, alts, strict=True))
        if ranked and (corrected or ranked[0].score < WEAK_SCORE):
            suggestion = self._title[self._slot_of(ranked[0].id)]
        lap("result shaping (matched field, suggestion)")
        return SearchResult(hits, max(total, len(hits) + offset), suggestion, kind)

    def _title_lookup(self, ftitles: list[str]) -> list[int]:
        """Live slots whose folded title is exactly one of these."""
        out = []
        for ft in ftitles:
            key = zlib.crc32(ft.encode())
            k = np.uint32(key)  # a Python int would make numpy cast the whole array first
            lo = int(np.searchsorted(self._tkey_keys, k, "left"))
            hi = int(np.searchsorted(self._tkey_keys, k, "right"))
            for s in self._tkey_slots[lo:hi].tolist() + self._tkey_delta.get(key, []):
                if self._alive[s] and self._ftitle[s] == ft:
                    out.append(s)
        return out

    def _isbn_lookup(self, key: int) -> list[int]:
        lo = int(np.searchsorted(self._isbn_keys, key, "left"))
        hi = int(np.searchsorted(self._isbn_keys, key, "right"))
        slots = self._isbn_slots[lo:hi].tolist() + self._isbn_delta.get(key, [])
        return [s for s in dict.fromkeys(slots) if self._alive[s] and self._isbn[s] == key]

    def _group_postings(self, g: _Group, cap: int) -> tuple[np.ndarray, np.ndarray]:
        """Docs holding any variant of the word, each with its best weight (subject hits count half)."""
        docs, wts = [], []
        for tid, w in sorted(g.variants.items(), key=lambda x: -x[1]):
            for subject, mul in _FIELDS_MAIN if tid in g.neighbours else _FIELDS:
                p = self._postings(tid, subject)
                if len(p):
                    p = p[:cap]
                    docs.append(p)
                    wts.append(np.full(len(p), w * mul, np.float32))
        if not docs:
            return np.zeros(0, np.int32), np.zeros(0, np.float32)
        if len(docs) == 1:
            return docs[0], wts[0]
        d = np.concatenate(docs)
        w = np.concatenate(wts)
        order = np.lexsort((-w, d))
        d, w = d[order], w[order]
        keep = np.empty(len(d), bool)
        keep[0] = True
        np.not_equal(d[1:], d[:-1], out=keep[1:])
        return d[keep], w[keep]

    def _candidates(self, groups: list[_Group]) -> tuple[np.ndarray, np.ndarray, int]:
        """Token-overlap pre-score: rarest words generate candidates, common words only add score."""
        order = sorted(range(len(groups)), key=lambda i: groups[i].size)
        used = 0
        gen_docs, gen_w = [], []
        rest = []
        for rank, gi in enumerate(order):
            g = groups[gi]
            if rank == 0 or used + g.size <= GEN_BUDGET:
                d, w = self._group_postings(g, GEN_BUDGET)
                used += len(d)
                gen_docs.append(d)
                gen_w.append(w * g.idf)
            else:
                rest.append(g)
        d = np.concatenate(gen_docs)
        w = np.concatenate(gen_w)
        cands, inv = np.unique(d, return_inverse=True)
        pre = np.bincount(inv, weights=w, minlength=len(cands))
        alive = np.frombuffer(self._alive, np.uint8)[cands].astype(bool)
        cands, pre = cands[alive], pre[alive]
        total_w = sum(g.idf for g in groups)
        total = int(np.count_nonzero(pre >= 0.5 * total_w))
        if len(cands) > PRESCORE_KEEP:
            top = np.argpartition(-pre, PRESCORE_KEEP)[:PRESCORE_KEEP]
            cands, pre = cands[top], pre[top]
            order_c = np.argsort(cands)
            cands, pre = cands[order_c], pre[order_c]
        for g in rest:
            gs = np.zeros(len(cands))
            for tid, wt in g.variants.items():
                for subject, mul in _FIELDS_MAIN if tid in g.neighbours else _FIELDS:
                    p = self._postings(tid, subject)
                    if len(p) == 0:
                        continue
                    pos = np.searchsorted(p, cands)
                    pos[pos >= len(p)] = len(p) - 1
                    np.maximum(gs, (p[pos] == cands) * (wt * mul), out=gs)
            pre += gs * g.idf
        return cands, pre / max(total_w, 1e-9), total

    def _matched(self, queries: list[str], slot: int, full: float, srt: float, tset: float, asrt: float) -> str:
        """Name the field that carried a hit (only computed for hits returned)."""
        t_part = max(full, srt, tset)
        fa, fs = self._fauth[slot], self._fsubj[slot]
        both = f"{self._ftitle[slot]} {fa}"
        a_part = max(asrt, max(fuzz.token_set_ratio(q, fa, processor=None) for q in queries))
        b_part = max(fuzz.token_set_ratio(q, both, processor=None) for q in queries)
        s_part = max(fuzz.token_set_ratio(q, fs, processor=None) for q in queries) if fs else 0.0
        if max(t_part, a_part, b_part) < 60 or s_part > max(t_part, a_part, b_part) + 10:
            return "subject"
        if a_part > t_part + 10:
            return "author"
        if t_part >= a_part or b_part <= t_part + 5:
            return "title"
        return "title+author"

    def _rerank(self, q: str, fq: str, fq_alt: str | None, cands: np.ndarray, cov: np.ndarray, keep: int,
                limit: int, lap=None) -> list[Hit]:
        lap = lap or _Laps(None)
        if len(cands) > keep:
            top = np.argpartition(-cov, keep)[:keep]
            cands, cov = cands[top], cov[top]
        slots = cands.tolist()
        titles = [self._ftitle[s] for s in slots]
        auths = [self._fauth[s] for s in slots]
        queries = [fq] if fq_alt is None else [fq, fq_alt]
        kw = {"processor": None, "workers": 1, "dtype": np.float32}
        full = process.cdist(queries, titles, scorer=fuzz.ratio, **kw).max(axis=0)
        srt = process.cdist(queries, titles, scorer=fuzz.token_sort_ratio, **kw).max(axis=0)
        tset = process.cdist(queries, titles, scorer=fuzz.token_set_ratio, **kw).max(axis=0)
        asrt = process.cdist(queries, auths, scorer=fuzz.token_sort_ratio, **kw).max(axis=0)
        lap("rerank: rapidfuzz")
        exact = np.array([t == fq or t == fq_alt for t in titles], np.float32)
        # IDF-weighted word coverage over title, authors and subjects (typo-aware, from the
        # pre-score) stands in for token_set_ratio on those fields, which costs 3x more.
        text = np.maximum.reduce([full, srt, 0.93 * tset, 0.93 * asrt, 90.0 * np.minimum(cov, 1.0)])
        # full-string similarity breaks ties between titles that all contain the words
        score = 0.8 * text + 20.0 * np.minimum(cov, 1.0) + 4.0 * exact + 0.05 * full
        # the user's own diacritics: "hòa" prefers "Hòa", plain "hoa" prefers "Hoa". The bonus is at
        # most 3 points, so only candidates that close to the last place shown can move.
        mq = fold_keep_marks(q)
        if mq:
            mq_words = set(mq.split())
            ascii_q = mq.isascii()
            kth = np.partition(score, len(score) - min(limit, len(score)))[len(score) - min(limit, len(score))]
            for i in np.nonzero(score >= kth - 3.01)[0].tolist():
                if ascii_q and titles[i] != fq and titles[i] != fq_alt:
                    continue  # an unmarked query can only equal an unmarked title with the same fold
                raw = self._title[slots[i]]
                mt = titles[i] if raw.isascii() else fold_keep_marks(raw)
                if mt == mq:
                    score[i] += 3.0
                elif not ascii_q:
                    score[i] += 2.0 * len(mq_words & set(mt.split())) / len(mq_words)
        lap("rerank: scores, diacritics bonus")
        score = np.round(score, 3)
        avail = np.frombuffer(self._avail, np.int32)[cands]
        # best score first; equal scores: titles with copies on the shelf, then more copies
        order = np.lexsort((cands, -avail, avail <= 0, -score))
        if not _HAS_DIGIT(fq):
            order = _series_in_order(order, titles, avail, limit)
        order = order[:limit]
        lap("availability + order")
        hits = []
        for i in order.tolist():
            hits.append(Hit(self._ids[slots[i]], float(score[i]), self._matched(queries, slots[i], full[i], srt[i], tset[i], asrt[i])))
        return hits


class _Laps:
    """Stage stopwatch for ``search(timings=...)``; does nothing when not asked."""

    __slots__ = ("timings", "t")

    def __init__(self, timings: dict[str, float] | None) -> None:
        self.timings = timings
        self.t = time.perf_counter() if timings is not None else 0.0

    def __call__(self, stage: str) -> None:
        if self.timings is not None:
            now = time.perf_counter()
            self.timings[stage] = self.timings.get(stage, 0.0) + now - self.t
            self.t = now


def _chunks(records: Iterable, n: int) -> Iterable[list]:
    it = iter(records)
    while chunk := list(islice(it, n)):
        yield chunk


def _series_in_order(order: np.ndarray, titles: list[str], avail: np.ndarray, limit: int) -> np.ndarray:
    """For a query that names no volume. Volumes of one series (titles equal but for the volume)
    among the first hits go in the order a reader wants: a copy on the shelf first, then the
    lowest volume (the title without a volume first), in the places the series earned; and a
    series takes at most SERIES_CAP of those first places, so other works stay in sight."""
    head = order[: max(limit, SERIES_WINDOW)].tolist()
    if not any(_HAS_DIGIT(titles[i]) for i in head):
        return order  # no volumes among them (most queries)
    key, vol = {}, {}
    for i in head:
        t = titles[i]
        v = _volume(t) if _HAS_DIGIT(t) else None
        key[i] = f"{t[: v[1]].rstrip()} {t[v[2] :].lstrip()}".strip() if v else t
        vol[i] = v[0] if v else 0
    places: dict[str, list[int]] = {}
    for p, i in enumerate(head):
        places.setdefault(key[i], []).append(p)
    series = {k for k, ps in places.items() if len(ps) > 1 and any(vol[head[p]] for p in ps)}
    if not series:
        return order
    for k in series:
        ps = places[k]
        members = sorted((head[p] for p in ps), key=lambda i: (avail[i] <= 0, vol[i]))  # stable
        for p, i in zip(ps, members, strict=True):
            head[p] = i
    kept, later, seen = [], [], dict.fromkeys(series, 0)
    for i in head:
        k = key[i]
        if k in seen:
            seen[k] += 1
            if seen[k] > SERIES_CAP:
                later.append(i)
                continue
        kept.append(i)
    return np.array(kept + later + order[len(head) :].tolist())


def _volume(t: str) -> tuple[int, int, int] | None:
    """(volume, start, end of its mention) in a folded title, or None: "tap 3", "vol 7", "t 2", or a
    number of at most three digits ending the title ("doraemon 12"), but not an edition ("lan 2")."""
    for m in _NUMBER(t):
        a, b = m.span()
        if a and t[a - 1] != " ":
            continue
        prev_at = t.rfind(" ", 0, a - 1) + 1 if a else a
        prev = t[prev_at : a - 1] if a else ""
        if prev in _VOLUME_WORDS:
            return max(1, int(m.group())), prev_at, b
        if b == len(t) and prev and prev != "lan":
            return max(1, int(m.group())), a, b
    return None


def _columns(chunk: list) -> tuple:
    """(ids, titles, authors, isbns, subjects, available) of ``IndexedTitle``s or 7-tuples."""
    if all(type(r) is tuple and len(r) == 7 for r in chunk):
        ids, titles, authors, isbns, subjects, _years, avail = zip(*chunk, strict=True)
        return ids, titles, authors, isbns, subjects, avail
    rs = [_as_record(r) for r in chunk]
    return ([r.id for r in rs], [r.title for r in rs], [r.authors for r in rs], [r.isbn13 for r in rs],
            [r.subjects for r in rs], [r.available for r in rs])


def _pairs(texts: list[str], vocab: _Vocab, start: int) -> np.ndarray:
    """Token id << 32 | slot for every word of every text (texts are folded: single spaces).
    New words get the next ids, so the vocabulary's order maps id -> token."""
    words = f" {_ROW_SEP} ".join(texts).split()
    ids = np.fromiter(map(vocab.__getitem__, words), np.int64, len(words))
    sep = ids < 0
    slots = np.cumsum(sep) + start
    keep = ~sep
    return (ids[keep] << 32) | slots[keep]


def _csr(chunks: list[np.ndarray], n_tok: int) -> tuple[np.ndarray, np.ndarray]:
    """Token-major postings: offsets (n_tok+1) and slots, each token's slots ascending, no repeats."""
    keys = np.concatenate(chunks) if chunks else np.zeros(0, np.int64)
    keys.sort()  # sort-based dedup: np.unique's hash path is several times slower here
    if len(keys):
        keep = np.empty(len(keys), bool)
        keep[0] = True
        np.not_equal(keys[1:], keys[:-1], out=keep[1:])
        keys = keys[keep]
    tok = (keys >> 32).astype(np.int32)
    docs = (keys & 0xFFFFFFFF).astype(np.int32)
    del keys
    off = np.zeros(n_tok + 1, np.int64)
    np.cumsum(np.bincount(tok, minlength=n_tok), out=off[1:])
    return off, docs

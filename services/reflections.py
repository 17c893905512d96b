"""Book reflections: drafts, prompts, submission, moderation, publication.

A student has at most one *live* reflection per book (draft, submitted, changes requested or
approved; a rejected one may be written again). They may edit it until a moderator decides:
editing a submitted reflection takes it back out of the queue until they submit again, so a
moderator never approves text that changed under them. Approved and rejected reflections are
final. Every change locks the row (``FOR UPDATE`` on PostgreSQL; SQLite writers are serialised),
so a moderator's decision and a student's edit cannot both win.

Length is counted in words, where a Vietnamese syllable counts as a word (the way Vietnamese
contests count "chữ"); emoji and punctuation do not count. Defaults: at least 50 and at most
1,000 words, unless the campaign the draft belongs to says otherwise.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services import audit, campaigns, outbox
from services.common import Clock, DomainError, NotFound, PermissionDenied, aware
from services.db import Database
from services.models import (
    AuditEntry,
    Campaign,
    Copy,
    Library,
    Loan,
    Patron,
    Reflection,
    ReflectionPrompt,
    ReflectionStatus,
    Role,
    Title,
)
from services.patrons import Actor, public_author, require_linked, require_staff

DEFAULT_MIN_WORDS = 50
DEFAULT_MAX_WORDS = 1000
MAX_BODY_CHARS = 20_000          # hard cap on stored text, whatever the word limits say
MAX_NOTE_CHARS = 1000            # a moderator's reason
MAX_PROMPT_CHARS = 300
RATE_LIMIT = 5                   # submissions per patron …
RATE_WINDOW = timedelta(hours=1)  # … per this window
RECENT_LOAN_DAYS = 60            # returned loans this recent are offered in /reflect

# The four prompts of the ambassador contest's spirit, stored as message keys so each reader
# sees them in their own language.
DEFAULT_PROMPTS = (
    "reflections.prompt_moved",
    "reflections.prompt_character",
    "reflections.prompt_share",
    "reflections.prompt_change",
)

EDITABLE = (ReflectionStatus.DRAFT, ReflectionStatus.CHANGES_REQUESTED, ReflectionStatus.SUBMITTED)
LIVE = (*EDITABLE, ReflectionStatus.APPROVED)
MODERATOR_ROLES = (Role.TEACHER, Role.LIBRARIAN, Role.ADMIN)

WORDLIST = Path(__file__).resolve().parent / "wordlists" / "flagged.txt"
_WORD = re.compile(r"[^\W_]+(?:['’\-][^\W_]+)*")

# Library.settings keys this module reads.
SETTING_PUBLISH_CHANNEL = "publish_channel"  # the outbound channel name (default "telegram")
SETTING_PUBLISH_LANGUAGE = "publish_language"  # default "vi"
SETTING_FLAG_WORDS = "reflection_flag_words"   # extra words flagged in this library
AUTHOR_MODES = ("first_name_class", "full_name_class", "class_only")


# -- text ------------------------------------------------------------------------------------

def count_words(text: str) -> int:
    """Words (Vietnamese syllables) in the text; emoji, punctuation and numbers-with-dots aside."""
    return len(_WORD.findall(unicodedata.normalize("NFC", text or "")))


@functools.cache
def default_flag_words() -> tuple[str, ...]:
    lines = WORDLIST.read_text(encoding="utf-8").splitlines()
    return tuple(w.strip().lower() for w in lines if w.strip() and not w.lstrip().startswith("#"))


@functools.lru_cache(maxsize=64)
def _flag_pattern(words: tuple[str, ...]) -> re.Pattern[str] | None:
    parts = [r"\s+".join(map(re.escape, w.split())) for w in words if w.split()]
    if not parts:
        return None
    return re.compile(r"(?<![^\W_])(" + "|".join(sorted(parts, key=len, reverse=True)) + r")(?![^\W_])",
                      re.IGNORECASE)


def find_flags(text: str, extra: tuple[str, ...] | list[str] = ()) -> list[str]:
    """The listed words found in the text (whole words, case-insensitive), each once, in order."""
    words = tuple(dict.fromkeys((*default_flag_words(), *(w.strip().lower() for w in extra if w.strip()))))
    pattern = _flag_pattern(words)
    if pattern is None:
        return []
    found = [" ".join(m.group(1).lower().split()) for m in pattern.finditer(unicodedata.normalize("NFC", text))]
    return list(dict.fromkeys(found))


# -- views -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Prompt:
    """``code`` is "d0".."d3" for a built-in default, or the row id as a string."""

    code: str
    message_key: str | None
    text: str | None


@dataclass
class ReflectionView:
    id: int
    library_id: int
    patron_id: int
    title_id: int
    title: str
    status: ReflectionStatus
    prompt: str | None
    body: str
    rating: int | None
    photo_ref: str | None
    word_count: int
    min_words: int
    max_words: int
    flags: list[str] = field(default_factory=list)
    author: str = ""
    class_name: str | None = None
    submitted_at: datetime | None = None
    moderation_note: str | None = None
    campaign_id: int | None = None
    withdrawn: bool = False          # this edit took a submitted reflection back out of the queue

    @property
    def prompt_is_key(self) -> bool:
        return self.prompt in DEFAULT_PROMPTS


@dataclass(frozen=True)
class PublicReflection:
    """An approved reflection as others may see it: first name and class unless configured."""

    id: int
    title_id: int
    title: str
    author: str | None        # None: anonymous ("a student of class …")
    class_name: str | None
    body: str
    rating: int | None
    prompt: str | None
    word_count: int
    approved_at: datetime | None
    photo_ref: str | None = None   # the platform's file id of the student's photo, if any


@dataclass(frozen=True)
class Publication:
    channel: str
    chat_id: str
    language: str
    reflection: PublicReflection


async def _limits(s: AsyncSession, campaign_id: int | None) -> tuple[int, int]:
    if campaign_id is not None:
        campaign = await s.get(Campaign, campaign_id)
        if campaign is not None:
            return (campaign.min_words if campaign.min_words is not None else DEFAULT_MIN_WORDS,
                    campaign.max_words if campaign.max_words is not None else DEFAULT_MAX_WORDS)
    return DEFAULT_MIN_WORDS, DEFAULT_MAX_WORDS


async def _view(s: AsyncSession, r: Reflection, *, withdrawn: bool = False) -> ReflectionView:
    title = await s.get(Title, r.title_id)
    patron = await s.get(Patron, r.patron_id)
    lo, hi = await _limits(s, r.campaign_id)
    return ReflectionView(
        id=r.id, library_id=r.library_id, patron_id=r.patron_id, title_id=r.title_id,
        title=title.title if title else "?", status=ReflectionStatus(r.status), prompt=r.prompt,
        body=r.body or "", rating=r.rating, photo_ref=r.photo_ref, word_count=r.word_count or 0,
        min_words=lo, max_words=hi, flags=list(r.flags or []),
        author=patron.full_name if patron else "", class_name=patron.class_name if patron else None,
        submitted_at=aware(r.submitted_at), moderation_note=r.moderation_note, campaign_id=r.campaign_id,
        withdrawn=withdrawn,
    )


async def _lock(s: AsyncSession, reflection_id: int) -> Reflection:
    r = (await s.execute(select(Reflection).where(Reflection.id == reflection_id).with_for_update())
         ).scalar_one_or_none()
    if r is None:
        raise NotFound("reflections.not_found")
    return r


def _own(actor: Actor, r: Reflection) -> None:
    if r.patron_id != actor.patron_id:
        raise NotFound("reflections.not_found")


def _editable(r: Reflection) -> None:
    if r.status == ReflectionStatus.APPROVED:
        raise DomainError("reflections.locked_approved")
    if r.status == ReflectionStatus.REJECTED:
        raise DomainError("reflections.locked_rejected")


def _withdraw_if_submitted(r: Reflection) -> bool:
    if r.status == ReflectionStatus.SUBMITTED:
        r.status = ReflectionStatus.DRAFT
        r.submitted_at = None
        return True
    return False


# -- the student's side ----------------------------------------------------------------------

async def start(db: Database, actor: Actor, title_id: int, clock: Clock | None = None) -> ReflectionView:
    """Open the student's reflection on this book: the live one if any (resume), else a new draft."""
    require_linked(actor)
    now = (clock or Clock()).now()
    for _attempt in range(2):
        try:
            async with db.transaction() as s:
                title = await s.get(Title, title_id)
                if title is None:
                    raise NotFound("reflections.book_not_found")
                existing = await _live(s, actor.patron_id, title_id)
                if existing is not None:
                    if existing.status == ReflectionStatus.APPROVED:
                        raise DomainError("reflections.already_approved", title=title.title)
                    return await _view(s, existing)
                campaign = await campaigns.campaign_for_reflection(s, actor.patron_id, title, now)
                r = Reflection(library_id=actor.library_id, patron_id=actor.patron_id, title_id=title_id,
                               status=ReflectionStatus.DRAFT, body="", word_count=0, flags=[],
                               campaign_id=campaign.id if campaign else None)
                s.add(r)
                await s.flush()
                audit.record(s, "reflection.start", "reflection", r.id, actor_patron_id=actor.patron_id,
                             library_id=actor.library_id, channel=actor.channel, title_id=title_id)
                return await _view(s, r)
        except IntegrityError:
            continue  # a double tap created it first: the next pass resumes it
    raise DomainError("reflections.try_again")


async def _live(s: AsyncSession, patron_id: int | None, title_id: int) -> Reflection | None:
    return (await s.execute(select(Reflection).where(
        Reflection.patron_id == patron_id, Reflection.title_id == title_id, Reflection.status.in_(LIVE),
    ))).scalar_one_or_none()


async def get(db: Database, actor: Actor, reflection_id: int) -> ReflectionView:
    """The author sees their own; a moderator of that library sees any of the library's."""
    async with db.session() as s:
        r = await s.get(Reflection, reflection_id)
        if r is None:
            raise NotFound("reflections.not_found")
        if r.patron_id != actor.patron_id:
            _require_moderator(actor, r.library_id)
        return await _view(s, r)


async def my_open(db: Database, actor: Actor) -> list[ReflectionView]:
    """The student's reflections that are not final yet (drafts, awaiting review, to revise)."""
    require_linked(actor)
    async with db.session() as s:
        rows = (await s.execute(select(Reflection).where(
            Reflection.patron_id == actor.patron_id, Reflection.status.in_(EDITABLE),
        ).order_by(Reflection.updated_at.desc(), Reflection.id.desc()).limit(20))).scalars().all()
        return [await _view(s, r) for r in rows]


async def _edit(db: Database, actor: Actor, reflection_id: int, change, action: str, **details) -> ReflectionView:
    require_linked(actor)
    async with db.transaction() as s:
        r = await _lock(s, reflection_id)
        _own(actor, r)
        _editable(r)
        withdrawn = _withdraw_if_submitted(r)
        await change(s, r)
        audit.record(s, action, "reflection", r.id, actor_patron_id=actor.patron_id,
                     library_id=r.library_id, channel=actor.channel, withdrawn=withdrawn or None, **details)
        await s.flush()
        return await _view(s, r, withdrawn=withdrawn)


def _written_text(text: str | None) -> str:
    """What a student wrote, NFC and trimmed; refused when it is empty or has no words at all."""
    text = unicodedata.normalize("NFC", (text or "").strip())
    if not text:
        raise DomainError("reflections.empty")
    if count_words(text) == 0:
        raise DomainError("reflections.no_words")
    return text


async def append_text(db: Database, actor: Actor, reflection_id: int, text: str) -> ReflectionView:
    """Add one message to the body (Telegram splits long writing into several messages)."""
    text = _written_text(text)

    async def change(s: AsyncSession, r: Reflection) -> None:
        body = f"{r.body}\n\n{text}" if r.body else text
        words = count_words(body)
        _, hi = await _limits(s, r.campaign_id)
        if words > hi or len(body) > MAX_BODY_CHARS:
            raise DomainError("reflections.too_long", count=words, max=hi)
        r.body, r.word_count = body, words

    return await _edit(db, actor, reflection_id, change, "reflection.write", added_words=count_words(text))


async def replace_text(db: Database, actor: Actor, reflection_id: int, text: str) -> ReflectionView:
    """Replace the whole body with a corrected version in one step (a student revising after a
    teacher's note): checked first, so a refused text leaves the old one as it was."""
    text = _written_text(text)

    async def change(s: AsyncSession, r: Reflection) -> None:
        words = count_words(text)
        _, hi = await _limits(s, r.campaign_id)
        if words > hi or len(text) > MAX_BODY_CHARS:
            raise DomainError("reflections.too_long", count=words, max=hi)
        r.body, r.word_count = text, words

    return await _edit(db, actor, reflection_id, change, "reflection.replace", words=count_words(text))


async def clear_text(db: Database, actor: Actor, reflection_id: int) -> ReflectionView:
    async def change(s: AsyncSession, r: Reflection) -> None:
        r.body, r.word_count = "", 0

    return await _edit(db, actor, reflection_id, change, "reflection.clear")


async def set_prompt(db: Database, actor: Actor, reflection_id: int, code: str | None) -> ReflectionView:
    """Choose one of the library's prompts by its code (see :func:`list_prompts`), or none."""
    async def change(s: AsyncSession, r: Reflection) -> None:
        if not code:
            r.prompt = None
            return
        prompt = next((p for p in await _prompts(s, r.library_id) if p.code == code), None)
        if prompt is None:
            raise DomainError("reflections.prompt_unknown")
        r.prompt = prompt.message_key or prompt.text

    return await _edit(db, actor, reflection_id, change, "reflection.prompt", prompt=code)


async def set_rating(db: Database, actor: Actor, reflection_id: int, rating: int) -> ReflectionView:
    if not isinstance(rating, int) or not 1 <= rating <= 5:
        raise DomainError("reflections.rating_range")

    async def change(s: AsyncSession, r: Reflection) -> None:
        r.rating = rating

    return await _edit(db, actor, reflection_id, change, "reflection.rate", rating=rating)


async def set_photo(db: Database, actor: Actor, reflection_id: int, photo_ref: str | None) -> ReflectionView:
    """A photo of a handwritten reflection or a drawing: the platform's file id, kept as a reference."""
    if photo_ref is not None and (not photo_ref.strip() or len(photo_ref) > 200):
        raise DomainError("reflections.photo_bad")

    async def change(s: AsyncSession, r: Reflection) -> None:
        r.photo_ref = photo_ref

    return await _edit(db, actor, reflection_id, change, "reflection.photo")


async def submit(db: Database, actor: Actor, reflection_id: int, clock: Clock | None = None) -> ReflectionView:
    """Send for moderation: checks length, rating, and the per-patron rate limit; flags words."""
    require_linked(actor)
    now = (clock or Clock()).now()
    async with db.transaction() as s:
        # Lock the patron first: concurrent submissions by one student queue up behind each other,
        # so the rate-limit count below cannot be raced.
        await s.execute(select(Patron.id).where(Patron.id == actor.patron_id).with_for_update())
        r = await _lock(s, reflection_id)
        _own(actor, r)
        _editable(r)
        if r.status == ReflectionStatus.SUBMITTED:
            raise DomainError("reflections.already_submitted")
        lo, hi = await _limits(s, r.campaign_id)
        words = count_words(r.body)
        if words == 0:
            raise DomainError("reflections.nothing_written")
        if words < lo:
            raise DomainError("reflections.too_short", count=words, min=lo)
        if words > hi:
            raise DomainError("reflections.too_long", count=words, max=hi)
        if r.rating is None:
            raise DomainError("reflections.rating_missing")
        recent = await s.scalar(select(func.count()).select_from(AuditEntry).where(
            AuditEntry.action == "reflection.submit", AuditEntry.actor_patron_id == actor.patron_id,
            AuditEntry.at > now - RATE_WINDOW))
        if (recent or 0) >= RATE_LIMIT:
            raise DomainError("reflections.rate_limited", limit=RATE_LIMIT)
        library = await s.get(Library, r.library_id)
        extra = tuple((library.settings or {}).get(SETTING_FLAG_WORDS, [])) if library else ()
        r.flags = find_flags(r.body, extra)
        r.word_count = words
        r.status = ReflectionStatus.SUBMITTED
        r.submitted_at = now
        entry = audit.record(s, "reflection.submit", "reflection", r.id, actor_patron_id=actor.patron_id,
                             library_id=r.library_id, channel=actor.channel, words=words,
                             flags=len(r.flags) or None)
        entry.at = now  # the rate limit counts these, on the same clock
        await s.flush()
        return await _view(s, r)


# -- moderation ------------------------------------------------------------------------------

def _require_moderator(actor: Actor, library_id: int) -> None:
    if actor.role not in MODERATOR_ROLES or actor.library_id != library_id:
        raise PermissionDenied()


async def queue(db: Database, actor: Actor, *, limit: int = 10) -> tuple[list[ReflectionView], int]:
    """Submitted reflections of the moderator's library, oldest first, and how many wait in all."""
    if actor.role not in MODERATOR_ROLES or actor.library_id is None:
        raise PermissionDenied()
    async with db.session() as s:
        where = (Reflection.library_id == actor.library_id, Reflection.status == ReflectionStatus.SUBMITTED)
        total = await s.scalar(select(func.count()).select_from(Reflection).where(*where))
        rows = (await s.execute(select(Reflection).where(*where)
                                .order_by(Reflection.submitted_at, Reflection.id).limit(limit))).scalars().all()
        return [await _view(s, r) for r in rows], int(total or 0)


DECISIONS = {
    "approve": (ReflectionStatus.APPROVED, "reflection_approved"),
    "reject": (ReflectionStatus.REJECTED, "reflection_rejected"),
    "changes": (ReflectionStatus.CHANGES_REQUESTED, "reflection_changes_requested"),
}


def check_note(decision: str, note: str | None) -> str | None:
    """The moderator's note as it will be stored, or the refusal: a reason is required to reject
    or ask for changes, and has a length limit. (The chat checks it before asking to confirm.)"""
    if decision not in DECISIONS:
        raise DomainError("reflections.decision_unknown")
    note = unicodedata.normalize("NFC", (note or "").strip()) or None
    if decision != "approve" and not note:
        raise DomainError("reflections.reason_required")
    if note and len(note) > MAX_NOTE_CHARS:
        raise DomainError("reflections.reason_too_long", limit=MAX_NOTE_CHARS)
    return note


async def moderate(db: Database, actor: Actor, reflection_id: int, decision: str, note: str | None = None,
                   clock: Clock | None = None) -> ReflectionView:
    """Approve, reject (with a reason) or ask for changes (with what to change).

    Only teachers, librarians and admins of the reflection's own library, never on their own
    writing, and only while it is submitted: a second moderator's late tap is refused politely.
    The student is told through the notification outbox.
    """
    now = (clock or Clock()).now()
    note = check_note(decision, note)
    status, kind = DECISIONS[decision]
    async with db.transaction() as s:
        r = await _lock(s, reflection_id)
        _require_moderator(actor, r.library_id)
        if r.patron_id == actor.patron_id:
            raise PermissionDenied("reflections.own_moderation")
        if r.status != ReflectionStatus.SUBMITTED:
            raise DomainError("reflections.not_in_queue")
        r.status = status
        r.moderated_by = actor.patron_id
        r.moderated_at = now
        r.moderation_note = note
        audit.record(s, f"reflection.{decision}", "reflection", r.id, actor_patron_id=actor.patron_id,
                     library_id=r.library_id, channel=actor.channel, note=note)
        title = await s.get(Title, r.title_id)
        await outbox.enqueue(
            s, patron_id=r.patron_id, kind=kind, key=f"reflection:{r.id}:{decision}:{now.isoformat()}",
            send_after=now,
            payload={"reflection_id": r.id, "title_id": r.title_id, "title": title.title if title else "",
                     "note": note},
        )
        await s.flush()
        if status == ReflectionStatus.APPROVED:
            await campaigns.after_approval(s, r.patron_id, now)
        return await _view(s, r)


# -- reading approved reflections, publication ---------------------------------------------

def _public(r: Reflection, title: Title, patron: Patron, library: Library) -> PublicReflection:
    return PublicReflection(
        id=r.id, title_id=r.title_id, title=title.title, author=public_author(patron, library),
        class_name=patron.class_name, body=r.body, rating=r.rating, prompt=r.prompt,
        word_count=r.word_count or 0, approved_at=aware(r.moderated_at), photo_ref=r.photo_ref,
    )


async def approved_for_title(db: Database, library_id: int, title_id: int, *, limit: int = 3,
                             offset: int = 0) -> tuple[list[PublicReflection], int]:
    """Approved reflections on a book in one library (newest first) and how many there are."""
    async with db.session() as s:
        where = (Reflection.library_id == library_id, Reflection.title_id == title_id,
                 Reflection.status == ReflectionStatus.APPROVED)
        total = await s.scalar(select(func.count()).select_from(Reflection).where(*where))
        rows = (await s.execute(
            select(Reflection, Title, Patron, Library)
            .join(Title, Title.id == Reflection.title_id).join(Patron, Patron.id == Reflection.patron_id)
            .join(Library, Library.id == Reflection.library_id)
            .where(*where).order_by(Reflection.moderated_at.desc(), Reflection.id.desc())
            .limit(limit).offset(offset))).all()
        return [_public(*row) for row in rows], int(total or 0)


async def publication(db: Database, reflection_id: int) -> Publication | None:
    """Where and what to publish for an approved reflection; None when the library has no channel
    or it was published already."""
    async with db.session() as s:
        row = (await s.execute(
            select(Reflection, Title, Patron, Library)
            .join(Title, Title.id == Reflection.title_id).join(Patron, Patron.id == Reflection.patron_id)
            .join(Library, Library.id == Reflection.library_id).where(Reflection.id == reflection_id))).first()
        if row is None:
            return None
        r, _title, _patron, library = row
        if r.status != ReflectionStatus.APPROVED or r.published_at is not None or not library.publish_chat_id:
            return None
        settings = library.settings or {}
        return Publication(channel=settings.get(SETTING_PUBLISH_CHANNEL, "telegram"),
                           chat_id=library.publish_chat_id,
                           language=settings.get(SETTING_PUBLISH_LANGUAGE, "vi"), reflection=_public(*row))


async def mark_published(db: Database, reflection_id: int, clock: Clock | None = None) -> None:
    now = (clock or Clock()).now()
    async with db.transaction() as s:
        r = await _lock(s, reflection_id)
        if r.published_at is None:
            r.published_at = now
            audit.record(s, "reflection.publish", "reflection", r.id, library_id=r.library_id)


# -- what a student can reflect on -----------------------------------------------------------

@dataclass(frozen=True)
class BookChoice:
    title_id: int
    title: str
    on_loan: bool


async def books_to_reflect_on(db: Database, actor: Actor, clock: Clock | None = None,
                              limit: int = 8) -> list[BookChoice]:
    """The student's current loans and recently returned books, most recent first."""
    require_linked(actor)
    since = (clock or Clock()).now() - timedelta(days=RECENT_LOAN_DAYS)
    async with db.session() as s:
        rows = (await s.execute(
            select(Title.id, Title.title, Loan.returned_at, Loan.checked_out_at)
            .join(Copy, Copy.title_id == Title.id).join(Loan, Loan.copy_id == Copy.id)
            .where(Loan.patron_id == actor.patron_id,
                   or_(Loan.returned_at.is_(None), Loan.returned_at >= since))
            .order_by(Loan.checked_out_at.desc()).limit(limit * 3))).all()
    seen: dict[int, BookChoice] = {}
    for title_id, title, returned_at, _ in rows:
        if title_id not in seen:
            seen[title_id] = BookChoice(title_id, title, returned_at is None)
    return list(seen.values())[:limit]


async def title_name(db: Database, title_id: int) -> str | None:
    async with db.session() as s:
        title = await s.get(Title, title_id)
        return title.title if title else None


# -- prompts and the word list (librarian-editable) -----------------------------------------

async def _prompts(s: AsyncSession, library_id: int) -> list[Prompt]:
    rows = (await s.execute(select(ReflectionPrompt).where(ReflectionPrompt.library_id == library_id)
                            .order_by(ReflectionPrompt.position, ReflectionPrompt.id))).scalars().all()
    if not rows:
        return [Prompt(f"d{i}", key, None) for i, key in enumerate(DEFAULT_PROMPTS)]
    return [Prompt(str(p.id), p.message_key, p.text) for p in rows if p.active]


async def list_prompts(db: Database, library_id: int) -> list[Prompt]:
    async with db.session() as s:
        return await _prompts(s, library_id)


async def _materialise(s: AsyncSession, library_id: int) -> list[ReflectionPrompt]:
    rows = (await s.execute(select(ReflectionPrompt).where(ReflectionPrompt.library_id == library_id)
                            .order_by(ReflectionPrompt.position, ReflectionPrompt.id))).scalars().all()
    if rows:
        return list(rows)
    rows = [ReflectionPrompt(library_id=library_id, message_key=key, position=i, active=True)
            for i, key in enumerate(DEFAULT_PROMPTS)]
    s.add_all(rows)
    await s.flush()
    return rows


async def add_prompt(db: Database, actor: Actor, text: str) -> Prompt:
    """A librarian adds a prompt of their own (kept as written, in whatever language they wrote)."""
    require_staff(actor)
    text = unicodedata.normalize("NFC", (text or "").strip())
    if not text:
        raise DomainError("reflections.prompt_empty")
    if len(text) > MAX_PROMPT_CHARS:
        raise DomainError("reflections.prompt_too_long", limit=MAX_PROMPT_CHARS)
    async with db.transaction() as s:
        rows = await _materialise(s, actor.library_id)
        row = ReflectionPrompt(library_id=actor.library_id, text=text, active=True,
                               position=max(p.position for p in rows) + 1)
        s.add(row)
        await s.flush()
        audit.record(s, "prompt.add", "reflection_prompt", row.id, actor_patron_id=actor.patron_id,
                     library_id=actor.library_id, channel=actor.channel)
        return Prompt(str(row.id), None, text)


async def remove_prompt(db: Database, actor: Actor, code: str) -> None:
    """Hide one prompt (built-in or custom) for this library."""
    require_staff(actor)
    async with db.transaction() as s:
        rows = await _materialise(s, actor.library_id)
        if code.startswith("d") and code[1:].isdigit() and int(code[1:]) < len(DEFAULT_PROMPTS):
            key = DEFAULT_PROMPTS[int(code[1:])]
            target = next((p for p in rows if p.message_key == key), None)
        else:
            target = next((p for p in rows if str(p.id) == code), None)
        if target is None or not target.active:
            raise DomainError("reflections.prompt_unknown")
        target.active = False
        audit.record(s, "prompt.remove", "reflection_prompt", target.id, actor_patron_id=actor.patron_id,
                     library_id=actor.library_id, channel=actor.channel)


async def set_flag_words(db: Database, actor: Actor, words: list[str]) -> list[str]:
    """Replace this library's own additions to the flag list (the shipped list always applies)."""
    require_staff(actor)
    clean = list(dict.fromkeys(" ".join(w.lower().split()) for w in words if w.strip()))[:500]
    async with db.transaction() as s:
        library = (await s.execute(select(Library).where(Library.id == actor.library_id).with_for_update())
                   ).scalar_one()
        library.settings = {**(library.settings or {}), SETTING_FLAG_WORDS: clean}
        audit.record(s, "flagwords.set", "library", library.id, actor_patron_id=actor.patron_id,
                     library_id=library.id, channel=actor.channel, count=len(clean))
    return clean

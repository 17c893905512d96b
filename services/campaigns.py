"""Reading campaigns: goals, progress, leaderboards, badges, certificates and the ambassador export.

Progress in a campaign counts, between its first and last day (in the school's time zone):
  * books read — distinct titles the student returned, and
  * reflections — the student's approved reflections submitted in that period,
both restricted to the campaign's books or subjects when it names any (a book counts when it is
on the list OR one of its subjects contains one of the campaign's subjects, accents ignored).
A student completes a campaign when both counts reach the goals; the first time that is seen
the completion is recorded and the student is told (notification ``campaign_completed``).

Leaderboard points: 1 per book read + 2 per approved reflection (writing is the harder part).

Badges, computed from the student's whole history in their library:
  * ``first_reflection`` — their first approved reflection;
  * ``five_books`` — five different books returned;
  * ``month_streak`` — four consecutive calendar weeks (Monday–Sunday, school time) each with at
    least one reading activity: borrowing a book, returning one, or submitting a reflection.
"""

from __future__ import annotations

import io
import unicodedata
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from services import audit, outbox, spreadsheets
from services.common import Clock, DomainError, NotFound, aware
from services.db import Database, insert_for
from services.models import (
    Campaign,
    CampaignMember,
    CampaignShortlist,
    Copy,
    Library,
    Loan,
    Patron,
    Reflection,
    ReflectionStatus,
    Role,
    Title,
)
from services.patrons import Actor, public_author, require_linked, require_staff
from services.textfold import fold_accents as fold

BOOK_POINTS, REFLECTION_POINTS = 1, 2
MAX_GOAL = 100
STREAK_WEEKS = 4
BADGES = ("first_reflection", "five_books", "month_streak")
EXPORT_FORMATS = ("csv", "xlsx", "pdf")
Translate = Callable[..., str]


def _matches(c: Campaign, title_id: int, subjects: str | None) -> bool:
    if not c.title_ids and not c.subjects:
        return True
    if title_id in (c.title_ids or []):
        return True
    folded = fold(subjects or "")
    return any(fold(sub) in folded for sub in (c.subjects or []) if sub.strip())


def _window(c: Campaign, tz: str) -> tuple[datetime, datetime]:
    zone = ZoneInfo(tz)
    start = datetime.combine(c.starts_on, time.min, zone).astimezone(UTC)
    end = datetime.combine(c.ends_on + timedelta(days=1), time.min, zone).astimezone(UTC)
    return start, end


@dataclass(frozen=True)
class CampaignView:
    id: int
    name: str
    theme: str | None
    starts_on: date
    ends_on: date
    goal_books: int
    goal_reflections: int
    title_ids: list[int]
    subjects: list[str]
    min_words: int | None
    max_words: int | None
    members: int = 0
    joined: bool = False


@dataclass(frozen=True)
class Progress:
    campaign: CampaignView
    books: int
    reflections: int
    completed_at: datetime | None

    @property
    def complete(self) -> bool:
        return self.completed_at is not None

    @property
    def points(self) -> int:
        return self.books * BOOK_POINTS + self.reflections * REFLECTION_POINTS


@dataclass(frozen=True)
class Standing:
    rank: int
    name: str | None          # None: the student hides their name
    class_name: str | None
    books: int
    reflections: int
    points: int
    is_me: bool = False


@dataclass(frozen=True)
class ClassStanding:
    rank: int
    class_name: str
    members: int
    points: int


@dataclass(frozen=True)
class Leaderboard:
    campaign: CampaignView
    scope: str                          # "school" or "class"
    students: list[Standing]
    classes: list[ClassStanding]
    me: Standing | None


@dataclass(frozen=True)
class Badge:
    code: str
    earned_on: date


@dataclass(frozen=True)
class ExportRow:
    reflection_id: int
    student: str
    class_name: str
    book: str
    word_count: int
    rating: int | None
    text: str
    submitted_on: date | None
    shortlisted: bool


def _view(c: Campaign, members: int = 0, joined: bool = False) -> CampaignView:
    return CampaignView(c.id, c.name, c.theme, c.starts_on, c.ends_on, c.goal_books, c.goal_reflections,
                        list(c.title_ids or []), list(c.subjects or []), c.min_words, c.max_words,
                        members, joined)


async def _tz(s: AsyncSession, library_id: int) -> str:
    library = await s.get(Library, library_id)
    return library.timezone if library else "Asia/Ho_Chi_Minh"


# -- creating and joining --------------------------------------------------------------------

# The rules for a campaign's answers, public so the chat can check each answer as it is given.
def check_dates(starts_on: date, ends_on: date) -> None:
    if ends_on < starts_on:
        raise DomainError("campaigns.dates_order")
    if (ends_on - starts_on).days > 366:
        raise DomainError("campaigns.dates_too_long")


def check_goals(goal_books: int, goal_reflections: int) -> None:
    for goal in (goal_books, goal_reflections):
        if not 0 <= goal <= MAX_GOAL:
            raise DomainError("campaigns.goal_range", max=MAX_GOAL)
    if goal_books == 0 and goal_reflections == 0:
        raise DomainError("campaigns.goal_required")


def check_words(min_words: int | None, max_words: int | None) -> None:
    if min_words is not None and max_words is not None and min_words > max_words:
        raise DomainError("campaigns.words_order")
    if (min_words is not None and not 1 <= min_words <= 5000) or (max_words is not None and not 1 <= max_words <= 5000):
        raise DomainError("campaigns.words_range")


async def create(db: Database, actor: Actor, *, name: str, starts_on: date, ends_on: date,
                 theme: str | None = None, title_ids: list[int] | None = None,
                 subjects: list[str] | None = None, goal_books: int = 0, goal_reflections: int = 0,
                 min_words: int | None = None, max_words: int | None = None,
                 clock: Clock | None = None) -> CampaignView:
    """A librarian (or admin) of the library creates a campaign for it."""
    require_staff(actor)
    name = unicodedata.normalize("NFC", (name or "").strip())
    if not name:
        raise DomainError("campaigns.name_required")
    if len(name) > 200:
        raise DomainError("campaigns.name_too_long", limit=200)
    theme = unicodedata.normalize("NFC", theme.strip())[:1000] if theme and theme.strip() else None
    check_dates(starts_on, ends_on)
    check_goals(goal_books, goal_reflections)
    check_words(min_words, max_words)
    subjects = list(dict.fromkeys(s.strip()[:100] for s in (subjects or []) if s.strip()))[:30]
    title_ids = list(dict.fromkeys(title_ids or []))[:200]
    now = (clock or Clock()).now()
    async with db.transaction() as s:
        if title_ids:
            found = set((await s.execute(select(Title.id).where(Title.id.in_(title_ids)))).scalars())
            missing = [t for t in title_ids if t not in found]
            if missing:
                raise DomainError("campaigns.unknown_books", ids=", ".join(map(str, missing[:5])))
        c = Campaign(library_id=actor.library_id, name=name, theme=theme, starts_on=starts_on, ends_on=ends_on,
                     title_ids=title_ids, subjects=subjects, goal_books=goal_books,
                     goal_reflections=goal_reflections, min_words=min_words, max_words=max_words,
                     created_by=actor.patron_id, created_at=now)
        s.add(c)
        await s.flush()
        audit.record(s, "campaign.create", "campaign", c.id, actor_patron_id=actor.patron_id,
                     library_id=actor.library_id, channel=actor.channel, name=name)
        return _view(c)


async def list_campaigns(db: Database, actor: Actor, clock: Clock | None = None) -> list[CampaignView]:
    """The library's campaigns that have not ended, soonest-ending first, with the actor's membership."""
    require_linked(actor)
    async with db.session() as s:
        today = (clock or Clock()).today(await _tz(s, actor.library_id))
        rows = (await s.execute(select(Campaign).where(Campaign.library_id == actor.library_id,
                                                       Campaign.ends_on >= today)
                                .order_by(Campaign.ends_on, Campaign.id).limit(20))).scalars().all()
        return [await _with_members(s, c, actor.patron_id) for c in rows]


async def _with_members(s: AsyncSession, c: Campaign, patron_id: int | None) -> CampaignView:
    members = await s.scalar(select(func.count()).select_from(CampaignMember)
                             .where(CampaignMember.campaign_id == c.id))
    joined = patron_id is not None and bool(await s.scalar(select(func.count()).select_from(CampaignMember).where(
        CampaignMember.campaign_id == c.id, CampaignMember.patron_id == patron_id)))
    return _view(c, int(members or 0), joined)


async def _campaign(s: AsyncSession, actor: Actor, campaign_id: int) -> Campaign:
    c = await s.get(Campaign, campaign_id)
    if c is None or c.library_id != actor.library_id:
        raise NotFound("campaigns.not_found")
    return c


async def get(db: Database, actor: Actor, campaign_id: int) -> CampaignView:
    require_linked(actor)
    async with db.session() as s:
        return await _with_members(s, await _campaign(s, actor, campaign_id), actor.patron_id)


async def join(db: Database, actor: Actor, campaign_id: int, clock: Clock | None = None) -> tuple[CampaignView, bool]:
    """A student joins a campaign of their own library (again is harmless). Returns (campaign, new)."""
    require_linked(actor)
    if actor.role != Role.STUDENT:
        raise DomainError("campaigns.students_only")
    now = (clock or Clock()).now()
    async with db.transaction() as s:
        c = await _campaign(s, actor, campaign_id)
        if c.ends_on < now.astimezone(ZoneInfo(await _tz(s, c.library_id))).date():
            raise DomainError("campaigns.ended", name=c.name)
        insert = insert_for(s)
        result = await s.execute(insert(CampaignMember).values(
            campaign_id=c.id, patron_id=actor.patron_id, joined_at=now,
        ).on_conflict_do_nothing(index_elements=["campaign_id", "patron_id"]))
        new = bool(result.rowcount)
        if new:
            audit.record(s, "campaign.join", "campaign", c.id, actor_patron_id=actor.patron_id,
                         library_id=c.library_id, channel=actor.channel)
        await s.flush()
        return await _with_members(s, c, actor.patron_id), new


async def find(db: Database, ref: str) -> CampaignView:
    """A campaign by id or by its exact name (for the command line)."""
    async with db.session() as s:
        if ref.strip().isdigit():
            c = await s.get(Campaign, int(ref))
            rows = [c] if c else []
        else:
            # compared in Python: SQLite's lower() leaves Vietnamese letters alone
            wanted = unicodedata.normalize("NFC", ref.strip()).casefold()
            rows = [c for c in (await s.execute(select(Campaign))).scalars()
                    if unicodedata.normalize("NFC", c.name).casefold() == wanted]
        if not rows:
            raise NotFound("campaigns.not_found")
        if len(rows) > 1:
            raise DomainError("campaigns.ambiguous", ids=", ".join(str(c.id) for c in rows))
        return _view(rows[0])


# -- progress --------------------------------------------------------------------------------

async def _counts(s: AsyncSession, c: Campaign, patron_ids: list[int]) -> dict[int, tuple[int, int]]:
    """(books read, approved reflections) per member, within the campaign's dates and books."""
    if not patron_ids:
        return {}
    start, end = _window(c, await _tz(s, c.library_id))
    books: dict[int, set[int]] = defaultdict(set)
    loans = await s.execute(
        select(Loan.patron_id, Title.id, Title.subjects)
        .join(Copy, Copy.id == Loan.copy_id).join(Title, Title.id == Copy.title_id)
        .where(Loan.library_id == c.library_id, Loan.patron_id.in_(patron_ids),
               Loan.returned_at >= start, Loan.returned_at < end))
    for pid, tid, subjects in loans:
        if _matches(c, tid, subjects):
            books[pid].add(tid)
    reflections: dict[int, set[int]] = defaultdict(set)
    rows = await s.execute(
        select(Reflection.patron_id, Title.id, Title.subjects)
        .join(Title, Title.id == Reflection.title_id)
        .where(Reflection.library_id == c.library_id, Reflection.patron_id.in_(patron_ids),
               Reflection.status == ReflectionStatus.APPROVED,
               Reflection.submitted_at >= start, Reflection.submitted_at < end))
    for pid, tid, subjects in rows:
        if _matches(c, tid, subjects):
            reflections[pid].add(tid)
    return {pid: (len(books[pid]), len(reflections[pid])) for pid in patron_ids}


def _reached(c: Campaign, books: int, reflections: int) -> bool:
    return books >= c.goal_books and reflections >= c.goal_reflections


async def _check_member(s: AsyncSession, c: Campaign, m: CampaignMember, counts: tuple[int, int],
                        now: datetime) -> None:
    """Record a completion the first time the goals are reached, and tell the student once."""
    if m.completed_at is None and _reached(c, *counts):
        m.completed_at = now
        audit.record(s, "campaign.complete", "campaign", c.id, library_id=c.library_id,
                     actor_patron_id=m.patron_id, books=counts[0], reflections=counts[1])
        await outbox.enqueue(s, patron_id=m.patron_id, kind="campaign_completed",
                                    key=f"campaign:{c.id}:complete:{m.patron_id}", send_after=now,
                                    payload={"campaign_id": c.id, "name": c.name})


async def _refresh(s: AsyncSession, patron_id: int, now: datetime) -> None:
    rows = (await s.execute(select(Campaign, CampaignMember)
                            .join(CampaignMember, CampaignMember.campaign_id == Campaign.id)
                            .where(CampaignMember.patron_id == patron_id,
                                   CampaignMember.completed_at.is_(None)))).all()
    for c, m in rows:
        counts = (await _counts(s, c, [patron_id]))[patron_id]
        await _check_member(s, c, m, counts, now)
    for badge in await _badges(s, patron_id):
        await outbox.enqueue(s, patron_id=patron_id, kind="badge_earned",
                                    key=f"badge:{patron_id}:{badge.code}", send_after=now,
                                    payload={"badge": badge.code})


async def after_approval(s: AsyncSession, patron_id: int, now: datetime) -> None:
    """Called by reflections.moderate inside its transaction."""
    await _refresh(s, patron_id, now)


async def refresh(db: Database, patron_id: int, clock: Clock | None = None) -> None:
    """Re-check completions and badges after a reading event elsewhere (e.g. circulation's return)."""
    now = (clock or Clock()).now()
    async with db.transaction() as s:
        await _refresh(s, patron_id, now)


async def my_progress(db: Database, actor: Actor, clock: Clock | None = None) -> list[Progress]:
    """The student's progress in every campaign they joined that has not ended more than 30 days ago."""
    require_linked(actor)
    now = (clock or Clock()).now()
    async with db.transaction() as s:
        await _refresh(s, actor.patron_id, now)
        today = now.astimezone(ZoneInfo(await _tz(s, actor.library_id))).date()
        rows = (await s.execute(select(Campaign, CampaignMember)
                                .join(CampaignMember, CampaignMember.campaign_id == Campaign.id)
                                .where(CampaignMember.patron_id == actor.patron_id,
                                       Campaign.ends_on >= today - timedelta(days=30))
                                .order_by(Campaign.ends_on, Campaign.id))).all()
        result = []
        for c, m in rows:
            books, refl = (await _counts(s, c, [actor.patron_id]))[actor.patron_id]
            result.append(Progress(await _with_members(s, c, actor.patron_id), books, refl, aware(m.completed_at)))
        return result


async def campaign_for_reflection(s: AsyncSession, patron_id: int, title: Title, now: datetime) -> Campaign | None:
    """The running campaign a new reflection on this book belongs to (its length rules apply)."""
    rows = (await s.execute(select(Campaign).join(CampaignMember, CampaignMember.campaign_id == Campaign.id)
                            .where(CampaignMember.patron_id == patron_id)
                            .order_by(Campaign.ends_on, Campaign.id))).scalars().all()
    for c in rows:
        today = now.astimezone(ZoneInfo(await _tz(s, c.library_id))).date()
        if c.starts_on <= today <= c.ends_on and _matches(c, title.id, title.subjects):
            return c
    return None


# -- leaderboards ------------------------------------------------------------------------------

async def leaderboard(db: Database, actor: Actor, campaign_id: int, scope: str = "school",
                      top: int = 10) -> Leaderboard:
    """Students ranked by points (school-wide or in the actor's class), and classes by points."""
    require_linked(actor)
    async with db.session() as s:
        c = await _campaign(s, actor, campaign_id)
        library = await s.get(Library, c.library_id)
        members = (await s.execute(select(Patron).join(CampaignMember, CampaignMember.patron_id == Patron.id)
                                   .where(CampaignMember.campaign_id == c.id))).scalars().all()
        counts = await _counts(s, c, [p.id for p in members])
        view = await _with_members(s, c, actor.patron_id)
    scored = sorted(members, key=lambda p: (-(counts[p.id][0] * BOOK_POINTS + counts[p.id][1] * REFLECTION_POINTS),
                                            -counts[p.id][1], p.full_name, p.id))
    pool = [p for p in scored if scope != "class" or (p.class_name and p.class_name == actor.class_name)]
    standings = []
    for i, p in enumerate(pool, 1):
        books, refl = counts[p.id]
        standings.append(Standing(i, public_author(p, library) if library else None, p.class_name, books, refl,
                                  books * BOOK_POINTS + refl * REFLECTION_POINTS, p.id == actor.patron_id))
    classes: dict[str, list[int]] = defaultdict(list)
    for p in members:
        if p.class_name:
            classes[p.class_name].append(counts[p.id][0] * BOOK_POINTS + counts[p.id][1] * REFLECTION_POINTS)
    class_rows = sorted(classes.items(), key=lambda kv: (-sum(kv[1]), kv[0]))
    me = next((st for st in standings if st.is_me), None)
    return Leaderboard(view, scope, standings[:top],
                       [ClassStanding(i, name, len(pts), sum(pts)) for i, (name, pts) in enumerate(class_rows, 1)],
                       me)


async def set_hide_name(db: Database, actor: Actor, hide: bool) -> None:
    """A student's choice to appear anonymously on leaderboards and publications."""
    require_linked(actor)
    async with db.transaction() as s:
        p = (await s.execute(select(Patron).where(Patron.id == actor.patron_id).with_for_update())).scalar_one()
        p.preferences = {**(p.preferences or {}), "hide_name": bool(hide)}
        audit.record(s, "patron.hide_name", "patron", p.id, actor_patron_id=p.id, library_id=p.library_id,
                     channel=actor.channel, hide=bool(hide))


async def hides_name(db: Database, actor: Actor) -> bool:
    async with db.session() as s:
        p = await s.get(Patron, actor.patron_id) if actor.patron_id else None
        return bool(p and (p.preferences or {}).get("hide_name"))


# -- badges ------------------------------------------------------------------------------------

def _streak_start(days: list[date], weeks: int = STREAK_WEEKS) -> date | None:
    """The Monday of the week in which a run of ``weeks`` consecutive active weeks first completes."""
    mondays = sorted({d - timedelta(days=d.weekday()) for d in days})
    run = 0
    previous: date | None = None
    for monday in mondays:
        run = run + 1 if previous is not None and monday - previous == timedelta(days=7) else 1
        previous = monday
        if run >= weeks:
            return monday
    return None


async def _badges(s: AsyncSession, patron_id: int) -> list[Badge]:
    patron = await s.get(Patron, patron_id)
    if patron is None:
        return []
    zone = ZoneInfo(await _tz(s, patron.library_id))

    def day(value: datetime | None) -> date | None:
        return aware(value).astimezone(zone).date() if value is not None else None

    earned: list[Badge] = []
    first = await s.scalar(select(func.min(Reflection.moderated_at)).where(
        Reflection.patron_id == patron_id, Reflection.status == ReflectionStatus.APPROVED))
    if first is not None:
        earned.append(Badge("first_reflection", day(first)))
    loans = (await s.execute(select(Copy.title_id, Loan.checked_out_at, Loan.returned_at)
                             .join(Copy, Copy.id == Loan.copy_id).where(Loan.patron_id == patron_id)
                             .order_by(Loan.returned_at))).all()
    returned: dict[int, date] = {}
    for title_id, _, returned_at in loans:
        if returned_at is not None and title_id not in returned:
            returned[title_id] = day(returned_at)
    if len(returned) >= 5:
        earned.append(Badge("five_books", sorted(returned.values())[4]))
    submitted = (await s.execute(select(Reflection.submitted_at).where(
        Reflection.patron_id == patron_id, Reflection.submitted_at.is_not(None)))).scalars().all()
    activity = [day(v) for _, out, back in loans for v in (out, back) if v is not None]
    activity += [day(v) for v in submitted]
    streak = _streak_start(activity)
    if streak is not None:
        earned.append(Badge("month_streak", streak))
    return earned


async def badges(db: Database, actor: Actor) -> list[Badge]:
    require_linked(actor)
    async with db.session() as s:
        return await _badges(s, actor.patron_id)


# -- certificate -------------------------------------------------------------------------------

def _pdf():
    from fpdf import FPDF

    from services.labels import add_fonts

    pdf = FPDF(orientation="L", format="A4")
    pdf.set_auto_page_break(True, margin=15)
    add_fonts(pdf)
    return pdf


async def certificate_pdf(db: Database, actor: Actor, campaign_id: int, t: Translate,
                          clock: Clock | None = None) -> bytes:
    """The student's certificate for a campaign they completed (refused before that)."""
    require_linked(actor)
    now = (clock or Clock()).now()
    async with db.transaction() as s:
        await _refresh(s, actor.patron_id, now)
        c = await _campaign(s, actor, campaign_id)
        m = (await s.execute(select(CampaignMember).where(CampaignMember.campaign_id == c.id,
                                                          CampaignMember.patron_id == actor.patron_id))
             ).scalar_one_or_none()
        if m is None:
            raise DomainError("campaigns.not_joined", name=c.name)
        if m.completed_at is None:
            raise DomainError("campaigns.not_complete", name=c.name)
        patron = await s.get(Patron, actor.patron_id)
        library = await s.get(Library, c.library_id)
        books, refl = (await _counts(s, c, [actor.patron_id]))[actor.patron_id]
        completed = aware(m.completed_at).astimezone(ZoneInfo(library.timezone)).date()
    return render_certificate(t, school=library.name, name=patron.full_name, class_name=patron.class_name,
                              campaign=c.name, theme=c.theme, books=books, reflections=refl, day=completed,
                              settings=library.settings or {})


def render_certificate(t: Translate, *, school: str, name: str, class_name: str | None, campaign: str,
                       theme: str | None, books: int, reflections: int, day: date,
                       settings: dict | None = None) -> bytes:
    """A certificate laid out as Vietnamese school certificates are: the issuing body and school
    top left, the national motto top right, the title and the student in the middle, and the place
    and date line ("Lào Cai, ngày 2 tháng 12 năm 2026") above the signer's title, room to sign and
    stamp, and the signer's name. ``settings["certificate"]`` may give ``place``, ``authority``,
    ``signer_title`` and ``signer_name`` (defaults: Lào Cai, the provincial education department,
    the principal, a line to write the name on)."""
    cfg = (settings or {}).get("certificate") or {}
    place = cfg.get("place") or "Lào Cai"
    authority = cfg.get("authority") or t("campaigns.cert_authority")
    signer_title = cfg.get("signer_title") or t("campaigns.cert_signer")
    signer_name = cfg.get("signer_name") or ""
    when = t.date(day, "long") if hasattr(t, "date") else day.strftime("%d/%m/%Y")
    from services.labels import fit_text

    green = (30, 90, 60)
    pdf = _pdf()
    pdf.set_auto_page_break(False)
    pdf.add_page()
    pdf.set_draw_color(*green)
    pdf.set_line_width(1.5)
    pdf.rect(10, 10, 277, 190)
    pdf.set_line_width(0.5)
    pdf.rect(14, 14, 269, 182)
    left, width = 26.0, 245.0
    col = width / 2 - 4

    def centred(x: float, y: float, w: float, text: str, size: float, style: str = "", h: float = 6) -> None:
        pdf.set_font("DejaVu", style, size)
        pdf.set_xy(x, y)
        pdf.cell(w, h, fit_text(pdf, text, w), align="C")

    # header: issuing body and school | national motto
    centred(left, 22, col, authority.upper(), 11)
    centred(left, 28, col, school.upper(), 11.5, "B")
    centred(left + col + 8, 22, col, t("campaigns.cert_nation"), 11, "B")
    centred(left + col + 8, 28, col, t("campaigns.cert_motto"), 11.5, "B")
    pdf.set_line_width(0.3)
    pdf.set_draw_color(0, 0, 0)
    for x0 in (left + col / 2 - 18, left + col + 8 + col / 2 - 25):
        pdf.line(x0, 35.5, x0 + (36 if x0 < left + col else 50), 35.5)
    # title, the student, what they did
    pdf.set_text_color(*green)
    centred(left, 48, width, t("campaigns.cert_title"), 30, "B", 16)
    pdf.set_text_color(0, 0, 0)
    centred(left, 70, width, t("campaigns.cert_awarded_to"), 14)
    centred(left, 80, width, name, 26, "B", 14)
    y = 96.0
    if class_name:
        centred(left, y, width, t("campaigns.cert_class", class_name=class_name), 14)
        y += 9
    pdf.set_font("DejaVu", "", 14)
    pdf.set_xy(left + 15, y + 2)
    pdf.multi_cell(width - 30, 8, t("campaigns.cert_body", campaign=campaign, books=books, reflections=reflections),
                   align="C")
    if theme:
        pdf.set_font("DejaVu", "", 12)
        pdf.set_x(left + 15)
        pdf.multi_cell(width - 30, 7, t("campaigns.cert_theme", theme=theme), align="C")
    # place and date, signer, room to sign and stamp, name
    sign_x, sign_w = left + width - 105, 105.0
    pdf.set_font("DejaVu", "", 12)
    pdf.set_xy(sign_x, 146)
    pdf.cell(sign_w, 7, fit_text(pdf, t("campaigns.cert_place_date", place=place, date=when), sign_w), align="C")
    centred(sign_x, 154, sign_w, signer_title.upper(), 12, "B", 7)
    pdf.set_font("DejaVu", "", 9)
    pdf.set_text_color(110, 110, 110)
    pdf.set_xy(sign_x, 161)
    pdf.cell(sign_w, 5, t("campaigns.cert_sign_hint"), align="C")
    pdf.set_text_color(0, 0, 0)
    if signer_name:
        centred(sign_x, 184, sign_w, signer_name, 12, "B", 7)
    else:
        pdf.set_draw_color(150, 150, 150)
        pdf.line(sign_x + 20, 189, sign_x + sign_w - 20, 189)
    return bytes(pdf.output())


# -- ambassador shortlist and export ----------------------------------------------------------

async def shortlist(db: Database, actor: Actor, campaign_id: int, reflection_id: int, on: bool = True,
                    clock: Clock | None = None) -> bool:
    """A librarian adds (or removes) an approved reflection of the campaign to its shortlist."""
    require_staff(actor)
    now = (clock or Clock()).now()
    async with db.transaction() as s:
        c = await _campaign(s, actor, campaign_id)
        r = await s.get(Reflection, reflection_id)
        if r is None or r.library_id != c.library_id:
            raise NotFound("reflections.not_found")
        if r.status != ReflectionStatus.APPROVED:
            raise DomainError("campaigns.shortlist_not_approved")
        if on:
            result = await s.execute(insert_for(s)(CampaignShortlist).values(
                campaign_id=c.id, reflection_id=r.id, added_by=actor.patron_id, added_at=now,
            ).on_conflict_do_nothing(index_elements=["campaign_id", "reflection_id"]))
            changed = bool(result.rowcount)
        else:
            row = (await s.execute(select(CampaignShortlist).where(
                CampaignShortlist.campaign_id == c.id, CampaignShortlist.reflection_id == r.id))).scalar_one_or_none()
            changed = row is not None
            if row is not None:
                await s.delete(row)
        if changed:
            audit.record(s, "campaign.shortlist" if on else "campaign.unshortlist", "reflection", r.id,
                         actor_patron_id=actor.patron_id, library_id=c.library_id, channel=actor.channel,
                         campaign_id=c.id)
        return changed


async def campaign_reflections(db: Database, campaign_id: int, *, shortlisted_only: bool = False,
                               actor: Actor | None = None) -> list[ExportRow]:
    """Approved reflections that count for the campaign (its dates and books), shortlisted first.

    With an ``actor`` (chat), only staff of the campaign's library may read them; without one it
    is the operator's command line on the server.
    """
    async with db.session() as s:
        c = await s.get(Campaign, campaign_id)
        if c is None:
            raise NotFound("campaigns.not_found")
        if actor is not None:
            require_staff(actor, c.library_id)
        start, end = _window(c, await _tz(s, c.library_id))
        picked = set((await s.execute(select(CampaignShortlist.reflection_id)
                                      .where(CampaignShortlist.campaign_id == c.id))).scalars())
        rows = (await s.execute(
            select(Reflection, Patron, Title).join(Patron, Patron.id == Reflection.patron_id)
            .join(Title, Title.id == Reflection.title_id)
            .where(Reflection.library_id == c.library_id, Reflection.status == ReflectionStatus.APPROVED,
                   Reflection.submitted_at >= start, Reflection.submitted_at < end)
            .order_by(Patron.class_name, Patron.full_name, Reflection.id))).all()
        zone = ZoneInfo(await _tz(s, c.library_id))
    out = []
    for r, p, title in rows:
        if not _matches(c, title.id, title.subjects):
            continue
        if shortlisted_only and r.id not in picked:
            continue
        submitted = aware(r.submitted_at)
        out.append(ExportRow(r.id, p.full_name, p.class_name or "", title.title, r.word_count or 0, r.rating,
                             r.body, submitted.astimezone(zone).date() if submitted else None, r.id in picked))
    out.sort(key=lambda row: not row.shortlisted)
    return out


def _headers(t: Translate) -> list[str]:
    return [t("campaigns.col_student"), t("campaigns.col_class"), t("campaigns.col_book"),
            t("campaigns.col_words"), t("campaigns.col_rating"), t("campaigns.col_text"),
            t("campaigns.col_submitted"), t("campaigns.col_shortlisted")]


def _cells(row: ExportRow, t: Translate) -> list[object]:
    return [row.student, row.class_name, row.book, row.word_count, row.rating or "", row.text,
            row.submitted_on.isoformat() if row.submitted_on else "",
            t("campaigns.yes") if row.shortlisted else ""]


async def export_reflections(db: Database, campaign_id: int, fmt: str, t: Translate, *,
                             shortlisted_only: bool = False, actor: Actor | None = None) -> bytes:
    """The campaign's reflections as CSV (UTF-8 with BOM, opens in Excel), XLSX or PDF."""
    if fmt not in EXPORT_FORMATS:
        raise DomainError("campaigns.export_format", formats=", ".join(EXPORT_FORMATS))
    rows = await campaign_reflections(db, campaign_id, shortlisted_only=shortlisted_only, actor=actor)
    async with db.session() as s:
        c = await s.get(Campaign, campaign_id)
        library = await s.get(Library, c.library_id)
    if fmt == "csv":
        return spreadsheets.csv_bytes([_headers(t), *(_cells(r, t) for r in rows)])
    if fmt == "xlsx":
        from openpyxl import Workbook
        from openpyxl.styles import Alignment, Font

        wb = Workbook()
        ws = wb.active
        ws.title = t("campaigns.sheet_title")[:31]
        spreadsheets.xlsx_append(ws, _headers(t))
        for cell in ws[1]:
            cell.font = Font(bold=True)
        for r in rows:
            spreadsheets.xlsx_append(ws, _cells(r, t))
        for letter, width in zip("ABCDEFGH", (24, 8, 32, 8, 8, 80, 12, 10), strict=True):
            ws.column_dimensions[letter].width = width
        for row in ws.iter_rows(min_row=2, min_col=6, max_col=6):
            for cell in row:
                cell.alignment = Alignment(wrap_text=True, vertical="top")
        buffer = io.BytesIO()
        wb.save(buffer)
        return buffer.getvalue()
    pdf = _pdf()
    pdf.set_margins(15, 15, 15)
    pdf.add_page(orientation="P")
    pdf.set_font("DejaVu", "B", 16)
    pdf.multi_cell(0, 9, t("campaigns.export_title", campaign=c.name), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("DejaVu", "", 11)
    pdf.multi_cell(0, 6, library.name, new_x="LMARGIN", new_y="NEXT")
    if not rows:
        pdf.ln(4)
        pdf.multi_cell(0, 6, t("campaigns.export_empty"), new_x="LMARGIN", new_y="NEXT")
    for r in rows:
        pdf.ln(5)
        pdf.set_font("DejaVu", "B", 12)
        star = "★ " if r.shortlisted else ""
        pdf.multi_cell(0, 7, f"{star}{r.book}", new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("DejaVu", "", 10)
        pdf.multi_cell(0, 6, t("campaigns.export_meta", student=r.student, class_name=r.class_name or "—",
                               words=r.word_count, rating=r.rating or "—"), new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("DejaVu", "", 11)
        pdf.multi_cell(0, 6, r.text, new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


"""Statistics for the desk: is reading growing? Over a chosen period, for one library or (admins)
all of them, school by school.

Public API:
- ``scope_for(db, actor, wanted) -> Scope``: which libraries the actor may see. Librarians and
  admins see their own library; an admin may also pick another library or ``"all"``.
- ``statistics(db, actor, start, end, *, library="own") -> Stats``: every table the page shows.
- ``TABLES``: table id → (column message keys, function Stats → rows), for CSV/XLSX downloads.

Days are counted in the library's time zone (the deployment's for "all"): a loan at 06:30 in Lào
Cai is that day's loan even though it is the previous evening in UTC. Grouping happens in SQL, so
the work per page depends on the period's activity, not on the size of the whole history.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import Date, cast, func, or_, select

from services.common import DomainError, PermissionDenied
from services.db import Database, insert_for
from services.models import (
    Campaign,
    CampaignMember,
    Copy,
    DeskDay,
    Library,
    Loan,
    Patron,
    Reflection,
    ReflectionStatus,
    Role,
    Title,
    Visit,
)
from services.patrons import Actor, require_staff

MAX_DAYS = 367
TOP = 10


@dataclass(frozen=True)
class Scope:
    library_ids: list[int] | None      # None: every library
    name: str | None                   # the library's name; None for all
    timezone: str
    code: str                          # "all" or the library code


@dataclass
class Stats:
    scope: Scope
    start: date
    end: date
    loans_per_day: list[tuple[date, int]] = field(default_factory=list)
    loans_per_week: list[tuple[date, int]] = field(default_factory=list)   # week's Monday
    visits_per_day: list[tuple[date, int]] = field(default_factory=list)
    overdue_per_day: list[tuple[date, int]] = field(default_factory=list)  # open and overdue at day's end
    active_by_class: list[tuple[str, int]] = field(default_factory=list)
    active_by_grade: list[tuple[str, int]] = field(default_factory=list)
    top_titles: list[tuple[str, int]] = field(default_factory=list)
    top_subjects: list[tuple[str, int]] = field(default_factory=list)
    reflections: list[tuple[str, int]] = field(default_factory=list)       # status → submitted in period
    campaigns: list[tuple[str, int, int]] = field(default_factory=list)    # name, members, completed
    schools: list[tuple[str, int, int, int]] = field(default_factory=list)  # name, loans, visits, overdue now
    detail: bool = True                 # per class, grade, title and subject (one library's page)
    today: date | None = None

    @property
    def total_loans(self) -> int:
        return sum(n for _, n in self.loans_per_day)

    @property
    def total_visits(self) -> int:
        return sum(n for _, n in self.visits_per_day)

    @property
    def active_readers(self) -> int:
        return sum(n for _, n in self.active_by_class)


async def scope_for(db: Database, actor: Actor, wanted: str | None = None) -> Scope:
    require_staff(actor)
    wanted = (wanted or "").strip()
    async with db.session() as s:
        own = await s.get(Library, actor.library_id)
        if not wanted or wanted == own.code:
            return Scope([own.id], own.name, own.timezone, own.code)
        if actor.role != Role.ADMIN:
            raise PermissionDenied()
        if wanted == "all":
            return Scope(None, None, own.timezone, "all")
        other = (await s.execute(select(Library).where(Library.code == wanted[:32]))).scalar_one_or_none()
    if other is None:
        raise DomainError("rules.library_unknown", library=wanted[:32])
    return Scope([other.id], other.name, other.timezone, other.code)


async def libraries(db: Database, actor: Actor) -> list[tuple[str, str]]:
    """(code, name) of the libraries an admin may choose; a librarian only has their own."""
    require_staff(actor)
    async with db.session() as s:
        query = select(Library.code, Library.name).order_by(Library.name)
        if actor.role != Role.ADMIN:
            query = query.where(Library.id == actor.library_id)
        return [(c, n) for c, n in (await s.execute(query)).all()]


def _local_day(db: Database, column, tz: str):
    """The column's calendar day in ``tz``, computed by the database."""
    if db.is_postgres:
        return cast(func.timezone(tz, column), Date)
    offset = int(datetime.now(ZoneInfo(tz)).utcoffset().total_seconds() // 60)  # SQLite stores UTC
    return func.date(column, f"{offset:+d} minutes")


def _as_date(value) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])


def _bounds(start: date, end: date, tz: str) -> tuple[datetime, datetime]:
    zone = ZoneInfo(tz)
    return (datetime.combine(start, datetime.min.time(), tzinfo=zone),
            datetime.combine(end + timedelta(days=1), datetime.min.time(), tzinfo=zone))


def _days(start: date, end: date) -> list[date]:
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


async def statistics(db: Database, actor: Actor, start: date, end: date, *, library: str | None = None,
                     today: date | None = None) -> Stats:
    """``today``: the school's today (the caller's clock); finished days before it are cached."""
    scope = await scope_for(db, actor, library)
    if end < start:
        start, end = end, start
    if (end - start).days >= MAX_DAYS:
        raise DomainError("desk.period_too_long", days=MAX_DAYS)
    stats = Stats(scope, start, end, today=today)
    lo, hi = _bounds(start, end, scope.timezone)
    ids = scope.library_ids

    def mine(column):
        return column.in_(ids) if ids is not None else True

    if ids is None:
        return await _province(db, stats, lo, hi)
    async with db.session() as s:
        day = _local_day(db, Loan.checked_out_at, scope.timezone).label("day")
        per_day = {_as_date(d): n for d, n in (await s.execute(
            select(day, func.count()).where(mine(Loan.library_id), Loan.checked_out_at >= lo, Loan.checked_out_at < hi)
            .group_by(day))).all()}
        stats.loans_per_day = [(d, per_day.get(d, 0)) for d in _days(start, end)]
        weeks: dict[date, int] = defaultdict(int)
        for d, n in stats.loans_per_day:
            weeks[d - timedelta(days=d.weekday())] += n
        stats.loans_per_week = sorted(weeks.items())

        visits = {_as_date(d): n for d, n in (await s.execute(
            select(Visit.day, func.count()).where(mine(Visit.library_id), Visit.day >= start, Visit.day <= end)
            .group_by(Visit.day))).all()}
        stats.visits_per_day = [(d, visits.get(d, 0)) for d in _days(start, end)]

        in_period = (mine(Loan.library_id), Loan.checked_out_at >= lo, Loan.checked_out_at < hi)
        readers = func.count(func.distinct(Loan.patron_id))
        by_class = (await s.execute(
            select(Patron.class_name, readers).join(Patron, Patron.id == Loan.patron_id).where(*in_period)
            .group_by(Patron.class_name))).all()
        stats.active_by_class = sorted(((c or "—", n) for c, n in by_class), key=lambda r: (-r[1], r[0]))
        by_grade = (await s.execute(
            select(Patron.grade, readers).join(Patron, Patron.id == Loan.patron_id).where(*in_period)
            .group_by(Patron.grade))).all()
        stats.active_by_grade = [(str(g) if g is not None else "—", n)
                                 for g, n in sorted(by_grade, key=lambda r: (r[0] is None, r[0] or 0))]

        per_title = (await s.execute(
            select(Title.title, Title.subjects, func.count()).join(Copy, Copy.title_id == Title.id)
            .join(Loan, Loan.copy_id == Copy.id).where(*in_period)
            .group_by(Title.id, Title.title, Title.subjects).order_by(func.count().desc(), Title.title))).all()
        stats.top_titles = [(title, n) for title, _, n in per_title[:TOP]]
        subjects: Counter[str] = Counter()
        for _, subj, n in per_title:
            for part in {p.strip() for p in (subj or "").replace("|", ";").split(";") if p.strip()}:
                subjects[part] += n
        stats.top_subjects = sorted(subjects.items(), key=lambda r: (-r[1], r[0]))[:TOP]

        # Overdue at the end of each day: open then, and due before that day.
        spans = (await s.execute(
            select(Loan.due_date, Loan.returned_at, Loan.checked_out_at)
            .where(mine(Loan.library_id), Loan.due_date < end, Loan.checked_out_at < hi,
                   or_(Loan.returned_at.is_(None), Loan.returned_at >= lo)))).all()
        zone, utc = ZoneInfo(scope.timezone), ZoneInfo("UTC")
        change: Counter[date] = Counter()   # +1 where a loan starts counting, -1 where it stops
        for due, returned, _ in spans:
            first = max(due + timedelta(days=1), start)
            stop = end + timedelta(days=1)
            if returned is not None:   # returned that day: not overdue at its end any more
                stop = min(stop, (returned if returned.tzinfo else returned.replace(tzinfo=utc)).astimezone(zone).date())
            if first < stop:
                change[first] += 1
                change[stop] -= 1
        running, series = 0, []
        for d in _days(start, end):
            running += change.get(d, 0)
            series.append((d, running))
        stats.overdue_per_day = series

        refl = (await s.execute(
            select(Reflection.status, func.count()).where(
                mine(Reflection.library_id), Reflection.submitted_at >= lo, Reflection.submitted_at < hi)
            .group_by(Reflection.status))).all()
        order = [ReflectionStatus.SUBMITTED, ReflectionStatus.APPROVED, ReflectionStatus.CHANGES_REQUESTED,
                 ReflectionStatus.REJECTED, ReflectionStatus.DRAFT]
        counts = {ReflectionStatus(st): n for st, n in refl}
        stats.reflections = [(st.value, counts.get(st, 0)) for st in order if st in counts or st != ReflectionStatus.DRAFT]

        camp = (await s.execute(
            select(Campaign.name, func.count(CampaignMember.id), func.count(CampaignMember.completed_at))
            .outerjoin(CampaignMember, CampaignMember.campaign_id == Campaign.id)
            .where(mine(Campaign.library_id), Campaign.starts_on <= end, Campaign.ends_on >= start)
            .group_by(Campaign.id, Campaign.name).order_by(Campaign.name).limit(50))).all()
        stats.campaigns = [(name, members, done) for name, members, done in camp]

    return stats


async def _days_counted(db: Database, start: date, end: date, tz: str, today: date
                        ) -> dict[tuple[int, date], tuple[int, int]]:
    """(loans, visits) per (library, day) over the period: finished days from ``desk_days``
    (counted once, the first time a page asks), today counted live."""
    counts: dict[tuple[int, date], tuple[int, int]] = {}
    finished = min(end, today - timedelta(days=1))
    if start <= finished:
        async with db.session() as s:
            known = set((await s.execute(select(DeskDay.day).where(
                DeskDay.day >= start, DeskDay.day <= finished).distinct())).scalars())
        missing = [d for d in _days(start, finished) if d not in known]
        if missing:
            lo, hi = _bounds(missing[0], missing[-1], tz)
            day = _local_day(db, Loan.checked_out_at, tz).label("day")
            async with db.session() as s:
                loans = {(lib, _as_date(d)): n for lib, d, n in (await s.execute(
                    select(Loan.library_id, day, func.count()).where(Loan.checked_out_at >= lo, Loan.checked_out_at < hi)
                    .group_by(Loan.library_id, day))).all()}
                visits = {(lib, _as_date(d)): n for lib, d, n in (await s.execute(
                    select(Visit.library_id, Visit.day, func.count()).where(
                        Visit.day >= missing[0], Visit.day <= missing[-1]).group_by(Visit.library_id, Visit.day))).all()}
                library_ids = list((await s.execute(select(Library.id))).scalars())
            rows = [{"library_id": lib, "day": d, "loans": loans.get((lib, d), 0), "visits": visits.get((lib, d), 0)}
                    for lib in library_ids for d in missing]
            async with db.transaction() as s:
                stmt = insert_for(s)(DeskDay).on_conflict_do_nothing(index_elements=["library_id", "day"])
                for i in range(0, len(rows), 5000):
                    await s.execute(stmt, rows[i:i + 5000])
        async with db.session() as s:
            counts.update({(lib, d): (n, v) for lib, d, n, v in (await s.execute(
                select(DeskDay.library_id, DeskDay.day, DeskDay.loans, DeskDay.visits).where(
                    DeskDay.day >= start, DeskDay.day <= finished,
                    (DeskDay.loans > 0) | (DeskDay.visits > 0)))).all()})
    if start <= today <= end:
        lo, hi = _bounds(today, today, tz)
        async with db.session() as s:
            loans = dict((await s.execute(select(Loan.library_id, func.count()).where(
                Loan.checked_out_at >= lo, Loan.checked_out_at < hi).group_by(Loan.library_id))).all())
            visits = dict((await s.execute(select(Visit.library_id, func.count()).where(
                Visit.day == today).group_by(Visit.library_id))).all())
        for lib in set(loans) | set(visits):
            counts[(lib, today)] = (loans.get(lib, 0), visits.get(lib, 0))
    return counts


async def _province(db: Database, stats: Stats, lo: datetime, hi: datetime) -> Stats:
    """Every library at once, school by school: loans and visits per day, overdue now, reflections
    and campaigns. The per-class and per-title detail is a school's page (pick the library)."""
    start, end, tz = stats.start, stats.end, stats.scope.timezone
    today = datetime.now(ZoneInfo(tz)).date() if stats.today is None else stats.today
    per = await _days_counted(db, start, end, tz, today)
    by_day: Counter[date] = Counter()
    by_library: Counter[int] = Counter()
    visits_day: Counter[date] = Counter()
    visits_library: Counter[int] = Counter()
    for (lib, d), (n, v) in per.items():
        by_day[d] += n
        by_library[lib] += n
        visits_day[d] += v
        visits_library[lib] += v
    stats.loans_per_day = [(d, by_day.get(d, 0)) for d in _days(start, end)]
    weeks: dict[date, int] = defaultdict(int)
    for d, n in stats.loans_per_day:
        weeks[d - timedelta(days=d.weekday())] += n
    stats.loans_per_week = sorted(weeks.items())
    async with db.session() as s:
        overdue = dict((await s.execute(select(Loan.library_id, func.count()).where(
            Loan.returned_at.is_(None), Loan.due_date < min(end, today)).group_by(Loan.library_id))).all())
        names = dict((await s.execute(select(Library.id, Library.name))).all())
        refl = (await s.execute(select(Reflection.status, func.count()).where(
            Reflection.submitted_at >= lo, Reflection.submitted_at < hi).group_by(Reflection.status))).all()
        camp = (await s.execute(
            select(Campaign.name, func.count(CampaignMember.id), func.count(CampaignMember.completed_at))
            .outerjoin(CampaignMember, CampaignMember.campaign_id == Campaign.id)
            .where(Campaign.starts_on <= end, Campaign.ends_on >= start)
            .group_by(Campaign.id, Campaign.name).order_by(Campaign.name).limit(50))).all()
    stats.visits_per_day = [(d, visits_day.get(d, 0)) for d in _days(start, end)]
    stats.schools = sorted(((name, by_library.get(i, 0), visits_library.get(i, 0), overdue.get(i, 0))
                            for i, name in names.items()), key=lambda r: (-r[1], r[0]))
    counts = {ReflectionStatus(st): n for st, n in refl}
    stats.reflections = [(st.value, counts.get(st, 0)) for st in _REFLECTION_ORDER
                         if st in counts or st != ReflectionStatus.DRAFT]
    stats.campaigns = [(name, members, done) for name, members, done in camp]
    stats.detail = False
    return stats


_REFLECTION_ORDER = (ReflectionStatus.SUBMITTED, ReflectionStatus.APPROVED, ReflectionStatus.CHANGES_REQUESTED,
                     ReflectionStatus.REJECTED, ReflectionStatus.DRAFT)


# Downloads: table id → (column message keys, rows of the Stats).
TABLES = {
    "loans_per_day": (("desk.col_day", "desk.col_loans"), lambda st: st.loans_per_day),
    "loans_per_week": (("desk.col_week", "desk.col_loans"), lambda st: st.loans_per_week),
    "visits_per_day": (("desk.col_day", "desk.col_visits"), lambda st: st.visits_per_day),
    "overdue_per_day": (("desk.col_day", "desk.col_overdue"), lambda st: st.overdue_per_day),
    "active_by_class": (("desk.col_class", "desk.col_readers"), lambda st: st.active_by_class),
    "active_by_grade": (("desk.col_grade", "desk.col_readers"), lambda st: st.active_by_grade),
    "top_titles": (("desk.col_title", "desk.col_loans"), lambda st: st.top_titles),
    "top_subjects": (("desk.col_subject", "desk.col_loans"), lambda st: st.top_subjects),
    "reflections": (("desk.col_status", "desk.col_reflections"), lambda st: st.reflections),
    "campaigns": (("desk.col_campaign", "desk.col_members", "desk.col_completed"), lambda st: st.campaigns),
    "schools": (("desk.col_school", "desk.col_loans", "desk.col_visits", "desk.col_overdue"),
                lambda st: st.schools),
}

"""Reflections at the desk: the moderation queue (flagged words highlighted, the photo shown) and
the library's campaigns with their class progress and leaderboard."""

from __future__ import annotations

import unicodedata
from datetime import date

from aiohttp import web
from markupsafe import Markup, escape

from bot.desk import PREFIX, USER, desk_of, render, say, see_other, signed_in, translator
from services import campaigns, photos, reflections, tables
from services.common import DomainError, PermissionDenied
from services.models import Role

DECISIONS = ("approve", "changes", "reject")


def routes(app: web.Application) -> None:
    app.router.add_get("/reflections", queue)
    app.router.add_post("/reflections/{id:\\d+}", decide)
    app.router.add_get("/campaigns/{id:\\d+}", campaign)
    app.router.add_post("/campaigns", create_campaign)
    app.router.add_post("/campaigns/{id:\\d+}/shortlist", toggle_shortlist)
    app.router.add_get("/campaigns/{id:\\d+}/reflections.{fmt:csv|xlsx|pdf}", export)
    app.router.add_get("/photos/{ref:[0-9a-f]{64}}", photo)


def highlight(text: str, flags: list[str]) -> Markup:
    """The text, HTML-escaped, with each flagged word wrapped in <mark class="flagged">."""
    text = unicodedata.normalize("NFC", text or "")
    words = tuple(dict.fromkeys(w.strip().lower() for w in flags if w.strip()))
    pattern = reflections._flag_pattern(words) if words else None
    if pattern is None:
        return escape(text)
    out, last = [], 0
    for match in pattern.finditer(text):
        out.append(escape(text[last:match.start()]))
        out.append(Markup('<mark class="flagged">{}</mark>').format(match.group(0)))
        last = match.end()
    out.append(escape(text[last:]))
    return Markup("").join(out)


@signed_in()
async def queue(request: web.Request, *, error: str | None = None, status: int = 200) -> web.StreamResponse:
    desk = desk_of(request)
    user = request[USER]
    items, total = await reflections.queue(desk.app.db, user.actor, limit=20)
    views = [(r, highlight(r.body, r.flags),
              f"{PREFIX}/photos/{r.photo_ref}" if photos.is_ref(r.photo_ref) else None) for r in items]
    notice = None
    done = request.query.get("done")
    if done in DECISIONS:
        notice = translator(request)(f"desk.decided_{done}")
    running = await campaigns.list_campaigns(desk.app.db, user.actor, clock=desk.app.deps.clock)
    return render(request, "reflections.html", status=status, items=views, total=total, notice=notice,
                  error=error, campaigns=running)


@signed_in()
async def decide(request: web.Request) -> web.StreamResponse:
    desk = desk_of(request)
    data = await request.post()
    decision = str(data.get("decision", ""))
    note = str(data.get("note", ""))[:2000] or None
    try:
        await reflections.moderate(desk.app.db, request[USER].actor, int(request.match_info["id"]), decision,
                                   note, clock=desk.app.deps.clock)
    except DomainError as refusal:
        if refusal.key in ("reflections.reason_required", "reflections.reason_too_long",
                           "reflections.not_in_queue", "reflections.decision_unknown"):
            t = translator(request)
            return await queue(request, error=t(refusal.key, **refusal.params), status=400)
        raise
    return see_other(f"{PREFIX}/reflections?done={decision}")


@signed_in()
async def campaign(request: web.Request, *, notice: str | None = None, error: str | None = None,
                   status: int = 200) -> web.StreamResponse:
    desk = desk_of(request)
    actor = request[USER].actor
    campaign_id = int(request.match_info["id"])
    board = await campaigns.leaderboard(desk.app.db, actor, campaign_id, top=20)
    entries = await campaigns.campaign_reflections(desk.app.db, campaign_id, actor=actor)
    return render(request, "campaign.html", status=status, board=board, entries=entries, notice=notice,
                  error=error, can_shortlist=actor.role in (Role.LIBRARIAN, Role.ADMIN))


def _day(value) -> date | None:
    try:
        return date.fromisoformat(str(value or "")[:10])
    except ValueError:
        return None


def _number(value) -> int | None:
    text = str(value or "").strip()
    return int(text) if text.isdigit() else None


@signed_in()
async def create_campaign(request: web.Request) -> web.StreamResponse:
    desk = desk_of(request)
    data = await request.post()
    t = translator(request)
    starts, ends = _day(data.get("starts_on")), _day(data.get("ends_on"))
    if starts is None or ends is None:
        return await queue(request, error=t("desk.campaign_dates"), status=400)
    subjects = [w.strip() for w in str(data.get("subjects", ""))[:1000].split(",") if w.strip()]
    try:
        made = await campaigns.create(
            desk.app.db, request[USER].actor, name=str(data.get("name", "")).strip()[:200], starts_on=starts,
            ends_on=ends, theme=str(data.get("theme", "")).strip()[:500] or None, subjects=subjects,
            goal_books=_number(data.get("goal_books")) or 0,
            goal_reflections=_number(data.get("goal_reflections")) or 0,
            min_words=_number(data.get("min_words")), max_words=_number(data.get("max_words")),
            clock=desk.app.deps.clock)
    except DomainError as refusal:
        if isinstance(refusal, PermissionDenied):
            raise
        return await queue(request, error=say(t, refusal.key, refusal.params), status=400)
    return see_other(f"{PREFIX}/campaigns/{made.id}")


@signed_in()
async def toggle_shortlist(request: web.Request) -> web.StreamResponse:
    desk = desk_of(request)
    data = await request.post()
    campaign_id = int(request.match_info["id"])
    reflection_id = _number(data.get("reflection_id")) or 0
    await campaigns.shortlist(desk.app.db, request[USER].actor, campaign_id, reflection_id,
                              on=data.get("on") == "1", clock=desk.app.deps.clock)
    return see_other(f"{PREFIX}/campaigns/{campaign_id}")


@signed_in()
async def export(request: web.Request) -> web.StreamResponse:
    """The campaign's approved reflections: PDF as the CLI prints it; CSV and XLSX formula-safe."""
    desk = desk_of(request)
    actor = request[USER].actor
    campaign_id, fmt = int(request.match_info["id"]), request.match_info["fmt"]
    t = translator(request)
    shortlisted = request.query.get("shortlisted") == "1"
    await campaigns.get(desk.app.db, actor, campaign_id)   # this library's campaign, or 404
    name = f"campaign-{campaign_id}{'-shortlist' if shortlisted else ''}.{fmt}"
    if fmt == "pdf":
        body = await campaigns.export_reflections(desk.app.db, campaign_id, "pdf", t, shortlisted_only=shortlisted,
                                                  actor=actor)
        return web.Response(body=body, content_type="application/pdf",
                            headers={"Content-Disposition": f'attachment; filename="{name}"'})
    rows = await campaigns.campaign_reflections(desk.app.db, campaign_id, shortlisted_only=shortlisted, actor=actor)
    headers = campaigns._headers(t)
    cells = [campaigns._cells(r, t) for r in rows]
    if fmt == "csv":
        body, ctype = tables.to_csv(headers, cells), "text/csv"
    else:
        body = tables.to_xlsx(headers, cells, sheet=t("campaigns.sheet_title"))
        ctype = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    return web.Response(body=body, content_type=ctype, headers={"Content-Disposition": f'attachment; filename="{name}"'})




@signed_in()
async def photo(request: web.Request) -> web.StreamResponse:
    """A reflection's photo, for those who may see it (its library's moderators)."""
    desk = desk_of(request)
    ref = request.match_info["ref"]
    if not await photos.may_view(desk.app.db, request[USER].actor, ref):
        raise web.HTTPNotFound()
    found = await desk.app.deps.photos.load(ref)
    if found is None:
        raise web.HTTPNotFound()
    return web.Response(body=found.data, content_type=found.mime_type)

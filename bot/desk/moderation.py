"""Reflections at the desk: the moderation queue (flagged words highlighted, the photo shown) and
the library's campaigns with their class progress and leaderboard."""

from __future__ import annotations

import unicodedata

from aiohttp import web
from markupsafe import Markup, escape

from bot.desk import PREFIX, USER, desk_of, render, see_other, signed_in, translator
from services import campaigns, photos, reflections
from services.common import DomainError

DECISIONS = ("approve", "changes", "reject")


def routes(app: web.Application) -> None:
    app.router.add_get("/reflections", queue)
    app.router.add_post("/reflections/{id:\\d+}", decide)
    app.router.add_get("/campaigns/{id:\\d+}", campaign)
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
async def campaign(request: web.Request) -> web.StreamResponse:
    desk = desk_of(request)
    board = await campaigns.leaderboard(desk.app.db, request[USER].actor, int(request.match_info["id"]),
                                        top=20)
    return render(request, "campaign.html", board=board)




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

"""Settings at the desk: circulation rules per role, quiet hours and reminder days, the school
calendar, flagged words and writing prompts — what only the CLI or the database could change.
Each form calls the service that owns the setting (services.rules, services.reflections), which
checks the role and writes the audit log."""

from __future__ import annotations

from datetime import date

from aiohttp import web

from bot.desk import PREFIX, USER, desk_of, render, say, see_other, signed_in, translator
from bot.desk.views import STAFF
from services import reflections, rules
from services.common import DomainError
from services.models import Library, Role

ROLES = (Role.STUDENT, Role.TEACHER, Role.LIBRARIAN, Role.ADMIN)   # the effective rules of each


def routes(app: web.Application) -> None:
    app.router.add_get("/settings", page)
    app.router.add_post("/settings/rule", set_rule)
    app.router.add_post("/settings/reminders", set_reminders)
    app.router.add_post("/settings/closed", add_closed)
    app.router.add_post("/settings/closed/{id:\\d+}/remove", remove_closed)
    app.router.add_post("/settings/flagwords", set_flag_words)
    app.router.add_post("/settings/prompts", add_prompt)
    app.router.add_post("/settings/prompts/{code}/remove", remove_prompt)


@signed_in(STAFF)
async def page(request: web.Request, *, error: str | None = None, status: int = 200) -> web.StreamResponse:
    desk = desk_of(request)
    actor = request[USER].actor
    db = desk.app.db
    table = {role.value: await rules.get_rules(db, actor.library_id, role) for role in ROLES}
    async with db.session() as s:
        library = await s.get(Library, actor.library_id)
        words = list((library.settings or {}).get(reflections.SETTING_FLAG_WORDS) or [])
    today = desk.app.deps.clock.today(library.timezone)
    done = request.query.get("done")
    notice = translator(request)("desk.settings_saved") if done else None
    return render(request, "settings.html", status=status, error=error, notice=notice, rules=table,
                  names=[n for n in rules.RULE_NAMES if n != "weekend"], weekend=table["student"].weekend,
                  reminders=await rules.reminder_settings(db, actor),
                  closed=await rules.list_closed_days(db, actor, since=today), words=words,
                  prompts=await reflections.list_prompts(db, actor.library_id))


async def _apply(request: web.Request, work) -> web.StreamResponse:
    try:
        await work()
    except DomainError as refusal:
        if refusal.key.endswith("not_found") or refusal.key.startswith("error."):
            raise
        return await page(request, error=say(translator(request), refusal.key, refusal.params), status=400)
    return see_other(f"{PREFIX}/settings?done=1")


@signed_in(STAFF)
async def set_rule(request: web.Request) -> web.StreamResponse:
    data = await request.post()
    name, value = str(data.get("name", ""))[:40], str(data.get("value", "")).strip()[:40]
    role = str(data.get("role", "")).strip() or None
    actor, db = request[USER].actor, desk_of(request).app.db
    if not value:
        return await _apply(request, lambda: rules.reset_rule(db, actor, name, role))
    return await _apply(request, lambda: rules.set_rule(db, actor, name, value, role))


@signed_in(STAFF)
async def set_reminders(request: web.Request) -> web.StreamResponse:
    data = await request.post()
    actor, db = request[USER].actor, desk_of(request).app.db

    async def work():
        await rules.set_quiet_hours(db, actor, str(data.get("quiet_start", "")), str(data.get("quiet_end", "")))
        await rules.set_reminder_days(db, actor, before_days=str(data.get("before_days", "")).strip(),
                                      overdue_days=str(data.get("overdue_days", "")).strip())

    return await _apply(request, work)


def _day(value) -> date | None:
    try:
        return date.fromisoformat(str(value or "")[:10])
    except ValueError:
        return None


@signed_in(STAFF)
async def add_closed(request: web.Request) -> web.StreamResponse:
    data = await request.post()
    actor, db = request[USER].actor, desk_of(request).app.db
    start, end = _day(data.get("start")), _day(data.get("end"))
    if start is None:
        return await page(request, error=translator(request)("desk.date_needed"), status=400)
    return await _apply(request, lambda: rules.add_closed_days(db, actor, start, end,
                                                               str(data.get("name", "")).strip()[:200]))


@signed_in(STAFF)
async def remove_closed(request: web.Request) -> web.StreamResponse:
    actor, db = request[USER].actor, desk_of(request).app.db
    return await _apply(request, lambda: rules.remove_closed_days(db, actor, int(request.match_info["id"])))


@signed_in(STAFF)
async def set_flag_words(request: web.Request) -> web.StreamResponse:
    data = await request.post()
    actor, db = request[USER].actor, desk_of(request).app.db
    words = [w.strip() for w in str(data.get("words", ""))[:20000].replace(",", "\n").splitlines()]
    return await _apply(request, lambda: reflections.set_flag_words(db, actor, words))


@signed_in(STAFF)
async def add_prompt(request: web.Request) -> web.StreamResponse:
    data = await request.post()
    actor, db = request[USER].actor, desk_of(request).app.db
    return await _apply(request, lambda: reflections.add_prompt(db, actor, str(data.get("text", ""))))


@signed_in(STAFF)
async def remove_prompt(request: web.Request) -> web.StreamResponse:
    actor, db = request[USER].actor, desk_of(request).app.db
    return await _apply(request, lambda: reflections.remove_prompt(db, actor, request.match_info["code"][:20]))

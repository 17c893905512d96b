"""Readers at the desk: find a reader, their loans, holds, history and notices; cancel a hold on
their behalf, unlink their chats, print link-code slips (one reader or a class), import the
school's roster. Services check the role and the library of every action."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from aiohttp import web

from bot.desk import PREFIX, USER, desk_of, render, say, see_other, signed_in, translator
from bot.desk.views import STAFF
from services import accounts, catalog, circulation, desk
from services.common import DomainError

# Notice kinds with a desk name; others show their raw kind.
KINDS = frozenset(f"desk.kind_{k}" for k in (
    "due_soon", "due_today", "overdue", "pickup_tomorrow", "hold_ready", "hold_expired", "hold_cancelled",
    "reflection_approved", "reflection_rejected", "reflection_changes_requested", "class_overdue"))


def routes(app: web.Application) -> None:
    app.router.add_get("/readers", find)
    app.router.add_post("/readers/import", import_roster)
    app.router.add_post("/readers/slips.pdf", class_slips)
    app.router.add_get("/readers/{card}", reader)
    app.router.add_post("/readers/{card}/holds/{id:\\d+}/cancel", cancel_hold)
    app.router.add_post("/readers/{card}/unlink", unlink)
    app.router.add_post("/readers/{card}/slip.pdf", reader_slip)
    app.router.add_post("/notices/{id:\\d+}/resend", resend)
    app.router.add_post("/notices/{id:\\d+}/cancel", cancel_notice)


@signed_in(STAFF)
async def find(request: web.Request, *, report=None, error: str | None = None, status: int = 200
               ) -> web.StreamResponse:
    app = desk_of(request).app
    query = request.query.get("q", "").strip()[:100]
    people = await accounts.find_patrons(app.db, request[USER].actor, query, limit=30) if query else []
    return render(request, "readers.html", status=status, query=query, people=people, report=report, error=error)


@signed_in(STAFF)
async def reader(request: web.Request, *, notice: str | None = None, error: str | None = None,
                 status: int = 200) -> web.StreamResponse:
    app = desk_of(request).app
    actor = request[USER].actor
    card = request.match_info["card"][:32]
    panel = await desk.reader(app.db, actor, card, clock=app.deps.clock)
    _, history = await circulation.patron_history(app.db, actor, panel.patron_id, limit=50)
    said = await desk.notices(app.db, actor, panel.patron_id)
    return render(request, "reader.html", status=status, reader=panel, history=history, notices=said,
                  notice=notice, error=error, kinds=KINDS)


async def _then(request: web.Request, work, done_key: str, **params) -> web.StreamResponse:
    t = translator(request)
    try:
        result = await work()
    except DomainError as refusal:
        if refusal.key.endswith("not_found") or refusal.key.endswith("_unknown") or refusal.key.startswith("error."):
            raise
        return await reader(request, error=say(t, refusal.key, refusal.params), status=400)
    return await reader(request, notice=t(done_key, **params, result=result))


@signed_in(STAFF)
async def cancel_hold(request: web.Request) -> web.StreamResponse:
    app = desk_of(request).app
    data = await request.post()
    reason = str(data.get("reason", "")).strip()[:300] or None
    hold_id = int(request.match_info["id"])
    # The hold must belong to the reader on this page (and the service checks the library).
    panel = await desk.reader(app.db, request[USER].actor, request.match_info["card"][:32], clock=app.deps.clock)
    if hold_id not in {h.hold_id for h in panel.holds}:
        raise web.HTTPNotFound()
    return await _then(request, lambda: circulation.staff_cancel_hold(app.db, request[USER].actor, hold_id,
                                                                      clock=app.deps.clock, reason=reason),
                       "desk.hold_cancelled")


@signed_in(STAFF)
async def unlink(request: web.Request) -> web.StreamResponse:
    app = desk_of(request).app
    card = request.match_info["card"][:32]
    await desk.reader(app.db, request[USER].actor, card, clock=app.deps.clock)   # 404 outside the library
    return await _then(request, lambda: accounts.unlink(app.db, request[USER].actor, card=card,
                                                        clock=app.deps.clock), "desk.unlinked")


async def _slips(request: web.Request, *, class_name: str | None = None, patron_ids: list[int] | None = None,
                 name: str) -> web.StreamResponse:
    from handlers.account import slips_pdf

    app = desk_of(request).app
    actor = request[USER].actor
    school = await catalog.library_name(app.db, actor.library_id)
    made: list[bytes] = []

    async def render_slips(issued: list[accounts.IssuedCode]) -> None:
        # Inside the issuing transaction: if the sheet cannot be made, no code is issued and the
        # old slips stay valid (no live code shown to nobody).
        made.append(await slips_pdf(issued, link=app.deps.printed_link, t=translator(request), school=school))

    await accounts.issue_link_codes(app.db, actor, class_name=class_name, patron_ids=patron_ids,
                                    clock=app.deps.clock, key=app.deps.link_code_key, deliver=render_slips)
    pdf = made[0]
    safe = "".join(ch for ch in name if ch.isalnum() or ch in "-_") or "codes"
    return web.Response(body=pdf, content_type="application/pdf",
                        headers={"Content-Disposition": f'attachment; filename="link-codes-{safe}.pdf"'})


@signed_in(STAFF)
async def reader_slip(request: web.Request) -> web.StreamResponse:
    app = desk_of(request).app
    panel = await desk.reader(app.db, request[USER].actor, request.match_info["card"][:32], clock=app.deps.clock)
    return await _slips(request, patron_ids=[panel.patron_id], name=panel.card_number)


@signed_in(STAFF)
async def class_slips(request: web.Request) -> web.StreamResponse:
    data = await request.post()
    class_name = str(data.get("class", "")).strip()[:32]
    if not class_name:
        return await find(request, error=translator(request)("desk.slips_need_class"), status=400)
    return await _slips(request, class_name=class_name, name=class_name)


@signed_in(STAFF)
async def import_roster(request: web.Request) -> web.StreamResponse:
    app = desk_of(request).app
    actor = request[USER].actor
    data = await request.post()
    upload = data.get("file")
    if not hasattr(upload, "file"):
        return await find(request, error=translator(request)("desk.file_needed"), status=400)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "roster.csv"
        await asyncio.to_thread(path.write_bytes, upload.file.read(5 * 1024 * 1024 + 1))
        if path.stat().st_size > 5 * 1024 * 1024:
            return await find(request, error=translator(request)("desk.file_too_large", mb=5), status=400)
        try:
            report = await accounts.import_patrons(app.db, path, actor.library_code, actor=actor)
        except DomainError as refusal:
            return await find(request, error=say(translator(request), refusal.key, refusal.params), status=400)
    return await find(request, report=report)


@signed_in(STAFF)
async def resend(request: web.Request) -> web.StreamResponse:
    app = desk_of(request).app
    await desk.resend_notice(app.db, request[USER].actor, int(request.match_info["id"]), clock=app.deps.clock)
    data = await request.post()
    return see_other(f"{PREFIX}/readers/{str(data.get('card', ''))[:32]}")


@signed_in(STAFF)
async def cancel_notice(request: web.Request) -> web.StreamResponse:
    app = desk_of(request).app
    await desk.cancel_notice(app.db, request[USER].actor, int(request.match_info["id"]))
    data = await request.post()
    return see_other(f"{PREFIX}/readers/{str(data.get('card', ''))[:32]}")

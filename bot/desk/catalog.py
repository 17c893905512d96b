"""The catalog at the desk: the chat's forgiving search, a title with its copies and their history,
add a title (by ISBN or by hand) with copies, and mark a copy lost, damaged, in repair, withdrawn
or back on the shelf. Every change goes through services.catalog / services.circulation."""

from __future__ import annotations

from aiohttp import web

from bot.desk import PREFIX, USER, desk_of, render, say, see_other, signed_in, translator
from bot.desk.views import STAFF
from services import catalog, circulation, desk_import
from services.common import DomainError
from services.models import CopyStatus

STATUSES = (CopyStatus.AVAILABLE, CopyStatus.DAMAGED, CopyStatus.IN_REPAIR, CopyStatus.LOST, CopyStatus.WITHDRAWN)


def routes(app: web.Application) -> None:
    app.router.add_get("/catalog", search)
    app.router.add_post("/catalog", add)
    app.router.add_post("/catalog/import", import_upload)
    app.router.add_get("/catalog/import/{job}", import_page)
    app.router.add_get("/catalog/import/{job}/progress", import_progress)
    app.router.add_get("/catalog/import/{job}/rejected.csv", import_rejected)
    app.router.add_get("/catalog/titles/{id:\\d+}", title)
    app.router.add_post("/catalog/titles/{id:\\d+}/copies", add_copies)
    app.router.add_get("/catalog/copies/{barcode}", copy)
    app.router.add_post("/catalog/copies/{barcode}/status", set_status)


def _int(value, default: int) -> int:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return default


@signed_in(STAFF)
async def search(request: web.Request, *, error: str | None = None, status: int = 200,
                 form: dict | None = None) -> web.StreamResponse:
    desk = desk_of(request)
    query = request.query.get("q", "").strip()[:200]
    results = None
    if query:
        results = await desk.app.deps.extras["search"].search(query, limit=20,
                                                                  library_id=request[USER].actor.library_id)
    places = await catalog.locations(desk.app.db, request[USER].actor.library_id)
    return render(request, "catalog.html", status=status, query=query, results=results, error=error,
                  form=form or {}, places=places)


@signed_in(STAFF)
async def add(request: web.Request) -> web.StreamResponse:
    desk = desk_of(request)
    data = await request.post()
    form = {k: str(data.get(k, ""))[:500] for k in ("isbn", "title", "authors", "publisher", "year", "subjects",
                                                     "call_number", "count", "location")}
    new = catalog.NewTitle(title=form["title"], authors=form["authors"], isbn=form["isbn"] or None,
                           publisher=form["publisher"] or None, year=form["year"] or None,
                           subjects=form["subjects"], call_number=form["call_number"] or None)
    try:
        added = await catalog.add_book(desk.app.db, request[USER].actor, new, count=_int(form["count"], 1),
                                       location=form["location"] or None, clock=desk.app.deps.clock)
    except DomainError as refusal:
        return await search(request, error=say(translator(request), refusal.key, refusal.params), status=400,
                            form=form)
    return see_other(f"{PREFIX}/catalog/titles/{added.title.title_id}?added={len(added.copies)}")


@signed_in(STAFF)
async def title(request: web.Request, *, error: str | None = None, status: int = 200) -> web.StreamResponse:
    desk = desk_of(request)
    actor = request[USER].actor
    card = await catalog.get_title_card(desk.app.db, int(request.match_info["id"]), actor.library_id)
    places = await catalog.locations(desk.app.db, actor.library_id)
    added = _int(request.query.get("added"), 0)
    notice = translator(request)("desk.copies_added", count=added) if added else None
    return render(request, "title.html", status=status, card=card, places=places, notice=notice, error=error)


@signed_in(STAFF)
async def add_copies(request: web.Request) -> web.StreamResponse:
    desk = desk_of(request)
    data = await request.post()
    title_id = int(request.match_info["id"])
    try:
        copies = await catalog.add_copy(desk.app.db, request[USER].actor, title_id,
                                        count=_int(data.get("count"), 1),
                                        barcode=str(data.get("barcode", "")).strip()[:32] or None,
                                        location=str(data.get("location", "")).strip()[:100] or None,
                                        clock=desk.app.deps.clock)
    except DomainError as refusal:
        if refusal.key.endswith("not_found"):
            raise
        return await title(request, error=say(translator(request), refusal.key, refusal.params), status=400)
    return see_other(f"{PREFIX}/catalog/titles/{title_id}?added={len(copies)}")


@signed_in(STAFF)
async def copy(request: web.Request, *, notice: str | None = None, error: str | None = None,
               status: int = 200) -> web.StreamResponse:
    desk = desk_of(request)
    view, history = await circulation.copy_history(desk.app.db, request[USER].actor,
                                                   request.match_info["barcode"][:32])
    return render(request, "copy.html", status=status, copy=view, history=history, statuses=STATUSES,
                  notice=notice, error=error)


@signed_in(STAFF)
async def set_status(request: web.Request) -> web.StreamResponse:
    desk = desk_of(request)
    data = await request.post()
    t = translator(request)
    try:
        result = await circulation.set_copy_status(
            desk.app.db, request[USER].actor, request.match_info["barcode"][:32], str(data.get("status", "")),
            clock=desk.app.deps.clock, note=str(data.get("note", "")).strip()[:300] or None)
    except DomainError as refusal:
        if refusal.key.endswith("not_found"):
            raise
        return await copy(request, error=say(t, refusal.key, refusal.params), status=400)
    return await copy(request, notice=t("desk.status_changed", barcode=result.barcode,
                                        status=t(f"desk.copy_{result.status.value}")))


# -- imports with progress --------------------------------------------------------------------------

@signed_in(STAFF)
async def import_upload(request: web.Request) -> web.StreamResponse:
    desk = desk_of(request)
    data = await request.post()
    upload = data.get("file")
    t = translator(request)
    if not hasattr(upload, "file"):
        return await search(request, error=t("desk.file_needed"), status=400)
    body = upload.file.read(desk_import.MAX_BYTES + 1)
    try:
        started = await desk_import.start(desk.app.db, request[USER].actor, upload.filename, body,
                                          clock=desk.app.deps.clock, copies=_int(data.get("copies"), 0))
    except DomainError as refusal:
        return await search(request, error=say(t, refusal.key, refusal.params), status=400)
    return see_other(f"{PREFIX}/catalog/import/{started.id}")


def _job_view(request: web.Request, job: desk_import.ImportJob) -> dict:
    t = translator(request)
    summary = job.summary
    return {"state": job.state, "done": job.done, "total": job.total, "percent": job.percent,
            "text": (t("desk.import_summary", added=summary.added, updated=summary.updated,
                       unchanged=summary.unchanged, copies=summary.copies_added, rejected=len(summary.rejected))
                     if summary else say(t, job.error_key, job.error_params) if job.state == "failed"
                     else t("desk.import_running", done=job.done, total=job.total or "…")),
            "rejected": len(summary.rejected) if summary else 0}


@signed_in(STAFF)
async def import_page(request: web.Request) -> web.StreamResponse:
    found = desk_import.job(request[USER].actor, request.match_info["job"][:40])
    return render(request, "import.html", job=found, view=_job_view(request, found))


@signed_in(STAFF)
async def import_progress(request: web.Request) -> web.StreamResponse:
    found = desk_import.job(request[USER].actor, request.match_info["job"][:40])
    return web.json_response(_job_view(request, found))


@signed_in(STAFF)
async def import_rejected(request: web.Request) -> web.StreamResponse:
    found = desk_import.job(request[USER].actor, request.match_info["job"][:40])
    return web.Response(body=desk_import.rejected_csv(found, translator(request)), content_type="text/csv",
                        headers={"Content-Disposition": 'attachment; filename="rejected.csv"'})

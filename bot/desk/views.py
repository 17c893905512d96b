"""The desk's pages: each view reads the request, calls one or two services, renders a template."""

from __future__ import annotations

from datetime import date, timedelta

from aiohttp import web

from bot.desk import (
    COOKIE,
    PREFIX,
    USER,
    desk_of,
    message_page,
    pre_token,
    render,
    say,
    see_other,
    set_session_cookie,
    signed_in,
    translator,
    with_pre_cookie,
)
from services import circulation, desk, desk_auth
from services.common import DomainError
from services.models import Role

STAFF = (Role.LIBRARIAN, Role.ADMIN)


def routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/", home)
    r.add_get("/login", login_page)
    r.add_post("/login", login_password)
    r.add_get("/signin", signin_page)
    r.add_post("/signin", signin)
    r.add_post("/signout", signout)
    r.add_get("/account", account)
    r.add_post("/account/password", set_password)
    r.add_post("/account/password/clear", clear_password)
    r.add_post("/account/sessions/{id:\\d+}/revoke", revoke_session)
    r.add_get("/today", today)
    r.add_post("/today/set-aside", set_aside)
    r.add_get("/counter", counter)
    r.add_post("/counter", counter_scan)
    r.add_post("/counter/renew", counter_renew)
    r.add_get("/overdue", overdue)
    r.add_post("/overdue/remind", overdue_remind)
    r.add_get("/overdue/slips.pdf", overdue_slips)
    from bot.desk import catalog, moderation, readers, settings, stats

    catalog.routes(app)
    readers.routes(app)
    settings.routes(app)
    moderation.routes(app)
    stats.routes(app)


def _deps(request: web.Request):
    return desk_of(request).app.deps


def _db(request: web.Request):
    return desk_of(request).app.db


def _int(value: str | None, default: int | None = None) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return default


def _client(request: web.Request) -> str:
    return request.remote or "unknown"


# -- signing in ---------------------------------------------------------------------------------

async def home(request: web.Request) -> web.StreamResponse:
    user = request[USER]
    if user is None:
        return see_other(f"{PREFIX}/login")
    return see_other(f"{PREFIX}/today" if user.role in STAFF else f"{PREFIX}/reflections")


async def login_page(request: web.Request, *, error: str | None = None, status: int = 200,
                     card: str = "", library: str = "") -> web.StreamResponse:
    if request[USER] is not None and error is None:
        return see_other(f"{PREFIX}/")
    holder: dict[str, str] = {}
    token = pre_token(request, holder)
    response = render(request, "login.html", status=status, pre=token, error=error, card=card,
                      library=library or desk_of(request).app.settings.default_library)
    return with_pre_cookie(request, response, token)


async def login_password(request: web.Request) -> web.StreamResponse:
    data = await request.post()
    library, card = str(data.get("library", ""))[:32], str(data.get("card", ""))[:32]
    t = translator(request)
    try:
        new = await desk_auth.password_sign_in(
            _db(request), library, card, str(data.get("password", "")), client=_client(request),
            clock=_deps(request).clock, user_agent=request.headers.get("User-Agent"))
    except DomainError as refusal:
        status = 429 if refusal.key == "desk.too_many_attempts" else 403 if refusal.key == "desk.students_no_desk" \
            else 401
        return await login_page(request, error=t(refusal.key, **refusal.params), status=status, card=card,
                                library=library)
    response = see_other(f"{PREFIX}/")
    set_session_cookie(request, response, new)
    return response


async def signin_page(request: web.Request) -> web.StreamResponse:
    """The link from /web opens this page; only its button (a POST) uses the link, so a chat
    app's link preview cannot spend it."""
    token = request.query.get("token", "")[:100]
    holder: dict[str, str] = {}
    pre = pre_token(request, holder)
    response = render(request, "signin.html", token=token, pre=pre)
    return with_pre_cookie(request, response, pre)


async def signin(request: web.Request) -> web.StreamResponse:
    data = await request.post()
    try:
        new = await desk_auth.redeem_link(_db(request), str(data.get("token", "")), clock=_deps(request).clock,
                                          user_agent=request.headers.get("User-Agent"))
    except DomainError as refusal:
        status = 403 if refusal.key == "desk.students_no_desk" else 410 if refusal.key in (
            "desk.link_used", "desk.link_expired") else 400
        return message_page(request, refusal.key, status, **refusal.params)
    response = see_other(f"{PREFIX}/")
    set_session_cookie(request, response, new)
    return response


@signed_in()
async def signout(request: web.Request) -> web.StreamResponse:
    await desk_auth.sign_out(_db(request), request[USER], clock=_deps(request).clock)
    response = see_other(f"{PREFIX}/login")
    response.del_cookie(COOKIE, path=PREFIX)
    return response


@signed_in()
async def account(request: web.Request, *, notice: str | None = None, error: str | None = None,
                  status: int = 200) -> web.StreamResponse:
    user = request[USER]
    db, clock = _db(request), _deps(request).clock
    sessions = await desk_auth.list_sessions(db, user.actor, clock=clock, current_id=user.session_id)
    return render(request, "account.html", status=status, sessions=sessions, notice=notice, error=error,
                  has_password=await desk_auth.has_password(db, user.actor))


@signed_in()
async def set_password(request: web.Request) -> web.StreamResponse:
    data = await request.post()
    t = translator(request)
    password, again = str(data.get("password", "")), str(data.get("again", ""))
    if password != again:
        return await account(request, error=t("desk.password_mismatch"), status=400)
    try:
        await desk_auth.set_password(_db(request), request[USER].actor, password, clock=_deps(request).clock)
    except DomainError as refusal:
        return await account(request, error=t(refusal.key, **refusal.params), status=400)
    return await account(request, notice=t("desk.password_saved"))


@signed_in()
async def clear_password(request: web.Request) -> web.StreamResponse:
    await desk_auth.clear_password(_db(request), request[USER].actor)
    return await account(request, notice=translator(request)("desk.password_cleared"))


@signed_in()
async def revoke_session(request: web.Request) -> web.StreamResponse:
    user = request[USER]
    session_id = int(request.match_info["id"])
    await desk_auth.revoke(_db(request), user.actor, session_id, clock=_deps(request).clock)
    if session_id == user.session_id:
        response = see_other(f"{PREFIX}/login")
        response.del_cookie(COOKIE, path=PREFIX)
        return response
    return see_other(f"{PREFIX}/account")


# -- today -------------------------------------------------------------------------------------------

@signed_in(STAFF)
async def today(request: web.Request, *, notice: str | None = None) -> web.StreamResponse:
    user = request[USER]
    data = await desk.today(_db(request), user.actor, clock=_deps(request).clock)
    return render(request, "today.html", data=data, notice=notice)


@signed_in(STAFF)
async def set_aside(request: web.Request) -> web.StreamResponse:
    data = await request.post()
    title = await desk.set_aside(_db(request), request[USER].actor, _int(data.get("hold_id"), 0),
                                 clock=_deps(request).clock)
    return await today(request, notice=translator(request)("desk.set_aside_done", title=title))


# -- the counter ---------------------------------------------------------------------------------------

async def _counter_page(request: web.Request, *, scan: desk.Scan | None = None, reader_card: str | None = None,
                        pending: str | None = None, status: int = 200) -> web.StreamResponse:
    user = request[USER]
    reader = None
    if reader_card:
        try:
            reader = await desk.reader(_db(request), user.actor, reader_card, clock=_deps(request).clock)
        except DomainError:
            reader = None
    t = translator(request)
    result_text = say(t, scan.message_key, scan.params) if scan else None
    return render(request, "counter.html", status=status, scan=scan, result_text=result_text, reader=reader,
                  pending=pending or "")


@signed_in(STAFF)
async def counter(request: web.Request) -> web.StreamResponse:
    card = request.query.get("reader", "")[:32] or None
    if card:  # a card typed in the address bar must still be one of this library's readers
        await desk.reader(_db(request), request[USER].actor, card, clock=_deps(request).clock)
    return await _counter_page(request, reader_card=card)


@signed_in(STAFF)
async def counter_scan(request: web.Request) -> web.StreamResponse:
    data = await request.post()
    if data.get("clear"):
        return await _counter_page(request)
    reader = str(data.get("reader", ""))[:32] or None
    pending = str(data.get("pending", ""))[:32] or None
    result = await desk.scan(_db(request), request[USER].actor, str(data.get("code", "")), reader=reader,
                             pending=pending, clock=_deps(request).clock)
    return await _counter_page(request, scan=result, reader_card=result.reader_card, pending=result.pending_copy)


@signed_in(STAFF)
async def counter_renew(request: web.Request) -> web.StreamResponse:
    data = await request.post()
    reader = str(data.get("reader", ""))[:32] or None
    try:
        result = await circulation.renew_loan(_db(request), request[USER].actor, _int(data.get("loan_id"), 0),
                                              clock=_deps(request).clock,
                                              expected_renewals=_int(data.get("renewals")))
        scan = desk.Scan("ok", "desk.renewed", {"title": result.title, "due": result.due_date,
                                                 "left": result.renewals_left}, reader)
    except DomainError as refusal:
        if refusal.key in ("circulation.loan_not_found",):
            raise
        scan = desk.Scan("refused", refusal.key, refusal.params, reader)
    return await _counter_page(request, scan=scan, reader_card=reader)


# -- overdue ------------------------------------------------------------------------------------------

@signed_in()   # a homeroom teacher sees their own class (circulation.overdue_list decides)
async def overdue(request: web.Request) -> web.StreamResponse:
    user = request[USER]
    class_name = request.query.get("class", "").strip()[:32] or None
    min_days = _int(request.query.get("days"), 1) or 1
    data = await desk.overdue(_db(request), user.actor, clock=_deps(request).clock, class_name=class_name,
                              min_days=min_days)
    t = translator(request)
    notice = None
    if "queued" in request.query:
        notice = t("desk.remind_done", queued=_int(request.query.get("queued"), 0),
                   already=_int(request.query.get("already"), 0))
    return render(request, "overdue.html", data=data, class_name=class_name or "", min_days=min_days, notice=notice,
                  can_remind=user.role in STAFF)


@signed_in(STAFF)
async def overdue_remind(request: web.Request) -> web.StreamResponse:
    data = await request.post()
    loan_ids = [i for i in (_int(v) for v in data.getall("loan", [])) if i is not None]
    queued, already = await desk.remind(_db(request), request[USER].actor, loan_ids, clock=_deps(request).clock)
    back = f"{PREFIX}/overdue?queued={queued}&already={already}"
    if data.get("class"):
        from urllib.parse import quote

        back += f"&class={quote(str(data.get('class'))[:32])}"
    return see_other(back)


@signed_in()
async def overdue_slips(request: web.Request) -> web.StreamResponse:
    class_name = request.query.get("class", "").strip()[:32] or (
        request[USER].actor.class_name if request[USER].role == Role.TEACHER else "")
    if not class_name:
        return message_page(request, "desk.slips_need_class", 400)
    import asyncio

    t = translator(request)
    pdf = await desk.overdue_slips_pdf(_db(request), request[USER].actor, class_name,
                                       clock=_deps(request).clock, t=t)
    await asyncio.sleep(0)
    safe = "".join(ch for ch in class_name if ch.isalnum() or ch in "-_") or "class"
    return web.Response(body=pdf, content_type="application/pdf",
                        headers={"Content-Disposition": f'inline; filename="overdue-{safe}.pdf"'})


def period(request: web.Request, today_: date, default_days: int = 30) -> tuple[date, date]:
    """?from=YYYY-MM-DD&to=YYYY-MM-DD, bounded to a year; defaults to the last ``default_days``."""
    def parse(name: str) -> date | None:
        try:
            return date.fromisoformat(request.query.get(name, "")[:10])
        except ValueError:
            return None

    end = parse("to") or today_
    start = parse("from") or end - timedelta(days=default_days - 1)
    if start > end:
        start, end = end, start
    if (end - start).days > 366:
        start = end - timedelta(days=366)
    return start, end

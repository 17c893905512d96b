"""The librarian's desk over real HTTP (aiohttp's test server): sign-in, sessions, CSRF, roles and
libraries, and every page and action, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import func, select

from services import desk_auth, reflections
from services.common import PermissionDenied
from services.models import (
    AuditEntry,
    Copy,
    CopyStatus,
    DeskSession,
    Hold,
    Loan,
    Notification,
    Patron,
    Reflection,
    ReflectionStatus,
    Title,
)
from tests.desk_client import Desk, csrf_of, desk_server


@pytest.fixture
async def desk(libs):
    client = await desk_server(libs.app)
    yield Desk(client, libs.app, libs)
    await client.close()


@pytest.fixture
async def second_browser(libs):
    client = await desk_server(libs.app)
    yield Desk(client, libs.app, libs)
    await client.close()


async def _lend(libs, barcode: str, card: str, *, days_ago: int = 0):
    """A loan made ``days_ago`` days before the test clock (so it can be overdue)."""
    from services import circulation
    from services.common import Clock

    clock = libs.app.deps.clock
    then = Clock(fixed=clock.now() - timedelta(days=days_ago))
    librarian = await libs.actor("TT001")
    return await circulation.check_out(libs.db, librarian, barcode, card, clock=then)


async def _available_barcode(libs, n: int = 0) -> str:
    async with libs.db.session() as s:
        return list((await s.execute(select(Copy.barcode).join(Patron, Patron.library_id == Copy.library_id)
                                     .where(Patron.card_number == "TT001", Copy.status == CopyStatus.AVAILABLE)
                                     .order_by(Copy.id).limit(n + 1))).scalars())[n]


async def test_the_shared_server_serves_the_desk(libs):
    import aiohttp

    from bot.server import Server

    server = Server(libs.app, "127.0.0.1", 0)
    server.mount_configured()
    await server.start()
    try:
        assert "desk" in server.mounted
        async with aiohttp.ClientSession() as http:
            async with http.get(server.url + "/desk", allow_redirects=False) as r:
                assert r.status == 302 and r.headers["Location"] == "/desk/"
            async with http.get(server.url + "/desk/login") as r:
                assert r.status == 200 and "Đăng nhập" in await r.text()
                assert r.headers["X-Frame-Options"] == "DENY" and "script-src 'self'" in r.headers[
                    "Content-Security-Policy"]
            async with http.get(server.url + "/desk/static/desk.css") as r:
                assert r.status == 200 and "--accent" in await r.text()
    finally:
        await server.stop()


# -- signing in ---------------------------------------------------------------------------------------

async def test_sign_in_link_opens_a_session_once(desk):
    token = await desk.link("TT001")
    page = await desk.get(f"/desk/signin?token={token}")
    assert page.status == 200 and "signin" in desk.last
    # Opening the link (a chat app's preview does that) does not spend it: only the POST does.
    page = await desk.get(f"/desk/signin?token={token}")
    pre = csrf_of(desk.last)
    response = await desk.post("/desk/signin", {"token": token}, csrf=pre)
    assert response.status == 303 and response.headers["Location"] == "/desk/"
    cookie = response.headers.getall("Set-Cookie")
    session_cookie = next(c for c in cookie if c.startswith("docsach_desk="))
    assert "HttpOnly" in session_cookie and "SameSite=Strict" in session_cookie and "Path=/desk" in session_cookie
    assert "Secure" not in session_cookie  # plain http on the LAN; see the https test below
    today = await desk.get("/desk/today")
    assert today.status == 200 and "Hoàng Minh Tuấn" in desk.last
    # The link is spent: a second use is refused, also from a fresh browser.
    desk.client.session.cookie_jar.clear()
    await desk.get(f"/desk/signin?token={token}")
    again = await desk.post("/desk/signin", {"token": token}, csrf=csrf_of(desk.last))
    assert again.status == 410
    async with desk.libs.db.session() as s:
        entries = (await s.execute(select(AuditEntry).where(AuditEntry.action == "desk.sign_in"))).scalars().all()
    assert [e.channel for e in entries] == ["web"]


async def test_secure_cookie_over_https(libs):
    client = await desk_server(libs.app, base_url="https://thuvien.example.edu.vn")
    try:
        browser = Desk(client, libs.app, libs)
        token = await browser.link("TT001")
        page = await browser.get(f"/desk/signin?token={token}")
        pre = csrf_of(browser.last)
        assert "Secure" in page.headers["Set-Cookie"]
        # This test talks plain http, so the client holds back Secure cookies: send it by hand.
        response = await browser.post("/desk/signin", {"token": token}, csrf=pre,
                                      headers={"Cookie": f"docsach_desk_pre={pre}"})
        cookie = next(c for c in response.headers.getall("Set-Cookie") if c.startswith("docsach_desk="))
        assert "Secure" in cookie and "HttpOnly" in cookie
    finally:
        await client.close()


async def test_expired_and_unknown_links_are_refused(desk):
    token = await desk.link("TT001")
    desk.app.deps.clock.set(desk.app.deps.clock.now() + desk_auth.LINK_TTL + timedelta(seconds=1))
    await desk.get(f"/desk/signin?token={token}")
    pre = csrf_of(desk.last)
    response = await desk.post("/desk/signin", {"token": token}, csrf=pre)
    assert response.status == 410 and "hết hạn" in desk.last
    response = await desk.post("/desk/signin", {"token": "made-up"}, csrf=pre)
    assert response.status == 400


async def test_students_never_get_a_desk_session(desk, libs):
    student = await libs.actor("HS001")
    with pytest.raises(PermissionDenied):
        await desk_auth.issue_link(libs.db, student, clock=libs.app.deps.clock)
    with pytest.raises(PermissionDenied):
        await desk_auth.set_password(libs.db, student, "a long enough password", clock=libs.app.deps.clock)
    # A librarian who becomes a student loses the session at the next request.
    await desk.sign_in("TT001")
    async with libs.db.transaction() as s:
        patron = (await s.execute(select(Patron).where(Patron.card_number == "TT001"))).scalar_one()
        patron.role = "student"
    response = await desk.get("/desk/today")
    assert response.status == 303 and response.headers["Location"] == "/desk/login"


async def test_web_command_in_chat_gives_a_working_link(libs, link_chat):
    libs.app.deps.public_url = "http://desk.school.lan:8080"
    librarian = await link_chat("lib-chat", "TT001")
    await librarian.say("/web")
    match = re.search(r"http://desk\.school\.lan:8080(/desk/signin\?token=[\w-]+)", librarian.text)
    assert match, librarian.text
    student = await link_chat("stu-chat", "HS001")
    await student.say("/web")
    assert "/desk/signin" not in student.text
    client = await desk_server(libs.app)
    try:
        browser = Desk(client, libs.app, libs)
        await browser.get(match.group(1))
        response = await browser.post("/desk/signin", {"token": match.group(1).split("=")[1]},
                                      csrf=csrf_of(browser.last))
        assert response.status == 303
    finally:
        await client.close()


async def test_pages_need_a_session(desk):
    for path in ("/desk/today", "/desk/counter", "/desk/overdue", "/desk/reflections", "/desk/stats",
                 "/desk/account", "/desk/stats/loans_per_day.csv", "/desk/overdue/slips.pdf?class=10A1"):
        response = await desk.get(path)
        assert response.status == 303 and response.headers["Location"] == "/desk/login", path
    login = await desk.get("/desk/login")
    assert login.status == 200
    # A POST without a session and without the sign-in form's token is refused before anything runs.
    response = await desk.post("/desk/counter", {"code": "x"}, csrf=False)
    assert response.status == 403


async def test_csrf_and_origin_are_checked_on_every_post(desk):
    await desk.sign_in("TT001")
    barcode = await _available_barcode(desk.libs)
    assert (await desk.post("/desk/counter", {"code": barcode}, csrf=False)).status == 403
    assert (await desk.post("/desk/counter", {"code": barcode}, csrf="wrong")).status == 403
    other_site = await desk.post("/desk/counter", {"code": barcode}, headers={"Origin": "https://evil.example"})
    assert other_site.status == 403
    ok = await desk.post("/desk/counter", {"code": barcode})
    assert ok.status == 200 and 'data-outcome="waiting"' in desk.last


async def test_sessions_are_listed_and_revocable(desk, second_browser):
    await desk.sign_in("TT001")
    await second_browser.sign_in("TT001")
    page = await desk.get("/desk/account")
    assert page.status == 200 and desk.last.count("/revoke") == 2
    async with desk.libs.db.session() as s:
        ids = sorted((await s.execute(select(DeskSession.id))).scalars())
    # The first browser signs the second out.
    assert (await desk.post(f"/desk/account/sessions/{ids[1]}/revoke")).status == 303
    assert (await second_browser.get("/desk/today")).headers["Location"] == "/desk/login"
    assert (await desk.get("/desk/today")).status == 200
    # Someone else's session cannot be revoked (nor seen) by a librarian.
    assert (await desk.post("/desk/account/sessions/99999/revoke")).status == 404
    assert (await desk.post("/desk/signout")).status == 303
    assert (await desk.get("/desk/today")).status == 303


async def test_idle_and_absolute_expiry(desk):
    clock = desk.app.deps.clock
    await desk.sign_in("TT001")
    clock.set(clock.now() + desk_auth.IDLE - timedelta(minutes=1))
    assert (await desk.get("/desk/today")).status == 200     # still active: the visit renews it
    clock.set(clock.now() + desk_auth.IDLE + timedelta(seconds=1))
    assert (await desk.get("/desk/today")).status == 303     # idle too long
    await desk.sign_in("TT001")
    for _ in range(7):  # active all day, but a session never outlives its absolute end
        clock.set(clock.now() + timedelta(hours=1, minutes=50))
        status = (await desk.get("/desk/today")).status
    assert status == 303


async def test_password_sign_in_and_rate_limit(desk):
    await desk.sign_in("TT001")
    short = await desk.post("/desk/account/password", {"password": "short", "again": "short"})
    assert short.status == 400
    saved = await desk.post("/desk/account/password", {"password": "thư viện 2026!", "again": "thư viện 2026!"})
    assert saved.status == 200
    await desk.post("/desk/signout")
    await desk.get("/desk/login")
    pre = csrf_of(desk.last)
    wrong = await desk.post("/desk/login", {"library": "demo", "card": "TT001", "password": "nope nope nope"},
                            csrf=pre)
    assert wrong.status == 401
    right = await desk.post("/desk/login", {"library": "demo", "card": "tt001", "password": "thư viện 2026!"},
                            csrf=pre)
    assert right.status == 303
    assert (await desk.get("/desk/today")).status == 200
    await desk.post("/desk/signout")
    # Ten tries per card per 15 minutes; then even the right password waits (the chat link does not).
    await desk.get("/desk/login")
    pre = csrf_of(desk.last)
    statuses = [(await desk.post("/desk/login", {"library": "demo", "card": "TT001", "password": "guess"},
                                 csrf=pre)).status for _ in range(9)]
    assert statuses == [401] * 8 + [429]
    blocked = await desk.post("/desk/login", {"library": "demo", "card": "TT001", "password": "thư viện 2026!"},
                              csrf=pre)
    assert blocked.status == 429
    await desk.sign_in("TT001")
    assert (await desk.get("/desk/today")).status == 200


async def test_roles_choose_pages_and_services_refuse(desk):
    await desk.sign_in("GV001")  # a teacher moderates reflections but does not run the counter
    assert (await desk.get("/desk/")).headers["Location"] == "/desk/reflections"
    assert (await desk.get("/desk/reflections")).status == 200
    for path in ("/desk/today", "/desk/counter", "/desk/stats", "/desk/catalog", "/desk/readers"):
        assert (await desk.get(path)).status == 403, path
    # Overdue: a homeroom teacher sees their own class only, and cannot send reminders.
    assert (await desk.get("/desk/overdue")).status == 200 and "remind_now" not in desk.last
    assert (await desk.get("/desk/overdue?class=11A1")).status == 403
    assert (await desk.post("/desk/overdue/remind", {"loan": 1})).status == 403
    assert (await desk.post("/desk/counter", {"code": "x"})).status == 403


async def test_a_librarian_sees_nothing_of_another_school(desk, libs):
    loan = await _lend(libs, await _available_barcode(libs), "HS001", days_ago=20)
    async with libs.db.session() as s:
        demo_hold = (await s.execute(select(Hold.id))).scalars().first()
    await desk.sign_in("OT001", "other")
    assert (await desk.post("/desk/counter/renew", {"loan_id": loan.loan_id, "reader": "HS001"})).status == 404
    assert (await desk.post("/desk/overdue/remind", {"loan": loan.loan_id})).status == 404
    if demo_hold is not None:
        assert (await desk.post("/desk/today/set-aside", {"hold_id": demo_hold})).status == 404
    # Scanning the other school's copy or card finds nothing here.
    await desk.post("/desk/counter", {"code": loan.barcode})
    assert 'data-outcome="refused"' in desk.last
    await desk.post("/desk/counter", {"code": "HS001"})
    assert 'data-outcome="refused"' in desk.last
    assert (await desk.get("/desk/counter?reader=HS001")).status == 404
    assert (await desk.get("/desk/stats?library=demo")).status == 403
    await desk.get("/desk/overdue")
    assert loan.barcode not in desk.last
    async with libs.db.session() as s:
        assert await s.scalar(select(func.count()).select_from(Notification)) == 0


# -- today and the counter ------------------------------------------------------------------------------

async def test_counter_scan_lends_returns_and_renews(desk, libs):
    await desk.sign_in("TT001")
    barcode = await _available_barcode(libs)
    await desk.get("/desk/counter")
    await desk.post("/desk/counter", {"code": barcode})
    assert 'data-outcome="waiting"' in desk.last
    await desk.post("/desk/counter", {"code": "HS002", "pending": barcode})
    assert 'data-outcome="ok"' in desk.last and "Lò Thị Hoa" in desk.last
    async with libs.db.session() as s:
        loan = (await s.execute(select(Loan).join(Copy, Copy.id == Loan.copy_id)
                                .where(Copy.barcode == barcode, Loan.returned_at.is_(None)))).scalar_one()
        audit = (await s.execute(select(AuditEntry).where(AuditEntry.action == "loan.checkout"))).scalar_one()
    assert audit.channel == "web"
    # The reader is chosen now: the next book scans straight to them.
    second = await _available_barcode(libs, 5)
    await desk.post("/desk/counter", {"code": second, "reader": "HS002"})
    assert 'data-outcome="ok"' in desk.last and desk.last.count('class="mono">') >= 2
    renew = await desk.post("/desk/counter/renew", {"loan_id": loan.id, "renewals": 0, "reader": "HS002"})
    assert renew.status == 200 and 'data-outcome="ok"' in desk.last
    again = await desk.post("/desk/counter/renew", {"loan_id": loan.id, "renewals": 0, "reader": "HS002"})
    assert again.status == 200 and 'data-outcome="refused"' in desk.last   # a double click renews once
    await desk.post("/desk/counter", {"code": barcode})
    assert 'data-outcome="ok"' in desk.last
    async with libs.db.session() as s:
        returned = await s.get(Loan, loan.id)
    assert returned.returned_at is not None
    await desk.post("/desk/counter", {"code": "NO-SUCH-THING"})
    assert 'data-outcome="refused"' in desk.last
    today = await desk.get("/desk/today")
    assert today.status == 200
    assert re.search(r'id="n-checkouts">2<', desk.last) and re.search(r'id="n-returns">1<', desk.last)
    assert re.search(r'id="n-visits">1<', desk.last)


async def test_catalog_text_is_escaped(desk, libs):
    barcode = await _available_barcode(libs)
    async with libs.db.transaction() as s:
        copy = (await s.execute(select(Copy).where(Copy.barcode == barcode))).scalar_one()
        title = await s.get(Title, copy.title_id)
        title.title = '<script>alert("x")</script> & co'
    await desk.sign_in("TT001")
    await desk.post("/desk/counter", {"code": barcode})
    assert "<script>alert" not in desk.last and "&lt;script&gt;alert" in desk.last
    response = await desk.get("/desk/counter")
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert response.headers["X-Frame-Options"] == "DENY" and response.headers["Cache-Control"] == "no-store"
    assert re.search(r"<script(?![^>]*\bsrc=)[^>]*>", desk.last) is None   # no inline script on the page


async def test_today_lists_holds_to_fetch_and_the_pickup_shelf(desk, libs):
    from services import circulation

    student = await libs.actor("HS003")
    title_id, _ = await libs.title_with_copies(1)
    hold = await circulation.place_hold(libs.db, student, title_id, clock=libs.app.deps.clock)
    await desk.sign_in("TT001")
    await desk.get("/desk/today")
    fetch = desk.last.split("pickup")[0] if False else desk.last
    assert hold.title[:20].replace("&", "&amp;") in fetch and "/today/set-aside" in desk.last
    assert (await desk.post("/desk/today/set-aside", {"hold_id": hold.hold_id})).status == 200
    assert "/today/set-aside" not in desk.last
    async with libs.db.session() as s:
        assert (await s.get(Hold, hold.hold_id)).set_aside_at is not None


# -- overdue --------------------------------------------------------------------------------------------

async def test_overdue_list_remind_once_and_slips(desk, libs):
    late = await _lend(libs, await _available_barcode(libs), "HS001", days_ago=20)
    await _lend(libs, await _available_barcode(libs, 1), "HS003", days_ago=30)
    await _lend(libs, await _available_barcode(libs, 2), "HS002", days_ago=1)   # not overdue yet
    await desk.sign_in("TT001")
    page = await desk.get("/desk/overdue")
    assert page.status == 200 and "Nguyễn Văn An" in desk.last and "Giàng A Páo" in desk.last
    assert "Lò Thị Hoa" not in desk.last
    await desk.get("/desk/overdue?class=10A1")
    assert "Giàng A Páo" not in desk.last and "slips.pdf?class=10A1" in desk.last
    await desk.get("/desk/overdue?days=10")
    assert "Nguyễn Văn An" not in desk.last and "Giàng A Páo" in desk.last
    first = await desk.post("/desk/overdue/remind", {"loan": late.loan_id})
    assert first.status == 303 and "queued=1&already=0" in first.headers["Location"]
    second = await desk.post("/desk/overdue/remind", {"loan": late.loan_id})
    assert "queued=0&already=1" in second.headers["Location"]
    async with libs.db.session() as s:
        notices = (await s.execute(select(Notification).where(Notification.kind == "overdue"))).scalars().all()
    assert len(notices) == 1 and notices[0].payload["loan_id"] == late.loan_id
    pdf = await desk.get("/desk/overdue/slips.pdf?class=10A1")
    assert pdf.status == 200 and pdf.content_type == "application/pdf"
    import pypdfium2

    doc = pypdfium2.PdfDocument(await pdf.read())
    text = doc[0].get_textpage().get_text_range()
    assert "Nguyễn Văn An" in text and late.barcode in text and "Giàng A Páo" not in text


# -- reflections -----------------------------------------------------------------------------------------

async def _submitted_reflection(libs, body: str) -> int:
    student = await libs.actor("HS001")
    title_id, _ = await libs.title_with_copies(1)
    view = await reflections.start(libs.db, student, title_id, clock=libs.app.deps.clock)
    await reflections.append_text(libs.db, student, view.id, body)
    await reflections.set_rating(libs.db, student, view.id, 4)
    await reflections.submit(libs.db, student, view.id, clock=libs.app.deps.clock)
    return view.id


async def test_moderation_queue_highlights_and_approves_once(desk, libs):
    body = " ".join(["Cuốn sách rất hay và cảm động."] * 12) + " Đồ ngu! <b>bold</b>"
    rid = await _submitted_reflection(libs, body)
    await desk.sign_in("GV001")
    await desk.get("/desk/reflections")
    assert f'id="reflection-{rid}"' in desk.last
    assert '<mark class="flagged">' in desk.last and "&lt;b&gt;bold&lt;/b&gt;" in desk.last
    note_needed = await desk.post(f"/desk/reflections/{rid}", {"decision": "reject", "note": ""})
    assert note_needed.status == 400
    approved = await desk.post(f"/desk/reflections/{rid}", {"decision": "approve"})
    assert approved.status == 303
    late = await desk.post(f"/desk/reflections/{rid}", {"decision": "approve"})
    assert late.status == 400
    async with libs.db.session() as s:
        r = await s.get(Reflection, rid)
        notices = (await s.execute(select(Notification).where(Notification.kind == "reflection_approved"))
                   ).scalars().all()
        audit = (await s.execute(select(AuditEntry).where(AuditEntry.action == "reflection.approve"))).scalar_one()
    assert r.status == ReflectionStatus.APPROVED and len(notices) == 1 and audit.channel == "web"


async def test_the_reflection_photo_is_shown_to_its_moderators_only(desk, second_browser, libs):
    import segno

    buffer = io.BytesIO()
    segno.make("docsach").save(buffer, kind="png", scale=4)
    ref = await libs.app.deps.photos.store(buffer.getvalue())
    rid = await _submitted_reflection(libs, " ".join(["Bức tranh em vẽ về cuốn sách này."] * 8))
    async with libs.db.transaction() as s:
        (await s.get(Reflection, rid)).photo_ref = ref
    await desk.sign_in("TT001")
    await desk.get("/desk/reflections")
    assert f'src="/desk/photos/{ref}"' in desk.last
    image = await desk.get(f"/desk/photos/{ref}")
    assert image.status == 200 and image.content_type == "image/png" and await image.read() == buffer.getvalue()
    await second_browser.sign_in("OT001", "other")
    assert (await second_browser.get(f"/desk/photos/{ref}")).status == 404


async def test_other_library_cannot_moderate(desk, libs):
    rid = await _submitted_reflection(libs, " ".join(["Một câu chuyện đẹp về tình bạn."] * 10))
    await desk.sign_in("OT001", "other")
    await desk.get("/desk/reflections")
    assert f'id="reflection-{rid}"' not in desk.last
    assert (await desk.post(f"/desk/reflections/{rid}", {"decision": "approve"})).status == 403


# -- statistics -------------------------------------------------------------------------------------------

async def test_statistics_plots_match_the_loans_and_downloads_are_safe(desk, libs):
    barcode = await _available_barcode(libs)
    async with libs.db.transaction() as s:
        copy = (await s.execute(select(Copy).where(Copy.barcode == barcode))).scalar_one()
        (await s.get(Title, copy.title_id)).title = '=HYPERLINK("http://evil.example","x")'
    await _lend(libs, barcode, "HS001", days_ago=3)
    await _lend(libs, await _available_barcode(libs, 1), "HS002", days_ago=3)
    await _lend(libs, await _available_barcode(libs, 2), "HS003", days_ago=1)
    await desk.sign_in("TT001")
    page = await desk.get("/desk/stats")
    assert page.status == 200
    plot = re.search(r'<svg[^>]*id="plot-loans".*?</svg>', desk.last, re.S).group(0)
    points = dict(re.findall(r'data-label="([\d-]+)" data-value="(\d+)"', plot))
    today = desk.app.deps.clock.today()
    assert points[(today - timedelta(days=3)).isoformat()] == "2"
    assert points[(today - timedelta(days=1)).isoformat()] == "1"
    assert sum(map(int, points.values())) == 3
    assert re.search(r'id="total-loans">3<', desk.last)
    csv_response = await desk.get("/desk/stats/top_titles.csv")
    assert csv_response.status == 200 and "attachment" in csv_response.headers["Content-Disposition"]
    rows = list(csv.reader(io.StringIO((await csv_response.read()).decode("utf-8-sig"))))
    assert rows[0] == ["Nhan đề", "Lượt mượn"]
    assert ["'=HYPERLINK(\"http://evil.example\",\"x\")", "1"] in rows
    xlsx = await desk.get("/desk/stats/top_titles.xlsx")
    from openpyxl import load_workbook

    sheet = load_workbook(io.BytesIO(await xlsx.read())).active
    values = [[c.value for c in row] for row in sheet.iter_rows()]
    assert ["'=HYPERLINK(\"http://evil.example\",\"x\")", 1] in values
    period = await desk.get(f"/desk/stats?from={(today - timedelta(days=2)).isoformat()}&to={today.isoformat()}")
    assert period.status == 200 and re.search(r'id="total-loans">1<', desk.last)
    assert (await desk.get("/desk/stats/nope.csv")).status == 404
    assert (await desk.get("/desk/stats?library=all")).status == 403


async def test_admin_sees_every_library_school_by_school(desk, libs):
    from services.models import Visit

    loan = await _lend(libs, await _available_barcode(libs), "HS001", days_ago=2)
    async with libs.db.transaction() as s:
        s.add(Visit(library_id=(await libs.actor("HS001")).library_id, patron_id=loan.patron_id,
                    day=desk.app.deps.clock.today() - timedelta(days=2), at=desk.app.deps.clock.now(), source="door"))
    await desk.sign_in("AD001")
    page = await desk.get("/desk/stats?library=all")
    assert page.status == 200 and 'id="section-schools"' in desk.last
    assert "Trường THCS Khác" in desk.last
    other = await desk.get("/desk/stats?library=other")
    assert other.status == 200 and re.search(r'id="total-loans">0<', desk.last)
    schools = await desk.get("/desk/stats/schools.csv?library=all")
    rows = list(csv.reader(io.StringIO((await schools.read()).decode("utf-8-sig"))))
    assert len(rows) == 3 and rows[1][1:3] == ["1", "1"]   # loans, visits
    # Finished days are counted once into desk_days; later pages read them back (and today live).
    from services.models import DeskDay

    async with libs.db.session() as s:
        assert await s.scalar(select(func.sum(DeskDay.loans))) == 1
    await _lend(libs, await _available_barcode(libs, 1), "HS002")   # today
    await desk.get("/desk/stats/loans_per_day.csv?library=all")
    await desk.get("/desk/stats?library=all")
    assert re.search(r'id="total-loans">2<', desk.last)


def test_formula_neutralisation():
    from services.tables import safe_cell

    assert safe_cell("=1+1") == "'=1+1" and safe_cell("+84 912") == "'+84 912" and safe_cell("@SUM") == "'@SUM"
    assert safe_cell("-x") == "'-x" and safe_cell("\tx") == "'\tx" and safe_cell("Dế Mèn") == "Dế Mèn"
    assert safe_cell(-5) == -5 and safe_cell(date(2026, 12, 1)) == "2026-12-01" and safe_cell(None) == ""
    assert safe_cell(datetime(2026, 12, 1, tzinfo=UTC)).startswith("2026-12-01")


# -- catalog ------------------------------------------------------------------------------------------------

async def test_catalog_search_add_a_book_and_change_a_copy(desk, libs):
    await desk.sign_in("TT001")
    page = await desk.get("/desk/catalog?q=ngoi chua")   # no accents, as a librarian types in a hurry
    assert page.status == 200 and "Ngôi chùa" in desk.last
    added = await desk.post("/desk/catalog", {"title": "Bỉ vỏ", "authors": "Nguyên Hồng",
                                              "year": "1938", "count": "2"})
    assert added.status == 303
    title_page = added.headers["Location"]
    await desk.get(title_page)
    assert "Bỉ vỏ" in desk.last and "Đã thêm 2 bản sách." in desk.last
    barcodes = re.findall(r'/desk/catalog/copies/([^"]+)"', desk.last)
    assert len(barcodes) == 2
    more = await desk.post(title_page.split("?")[0] + "/copies", {"count": "1"})
    assert more.status == 303
    await desk.get(more.headers["Location"])
    assert len(re.findall(r'/desk/catalog/copies/([^"]+)"', desk.last)) == 3
    bad = await desk.post("/desk/catalog", {"title": "", "isbn": "123"})
    assert bad.status == 400 and 'class="message refused"' in desk.last
    changed = await desk.post(f"/desk/catalog/copies/{barcodes[0]}/status", {"status": "damaged", "note": "rách bìa"})
    assert changed.status == 200 and 'id="copy-status">hư hỏng<' in desk.last
    async with libs.db.session() as s:
        copy = (await s.execute(select(Copy).where(Copy.barcode == barcodes[0]))).scalar_one()
        audit = (await s.execute(select(AuditEntry).where(AuditEntry.entity == "copy",
                                                          AuditEntry.entity_id == copy.id))).scalars().all()
    assert copy.status == CopyStatus.DAMAGED and audit and all(a.channel == "web" for a in audit)
    # A lent copy may only be declared lost: anything else is refused with the reason.
    lent = await _lend(libs, barcodes[1], "HS001")
    refused = await desk.post(f"/desk/catalog/copies/{lent.barcode}/status", {"status": "in_repair"})
    assert refused.status == 400 and 'class="message refused"' in desk.last
    assert (await desk.get(f"/desk/catalog/copies/{lent.barcode}")).status == 200 and "Nguyễn Văn An" in desk.last


async def test_catalog_of_another_school_is_out_of_reach(desk, libs):
    barcode = await _available_barcode(libs)
    await desk.sign_in("OT001", "other")
    assert (await desk.get(f"/desk/catalog/copies/{barcode}")).status == 404
    assert (await desk.post(f"/desk/catalog/copies/{barcode}/status", {"status": "lost"})).status == 404
    async with libs.db.session() as s:
        assert (await s.execute(select(Copy.status).where(Copy.barcode == barcode))).scalar_one() == \
            CopyStatus.AVAILABLE


# -- settings -----------------------------------------------------------------------------------------------

async def test_settings_change_rules_reminders_calendar_words_and_prompts(desk, libs):
    from services import rules

    await desk.sign_in("TT001")
    assert (await desk.get("/desk/settings")).status == 200
    assert (await desk.post("/desk/settings/rule", {"name": "loan_days", "value": "21", "role": "teacher"})).status == 303
    lib_id = (await libs.actor("TT001")).library_id
    assert (await rules.get_rules(libs.db, lib_id, "teacher")).loan_days == 21
    assert (await rules.get_rules(libs.db, lib_id, "student")).loan_days == 14
    bad = await desk.post("/desk/settings/rule", {"name": "loan_days", "value": "9999"})
    assert bad.status == 400 and 'id="error"' in desk.last
    assert (await desk.post("/desk/settings/rule", {"name": "loan_days", "value": "", "role": "teacher"})).status == 303
    assert (await rules.get_rules(libs.db, lib_id, "teacher")).loan_days == 14
    saved = await desk.post("/desk/settings/reminders", {"quiet_start": "21:00", "quiet_end": "06:30",
                                                         "before_days": "1", "overdue_days": "1, 3, 10"})
    assert saved.status == 303
    settings = await rules.reminder_settings(libs.db, await libs.actor("TT001"))
    assert settings.quiet_start.strftime("%H:%M") == "21:00" and settings.overdue_days == (1, 3, 10)
    never_quiet = await desk.post("/desk/settings/reminders", {"quiet_start": "07:00", "quiet_end": "07:00",
                                                               "before_days": "1", "overdue_days": "1"})
    assert never_quiet.status == 400
    assert (await desk.post("/desk/settings/closed", {"start": "2027-02-05", "end": "2027-02-12",
                                                      "name": "Nghỉ Tết"})).status == 303
    await desk.get("/desk/settings")
    assert "Nghỉ Tết" in desk.last
    closed_id = re.search(r"/desk/settings/closed/(\d+)/remove", desk.last).group(1)
    assert (await desk.post(f"/desk/settings/closed/{closed_id}/remove")).status == 303
    assert (await desk.post("/desk/settings/flagwords", {"words": "lười biếng\nxấu xí"})).status == 303
    assert (await desk.post("/desk/settings/prompts", {"text": "Em sẽ giới thiệu cuốn sách này cho ai?"})).status == 303
    await desk.get("/desk/settings")
    assert "lười biếng" in desk.last and "Em sẽ giới thiệu cuốn sách này cho ai?" in desk.last
    async with libs.db.session() as s:
        channels = set((await s.execute(select(AuditEntry.channel).where(
            AuditEntry.action.in_(("rules.set", "reminders.quiet_hours", "flagwords.set"))))).scalars())
    assert channels == {"web"}


async def test_a_teacher_cannot_change_settings(desk):
    await desk.sign_in("GV001")
    assert (await desk.get("/desk/settings")).status == 403
    assert (await desk.post("/desk/settings/rule", {"name": "loan_days", "value": "30"})).status == 403


# -- readers and notices -------------------------------------------------------------------------------------

async def test_reader_page_history_holds_notices_slips_and_roster(desk, libs):
    from services import circulation

    title_id, held_barcodes = await libs.title_with_copies(1)
    barcode = await _available_barcode(libs, 3)
    assert barcode not in held_barcodes
    loan = await _lend(libs, barcode, "HS003", days_ago=5)
    student = await libs.actor("HS003")
    hold = await circulation.place_hold(libs.db, student, title_id, clock=libs.app.deps.clock)
    async with libs.db.transaction() as s:   # now make the loan overdue (a hold is refused when overdue)
        (await s.get(Loan, loan.loan_id)).due_date = libs.app.deps.clock.today() - timedelta(days=6)
    await desk.sign_in("TT001")
    await desk.get("/desk/readers?q=giang a pao")
    assert "/desk/readers/HS003" in desk.last
    await desk.post("/desk/overdue/remind", {"loan": loan.loan_id})
    page = await desk.get("/desk/readers/HS003")
    assert page.status == 200 and loan.barcode in desk.last and "quá hạn" in desk.last
    async with libs.db.session() as s:
        notice_ids = dict((await s.execute(select(Notification.kind, Notification.id).where(
            Notification.patron_id == student.patron_id))).all())
    # A pending notice can be stopped; an uncertain one re-sent; neither the other way round.
    overdue_id = notice_ids["overdue"]
    assert (await desk.post(f"/desk/notices/{overdue_id}/resend", {"card": "HS003"})).status == 400
    assert (await desk.post(f"/desk/notices/{overdue_id}/cancel", {"card": "HS003"})).status == 303
    async with libs.db.transaction() as s:
        row = await s.get(Notification, overdue_id)
        assert row.status == "skipped"
        row.status = "uncertain"
    assert (await desk.post(f"/desk/notices/{overdue_id}/resend", {"card": "HS003"})).status == 303
    async with libs.db.session() as s:
        assert (await s.get(Notification, overdue_id)).status == "pending"
    cancelled = await desk.post(f"/desk/readers/HS003/holds/{hold.hold_id}/cancel", {"reason": "Sách hỏng"})
    assert cancelled.status == 200 and 'id="notice"' in desk.last
    async with libs.db.session() as s:
        assert (await s.get(Hold, hold.hold_id)).status == "cancelled"
    slip = await desk.post("/desk/readers/HS003/slip.pdf")
    assert slip.status == 200 and slip.content_type == "application/pdf"
    slips = await desk.post("/desk/readers/slips.pdf", {"class": "10A1"})
    import pypdfium2

    text = pypdfium2.PdfDocument(await slips.read())[0].get_textpage().get_text_range()
    assert "Nguyễn Văn An" in text and "Lò Thị Hoa" in text and "Giàng A Páo" not in text
    roster = "Mã HS,Họ và tên,Lớp\nHS900,Vừ Thị Mai,12A1\nHS901,,12A1\n".encode()
    imported = await desk.client.post("/desk/readers/import", data=aiohttp_form(roster, "hs.csv"),
                                      allow_redirects=False, headers={"X-CSRF-Token": desk.csrf})
    desk.last = await imported.text()
    assert imported.status == 200 and 'id="import-report"' in desk.last and "1 mới" in desk.last
    assert "thiếu họ tên hoặc họ tên quá dài" in desk.last    # the reason, in the librarian's language
    async with libs.db.session() as s:
        mai = (await s.execute(select(Patron).where(Patron.card_number == "HS900"))).scalar_one()
        audit = (await s.execute(select(AuditEntry).where(AuditEntry.action == "patrons.import"))).scalar_one()
    assert mai.class_name == "12A1" and audit.channel == "web"


async def test_readers_of_another_school_are_out_of_reach(desk, libs):
    loan = await _lend(libs, await _available_barcode(libs), "HS001", days_ago=20)
    librarian = await libs.actor("TT001")
    from services import desk as desk_service

    await desk_service.remind(libs.db, librarian, [loan.loan_id], clock=libs.app.deps.clock)
    async with libs.db.session() as s:
        notice_id = (await s.execute(select(Notification.id))).scalar_one()
    await desk.sign_in("OT001", "other")
    assert (await desk.get("/desk/readers/HS001")).status == 404
    assert (await desk.post("/desk/readers/HS001/unlink")).status == 404
    assert (await desk.post("/desk/readers/HS001/slip.pdf")).status == 404
    assert (await desk.post(f"/desk/notices/{notice_id}/cancel", {"card": "HS001"})).status == 404
    await desk.get("/desk/readers?q=HS001")
    assert "/desk/readers/HS001" not in desk.last
    refused = await desk.post("/desk/readers/slips.pdf", {"class": "10A1"})
    assert refused.status == 400


async def _wait_import(desk, location: str) -> dict:
    import asyncio

    for _ in range(200):
        progress = await desk.client.get(location + "/progress")
        view = await progress.json()
        if view["state"] in ("done", "failed"):
            return view
        await asyncio.sleep(0.05)
    raise AssertionError("the import did not finish")


async def test_catalog_import_upload_with_progress_and_rejected_rows(desk, libs):
    from pathlib import Path

    await desk.sign_in("TT001")
    data = Path(__file__).with_name("data").joinpath("catalog_sample.csv").read_bytes()
    data = data.rstrip(b"\n") + '\n999,"=HYPERLINK(""http://x"")",Ai đó,12345,,2020,x\n'.encode()
    form = aiohttp_form(data, "sach.csv")
    started = await desk.client.post("/desk/catalog/import", data=form, allow_redirects=False,
                                     headers={"X-CSRF-Token": desk.csrf})
    assert started.status == 303
    location = started.headers["Location"]
    view = await _wait_import(desk, location)
    assert view["state"] == "done" and view["percent"] == 100 and view["done"] == view["total"] > 0
    assert view["rejected"] >= 1
    page = await desk.get(location)
    assert page.status == 200 and "100 %" in desk.last
    rejected = await desk.client.get(location + "/rejected.csv")
    text = (await rejected.read()).decode("utf-8-sig")
    assert "'=HYPERLINK" in text
    header, *rows = list(csv.reader(io.StringIO(text)))
    assert header == ["vị trí", "nhan đề", "lý do"]   # the librarian's language, not the service's keys
    assert any(row[2] == "ISBN không hợp lệ: 12345" and row[0].startswith("dòng ") for row in rows)
    assert not any("imports." in row[2] for row in rows)
    async with libs.db.session() as s:
        audit = (await s.execute(select(AuditEntry).where(AuditEntry.action == "catalog.import"))).scalar_one()
    assert audit.channel == "web" and audit.details["added"] > 0
    # Another school's librarian cannot follow it; a broken file changes nothing and says why.
    other = await desk_server(libs.app)
    try:
        from tests.desk_client import Desk

        stranger = Desk(other, libs.app, libs)
        await stranger.sign_in("OT001", "other")
        assert (await stranger.get(location)).status == 404
    finally:
        await other.close()
    async with libs.db.session() as s:
        before = await s.scalar(select(func.count()).select_from(Title))
    broken = await desk.client.post("/desk/catalog/import", data=aiohttp_form(b"00720nam  2200", "cut.mrc"),
                                    allow_redirects=False, headers={"X-CSRF-Token": desk.csrf})
    view = await _wait_import(desk, broken.headers["Location"])
    assert view["state"] == "failed" and view["text"]
    async with libs.db.session() as s:
        assert await s.scalar(select(func.count()).select_from(Title)) == before
    wrong_type = await desk.client.post("/desk/catalog/import", data=aiohttp_form(b"MZ\x90", "virus.exe"),
                                        allow_redirects=False, headers={"X-CSRF-Token": desk.csrf})
    assert wrong_type.status == 400


def aiohttp_form(data: bytes, filename: str):
    import aiohttp

    form = aiohttp.FormData()
    form.add_field("file", io.BytesIO(data), filename=filename, content_type="application/octet-stream")
    return form


async def test_campaigns_create_shortlist_and_safe_exports(desk, libs):
    await desk.sign_in("TT001")
    today = desk.app.deps.clock.today()
    bad = await desk.post("/desk/campaigns", {"name": "Đại sứ văn hoá đọc", "starts_on": today.isoformat(),
                                              "ends_on": (today - timedelta(days=3)).isoformat()})
    assert bad.status == 400
    made = await desk.post("/desk/campaigns", {"name": "Đại sứ văn hoá đọc 2026", "starts_on":
                                               (today - timedelta(days=5)).isoformat(),
                                               "ends_on": (today + timedelta(days=30)).isoformat(),
                                               "goal_books": "2", "goal_reflections": "1"})
    assert made.status == 303
    campaign_url = made.headers["Location"]
    rid = await _submitted_reflection(libs, "=1+2 " + " ".join(["Cuốn sách giúp em yêu quê hương hơn."] * 9))
    await desk.post(f"/desk/reflections/{rid}", {"decision": "approve"})
    await desk.get(campaign_url)
    assert 'id="entries"' in desk.last and "Nguyễn Văn An" in desk.last
    assert (await desk.post(campaign_url + "/shortlist", {"reflection_id": rid, "on": "1"})).status == 303
    csv_file = await desk.get(campaign_url + "/reflections.csv")
    rows = list(csv.reader(io.StringIO((await csv_file.read()).decode("utf-8-sig"))))
    assert rows[1][5].startswith("'=1+2") and rows[1][7]
    assert (await desk.get(campaign_url + "/reflections.pdf?shortlisted=1")).content_type == "application/pdf"
    other = await desk_server(libs.app)
    try:
        stranger = Desk(other, libs.app, libs)
        await stranger.sign_in("OT001", "other")
        assert (await stranger.get(campaign_url + "/reflections.csv")).status == 404
        assert (await stranger.post(campaign_url + "/shortlist", {"reflection_id": rid, "on": "0"})).status == 404
    finally:
        await other.close()


def test_every_desk_template_message_exists_in_both_languages(catalogs):
    from pathlib import Path

    from bot.desk.readers import KINDS
    from services.models import CopyStatus, NotificationStatus, Role
    from services.rules import RULE_NAMES

    folder = Path(__file__).resolve().parents[1] / "bot" / "desk" / "templates"
    keys = set()
    for template in folder.glob("*.html"):
        # literal keys only: t("desk.copy_" + …) families are listed below
        keys |= set(re.findall(r"""t\(["']((?:desk|error|campaigns)\.[a-z0-9_]+)["']\s*[,)]""", template.read_text()))
    keys |= {f"desk.hold_{s}" for s in ("waiting", "ready")} | {f"desk.method_{m}" for m in ("link", "password")}
    keys |= {f"desk.copy_{s.value}" for s in CopyStatus} | {f"desk.notice_{s.value}" for s in NotificationStatus}
    keys |= {f"desk.role_{r.value}" for r in Role} | {"desk.role_all"} | set(KINDS)
    keys |= {f"desk.rule_{n}" for n in RULE_NAMES} | {f"desk.status_{s}" for s in (
        "submitted", "approved", "changes_requested", "rejected", "draft")}
    keys |= {f"desk.bucket_{b}" for b in ("1_7", "8_14", "15_30", "31_plus")}
    keys |= {f"desk.decided_{d}" for d in ("approve", "changes", "reject")}
    assert len(keys) > 150
    for lang in ("vi", "en"):
        missing = sorted(k for k in keys if k not in catalogs.keys(lang))
        assert not missing, (lang, missing)

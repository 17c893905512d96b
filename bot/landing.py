"""QR landing pages: ``/b/<payload>`` opens what a printed code points at in any phone's browser.

With ``DOCSACH_PUBLIC_URL`` set, book, copy, shelf and link-code QR codes encode
``{public_url}/b/<payload>`` (``t12`` a title, ``c5`` a copy, ``l3`` a shelf or reading corner,
``k…`` a link code). The page shows the book card or the shelf right away (title, copies, shelf,
availability: no login, nothing personal) and offers to continue in each configured messaging
app (its own deep link with the same payload) or here, in the web chat (``/chat?start=<payload>``).
Labels printed with t.me links keep working: those never pass through here.
"""

from __future__ import annotations

import re

from aiohttp import web

from bot import web as webkit
from handlers.search import STATUS_KEYS
from services import catalog
from services.common import NotFound

PAYLOAD = re.compile(r"^([tcl])(\d{1,12})$|^(k)([A-Za-z0-9]{4,32})$")
# Messaging apps a landing page can hand over to, in the order their buttons appear.
CONTINUE_IN = ("zalo", "telegram")


class Landing:
    name = "landing"

    def __init__(self, app) -> None:
        self.app = app

    def mount(self, web_app: web.Application) -> None:
        webkit.setup(web_app)
        web_app.router.add_get("/b/{payload}", self.page)

    def _continue(self, t, payload: str, chosen: str | None) -> list[dict]:
        links = []
        for name in CONTINUE_IN:
            profile = self.app.deps.channels.get(name)
            url = profile.link(payload) if profile is not None else None
            if url:
                links.append({"label": t(f"landing.continue_{name}"), "url": url, "alt": False})
        here = f"/chat?start={payload}" + (f"&lang={chosen}" if chosen else "")
        links.append({"label": t("landing.continue_here"), "url": here, "alt": bool(links)})
        return links

    async def page(self, request: web.Request) -> web.Response:
        payload = request.match_info["payload"]
        t = webkit.translator(request, self.app)
        lang = webkit.language(request, self.app.deps.default_language)
        match = PAYLOAD.match(payload)
        context = {"t": t, "lang": lang, "kind": None, "payload": payload}
        if match is None:
            return webkit.render(request, "landing.html", context, status=404)
        kind = match.group(1) or match.group(3)
        number = int(match.group(2)) if match.group(2) else None
        chosen = request.query.get("lang") if request.query.get("lang") in ("vi", "en") else None
        context["continue"] = self._continue(t, payload, chosen)
        try:
            if kind in ("t", "c"):
                scanned = None
                title_id = number
                if kind == "c":
                    title_id = await catalog.title_for_copy(self.app.db, number)
                    if title_id is None:
                        raise NotFound("search.no_such_copy")
                card = await catalog.get_title_card(self.app.db, title_id)
                copies = card.copies
                if kind == "c":
                    scanned = next((c for c in copies if c.id == number), None)
                    if scanned is not None:   # the copy's own library
                        copies = [c for c in copies if c.library_id == scanned.library_id]
                available = sum(1 for c in copies if c.status.value == "available")
                context.update(kind="book", card=card, scanned=scanned, available=available, copies=[
                    {"place": c.location_name or t("search.card_no_place"), "status": t(STATUS_KEYS[c.status]),
                     "barcode": c.barcode, "available": c.status.value == "available"} for c in copies[:20]],
                    copy_count=len(copies),
                    scanned_status=t(STATUS_KEYS[scanned.status]) if scanned else None)
            elif kind == "l":
                place = await catalog.titles_at_location(self.app.db, number, limit=60)
                context.update(kind="shelf", place=place)
            else:
                context.update(kind="link")
        except NotFound:
            context["kind"] = None
            return webkit.render(request, "landing.html", context, status=404)
        return webkit.render(request, "landing.html", context)


def part(app) -> Landing:
    return Landing(app)

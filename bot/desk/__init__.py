"""The librarian's desk: server-rendered pages (aiohttp + Jinja2) for the work a chat does badly.

``create_app(app)`` builds an aiohttp sub-application that the shared server mounts at ``/desk/``
(``mount(root, app)``). Pages call services, which check role and library; this layer only turns
requests into service calls and results into HTML. No CDN, no inline script (a strict CSP), a few
kilobytes of CSS and one small script for the scanner field.

Security, in one place (``_middlewares``):
- the session cookie (``docsach_desk``) is an opaque token: HttpOnly, SameSite=Strict, Secure
  when the desk is served over https, path ``/desk``; the session itself lives in the database
  (services.desk_auth), with idle and absolute expiry, listed and revocable;
- every POST carries a CSRF token (the session's own; before sign-in, a double-submit cookie)
  and must come from this origin when the browser says where it came from;
- CSP ``default-src 'none'`` with only same-origin scripts, styles and images; no referrer
  (sign-in links carry a token) outside this origin; pages are never cached.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp_jinja2
import jinja2
from aiohttp import web

from bot.app import App
from handlers.i18n import Translator
from services import desk_auth
from services.common import DomainError, NotFound, PermissionDenied
from services.models import Role

log = logging.getLogger(__name__)

PREFIX = "/desk"
COOKIE = "docsach_desk"
PRE_COOKIE = "docsach_desk_pre"      # double-submit CSRF token for the sign-in forms
HERE = Path(__file__).resolve().parent
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass
class Desk:
    app: App
    secure_cookies: bool
    base_url: str | None = None       # where sign-in links point (DOCSACH_PUBLIC_URL or the listen address)


DESK = web.AppKey("desk", Desk)
USER: web.RequestKey[desk_auth.DeskUser | None] = web.RequestKey("desk_user", object)
T: web.RequestKey[Translator] = web.RequestKey("desk_t", Translator)


def see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def desk_of(request: web.Request) -> Desk:
    return request.config_dict[DESK]


def translator(request: web.Request) -> Translator:
    return request[T]


# -- responses ----------------------------------------------------------------------------------

def render(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    return aiohttp_jinja2.render_template(template, request, {**_context(request), **context}, status=status)


def say(t: Translator, key: str, params: dict[str, Any]) -> str:
    """A message with its dates written the reader's way (services hand over ``date`` objects)."""
    from datetime import date

    return t(key, **{k: t.date(v) if isinstance(v, date) else v for k, v in params.items()})


def message_page(request: web.Request, key: str, status: int, **params: Any) -> web.Response:
    return render(request, "message.html", status=status, text=say(translator(request), key, params))


# -- middlewares ----------------------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"  # "no-referrer" would make browsers send Origin: null
    response.headers["X-Frame-Options"] = "DENY"
    if not request.path.startswith(f"{PREFIX}/static/"):
        response.headers["Cache-Control"] = "no-store"
    return response


@web.middleware
async def _session(request: web.Request, handler: Handler) -> web.StreamResponse:
    desk = desk_of(request)
    deps = desk.app.deps
    user = await desk_auth.load(desk.app.db, request.cookies.get(COOKIE), clock=deps.clock)
    request[USER] = user
    lang = user.actor.language if user else deps.default_language
    request[T] = deps.catalogs.translator(lang, deps.timezone)
    return await handler(request)


def _same_origin(request: web.Request) -> bool:
    """A browser tells where a form came from (Origin, else Referer); it must be this desk."""
    source = request.headers.get("Origin") or request.headers.get("Referer")
    if not source or source == "null":
        return source is None
    return urlsplit(source).netloc == request.host


@web.middleware
async def _csrf(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method in UNSAFE and not request.path.startswith(f"{PREFIX}/static/"):
        if not _same_origin(request):
            return message_page(request, "desk.csrf_failed", 403)
        user = request[USER]
        expected = user.csrf_token if user else request.cookies.get(PRE_COOKIE)
        given = request.headers.get("X-CSRF-Token")
        if given is None:
            data = await request.post()
            given = data.get("csrf")
        if not expected or not isinstance(given, str) or not hmac.compare_digest(given, expected):
            return message_page(request, "desk.csrf_failed", 403)
    return await handler(request)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except PermissionDenied as refusal:
        return message_page(request, refusal.key, 403, **refusal.params)
    except NotFound as refusal:
        return message_page(request, refusal.key, 404, **refusal.params)
    except DomainError as refusal:
        return message_page(request, refusal.key, 400, **refusal.params)


# -- helpers for views ------------------------------------------------------------------------------

def signed_in(roles: tuple[Role, ...] | None = None):
    """Views that need a desk session. Roles here only choose what to show; services still decide."""

    def wrap(view: Handler) -> Handler:
        async def inner(request: web.Request, **kwargs: Any) -> web.StreamResponse:
            user = request[USER]
            if user is None:
                if request.method == "GET":
                    return see_other(f"{PREFIX}/login")
                return message_page(request, "desk.signed_out", 401)
            if roles is not None and user.role not in roles:
                return message_page(request, "error.not_allowed", 403)
            return await view(request, **kwargs)

        inner.__name__ = view.__name__
        inner.__doc__ = view.__doc__
        return inner

    return wrap


def set_session_cookie(request: web.Request, response: web.StreamResponse, new: desk_auth.NewSession) -> None:
    desk = desk_of(request)
    response.set_cookie(COOKIE, new.token, path=PREFIX, httponly=True, samesite="Strict",
                        secure=desk.secure_cookies or request.secure,
                        max_age=int((new.expires_at - desk.app.deps.clock.now()).total_seconds()))
    response.del_cookie(PRE_COOKIE, path=PREFIX)


def pre_token(request: web.Request, response_holder: dict[str, str]) -> str:
    """The double-submit token for an anonymous form (set as a cookie by ``with_pre_cookie``)."""
    token = request.cookies.get(PRE_COOKIE) or secrets.token_urlsafe(24)
    response_holder["pre"] = token
    return token


def with_pre_cookie(request: web.Request, response: web.StreamResponse, token: str) -> web.StreamResponse:
    if request.cookies.get(PRE_COOKIE) != token:
        response.set_cookie(PRE_COOKIE, token, path=PREFIX, httponly=True, samesite="Strict",
                            secure=desk_of(request).secure_cookies or request.secure)
    return response


# -- the application ------------------------------------------------------------------------------

def _nav(user: desk_auth.DeskUser | None) -> list[tuple[str, str]]:
    if user is None:
        return []
    staff = user.role in (Role.LIBRARIAN, Role.ADMIN)
    items = [("today", "desk.nav_today"), ("counter", "desk.nav_counter"), ("overdue", "desk.nav_overdue"),
             ("catalog", "desk.nav_catalog"), ("readers", "desk.nav_readers")] if staff else []
    if not staff:
        items.append(("overdue", "desk.nav_overdue"))   # a homeroom teacher's own class
    items.append(("reflections", "desk.nav_reflections"))
    if staff:
        items += [("stats", "desk.nav_stats"), ("settings", "desk.nav_settings")]
    items.append(("account", "desk.nav_account"))
    return items


def _context(request: web.Request) -> dict[str, Any]:
    user = request.get(USER)
    t = request.get(T)
    return {"user": user, "t": t, "base": PREFIX, "nav": _nav(user),
            "csrf": user.csrf_token if user else None, "lang": t.lang if t else "vi",
            "active": request.path.removeprefix(PREFIX + "/").split("/")[0]}


def create_app(app: App, *, base_url: str | None = None, secure_cookies: bool | None = None) -> web.Application:
    """The desk as an aiohttp sub-application (mount it at ``/desk/`` with :func:`mount`)."""
    from bot.desk import views

    base_url = base_url or app.settings.public_url
    if secure_cookies is None:
        secure_cookies = bool(base_url and base_url.startswith("https://"))
    desk = web.Application(middlewares=[_headers, _session, _errors, _csrf], client_max_size=20 * 1024 ** 2)
    desk[DESK] = Desk(app, secure_cookies, base_url)
    env = aiohttp_jinja2.setup(desk, loader=jinja2.FileSystemLoader(HERE / "templates"),
                               autoescape=jinja2.select_autoescape(default=True),
                               undefined=jinja2.StrictUndefined)
    env.filters["d"] = lambda value, t: t.date(value, "short") if value else "—"
    env.filters["dt"] = lambda value, t: t.datetime(value) if value else "—"
    views.routes(desk)
    desk.router.add_static("/static/", HERE / "static", name="static", append_version=False)
    return desk


class DeskPart:
    """The desk as one of the shared server's HTTP parts (bot/server.py)."""

    name = "desk"

    def __init__(self, app: App) -> None:
        self.app = app

    def mount(self, web_app: web.Application) -> None:
        mount(web_app, self.app)


def desk_part(app: App) -> DeskPart:
    return DeskPart(app)


def mount(root: web.Application, app: App, **kwargs: Any) -> web.Application:
    """Add the desk to the shared server at ``/desk/`` (and ``/desk`` → ``/desk/``)."""
    desk = create_app(app, **kwargs)

    async def to_desk(_request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(f"{PREFIX}/")

    root.router.add_get(PREFIX, to_desk)
    root.add_subapp(f"{PREFIX}/", desk)
    return desk

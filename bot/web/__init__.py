"""What every docsach web page shares: templates (autoescaped), static files, the session cookie,
Origin/CSRF checks, rate limits, and the page language.

Pages are small and served entirely by docsach (no CDN): a phone on a slow connection loads the
chat in one round of a few kilobytes. Templates live in ``bot/web/templates``, static files in
``bot/web/static`` (served at ``/static/…`` with long-lived caching and a version query).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections import defaultdict, deque
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp_jinja2
import jinja2
from aiohttp import web

from handlers.i18n import Translator
from services import patrons

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
TEMPLATES: web.AppKey[jinja2.Environment] = web.AppKey("docsach_web_templates", jinja2.Environment)
COOKIE = "docsach_chat"
LANG_COOKIE = "docsach_lang"


def static_version() -> str:
    """Changes whenever a static file does, so browsers may cache them for a long time."""
    digest = hashlib.sha256()
    for path in sorted(STATIC.iterdir()):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


def setup(web_app: web.Application) -> None:
    """Templates and ``/static/`` on the shared server (idempotent: several parts may call it)."""
    if TEMPLATES in web_app:
        return
    env = aiohttp_jinja2.setup(web_app, loader=jinja2.FileSystemLoader(HERE / "templates"), app_key=TEMPLATES,
                               autoescape=jinja2.select_autoescape(default=True), default_helpers=False)
    env.globals["static_version"] = static_version()

    async def static(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        path = STATIC / name
        if "/" in name or name.startswith(".") or not path.is_file():
            raise web.HTTPNotFound()
        response = web.FileResponse(path)
        response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
        return response

    async def favicon(request: web.Request) -> web.Response:
        return web.Response(status=204, headers={"Cache-Control": "public, max-age=86400"})

    web_app.router.add_get("/static/{name}", static)
    web_app.router.add_get("/favicon.ico", favicon)


def render(request: web.Request, template: str, context: dict, *, status: int = 200,
           frame_ancestors: str = "'self'") -> web.Response:
    response = aiohttp_jinja2.render_template(template, request, context, app_key=TEMPLATES, status=status)
    response.headers["Content-Security-Policy"] = csp(frame_ancestors)
    response.headers["Cache-Control"] = "no-store"
    return response


def csp(frame_ancestors: str = "'self'") -> str:
    """No inline scripts or styles, nothing from elsewhere."""
    return ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self'; form-action 'self'; base-uri 'none'; "
            f"frame-ancestors {frame_ancestors}")


# -- the page language ---------------------------------------------------------------------------

def language(request: web.Request, default: str, *, known: str | None = None) -> str:
    """``?lang=`` (a choice), else the language cookie, else the chat's known language, else the
    browser's Accept-Language, else the school's default."""
    chosen = request.query.get("lang") or request.cookies.get(LANG_COOKIE)
    accept = request.headers.get("Accept-Language", "").split(",")[0].split(";")[0]
    return patrons.pick_language(chosen, known, accept, default=default)


def translator(request: web.Request, app, *, known: str | None = None) -> Translator:
    lang = language(request, app.deps.default_language, known=known)
    return app.deps.catalogs.translator(lang, app.deps.timezone)


# -- cookies, CSRF, Origin -----------------------------------------------------------------------

def _mac(secret: bytes, text: str) -> str:
    digest = hmac.new(secret, text.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:18]).decode()


def sign_session(secret: bytes, session_id: int, token: str) -> str:
    body = f"{session_id}.{token}"
    return f"{body}.{_mac(secret, 'session|' + body)}"


def read_session(secret: bytes, value: str | None) -> tuple[int, str] | None:
    """(session id, token) from a cookie whose signature holds, else None."""
    if not value or len(value) > 200:
        return None
    parts = value.split(".")
    if len(parts) != 3 or not parts[0].isdigit():
        return None
    body = f"{parts[0]}.{parts[1]}"
    if not hmac.compare_digest(parts[2], _mac(secret, "session|" + body)):
        return None
    return int(parts[0]), parts[1]


def csrf_token(secret: bytes, session_id: int) -> str:
    return _mac(secret, f"csrf|{session_id}")


def check_csrf(request: web.Request, secret: bytes, session_id: int, supplied: str | None = None) -> bool:
    supplied = supplied or request.headers.get("X-CSRF-Token", "")
    return bool(supplied) and hmac.compare_digest(supplied, csrf_token(secret, session_id))


def own_origin(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def origin_allowed(request: web.Request, public_url: str | None) -> bool:
    """Browsers send Origin on WebSocket handshakes and POSTs: it must be this site's own."""
    origin = request.headers.get("Origin")
    if not origin:
        return False
    allowed = {own_origin(request)}
    if public_url:
        parts = urlsplit(public_url)
        allowed.add(f"{parts.scheme}://{parts.netloc}")
    return origin in allowed


def set_cookie(response: web.StreamResponse, request: web.Request, name: str, value: str, *,
               max_age: int = 180 * 86400, public_url: str | None = None) -> None:
    secure = request.secure or (public_url or "").startswith("https://")
    response.set_cookie(name, value, max_age=max_age, path="/", httponly=True, samesite="Lax", secure=secure)


# -- rate limits ---------------------------------------------------------------------------------

class RateLimits:
    """Sliding-window limits per key, in this process. Keys are a session ("s:12") or an
    address ("a:1.2.3.4"). Address limits are generous: a whole school may share one address, so
    one noisy pupil must not lock out the class; session limits are the tight ones."""

    def __init__(self, clock=time.monotonic) -> None:
        self.clock = clock
        self.events: dict[str, deque[float]] = defaultdict(deque)

    def allow(self, key: str, limit: int, per_seconds: float) -> bool:
        now = self.clock()
        window = self.events[key]
        while window and window[0] <= now - per_seconds:
            window.popleft()
        if len(window) >= limit:
            return False
        window.append(now)
        if len(self.events) > 100_000:   # forget idle keys so memory stays bounded
            for stale in [k for k, v in self.events.items() if not v or v[-1] <= now - 3600]:
                del self.events[stale]
        return True


def address(request: web.Request) -> str:
    return request.remote or "-"

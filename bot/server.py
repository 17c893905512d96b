"""The one aiohttp server: every HTTP-facing part of docsach on one address.

``docsach run`` listens on ``--listen HOST:PORT`` (or ``DOCSACH_LISTEN``, default ``127.0.0.1:8080``)
and mounts, before it starts:

- each channel's routes (``Channel.mount``: the Telegram webhook, the web chat, the Zalo webhook);
- every *HTTP part* listed in :data:`HTTP_PARTS` (the health check, landing pages, the librarian
  desk, /metrics).

How to add an HTTP part: write a function ``part(app: App) -> HttpPart | None`` in your own module,
returning an object with a ``name`` and a ``mount(web_app)`` that adds routes
(``web_app.router.add_get("/metrics", handler)``) or a sub-application
(``web_app.add_subapp("/desk/", desk_app)``, which may carry its own middlewares); return None when
the settings leave the part off. Then add the function to :data:`HTTP_PARTS` (one line, import it
lazily inside a small wrapper if it pulls in heavy libraries). Handlers find the composition root
with ``request.app[APP_KEY]`` (sub-applications: ``request.config_dict[APP_KEY]``).
Parts may also register ``web_app.on_startup`` / ``on_cleanup`` callbacks for their own resources.

Every response carries conservative security headers; a part that needs its own
Content-Security-Policy sets the header itself and it is kept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Protocol

from aiohttp import web

from bot.app import App

log = logging.getLogger(__name__)

APP_KEY: web.AppKey[App] = web.AppKey("docsach_app", App)
MAX_BODY = 10 * 1024 * 1024     # the largest request any part accepts (a photo upload)


class HttpPart(Protocol):
    name: str

    def mount(self, web_app: web.Application) -> None: ...


class Health:
    """``GET /healthz``: 200 "ok" while the process serves (for load balancers and Docker)."""

    name = "health"

    def mount(self, web_app: web.Application) -> None:
        web_app.router.add_get("/healthz", self.health)

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")


def health_part(app: App) -> HttpPart | None:
    return Health()


def landing_part(app: App) -> HttpPart | None:
    from bot import landing

    return landing.part(app)


def desk_part(app: App) -> HttpPart | None:
    from bot.desk import desk_part as part  # Jinja2 and the templates load only when serving

    return part(app)


# Every HTTP part besides the channels' own routes, in mounting order.
def metrics_part(app: App) -> HttpPart | None:
    from bot.observe import metrics_part as part

    return part(app)


HTTP_PARTS: list[Callable[[App], HttpPart | None]] = [health_part, landing_part, desk_part, metrics_part]


@web.middleware
async def security_headers(request: web.Request, handler):
    response = await handler(request)
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "same-origin")
    headers.setdefault("X-Frame-Options", "SAMEORIGIN")
    headers.setdefault("Content-Security-Policy", "default-src 'none'; frame-ancestors 'self'")
    return response


class Server:
    """Mount everything, then listen. ``url`` is where it can be reached (for the log and tests)."""

    def __init__(self, app: App, host: str = "127.0.0.1", port: int = 8080) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.web_app = web.Application(client_max_size=MAX_BODY, middlewares=[security_headers])
        self.web_app[APP_KEY] = app
        self.runner: web.AppRunner | None = None
        self.mounted: list[str] = []

    def mount(self, parts: Iterable[HttpPart | None]) -> None:
        for part in parts:
            if part is not None:
                part.mount(self.web_app)
                self.mounted.append(part.name)

    def mount_configured(self) -> None:
        """Every part in :data:`HTTP_PARTS` the settings turn on."""
        self.mount(factory(self.app) for factory in HTTP_PARTS)

    async def start(self) -> None:
        self.runner = web.AppRunner(self.web_app, handle_signals=False, access_log=None)
        await self.runner.setup()
        from bot.workers import reuse_port

        # Several workers (`docsach run --workers N`) share the address: the kernel spreads connections.
        site = web.TCPSite(self.runner, self.host, self.port, reuse_port=reuse_port() or None)
        await site.start()
        if self.port == 0:   # tests ask for any free port
            sockets = getattr(site._server, "sockets", None) or []
            if sockets:
                self.port = sockets[0].getsockname()[1]
        log.info("listening on %s (%s)", self.url, ", ".join(self.mounted) or "nothing mounted")

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if host in ("0.0.0.0", "[::]"):
            host = "127.0.0.1"
        return f"http://{host}:{self.port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

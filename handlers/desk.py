"""``/web``: a staff member asks for a one-time link that signs them in to the librarian's desk.

The link goes only to the person's own private chat (commands are private by default), works once
and for minutes; the desk itself is served by the web server (bot/desk).
"""

from __future__ import annotations

from handlers.core import Context, Router
from handlers.messages import Button, Incoming, Reply
from services import desk_auth

DESK_PATH = "/desk/signin?token="


def desk_base_url(ctx: Context) -> str:
    """DOCSACH_PUBLIC_URL, else the address the web server listens on (set when it starts)."""
    base = ctx.deps.public_url or ctx.deps.extras.get("server_url") or "http://127.0.0.1:8080"
    return str(base).rstrip("/")


async def web(event: Incoming, ctx: Context) -> Reply:
    token = await desk_auth.issue_link(ctx.db, ctx.actor, clock=ctx.clock)
    url = desk_base_url(ctx) + DESK_PATH + token
    minutes = int(desk_auth.LINK_TTL.total_seconds() // 60)
    # Chat platforms refuse buttons to plain-http or LAN addresses; the link in the text always works.
    buttons = [[Button(ctx.t("desk.web_open"), url=url)]] if url.startswith("https://") else []
    return Reply(ctx.t("desk.web_link", minutes=minutes, url=url), buttons=buttons)


def register(router: Router) -> None:
    router.command("web", web, help_key="desk.web_help", roles={"teacher", "librarian", "admin"})

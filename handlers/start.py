"""First conversations: /start (and QR deep links), /help, /language, /cancel."""

from __future__ import annotations

from handlers.core import Context, Router
from handlers.messages import Incoming, Reply
from services import patrons

LANGUAGE_NAMES = {"vi": "Tiếng Việt", "en": "English"}


async def start(event: Incoming, ctx: Context) -> list[Reply] | Reply | None:
    """Greet, or open what a scanned QR code / t.me link points at."""
    payload = event.args
    if payload:
        handler = ctx.router.start_payload_handler(payload, private=event.chat_type == "private")
        if handler is None:
            return Reply(ctx.t("start.bad_link"))
        return await handler(event, ctx)
    t = ctx.t
    if ctx.actor.is_linked and event.chat_type == "private":   # a group is not told anyone's name
        greeting = t("start.welcome_back", name=ctx.actor.full_name or "")
    else:
        greeting = t("start.welcome_guest")
    return Reply(greeting + "\n\n" + t("start.next_steps"))


async def show_help(event: Incoming, ctx: Context) -> Reply:
    t = ctx.t
    role = ctx.actor.role.value if ctx.actor.role else "guest"
    lines = [t("help.title"), t(f"help.role_{role}"), ""]
    lines += ctx.router.help_lines(ctx)
    lines += ["", t("help.search_hint")]
    return Reply("\n".join(lines))


async def choose_language(event: Incoming, ctx: Context) -> Reply:
    wanted = event.args.strip().lower()
    if wanted:
        return await _switch(ctx, wanted)
    return Reply(
        ctx.t("language.choose"),
        buttons=[[ctx.button(name, "lang", code) for code, name in LANGUAGE_NAMES.items()]],
    )


async def press_language(event: Incoming, ctx: Context, args: list[str]) -> Reply:
    reply = await _switch(ctx, args[0] if args else "")
    reply.edit = True
    return reply


async def _switch(ctx: Context, wanted: str) -> Reply:
    code = patrons.pick_language(wanted, default="")
    if wanted in ("vn", "viet", "tiếng việt", "tieng viet"):
        code = "vi"
    if code not in LANGUAGE_NAMES:
        return Reply(ctx.t("language.unsupported", language=wanted[:20]))
    await patrons.set_language(ctx.db, ctx.actor, code)
    t = ctx.deps.catalogs.translator(code, ctx.deps.timezone)
    return Reply(t("language.changed", language=LANGUAGE_NAMES[code]))


async def cancel(event: Incoming, ctx: Context) -> Reply:
    await ctx.clear_flow()
    return Reply(ctx.t("cancel.done"))


def register(router: Router) -> None:
    router.command("start", start, in_groups=True)
    router.command("help", show_help, help_key="help.cmd_help", in_groups=True)
    router.command("language", choose_language, help_key="help.cmd_language", aliases=("lang", "ngonngu"),
                   in_groups=True)
    router.command("cancel", cancel, help_key="help.cmd_cancel", aliases=("huy",))
    router.button("lang", press_language, in_groups=True)

"""The ``docsach`` command line. Every subcommand has --help."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable

from bot.app import App, build_app
from bot.config import Settings
from services import demo, patrons
from services.common import DomainError
from services.db import upgrade_async

log = logging.getLogger("docsach")


def _setup_logging(settings: Settings, quiet: bool = False) -> None:
    level = logging.WARNING if quiet else getattr(logging, settings.log_level.upper(), logging.INFO)
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "apscheduler", "aiosqlite"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


async def _prepare(app: App, *, load_demo: bool) -> None:
    """Migrate, and load the demo library when the database has no library yet."""
    await upgrade_async(app.settings.database_url)
    if load_demo:
        summary = await demo.load_demo(app.db)
        if summary.created:
            log.info("loaded the demo library: %s titles, %s copies, %s people",
                     summary.titles, summary.copies, summary.patrons)


# -- subcommands -----------------------------------------------------------------------

async def cmd_run(app: App, args: argparse.Namespace) -> int:
    await _prepare(app, load_demo=not args.no_demo)
    if app.settings.telegram_token:
        try:
            from bot import telegram
        except ImportError:
            print("The Telegram adapter is not installed in this build.", file=sys.stderr)
            return 2
        return await telegram.serve(app, args)
    return await _chat(app, args)


async def cmd_chat(app: App, args: argparse.Namespace) -> int:
    await _prepare(app, load_demo=not args.no_demo)
    return await _chat(app, args)


async def _chat(app: App, args: argparse.Namespace) -> int:
    from bot.terminal import CHANNEL, run_terminal

    user = getattr(args, "user", None) or "local"
    if getattr(args, "as_card", None):
        actor = await patrons.resolve_actor(app.db, CHANNEL, user, user,
                                            default_language=app.settings.default_language)
        try:
            await patrons.link_trusted(app.db, actor, args.library, args.as_card)
        except DomainError:
            print(f"No card {args.as_card} in library {args.library}.", file=sys.stderr)
            return 2
    await run_terminal(app.router, user=user)
    return 0


async def cmd_db_upgrade(app: App, args: argparse.Namespace) -> int:
    await upgrade_async(app.settings.database_url, args.revision)
    print(f"database at {args.revision}: {app.settings.redacted()['database']}")
    return 0


async def cmd_demo_data(app: App, args: argparse.Namespace) -> int:
    await upgrade_async(app.settings.database_url)
    summary = await demo.load_demo(app.db)
    state = "loaded" if summary.created else "already present"
    print(f"demo library {state}: {summary.titles} titles, {summary.copies} copies, "
          f"{summary.patrons} people (cards HS001–HS004 students, GV001 teacher, TT001 librarian)")
    return 0


async def cmd_export(app: App, args: argparse.Namespace) -> int:
    """Export a campaign's approved reflections for the ambassador round."""
    from pathlib import Path

    from handlers.i18n import Catalogs
    from services import campaigns

    await upgrade_async(app.settings.database_url)
    t = Catalogs().translator(args.language or app.settings.default_language, app.settings.timezone)
    try:
        campaign = await campaigns.find(app.db, args.campaign)
        data = await campaigns.export_reflections(app.db, campaign.id, args.format, t,
                                                  shortlisted_only=args.shortlisted)
    except DomainError as refusal:
        print(t(refusal.key, **refusal.params), file=sys.stderr)
        return 2
    output = Path(args.output or f"reflections-campaign-{campaign.id}.{args.format}")
    if str(output) == "-":
        sys.stdout.buffer.write(data)
    else:
        await asyncio.to_thread(output.write_bytes, data)
        print(f"wrote {output} ({len(data)} bytes)", file=sys.stderr)
    return 0


# -- parser --------------------------------------------------------------------------------

def _add_chat_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--as", dest="as_card", metavar="CARD",
                   help="link the terminal chat to this library card first (e.g. HS001, TT001)")
    p.add_argument("--library", default=None, help="library code for --as (default: DOCSACH_DEFAULT_LIBRARY)")
    p.add_argument("--user", default="local", help="terminal user id, to play several people (default: local)")
    p.add_argument("--no-demo", action="store_true", help="do not load the demo library into an empty database")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Callable]]:
    parser = argparse.ArgumentParser(
        prog="docsach",
        description="docsach — a chat-first reading assistant for school libraries.",
        epilog="Configuration comes from environment variables or .env (see .env.example).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    handlers: dict[str, Callable] = {}

    p = sub.add_parser("run", help="migrate, load the demo library if empty, and start the bot",
                       description="Start the bot: Telegram when TELEGRAM_BOT_TOKEN is set, "
                                   "otherwise a chat in this terminal.")
    _add_chat_options(p)
    p.add_argument("--webhook", action="store_true", help="Telegram: receive updates by webhook, not polling")
    p.add_argument("--listen", default="127.0.0.1:8080", help="webhook: HOST:PORT to listen on")
    p.add_argument("--url", default=None, help="webhook: the public https URL Telegram should call")
    handlers["run"] = cmd_run

    p = sub.add_parser("chat", help="chat with the bot in this terminal",
                       description="A chat in the terminal on the same handlers as Telegram. Buttons appear "
                                   "as numbered choices; type the number to press one. Reads until end of input.")
    _add_chat_options(p)
    handlers["chat"] = cmd_chat

    p = sub.add_parser("db", help="database maintenance", description="Database maintenance.")
    db_sub = p.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    up = db_sub.add_parser("upgrade", help="run migrations", description="Run Alembic migrations.")
    up.add_argument("revision", nargs="?", default="head", help="target revision (default: head)")
    handlers["db"] = cmd_db_upgrade

    p = sub.add_parser("demo-data", help="load the demo library",
                       description="Load the demo library (real Library of Congress records with invented "
                                   "copies, shelves and people). Does nothing if it is already there.")
    handlers["demo-data"] = cmd_demo_data

    p = sub.add_parser("export", help="export data (reflections of a campaign)",
                       description="Export data for use outside the bot.")
    ex_sub = p.add_subparsers(dest="export_what", metavar="WHAT", required=True)
    ex = ex_sub.add_parser("reflections", help="a campaign's approved reflections (student, class, book, "
                                               "word count, rating, text)",
                           description="Export a campaign's approved reflections for the Reading Culture "
                                       "Ambassador round: shortlisted ones first, then the rest.")
    ex.add_argument("--campaign", required=True, help="campaign id or exact name")
    ex.add_argument("--format", choices=("csv", "xlsx", "pdf"), default="csv", help="file format (default: csv)")
    ex.add_argument("--output", "-o", default=None,
                    help="file to write (default: reflections-campaign-ID.FORMAT; '-' for stdout)")
    ex.add_argument("--shortlisted", action="store_true", help="only the shortlisted reflections")
    ex.add_argument("--language", choices=("vi", "en"), default=None,
                    help="language of headers (default: DOCSACH_DEFAULT_LANGUAGE)")
    handlers["export"] = cmd_export
    return parser, handlers


async def _main(argv: list[str] | None) -> int:
    parser, handlers = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    settings = Settings.from_env()
    if getattr(args, "library", "x") is None:
        args.library = settings.default_library
    _setup_logging(settings, quiet=args.command in ("chat", "search") or
                   (args.command == "run" and not settings.telegram_token))
    app = build_app(settings)
    try:
        return await handlers[args.command](app, args)
    finally:
        await app.close()


def main(argv: list[str] | None = None) -> int:
    try:
        return asyncio.run(_main(argv))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

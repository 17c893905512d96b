"""The ``docsach`` command line. Every subcommand has --help."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable
from pathlib import Path

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


async def cmd_qr(app: App, args: argparse.Namespace) -> int:
    """Print QR labels whose codes open the book, copy or shelf in the Telegram bot."""
    from handlers.core import deep_link_payload, deep_link_url
    from services.labels import KINDS, Label, catalog_label_items, render_label_sheet

    settings = app.settings
    t = app.deps.catalogs.translator(settings.default_language, settings.timezone)
    username = args.bot_username or settings.telegram_bot_username
    if not username and settings.telegram_token:
        from bot import telegram

        username = await telegram.bot_username(settings.telegram_token, settings.telegram_api_base_url)
    if not username:
        print("The QR codes link to your bot: give --bot-username, set TELEGRAM_BOT_USERNAME, "
              "or set TELEGRAM_BOT_TOKEN so it can be asked.", file=sys.stderr)
        return 2
    username = username.lstrip("@")
    what = next(kind for kind in KINDS if getattr(args, kind))
    try:
        title_ids = [int(x) for x in args.title_ids.split(",") if x.strip()] if args.title_ids else None
    except ValueError:
        print("--title-ids wants numbers separated by commas, e.g. 12,15,40", file=sys.stderr)
        return 2
    try:
        library_name, items = await catalog_label_items(
            app.db, what, args.library, location_code=args.location, title_ids=title_ids, limit=args.limit)
    except DomainError as refusal:
        print(t(refusal.key, **refusal.params), file=sys.stderr)
        return 2
    if not items:
        print("Nothing to label with these filters.", file=sys.stderr)
        return 1
    headings = {"titles": t("labels.sheet_titles"), "copies": t("labels.sheet_copies"),
                "shelves": t("labels.sheet_shelves")}
    labels = [Label(deep_link_url(username, deep_link_payload(item.kind, item.ref)),
                    item.lines + ([t("labels.scan_shelf")] if item.kind == "l" else []))
              for item in items]
    pdf = await asyncio.to_thread(render_label_sheet, labels, columns=args.columns, rows=args.rows,
                                  title=f"{library_name} — {headings[what]}")
    out = Path(args.out)
    await asyncio.to_thread(out.write_bytes, pdf)
    pages = -(-len(labels) // (args.columns * args.rows))
    print(f"{len(labels)} labels on {pages} A4 page(s): {out}")
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


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


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

    p = sub.add_parser("qr", help="print QR labels for books, copies or shelves (A4 PDF)",
                       description="A printable A4 sheet of QR labels. Scanning one opens the bot on that "
                                   "book (with a Reserve button), copy, or shelf/classroom list "
                                   "(https://t.me/<bot>?start=…).")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--titles", action="store_true", help="one label per title the library holds")
    which.add_argument("--copies", action="store_true", help="one label per copy (with its barcode)")
    which.add_argument("--shelves", action="store_true", help="one label per shelf and classroom corner")
    p.add_argument("--library", default=None, help="library code (default: DOCSACH_DEFAULT_LIBRARY)")
    p.add_argument("--location", metavar="CODE", help="only what is on this shelf/in this classroom (e.g. KE-B)")
    p.add_argument("--title-ids", metavar="IDS", help="only these titles, comma-separated ids")
    p.add_argument("--limit", type=_positive, default=None, help="at most this many labels")
    p.add_argument("--columns", type=_positive, default=3, help="labels across a page (default 3)")
    p.add_argument("--rows", type=_positive, default=8, help="labels down a page (default 8)")
    p.add_argument("--bot-username", help="the bot's @username (default: TELEGRAM_BOT_USERNAME, or ask "
                                          "Telegram with TELEGRAM_BOT_TOKEN)")
    p.add_argument("--out", default="labels.pdf", help="output PDF file (default: labels.pdf)")
    handlers["qr"] = cmd_qr

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

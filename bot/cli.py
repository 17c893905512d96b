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
    # Build the search index in the background now, so the first student does not wait for it.
    search = app.deps.extras.get("search")
    if search is not None:
        app.deps.extras["search_warmup"] = asyncio.create_task(search.ensure_ready())


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


async def cmd_import(app: App, args: argparse.Namespace) -> int:
    from pathlib import Path

    from services import importer

    await upgrade_async(app.settings.database_url)
    try:
        summary = await importer.import_file(
            app.db, Path(args.file), library_code=args.library_code, copies=args.copies,
            progress=not args.quiet, report=Path(args.report) if args.report else None)
    except importer.MalformedFile as exc:
        print(f"{args.file}: cannot import: {exc.detail}. Nothing was changed.", file=sys.stderr)
        return 2
    except DomainError as exc:
        t = app.deps.catalogs.translator("en")
        print(f"{args.file}: {t(exc.key, **exc.params)}", file=sys.stderr)
        return 2
    print(f"{args.file} ({summary.format}): {summary.line()}")
    if summary.report_path:
        print(f"rejected rows and reasons: {summary.report_path}")
    return 0


async def cmd_search(app: App, args: argparse.Namespace) -> int:
    import json
    import time

    if not args.stdin and not (args.query or "").strip():
        print("give a QUERY, or --stdin to read queries line by line", file=sys.stderr)
        return 2
    search = app.deps.extras["search"]
    library_id = None
    if args.library_code:
        library_id = await _library_id(app, args.library_code)
        if library_id is None:
            print(f"no library {args.library_code}", file=sys.stderr)
            return 2
    await search.ensure_ready()
    queries = (line.rstrip("\n") for line in sys.stdin) if args.stdin else iter([args.query or ""])
    for query in queries:
        started = time.perf_counter()
        results = await search.search(query, limit=args.limit, library_id=library_id)
        took_ms = round((time.perf_counter() - started) * 1000, 3)
        if args.json:
            print(json.dumps({"query": query, "took_ms": took_ms, "results": [
                {"id": h.id, "title": h.title, "authors": h.authors, "isbn": h.isbn13, "score": h.score}
                for h in results.hits]}, ensure_ascii=False), flush=True)
            continue
        if not results.hits:
            print(f"no match for {query!r} ({took_ms} ms)")
        if results.suggestion:
            print(f"did you mean: {results.suggestion}")
        for n, h in enumerate(results.hits, 1):
            year = f" ({h.year})" if h.year else ""
            isbn = f" ISBN {h.isbn13}" if h.isbn13 else ""
            print(f"{n:>2}. [{h.id}] {h.title} — {h.authors}{year}{isbn}  score {h.score} "
                  f"({h.available}/{h.copies} available)")
        if results.hits:
            print(f"about {results.total} matches, {took_ms} ms")
    return 0


async def _library_id(app: App, code: str) -> int | None:
    from sqlalchemy import select

    from services.models import Library

    async with app.db.session() as s:
        return await s.scalar(select(Library.id).where(Library.code == code))


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

    p = sub.add_parser("import", help="import a catalog file (CSV, XLSX, MARC21, MARCXML)",
                       description="Import titles (and, with --library, copies) from a CSV/XLSX spreadsheet "
                                   "(English or Vietnamese headers), MARC21 ISO 2709 (UTF-8 or MARC-8) or "
                                   "MARCXML. Re-importing the same file changes nothing; rows matched by ISBN "
                                   "or a stable key are updated. Rejected rows go to FILE.rejected.csv. A "
                                   "malformed file changes nothing.")
    p.add_argument("file", help="the file to import")
    p.add_argument("--library", dest="library_code", metavar="CODE", default=None,
                   help="library whose copies the file's holdings (barcode/location/copies, MARC 852/952) "
                        "become; without it only titles are imported")
    p.add_argument("--copies", type=int, default=0, metavar="N",
                   help="make sure each imported title has at least N copies in --library (for records "
                        "without holdings, e.g. Library of Congress MARC); barcodes are generated")
    p.add_argument("--report", default=None, metavar="PATH",
                   help="where to write rejected rows (default: FILE.rejected.csv next to the file)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    handlers["import"] = cmd_import

    p = sub.add_parser("search", help="search the catalog (for scripts and evaluation)",
                       description="Search the catalog as the chat does. With --stdin, reads one query per "
                                   "line and prints exactly one line per query (use --json for "
                                   "{\"query\", \"took_ms\", \"results\": [{id, title, authors, isbn, score}]}).")
    p.add_argument("query", nargs="?", default=None, help="the query (omit with --stdin)")
    p.add_argument("--stdin", action="store_true", help="read queries from standard input, one per line")
    p.add_argument("--json", action="store_true", help="print JSON lines")
    p.add_argument("--limit", type=int, default=10, metavar="N", help="results per query (default 10, max 100)")
    p.add_argument("--library", dest="library_code", metavar="CODE", default=None,
                   help="count copies of this library only")
    handlers["search"] = cmd_search
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
    _setup_logging(settings, quiet=args.command in ("chat", "search", "import") or
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

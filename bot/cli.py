"""The ``docsach`` command line. Every subcommand has --help."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.exc import InterfaceError, OperationalError

from bot.app import App, build_app
from bot.config import Settings, ensure_sqlite_folder
from services import accounts, catalog, circulation, demo, patrons, rules
from services.common import DomainError
from services.db import upgrade_async

log = logging.getLogger("docsach")


def _setup_logging(settings: Settings, quiet: bool = False) -> None:
    from bot import logs

    logs.setup_from_env(settings.log_level, quiet=quiet)


async def _prepare(app: App, *, load_demo: bool) -> None:
    """Migrate, and load the demo library when the database has no library yet."""
    await upgrade_async(app.settings.database_url)
    if load_demo:
        summary = await demo.load_demo(app.db, school_life=True, clock=app.deps.clock)
        if summary.created:
            log.info("loaded the demo library: %s titles, %s copies, %s people",
                     summary.titles, summary.copies, summary.patrons)
    # Build the search index in the background now, so the first student does not wait for it.
    search = app.deps.extras.get("search")
    if search is not None:
        app.deps.extras["search_warmup"] = asyncio.create_task(search.ensure_ready())


def _t(app: App):
    """The operator's language for what the CLI says (DOCSACH_DEFAULT_LANGUAGE)."""
    return app.deps.catalogs.translator(app.settings.default_language, app.settings.timezone, "staff")


def _refused(app: App, err: DomainError) -> int:
    """A service refusal as one translated sentence on stderr, and exit status 2."""
    t = _t(app)
    params = {k: (t.date(v) if hasattr(v, "isoformat") and not isinstance(v, str) else v)
              for k, v in err.params.items()}
    print(t(err.key, **params), file=sys.stderr)
    return 2


# -- subcommands -----------------------------------------------------------------------

async def cmd_run(app: App, args: argparse.Namespace) -> int:
    """Every configured channel and HTTP part on one server, the reminder scheduler, until
    SIGINT/SIGTERM (or end of input, when the terminal chat is what runs)."""
    import signal

    from bot import channels
    from bot.channels.base import ChannelError, RunOptions
    from bot.config import parse_listen
    from bot.server import Server

    try:
        host, port = parse_listen(args.listen or app.settings.listen)
    except ValueError:
        print(f"--listen / DOCSACH_LISTEN wants HOST:PORT (e.g. 127.0.0.1:8080), not {args.listen!r}.",
              file=sys.stderr)
        return 2
    if args.webhook and not args.url:
        print("--webhook needs --url https://… (the public address Telegram will call).", file=sys.stderr)
        return 2
    options = RunOptions(host=host, port=port, telegram_webhook_url=args.url if args.webhook else None)
    try:
        running = channels.configured(app, options, terminal_user=getattr(args, "user", None) or "local")
    except ChannelError as exc:
        print(str(exc), file=sys.stderr)
        return exc.exit_code
    await _prepare(app, load_demo=not args.no_demo)
    if any(c.name == "terminal" for c in running) and getattr(args, "as_card", None):
        if await _link_terminal(app, args) != 0:
            return 2
    server = Server(app, host, port)
    server.mount(running)
    server.mount_configured()
    try:
        await server.start()
    except OSError as exc:
        print(f"Cannot listen on {host}:{port} ({exc.strerror or exc}); choose another with --listen.",
              file=sys.stderr)
        return 2
    app.deps.extras["server_url"] = server.url
    from bot.sip2 import start_sip2_server

    try:
        kiosk_server = await start_sip2_server(app, app.settings)   # None unless DOCSACH_SIP2_LISTEN is set
    except DomainError as refusal:
        print(app.deps.catalogs.translator(app.settings.default_language)(refusal.key, **refusal.params),
              file=sys.stderr)
        await server.stop()
        return 2
    print(f"docsach: listening on {server.url} — web chat: {server.url}/chat", file=sys.stderr)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    started: list = []
    scheduler = None
    from bot import alarms

    watchdog = alarms.start(app)   # alarms to the admins (issue 14)
    try:
        for channel in running:
            await channel.start()
            started.append(channel)
        if app.settings.reminders_enabled:
            from bot.scheduler import start_scheduler

            # Channels registered in app.deps.outbound when they started; each sweep uses what is there.
            scheduler = start_scheduler(app.router, interval_minutes=app.settings.reminder_interval_minutes,
                                        first_run_in=_first_sweep_seconds())
        waits = [asyncio.ensure_future(stop.wait())]
        waits += [asyncio.ensure_future(c.finished.wait()) for c in started if getattr(c, "finished", None)]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        return 0
    except ChannelError as exc:
        print(str(exc), file=sys.stderr)
        return exc.exit_code
    finally:
        await alarms.stop(watchdog)
        if scheduler is not None:
            scheduler.shutdown(wait=False)
        if kiosk_server is not None:
            await kiosk_server.close()
        for channel in reversed(started):
            try:
                await channel.stop()
            except Exception:
                log.exception("stopping the %s channel failed", channel.name)
        await server.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)


def _first_sweep_seconds() -> float:
    """Seconds from start to the first sweep (DOCSACH_SCHEDULER_FIRST_RUN_SECONDS; tests shorten it)."""
    import os

    try:
        return max(0.0, float(os.environ.get("DOCSACH_SCHEDULER_FIRST_RUN_SECONDS") or 20))
    except ValueError:
        return 20.0


async def cmd_chat(app: App, args: argparse.Namespace) -> int:
    await _prepare(app, load_demo=not args.no_demo)
    return await _chat(app, args)


async def _chat(app: App, args: argparse.Namespace) -> int:
    from bot.channels.terminal import run_terminal

    if getattr(args, "as_card", None) and await _link_terminal(app, args) != 0:
        return 2
    after_each = None
    if app.settings.reminders_enabled:
        from bot.scheduler import Sweeper

        async def after_each() -> None:
            """Pushed notices for terminal chats (approvals, reminders, holds ready) show up at once."""
            try:
                await Sweeper(app.router, worker="terminal-chat").sweep()
            except Exception:  # a failed sweep must never end the chat; `docsach remind` shows why
                log.warning("outbox sweep failed", exc_info=True)

    await run_terminal(app.router, user=getattr(args, "user", None) or "local", after_each=after_each)
    return 0


async def _link_terminal(app: App, args: argparse.Namespace) -> int:
    """``--as CARD``: the terminal chat speaks as that card (an operator tool on the server)."""
    from bot.channels.terminal import CHANNEL

    user = getattr(args, "user", None) or "local"
    actor = await patrons.resolve_actor(app.db, CHANNEL, user, user, default_language=app.settings.default_language)
    try:
        await patrons.link_trusted(app.db, actor, args.library, args.as_card)
    except DomainError:
        print(_t(app)("cli.no_card", card=args.as_card, library=args.library), file=sys.stderr)
        return 2
    return 0


async def cmd_db_upgrade(app: App, args: argparse.Namespace) -> int:
    await upgrade_async(app.settings.database_url, args.revision)
    print(f"database at {args.revision}: {app.settings.redacted()['database']}")
    return 0


async def cmd_demo_data(app: App, args: argparse.Namespace) -> int:
    await upgrade_async(app.settings.database_url)
    summary = await demo.load_demo(app.db, school_life=True, clock=app.deps.clock)
    state = "loaded" if summary.created else "already present"
    print(f"demo library {state}: {summary.titles} titles, {summary.copies} copies, "
          f"{summary.patrons} people (cards HS001–HS016 students, GV001–GV003 teachers, TT001 librarian, "
          f"AD001 admin)")
    return 0


async def _printed_links(app: App, username: str | None, *, ask_telegram: bool = True) -> bool:
    """Make ``app.deps.printed_link`` work for printed QR codes: ``DOCSACH_PUBLIC_URL/b/…`` when
    set, else the Telegram bot's deep links (``--bot-username``, TELEGRAM_BOT_USERNAME or getMe)."""
    settings = app.settings
    if settings.public_url:
        return True
    username = username or settings.telegram_bot_username
    from bot.channels import telegram

    if not username and settings.telegram_token and ask_telegram:
        username = await telegram.bot_username(settings.telegram_token, settings.telegram_api_base_url)
    if not username:
        return False
    app.deps.channels[telegram.CHANNEL] = telegram.profile(username.lstrip("@"))
    return True


async def cmd_qr(app: App, args: argparse.Namespace) -> int:
    """Print QR labels whose codes open the book, copy or shelf: on the landing page when
    DOCSACH_PUBLIC_URL is set, else in the Telegram bot."""
    from handlers.core import deep_link_payload
    from services import files
    from services.labels import KINDS, Label, catalog_label_items, render_label_sheet

    settings = app.settings
    t = app.deps.catalogs.translator(settings.default_language, settings.timezone)
    try:
        out = files.check_writable(args.out)     # before asking Telegram or drawing any label
    except DomainError as refusal:
        return _refused(app, refusal)
    if not await _printed_links(app, args.bot_username):
        print("The QR codes need somewhere to open: set DOCSACH_PUBLIC_URL (any phone's browser), or "
              "give --bot-username, set TELEGRAM_BOT_USERNAME or TELEGRAM_BOT_TOKEN (Telegram).", file=sys.stderr)
        return 2
    if args.door:
        from bot.sip2_cli import door_label

        return await door_label(app, args)
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
    labels = [Label(app.deps.printed_link(deep_link_payload(item.kind, item.ref)),
                    item.lines + ([t("labels.scan_shelf")] if item.kind == "l" else []))
              for item in items]
    pdf = await asyncio.to_thread(render_label_sheet, labels, columns=args.columns, rows=args.rows,
                                  title=f"{library_name} — {headings[what]}")
    try:
        await asyncio.to_thread(files.write_bytes, out, pdf)
    except DomainError as refusal:
        return _refused(app, refusal)
    pages = -(-len(labels) // (args.columns * args.rows))
    print(f"{len(labels)} labels on {pages} A4 page(s): {out}")
    return 0


async def cmd_staff_login(app: App, args: argparse.Namespace) -> int:
    """A one-time desk sign-in link for a staff member, printed on the server (e.g. the first
    librarian of a school, before anyone has linked a chat)."""
    from services import desk_auth

    await upgrade_async(app.settings.database_url)
    t = app.deps.catalogs.translator(app.settings.default_language, app.settings.timezone)
    try:
        token, name = await desk_auth.operator_link(app.db, args.library, args.card, clock=app.deps.clock)
    except DomainError as refusal:
        print(t(refusal.key, **refusal.params), file=sys.stderr)
        return 2
    base = (args.url or app.settings.public_url or f"http://{args.listen or app.settings.listen}").rstrip("/")
    minutes = int(desk_auth.LINK_TTL.total_seconds() // 60)
    print(t("desk.staff_login", name=name, minutes=minutes))
    print(f"{base}/desk/signin?token={token}")
    return 0


async def cmd_remind(app: App, args: argparse.Namespace) -> int:
    from bot.scheduler import Sweeper
    from services import outbox

    await upgrade_async(app.settings.database_url)
    if args.status:
        counts = await outbox.status_counts(app.db)
        print("notifications: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"))
        t = app.deps.catalogs.translator(app.settings.default_language, app.settings.timezone)
        for status in ("uncertain", "superseded"):
            if counts.get(status):
                print(t(f"outbox.{status}_explained", count=counts[status]))
        return 0
    if args.unreachable:
        rows = await outbox.unreachable_chats(app.db, None)
        for r in rows:
            print(f"{r.card_number}\t{r.full_name}\t{r.class_name or '-'}\t{r.channel}\t{r.since:%Y-%m-%d %H:%M}")
        print(f"{len(rows)} unreachable chat(s)", file=sys.stderr)
        return 0
    if args.requeue_uncertain:
        print(f"re-queued {await outbox.requeue_uncertain(app.db, app.deps.clock)} uncertain notice(s)")
        return 0
    if not (args.once or args.dry_run):
        print("nothing to do: pass --once, --dry-run, --status, --unreachable or --requeue-uncertain",
              file=sys.stderr)
        return 2
    from bot.channels.terminal import CHANNEL, TerminalChannel

    app.deps.outbound.setdefault(CHANNEL, TerminalChannel(sys.stdout))
    closers = await _cli_outbound(app) + _zalo_outbound(app)
    try:
        report = await Sweeper(app.router).sweep(dry_run=args.dry_run, max_messages=args.max)
    finally:
        for close in closers:
            await close()
    if args.dry_run:
        for p in report.preview:
            print(f"--- {p.name} · {p.channel}:{p.chat_id} · {p.kind}\n{p.text}")
        print(f"{len(report.preview)} message(s) would be sent"
              + (f"; libraries in quiet hours: {report.quiet_libraries}" if report.quiet_libraries else ""))
    else:
        print(report.summary())
    return 0


def _zalo_outbound(app: App) -> list:
    """Zalo's output channel for a one-off sweep (no poller): only sends, paced as the bot does."""
    if not app.settings.zalo_token:
        return []
    from bot.channels import zalo

    adapter = zalo.ZaloAdapter(app)
    app.deps.outbound[zalo.CHANNEL] = adapter.channel
    app.deps.channels[zalo.CHANNEL] = zalo.profile(app)
    return [adapter.api.close]


async def _cli_outbound(app: App) -> list:
    """Telegram's output channel for a one-off sweep, when Telegram is configured. Without it,
    notices for Telegram chats stay pending for the running bot (nothing is lost)."""
    if not app.settings.telegram_token:
        return []
    from telegram.ext import ExtBot

    from bot.channels import telegram

    bot = ExtBot(app.settings.telegram_token, base_url=app.settings.telegram_api_base_url,
                 rate_limiter=telegram.ResilientRateLimiter())
    await bot.initialize()
    channel = telegram.TelegramChannel(bot, app.db, clock=app.deps.clock, photos=app.deps.photos)
    app.deps.outbound[channel.name] = channel
    app.deps.channels[channel.name] = telegram.profile(bot.username)
    return [bot.shutdown]


async def cmd_export(app: App, args: argparse.Namespace) -> int:
    """Export a campaign's approved reflections for the ambassador round."""
    from handlers.i18n import Catalogs
    from services import campaigns, files

    await upgrade_async(app.settings.database_url)
    t = Catalogs().translator(args.language or app.settings.default_language, app.settings.timezone)
    try:
        if args.output and args.output != "-":
            files.check_writable(args.output)
        campaign = await campaigns.find(app.db, args.campaign)
        output = Path(args.output or f"reflections-campaign-{campaign.id}.{args.format}")
        if str(output) != "-":
            files.check_writable(output)
        data = await campaigns.export_reflections(app.db, campaign.id, args.format, t,
                                                  shortlisted_only=args.shortlisted)
        if str(output) == "-":
            sys.stdout.buffer.write(data)
            return 0
        await asyncio.to_thread(files.write_bytes, output, data)
    except DomainError as refusal:
        print(t(refusal.key, **refusal.params), file=sys.stderr)
        return 2
    print(f"wrote {output} ({len(data)} bytes)", file=sys.stderr)
    return 0


async def cmd_import_patrons(app: App, args: argparse.Namespace) -> int:
    await upgrade_async(app.settings.database_url)
    try:
        report = await accounts.import_patrons(app.db, args.file, args.library, encoding=args.encoding)
    except DomainError as err:
        return _refused(app, err)
    except OSError as err:
        print(_t(app)("cli.cannot_read", path=args.file, error=err.strerror or err.__class__.__name__), file=sys.stderr)
        return 2
    t = _t(app)
    print(report.summary().text(t))
    for row in report.rejected:
        print(t("imports.patron_line_card" if row.card else "imports.patron_line", line=row.line,
                reason=row.reason.text(t), card=row.card))
    return 1 if report.rejected and not (report.created or report.updated or report.unchanged) else 0


async def cmd_link_codes(app: App, args: argparse.Namespace) -> int:
    import io

    from handlers.account import slips_pdf
    from services import files
    from services.spreadsheets import write_csv as safe_rows

    await upgrade_async(app.settings.database_url)
    try:
        if args.out:
            files.check_writable(args.out)    # before anything is revoked or issued
        actor = await accounts.operator_actor(app.db, args.library)
    except DomainError as err:
        return _refused(app, err)
    t = _t(app)
    if not await _printed_links(app, args.bot, ask_telegram=False):
        # Nothing can open a printed link yet: the QR codes hold the code itself. Say so.
        print(t("cli.no_link_warning"), file=sys.stderr)
    link = app.deps.printed_link

    # The slips are read by the students: their register.
    student_t = app.deps.catalogs.translator(app.settings.default_language, app.settings.timezone, "student")

    async def hand_out(issued: list[accounts.IssuedCode]) -> None:
        """Runs inside the issuing transaction: if the slips cannot be written, no code is
        issued and the old unused slips stay valid."""
        if args.out and args.out.lower().endswith(".pdf"):
            pdf = await slips_pdf(issued, link=link, t=student_t,
                                  school=await catalog.library_name(app.db, actor.library_id))
            await asyncio.to_thread(files.write_bytes, args.out, pdf)
        elif args.out:
            body = io.StringIO(newline="")
            safe_rows(body, [["card", "full_name", "class", "code", "link", "expires"],
                             *([i.card_number, i.full_name, i.class_name or "", i.code,
                                link(i.payload) or i.payload, i.expires_at.astimezone(t.zone).date().isoformat()]
                               for i in issued)])
            await asyncio.to_thread(files.write_text, args.out, body.getvalue(), "utf-8-sig")
        else:
            for i in issued:
                print(f"{i.card_number}\t{i.full_name}\t{i.code}")
            sys.stdout.flush()

    try:
        issued = await accounts.issue_link_codes(app.db, actor, class_name=args.class_name, clock=app.deps.clock,
                                                  key=app.deps.link_code_key, deliver=hand_out)
    except DomainError as err:
        return _refused(app, err)
    print(t("cli.codes_done", count=len(issued), name=args.class_name, date=t.date(issued[0].expires_at))
          + (" → " + args.out if args.out else ""), file=sys.stderr)
    return 0


async def cmd_rules(app: App, args: argparse.Namespace) -> int:
    await upgrade_async(app.settings.database_url)
    try:
        actor = await accounts.operator_actor(app.db, args.library)
        if args.rules_command == "set":
            await rules.set_rule(app.db, actor, args.name, args.value, role=args.role)
        elif args.rules_command == "reset":
            if args.name in ("quiet_hours", "before_days", "overdue_days"):
                await rules.reset_reminder_settings(app.db, actor, args.name)
            else:
                await rules.reset_rule(app.db, actor, args.name, role=args.role)
        elif args.rules_command == "quiet":
            await rules.set_quiet_hours(app.db, actor, args.start, args.end)
        elif args.rules_command == "reminders":
            await rules.set_reminder_days(app.db, actor, before_days=args.before, overdue_days=args.overdue)
        reminder = await rules.reminder_settings(app.db, actor)
    except DomainError as err:
        return _refused(app, err)
    days = "mon tue wed thu fri sat sun".split()
    for role in ("student", "teacher", "librarian", "admin"):
        r = await rules.get_rules(app.db, actor.library_id, role)
        values = ", ".join(f"{name}={getattr(r, name)}" for name in rules.RULE_NAMES if name != "weekend")
        print(f"{role:9} {values}")
    print("weekend   " + (",".join(days[d] for d in r.weekend) or "none"))
    print(f"quiet_hours={reminder.quiet_start:%H:%M}-{reminder.quiet_end:%H:%M}, before_days={reminder.before_days}, "
          f"overdue_days={','.join(map(str, reminder.overdue_days))}")
    return 0


async def cmd_calendar(app: App, args: argparse.Namespace) -> int:
    await upgrade_async(app.settings.database_url)
    t = _t(app)
    try:
        actor = await accounts.operator_actor(app.db, args.library)
        if args.calendar_command == "add":
            start = rules.parse_day(args.start)
            end = rules.parse_day(args.end) if args.end else None
            added = await rules.add_closed_days(app.db, actor, start, end, args.name)
            print(t("cli.calendar_added", id=added.id, start=t.date(added.start), end=t.date(added.end),
                    name=added.name))
            return 0
        if args.calendar_command == "remove":
            await rules.remove_closed_days(app.db, actor, args.id)
            print(t("cli.calendar_removed", id=args.id))
            return 0
        for r in await rules.list_closed_days(app.db, actor):
            print(f"#{r.id}\t{r.start}\t{r.end}\t{r.name}")
        return 0
    except DomainError as err:
        return _refused(app, err)


async def cmd_expire_holds(app: App, args: argparse.Namespace) -> int:
    await upgrade_async(app.settings.database_url)
    report = await circulation.expire_holds(app.db, clock=app.deps.clock)
    print(f"{len(report.expired)} holds expired, {len(report.passed_on)} passed to the next reader")
    return 0


async def cmd_import(app: App, args: argparse.Namespace) -> int:
    from services import importer

    await upgrade_async(app.settings.database_url)
    t = _t(app)
    try:
        report, moved = importer.report_destination(Path(args.file), Path(args.report) if args.report else None)
    except DomainError as refusal:
        return _refused(app, refusal)
    if moved:   # said before importing, not discovered afterwards
        print(t("files.report_moved", folder=str(Path(args.file).parent), path=str(report)), file=sys.stderr)
    try:
        summary = await importer.import_file(
            app.db, Path(args.file), library_code=args.library_code, copies=args.copies,
            progress=_progress_bar(args.quiet), report=report if args.report or moved else None, t=t)
    except importer.MalformedFile as exc:
        if exc.key != "import.malformed":   # a message of its own, in the school's language
            return _refused(app, exc)
        print(f"{args.file}: cannot import: {exc.detail}. Nothing was changed.", file=sys.stderr)
        return 2
    except DomainError as exc:
        t = app.deps.catalogs.translator("en")
        print(f"{args.file}: {t(exc.key, **exc.params)}", file=sys.stderr)
        return 2
    print(f"{args.file} ({summary.format}): " + "".join(part.text(t) for part in summary.line()))
    if args.library_code and not args.copies and not summary.copies_added and (summary.added or summary.updated
                                                                              or summary.unchanged):
        print(_t(app)("cli.no_copies_hint", library=args.library_code), file=sys.stderr)
    if summary.report_path:
        print(t("imports.report_written", path=str(summary.report_path)))
    if summary.report_error is not None:
        _refused(app, summary.report_error)
        return 1
    return 0


def _progress_bar(quiet: bool) -> bool:
    from bot.logs import progress_wanted

    return progress_wanted(not quiet)


async def cmd_search(app: App, args: argparse.Namespace) -> int:
    import json
    import time

    if not args.stdin and not (args.query or "").strip():
        print("give a QUERY, or --stdin to read queries line by line", file=sys.stderr)
        return 2
    search = app.deps.extras["search"]
    library_id = None
    if args.library_code:
        library_id = await catalog.library_id(app.db, args.library_code)
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


# -- operations: doctor, backup, restore (issue 14) -------------------------------------------------

def _ops_t(app: App):
    return app.deps.catalogs.translator(app.settings.default_language, app.settings.timezone)


async def cmd_doctor(app: App, args: argparse.Namespace) -> int:
    from bot import doctor

    report, code = doctor.render(await doctor.diagnose(app.settings, app.db, app.deps.clock), _ops_t(app))
    print(report)
    return code


async def cmd_backup(app: App, args: argparse.Namespace) -> int:
    from bot import backup, doctor

    t = _ops_t(app)
    try:
        manifest = await backup.backup(app.db, Path(args.file), doctor.files_dir(app.settings))
    except backup.BackupError as exc:
        print(t(exc.key, **exc.params), file=sys.stderr)
        return 2
    except OSError as exc:
        print(t("ops.backup_write_failed", path=args.file, error=exc.strerror or type(exc).__name__),
              file=sys.stderr)
        return 2
    print(t("ops.backup_done", path=args.file, rows=sum(manifest.rows.values()), tables=len(manifest.rows),
            files=manifest.files, revision=manifest.revision or "-"))
    return 0


async def cmd_restore(app: App, args: argparse.Namespace) -> int:
    from bot import backup, doctor

    t = _ops_t(app)
    try:
        manifest = await backup.restore(app.db, Path(args.file), doctor.files_dir(app.settings), force=args.force)
    except backup.BackupError as exc:
        print(t(exc.key, **exc.params), file=sys.stderr)
        return 2
    except OSError as exc:
        print(t("ops.restore_failed", error=exc.strerror or type(exc).__name__), file=sys.stderr)
        return 2
    print(t("ops.restore_done", path=args.file, created=manifest.created_at, rows=sum(manifest.rows.values()),
            files=manifest.files))
    return 0


def _add_ops_commands(sub, handlers: dict[str, Callable]) -> None:
    p = sub.add_parser("doctor", help="check the installation and say what to fix",
                       description="Checks the configuration (secret key, time zone, public URL), the "
                                   "database and its migration level, each configured platform token "
                                   "(getMe), the reminder scheduler's last sweep and the free disk space "
                                   "for stored files. Exits 1 when something must be fixed.")
    handlers["doctor"] = cmd_doctor
    p = sub.add_parser("backup", help="write a consistent backup of the database and stored files",
                       description="One archive (.tar.gz) with a consistent snapshot of the database "
                                   "(SQLite's backup API, or pg_dump custom format for PostgreSQL) and the "
                                   "stored files. Safe while the bot runs.")
    p.add_argument("file", help="the archive to write, e.g. docsach-2026-12-01.tar.gz")
    handlers["backup"] = cmd_backup
    p = sub.add_parser("restore", help="restore a backup into an empty database",
                       description="Restore an archive made by `docsach backup`. Refuses a database that "
                                   "holds data (or a non-empty files directory) unless --force. Stop the "
                                   "bot first.")
    p.add_argument("file", help="the archive made by `docsach backup`")
    p.add_argument("--force", action="store_true", help="replace the data that is there now")
    handlers["restore"] = cmd_restore


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
                       description="Start every configured channel on one HTTP server: the web chat "
                                   "(/chat) and QR landing pages (/b/…) always, Telegram when "
                                   "TELEGRAM_BOT_TOKEN is set, Zalo when ZALO_BOT_TOKEN is set (by webhook "
                                   "when ZALO_WEBHOOK_SECRET is set too). Without a messaging platform it "
                                   "also chats in this terminal (when there is input to read), and end of "
                                   "input stops the process. With DOCSACH_SIP2_LISTEN=HOST:PORT also the SIP2 "
                                   "server for self-check kiosks.")
    _add_chat_options(p)
    p.add_argument("--webhook", action="store_true", help="Telegram: receive updates by webhook, not polling")
    p.add_argument("--listen", default=None, metavar="HOST:PORT",
                   help="where the one HTTP server listens: web chat, landing pages, webhooks "
                        "(default: DOCSACH_LISTEN or 127.0.0.1:8080)")
    p.add_argument("--url", default=None, help="webhook: the public https URL Telegram should call "
                                               "(its path is served on --listen)")
    p.add_argument("--workers", type=_positive, default=1, metavar="N",
                   help="run N worker processes on the one --listen address (SO_REUSEPORT); sweeps run "
                        "in all, one of them long-polls (default: 1)")
    handlers["run"] = cmd_run

    p = sub.add_parser("staff-login", help="print a one-time sign-in link to the librarian's desk",
                       description="A one-time link (valid 10 minutes) that signs a teacher, librarian or "
                                   "admin in to the web desk. Staff can also send /web in their chat.")
    p.add_argument("card", help="the staff member's card number")
    p.add_argument("--library", default=None, help="library code (default: DOCSACH_DEFAULT_LIBRARY)")
    p.add_argument("--url", default=None, help="base URL of the desk (default: DOCSACH_PUBLIC_URL, else --listen)")
    p.add_argument("--listen", default=None, help="the server's HOST:PORT when no URL is set "
                                                    "(default: DOCSACH_LISTEN)")
    handlers["staff-login"] = cmd_staff_login

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
                       description="A printable A4 sheet of QR labels. Scanning one opens that book "
                                   "(with a Reserve button), copy, or shelf/classroom list: on "
                                   "DOCSACH_PUBLIC_URL/b/… in any phone's browser when that is set, "
                                   "else in the Telegram bot (https://t.me/<bot>?start=…).")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--titles", action="store_true", help="one label per title the library holds")
    which.add_argument("--copies", action="store_true", help="one label per copy (with its barcode)")
    which.add_argument("--shelves", action="store_true", help="one label per shelf and classroom corner")
    which.add_argument("--door", action="store_true", help="the library door's check-in QR (a visit per reader per day)")
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
    p = sub.add_parser("remind", help="run one reminder sweep by hand, or inspect the outbox",
                       description="Reminders are swept every few minutes by `docsach run`. This runs one "
                                   "sweep by hand (--once), shows what would be sent (--dry-run: nothing is "
                                   "recorded, claimed or sent), or inspects the outbox.")
    p.add_argument("--once", action="store_true", help="plan and send what is due now, then exit")
    p.add_argument("--dry-run", action="store_true", help="list what would be sent, without sending or claiming")
    p.add_argument("--max", type=int, default=None, metavar="N", help="send at most N messages")
    p.add_argument("--status", action="store_true", help="count notifications by status")
    p.add_argument("--unreachable", action="store_true",
                   help="list patrons whose chat blocked the bot (they get no reminders)")
    p.add_argument("--requeue-uncertain", action="store_true",
                   help="send again the notices whose delivery was uncertain (a deliberate human decision: "
                        "they may have arrived, so readers may get them twice)")
    handlers["remind"] = cmd_remind
    from bot import sip2_cli

    sip2_cli.add_parser(sub, handlers)


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

    p = sub.add_parser("import-patrons", help="import students and staff from a CSV file",
                       description="Create or update a library's patrons from a CSV export (columns: card/student "
                                   "id, full name, class, grade, role; Vietnamese or English headers such as "
                                   "'Mã HS, Họ và tên, Lớp, Khối, Vai trò'). Safe to run again; rejected rows "
                                   "are listed with the reason.")
    p.add_argument("file", help="the CSV file (UTF-8; ',' or ';' separated)")
    p.add_argument("--library", required=True, help="library code, e.g. demo")
    p.add_argument("--encoding", default=None, metavar="NAME",
                   help="the file's encoding when it is not UTF-8, e.g. cp1258 (old Vietnamese Windows) or "
                        "latin-1; without it a file that is not clearly UTF-8 or Vietnamese cp1258 is refused")
    handlers["import-patrons"] = cmd_import_patrons

    p = sub.add_parser("link-codes", help="new link codes for a class (slips to hand out)",
                       description="Issue single-use codes (valid 14 days) that link a student's chat to their "
                                   "card. Earlier unused codes of those students stop working.")
    p.add_argument("--class", dest="class_name", required=True, help="class name, e.g. 11A1")
    p.add_argument("--library", default=None, help="library code (default: DOCSACH_DEFAULT_LIBRARY)")
    p.add_argument("--out", default=None, help="write slips to FILE.pdf (QR + code) or FILE.csv; default: print")
    p.add_argument("--bot", default=None, help="bot username for the t.me links in QR codes")
    handlers["link-codes"] = cmd_link_codes

    p = sub.add_parser("rules", help="show or change circulation rules, quiet hours and reminder days",
                       description="Circulation rules per library and role: " + ", ".join(rules.RULE_NAMES)
                       + "; and the library's reminder quiet hours and days.")
    p.add_argument("--library", default=None, help="library code (default: DOCSACH_DEFAULT_LIBRARY)")
    rules_sub = p.add_subparsers(dest="rules_command", metavar="ACTION")
    rules_sub.add_parser("show", help="show the effective rules for every role")
    rs = rules_sub.add_parser("set", help="set one rule, e.g. `rules set loan_days 21 --role teacher`")
    rs.add_argument("name", choices=rules.RULE_NAMES)
    rs.add_argument("value", help="a number; for weekend, days like sat,sun or sun or none")
    rs.add_argument("--role", default=None, choices=["student", "teacher", "librarian", "admin"])
    rr = rules_sub.add_parser("reset", help="back to the default for one rule (or quiet_hours, before_days, "
                                            "overdue_days)")
    rr.add_argument("name", choices=rules.RULE_NAMES + ("quiet_hours", "before_days", "overdue_days"))
    rq = rules_sub.add_parser("quiet", help="no reminders between START and END, school time "
                                            "(e.g. `rules quiet 21:00 06:30`)")
    rq.add_argument("start", help="e.g. 20:00 or 20h")
    rq.add_argument("end", help="e.g. 07:00 or 7h")
    rm = rules_sub.add_parser("reminders", help="when reminders go out "
                                                "(e.g. `rules reminders --before 2 --overdue 1,7,14`)")
    rm.add_argument("--before", metavar="DAYS", help="days before the due date for the due-soon reminder (0: none)")
    rm.add_argument("--overdue", metavar="DAYS", help="days after the due date for overdue reminders, e.g. 1,7,14")
    rr.add_argument("--role", default=None, choices=["student", "teacher", "librarian", "admin"])
    handlers["rules"] = cmd_rules

    p = sub.add_parser("calendar", help="days the library is closed (holidays, Tết, summer)",
                       description="Closed days are skipped by due dates and pickup deadlines.")
    p.add_argument("--library", default=None, help="library code (default: DOCSACH_DEFAULT_LIBRARY)")
    cal_sub = p.add_subparsers(dest="calendar_command", metavar="ACTION", required=True)
    ca = cal_sub.add_parser("add", help="close from START to END (inclusive)")
    ca.add_argument("start", help="DD/MM/YYYY (as in chat) or YYYY-MM-DD")
    ca.add_argument("end", nargs="?", default=None, help="DD/MM/YYYY or YYYY-MM-DD (default: START)")
    ca.add_argument("--name", default="", help='e.g. "Tết Nguyên đán"')
    cal_sub.add_parser("list", help="list closed days")
    cr = cal_sub.add_parser("remove", help="remove a closed range by its #id")
    cr.add_argument("id", type=int)
    handlers["calendar"] = cmd_calendar

    p = sub.add_parser("expire-holds", help="expire reservations not picked up in time",
                       description="Reservations past their pickup deadline expire; the copy goes to the next "
                                   "reader in the queue. Safe to run from several places.")
    handlers["expire-holds"] = cmd_expire_holds

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
    _add_ops_commands(sub, handlers)
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
    _setup_logging(settings, quiet=args.command in ("chat", "search", "import", "doctor", "backup", "restore") or
                   (args.command == "run" and not settings.telegram_token and not settings.zalo_token))
    ensure_sqlite_folder(settings.database_url)
    app = build_app(settings)
    t = _t(app)
    url = settings.redacted()["database"]
    # search and import print for scripts, backup/restore speak in exact sentences; the rest says where it works
    if args.command not in ("search", "import", "backup", "restore"):
        print(t("cli.database", url=url), file=sys.stderr)
    try:
        return await handlers[args.command](app, args)
    except DomainError as err:
        return _refused(app, err)
    except (OperationalError, InterfaceError, ConnectionError) as exc:
        log.debug("database error", exc_info=True)
        print(t("cli.database_unavailable", url=url, error=str(getattr(exc, "orig", exc)).splitlines()[0][:200]),
              file=sys.stderr)
        return 1
    except OSError as exc:
        log.debug("os error", exc_info=True)
        print(t("cli.failed", error=f"{exc.strerror or exc} {exc.filename or ''}".strip()), file=sys.stderr)
        return 1
    finally:
        await app.close()


def _supervise(argv: list[str] | None) -> int | None:
    """``docsach run --workers N`` (N > 1): start and watch N worker processes (bot/workers.py)."""
    raw = list(sys.argv[1:] if argv is None else argv)
    if "run" not in raw:
        return None
    parser, _ = build_parser()
    args, _unknown = parser.parse_known_args(raw)
    if args.command != "run" or args.workers <= 1:
        return None
    from bot import workers

    settings = Settings.from_env()
    _setup_logging(settings)
    return workers.supervise(raw[raw.index("run") + 1:], args.workers, database_url=settings.database_url)


def main(argv: list[str] | None = None) -> int:
    try:
        supervised = _supervise(argv)
        if supervised is not None:
            return supervised
        return asyncio.run(_main(argv))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

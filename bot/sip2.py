"""The SIP2 server that self-check kiosks talk to (asyncio; plain TCP, or TLS with a certificate).

One task per connection; each message is answered before the next is read, as SIP2 requires.
The wire format lives in ``services.sip2``; what a kiosk may do lives in ``services.kiosks`` and
``services.circulation`` (the same rules, limits, holds and audit log as the chat and the desk).
A connection can never take the server down: bad bytes get ``96`` (resend), an over-long line is
dropped, and anything unexpected is logged and answered with a refusal of the right type.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import os
import ssl
import time
from dataclasses import dataclass, field
from datetime import date

from handlers.core import Deps
from handlers.i18n import Translator
from services import circulation, kiosks, sip2, visits
from services.common import DomainError
from services.kiosks import KioskInfo, PatronView, ReceiptBook
from services.models import CopyStatus
from services.patrons import pick_language
from services.sip2 import Reply, Request, count4, flag, sip_datetime, sip_due

log = logging.getLogger(__name__)
Patronish = PatronView | kiosks.PatronBrief   # what a reply needs of the reader: id and language

MAX_LINE = 8192              # a real SIP2 message is far shorter; longer lines are dropped
IDLE_SECONDS = 1800          # kiosks poll with SC Status; a silent connection is closed
MAX_BAD_IN_A_ROW = 20        # garbled messages before the connection is closed
ENABLED_RECHECK = 10.0       # seconds between checks that the kiosk was not disabled meanwhile
SCREEN_DATE = "dd/MM/yyyy"

# Circulation's refusals, said to the reader in front of the kiosk (neutral register: students and
# teachers use the same machine).
SCREEN = {
    "circulation.copy_not_found": "sip2.screen_item_unknown",
    "circulation.patron_not_found": "sip2.screen_card_unknown",
    "circulation.patron_inactive": "sip2.screen_card_blocked",
    "circulation.loan_limit": "sip2.screen_loan_limit",
    "circulation.blocked_overdue": "sip2.screen_blocked_overdue",
    "circulation.copy_on_loan": "sip2.screen_item_on_loan",
    "circulation.copy_held_for_other": "sip2.screen_item_held",
    "circulation.copy_unavailable": "sip2.screen_item_unavailable",
    "circulation.not_on_loan": "sip2.screen_not_on_loan",
    "circulation.already_returned": "sip2.screen_not_on_loan",
    "circulation.renew_holds_waiting": "sip2.screen_renew_waiting",
    "circulation.renew_limit": "sip2.screen_renew_limit",
    "circulation.renew_too_overdue": "sip2.screen_renew_overdue",
    "circulation.already_renewed": "sip2.screen_renew_again",
    "circulation.busy": "sip2.screen_busy",
}

# SIP2 circulation status (item information) for each copy status.
CIRCULATION_STATUS = {
    CopyStatus.AVAILABLE: "03",
    CopyStatus.ON_LOAN: "04",
    CopyStatus.ON_HOLD_SHELF: "08",
    CopyStatus.IN_REPAIR: "06",
    CopyStatus.LOST: "12",
    CopyStatus.WITHDRAWN: "01",
}


@dataclass
class Config:
    host: str = "127.0.0.1"
    port: int = 6001
    ssl_context: ssl.SSLContext | None = None
    encoding: str = "utf-8"
    idle_seconds: float = IDLE_SECONDS
    failed_login_delay: float = 1.0     # slows a guesser on one connection; limits are in the database


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:6001`` for IPv6) → (host, port)."""
    host, sep, port = value.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"DOCSACH_SIP2_LISTEN must be HOST:PORT, not {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


@dataclass
class Session:
    """One kiosk connection."""

    address: str
    kiosk: KioskInfo | None = None
    receipts: ReceiptBook | None = None
    print_width: int = 40
    last_text: str | None = None
    last_reply: bytes | None = None
    patron_card: str | None = None
    patron_id: int | None = None
    visited: set[int] = field(default_factory=set)
    enabled_checked: float = 0.0
    closing: bool = False
    brief: kiosks.PatronBrief | None = None


class Sip2Server:
    def __init__(self, deps: Deps, config: Config) -> None:
        self.deps = deps
        self.config = config
        self.server: asyncio.Server | None = None
        self.connections: dict[asyncio.Task, asyncio.StreamWriter] = {}
        self.closing = False

    @property
    def db(self):
        return self.deps.db

    @property
    def clock(self):
        return self.deps.clock

    async def start(self) -> Sip2Server:
        from bot.workers import reuse_port

        # Under ``docsach run --workers N`` every worker listens on the same port (the kernel spreads
        # the kiosks' connections), like the HTTP server does.
        self.server = await asyncio.start_server(self._connection, self.config.host, self.config.port,
                                                 ssl=self.config.ssl_context, limit=MAX_LINE * 2,
                                                 reuse_port=reuse_port() or None)
        sockets = self.server.sockets or []
        if sockets:
            self.config.port = sockets[0].getsockname()[1]
        log.info("SIP2 server listening on %s:%s (%s)", self.config.host, self.config.port,
                 "TLS" if self.config.ssl_context else "plain TCP")
        return self

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        self.closing = True
        tasks = list(self.connections)
        for task, writer in list(self.connections.items()):
            writer.transport.abort()     # the reader sees the end at once, whatever it awaits
            task.cancel()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=5)
            if stuck:
                log.warning("SIP2: %d connection(s) did not close in time", len(stuck))
        if self.server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 5)

    # -- connections ----------------------------------------------------------------------------
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self.connections[task] = writer
        peer = writer.get_extra_info("peername")
        session = Session(address=str(peer[0]) if peer else "?")
        try:
            await self._serve(reader, writer, session)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, TimeoutError):
            pass
        except asyncio.CancelledError:
            pass   # the server is shutting down
        except Exception:
            log.exception("SIP2 connection from %s failed", session.address)
        finally:
            self.connections.pop(task, None)
            if session.receipts is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(session.receipts.end(self.db))
            with contextlib.suppress(Exception):
                writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, session: Session) -> None:
        buffer = b""
        discarding = False
        bad = 0
        while not self.closing:
            chunk = await asyncio.wait_for(reader.read(4096), self.config.idle_seconds)
            if not chunk:
                return
            if not buffer and not discarding and chunk[:2] == b"\x16\x03" and self.config.ssl_context is None:
                return   # a TLS handshake on the plain port: hang up so the client sees it at once
            buffer += chunk
            while True:
                cut = min((i for i in (buffer.find(b"\r"), buffer.find(b"\n")) if i >= 0), default=-1)
                if cut < 0:
                    if len(buffer) > MAX_LINE:
                        if not discarding:
                            log.warning("SIP2 %s: dropped an over-long message", session.address)
                            bad += 1
                            writer.write(sip2.resend_request())
                            await writer.drain()
                        discarding, buffer = True, b""
                    break
                line, buffer = buffer[:cut], buffer[cut + 1:]
                if discarding:
                    discarding = False
                    continue
                if not line.strip():
                    continue
                reply = await self._answer(line, session)
                bad = bad + 1 if reply == sip2.resend_request() else 0
                if bad > MAX_BAD_IN_A_ROW:
                    log.warning("SIP2 %s: too many garbled messages, closing", session.address)
                    return
                writer.write(reply)
                await writer.drain()
                if session.closing:   # the kiosk was disabled while connected
                    return

    async def _answer(self, line: bytes, session: Session) -> bytes:
        encoding = self.config.encoding
        try:
            req = sip2.parse(line, encoding)
        except sip2.BadMessage:
            return sip2.resend_request()
        if req.checksum_ok is False:
            return sip2.resend_request()
        if req.code == "97":
            return session.last_reply or sip2.resend_request()
        if req.sequence is not None and req.text == session.last_text and session.last_reply:
            return session.last_reply    # the kiosk did not get our reply and sent the same message again
        try:
            reply = await self._dispatch(req, session)
        except DomainError as refusal:
            reply = self._refusal(req, session, self._screen(session, refusal))
        except Exception:
            log.exception("SIP2 %s: message %s failed", session.address, req.code)
            reply = self._refusal(req, session, self._t(session)("sip2.screen_error"))
        data = reply.encode(req.sequence, encoding)
        session.last_text, session.last_reply = req.text, data
        return data

    # -- helpers ----------------------------------------------------------------------------------
    def _zone(self, session: Session) -> str:
        return session.kiosk.timezone if session.kiosk else self.deps.timezone

    def _t(self, session: Session, language: str | None = None) -> Translator:
        lang = pick_language(language, default=self.deps.default_language)
        return self.deps.catalogs.translator(lang, self._zone(session))

    def _tp(self, session: Session, patron: Patronish | None, req: Request | None = None) -> Translator:
        """The patron's language: their own setting, else what the kiosk asked for, else the default."""
        asked = sip2.language_from_code(req.fixed.get("language", "")) if req is not None else None
        return self._t(session, (patron.language if patron else None) or asked)

    def _now(self, session: Session) -> str:
        return sip_datetime(self.clock.now(), self._zone(session))

    def _screen(self, session: Session, refusal: DomainError, t: Translator | None = None) -> str:
        t = t or self._t(session)
        key = SCREEN.get(refusal.key, "sip2.screen_refused")
        params = dict(refusal.params)
        for name, value in list(params.items()):
            if isinstance(value, date):
                params[name] = t.date(value, SCREEN_DATE)
        return t(key, **params)

    def _lines(self, session: Session, text: str) -> list[str]:
        return sip2.wrap(text, session.print_width)

    def _institution(self, session: Session, req: Request) -> str:
        return session.kiosk.library_code if session.kiosk else req.get("AO")

    async def _still_enabled(self, session: Session) -> bool:
        now = time.monotonic()
        if now - session.enabled_checked < ENABLED_RECHECK:
            return True
        session.enabled_checked = now
        return await kiosks.still_enabled(self.db, session.kiosk.id)

    async def _patron_session(self, session: Session, card: str) -> None:
        """A message for another card than the current one ends the previous patron's session."""
        if session.patron_card is not None and card != session.patron_card and session.receipts is not None:
            if session.patron_id is not None:
                await session.receipts.end(self.db, session.patron_id)
        if card != session.patron_card:
            session.patron_card, session.patron_id, session.brief = card, None, None

    async def _visit(self, session: Session, patron: PatronView) -> None:
        if patron.patron_id in session.visited or not patron.active:
            return
        async with self.db.transaction() as s:
            await visits.record(s, library_id=session.kiosk.library_id, patron_id=patron.patron_id, source="sip2",
                                clock=self.clock, timezone=session.kiosk.timezone)
        session.visited.add(patron.patron_id)

    # -- dispatch ---------------------------------------------------------------------------------
    async def _dispatch(self, req: Request, session: Session) -> Reply:
        if req.code == "93":
            return await self._login(req, session)
        if session.kiosk is None:
            if req.code == "99":
                return self._status(req, session, online=False)
            return self._refusal(req, session, self._t(session)("sip2.screen_login_first"))
        if not await self._still_enabled(session):
            message = self._t(session)("sip2.screen_kiosk_disabled")
            reply = self._refusal(req, session, message) if req.code != "99" else self._status(req, session, False)
            session.closing = True
            return reply
        handler = {
            "99": self._sc_status, "63": self._patron_information, "23": self._patron_status,
            "17": self._item_information, "11": self._checkout, "09": self._checkin, "29": self._renew,
            "65": self._renew_all, "35": self._end_session, "01": self._block,
        }.get(req.code)
        if handler is None:   # understood but not offered (see services.sip2.SUPPORTED)
            return self._refusal(req, session, self._t(session)("sip2.screen_not_supported"))
        return await handler(req, session)

    async def _login(self, req: Request, session: Session) -> Reply:
        try:
            kiosk = await kiosks.authenticate(self.db, req.get("CN"), req.get("CO"), address=session.address,
                                              clock=self.clock)
        except kiosks.LoginRefused as refused:
            log.warning("SIP2 %s: login as %r refused (%s)", session.address, req.get("CN")[:40], refused.reason)
            await asyncio.sleep(self.config.failed_login_delay)
            return Reply("94", "0")
        session.kiosk = kiosk
        session.receipts = ReceiptBook(kiosk, self.clock)
        session.enabled_checked = time.monotonic()
        log.info("SIP2 %s: kiosk %s logged in (library %s)", session.address, kiosk.name, kiosk.library_code)
        return Reply("94", "1")

    def _status(self, req: Request, session: Session, online: bool) -> Reply:
        ok = flag(online)
        reply = Reply("98", ok + ok + ok + ok + "N" + "N" + "050" + "003" + self._now(session) + "2.00")
        reply.add("AO", self._institution(session, req), always=True)
        if session.kiosk is not None:
            reply.add("AM", session.kiosk.library_name)
        reply.add("BX", sip2.supported_messages() if online else "N" * 16)
        if session.kiosk is not None:
            reply.add("AN", session.kiosk.name)
        if not online:
            reply.add("AF", self._t(session)("sip2.screen_login_first"))
        return reply

    async def _sc_status(self, req: Request, session: Session) -> Reply:
        width = req.fixed.get("max_print_width", "").strip()
        if width.isdigit() and int(width) > 0:
            session.print_width = int(width)
        return self._status(req, session, online=True)

    # -- patrons ----------------------------------------------------------------------------------
    def _patron_status_field(self, patron: PatronView | None) -> str:
        """14 flags, Y = denied: charge, renew, recall, hold, card lost, too many charged, too many
        overdue, too many renewals, claims returned, lost, fines, fees, recall overdue, billed."""
        if patron is None:
            return "Y" * 14
        flags = [" "] * 14
        if not patron.active:
            for i in (0, 1, 2, 3):
                flags[i] = "Y"
        if patron.at_loan_limit:
            flags[0] = flags[5] = "Y"
        if patron.blocked_overdue:
            flags[0] = flags[1] = flags[3] = flags[6] = "Y"
        return "".join(flags)

    def _screen_for(self, session: Session, patron: PatronView, t: Translator) -> str:
        if not patron.active:
            return t("sip2.screen_card_blocked")
        if patron.blocked_overdue:
            days = max((self.clock.today(self._zone(session)) - item.due_date).days for item in patron.overdue)
            return t("sip2.screen_blocked_overdue", days=days)
        if patron.at_loan_limit:
            return t("sip2.screen_loan_limit", limit=patron.max_loans)
        return t("sip2.screen_hello", name=patron.full_name, count=len(patron.charged),
                 limit=patron.max_loans)

    async def _find_patron(self, req: Request, session: Session) -> PatronView | None:
        card = req.get("AA").strip()
        await self._patron_session(session, card)
        try:
            patron = await kiosks.find_patron(self.db, session.kiosk, card, clock=self.clock)
        except DomainError:
            return None
        session.patron_id = patron.patron_id
        return patron

    async def _brief(self, req: Request, session: Session) -> kiosks.PatronBrief | None:
        """Who is borrowing: looked up once per patron session (limits are checked by circulation)."""
        card = req.get("AA").strip()
        await self._patron_session(session, card)
        if session.brief is not None and session.brief.card_number.upper() == card.upper():
            return session.brief
        try:
            session.brief = await kiosks.find_patron_brief(self.db, session.kiosk, card)
        except DomainError:
            return None
        session.patron_id = session.brief.patron_id
        return session.brief

    async def _patron_status(self, req: Request, session: Session) -> Reply:
        patron = await self._find_patron(req, session)
        t = self._tp(session, patron, req)
        reply = Reply("24", self._patron_status_field(patron)
                      + sip2.language_code(t.lang) + self._now(session))
        reply.add("AO", self._institution(session, req), always=True)
        reply.add("AA", req.get("AA"), always=True)
        reply.add("AE", patron.full_name if patron else "", always=True)
        reply.add("BL", flag(patron is not None))
        reply.add("CQ", flag(patron is not None))
        if patron is None:
            reply.add("AF", t("sip2.screen_card_unknown", ref=req.get("AA")[:32]))
            return reply
        await self._visit(session, patron)
        reply.add("AF", self._screen_for(session, patron, t))
        return reply

    async def _patron_information(self, req: Request, session: Session) -> Reply:
        patron = await self._find_patron(req, session)
        t = self._tp(session, patron, req)
        lists = ([], [], [], [], [], []) if patron is None else (
            patron.holds_ready, patron.overdue, patron.charged, [], [], patron.holds_waiting)
        reply = Reply("64", self._patron_status_field(patron) + sip2.language_code(t.lang) + self._now(session)
                      + "".join(count4(len(items)) for items in lists))
        reply.add("AO", self._institution(session, req), always=True)
        reply.add("AA", req.get("AA"), always=True)
        reply.add("AE", patron.full_name if patron else "", always=True)
        if patron is None:
            reply.add("BL", "N")
            reply.add("CQ", "N")
            reply.add("AF", t("sip2.screen_card_unknown", ref=req.get("AA")[:32]))
            return reply
        await self._visit(session, patron)
        reply.add("BZ", count4(patron.max_holds))
        reply.add("CB", count4(patron.max_loans))
        reply.add("BL", "Y")
        reply.add("CQ", "Y")
        summary = (req.fixed.get("summary") or "").ljust(10)
        start, end = _range(req.get("BP"), req.get("BQ"))
        for position, code in ((0, "AS"), (1, "AT"), (2, "AU"), (5, "CD")):
            if summary[position] != " " and summary[position] != "N":
                for item in lists[position][start:end]:
                    reply.add(code, _item_text(item))
        reply.add("AF", self._screen_for(session, patron, t))
        return reply

    async def _block(self, req: Request, session: Session) -> Reply:
        card = req.get("AA").strip()
        patron = await kiosks.block_patron(self.db, session.kiosk, card, req.get("AL"), clock=self.clock)
        t = self._tp(session, patron)
        log.warning("SIP2 kiosk %s blocked card %s: %s", session.kiosk.name, card, req.get("AL")[:80])
        reply = Reply("24", self._patron_status_field(patron) + sip2.language_code(t.lang) + self._now(session))
        reply.add("AO", self._institution(session, req), always=True)
        reply.add("AA", card, always=True)
        reply.add("AE", patron.full_name, always=True)
        reply.add("BL", "Y")
        reply.add("AF", t("sip2.screen_card_blocked"))
        return reply

    # -- items ------------------------------------------------------------------------------------
    async def _item_information(self, req: Request, session: Session) -> Reply:
        t = self._t(session)
        try:
            item = await kiosks.find_item(self.db, session.kiosk, req.get("AB"))
        except DomainError as refusal:
            return self._refusal(req, session, self._screen(session, refusal, t))
        zone = self._zone(session)
        reply = Reply("18", CIRCULATION_STATUS.get(item.status, "01") + "00" + "01" + self._now(session))
        reply.add("CF", count4(item.holds_waiting))
        if item.due_date:
            reply.add("AH", sip_due(item.due_date, zone))
        if item.pickup_deadline:
            reply.add("CM", sip_due(item.pickup_deadline, zone))
        reply.add("AB", item.barcode, always=True)
        reply.add("AJ", item.title, always=True)
        reply.add("BG", session.kiosk.library_code)
        reply.add("CK", "001")
        if item.location:
            reply.add("AQ", item.location)
            reply.add("AP", item.location)
        status_key = {
            CopyStatus.AVAILABLE: "sip2.item_available", CopyStatus.ON_LOAN: "sip2.item_on_loan",
            CopyStatus.ON_HOLD_SHELF: "sip2.item_on_hold_shelf",
        }.get(item.status, "sip2.item_not_lendable")
        due = t.date(item.due_date, SCREEN_DATE) if item.due_date else ""
        reply.add("AF", t(status_key, title=item.title, due=due, location=item.location or "—"))
        return reply

    async def _checkout(self, req: Request, session: Session) -> Reply:
        card, barcode = req.get("AA").strip(), req.get("AB").strip()
        patron = await self._brief(req, session) if card else None
        t = self._tp(session, patron)
        if patron is None or not barcode:
            key = "sip2.screen_card_unknown" if patron is None else "sip2.screen_item_unknown"
            return self._refusal(req, session, t(key, ref=(card if patron is None else barcode)[:32]))
        actor = session.kiosk.actor(t.lang)
        book = session.receipts
        try:
            result = await circulation.check_out(self.db, actor, barcode, patron.patron_id, clock=self.clock,
                                                 within=book.hook("checkout", patron.patron_id))
        except DomainError as refusal:
            book.rolled_back()
            if refusal.key == "circulation.already_lent_to_patron":
                return await self._already_yours(req, session, patron, barcode, t)
            return self._refusal(req, session, self._screen(session, refusal, t))
        book.committed()
        due = t.date(result.due_date, SCREEN_DATE)
        reply = Reply("12", "1" + "N" + "N" + "Y" + self._now(session))
        self._item_fields(reply, req, session, result.barcode, result.title, result.due_date)
        reply.add("BK", f"loan-{result.loan_id}")
        reply.add("AF", t("sip2.screen_checked_out", title=result.title, due=due))
        for line in self._lines(session, t("sip2.print_checked_out", title=result.title, due=due)):
            reply.add("AG", line)
        return reply

    async def _already_yours(self, req: Request, session: Session, patron: Patronish, barcode: str,
                             t: Translator) -> Reply:
        """Scanned again by the reader who has it: renew when the kiosk's policy allows, else say so."""
        loan = await kiosks.loan_of(self.db, session.kiosk, patron.patron_id, barcode=barcode)
        if loan is None:
            return self._refusal(req, session, t("sip2.screen_refused"))
        if req.fixed.get("sc_renewal_policy") == "Y":
            return await self._renew_loan(req, session, patron, loan, t, code="12")
        due = t.date(loan.due_date, SCREEN_DATE)
        reply = Reply("12", "1" + "N" + "N" + "Y" + self._now(session))
        self._item_fields(reply, req, session, loan.barcode, loan.title, loan.due_date)
        reply.add("AF", t("sip2.screen_already_yours", title=loan.title, due=due))
        return reply

    def _item_fields(self, reply: Reply, req: Request, session: Session, barcode: str | None, title: str,
                     due: date | None) -> None:
        reply.add("AO", self._institution(session, req), always=True)
        reply.add("AA", req.get("AA"), always=True)
        reply.add("AB", barcode or req.get("AB"), always=True)
        reply.add("AJ", title, always=True)
        reply.add("AH", sip_due(due, self._zone(session)) if due else "", always=True)
        reply.add("CK", "001")

    async def _checkin(self, req: Request, session: Session) -> Reply:
        barcode = req.get("AB").strip()
        t = self._t(session)
        if not barcode:
            return self._refusal(req, session, t("sip2.screen_item_unknown", ref=""))
        actor = session.kiosk.actor(t.lang)
        book = session.receipts
        receipt = book.hook("return")
        found: dict[str, str | None] = {}

        async def within(s, result) -> None:   # the receipt, and the shelf to name, in the same transaction
            await receipt(s, result)
            found["location"] = await kiosks.copy_location(s, result.copy_id)

        try:
            result = await circulation.check_in(self.db, actor, barcode, clock=self.clock, within=within)
        except DomainError as refusal:
            book.rolled_back()
            return self._refusal(req, session, self._screen(session, refusal, t))
        book.committed()
        location = found.get("location")
        held = result.held_for_hold_id is not None
        reply = Reply("10", "1" + flag(not held) + "N" + flag(held) + self._now(session))
        reply.add("AO", self._institution(session, req), always=True)
        reply.add("AB", result.barcode, always=True)
        reply.add("AQ", location or session.kiosk.library_code, always=True)
        reply.add("AJ", result.title)
        reply.add("AA", result.card_number)
        reply.add("CK", "001")
        if held:
            first = (result.held_for_name or "").split()
            reply.add("CL", "HOLD")
            reply.add("CV", "02")
            reply.add("CY", result.held_for_card)
            reply.add("DA", result.held_for_name)
            reply.add("AF", t("sip2.screen_returned_hold", title=result.title, card=result.held_for_card,
                              name=first[-1] if first else ""))
        else:
            reply.add("AF", t("sip2.screen_returned", title=result.title))
        for line in self._lines(session, t("sip2.print_returned", title=result.title)):
            reply.add("AG", line)
        return reply

    async def _renew(self, req: Request, session: Session) -> Reply:
        card = req.get("AA").strip()
        patron = await self._brief(req, session) if card else None
        t = self._tp(session, patron)
        if patron is None:
            return self._refusal(req, session, t("sip2.screen_card_unknown", ref=card[:32]))
        barcode, title = req.get("AB").strip(), req.get("AJ").strip()
        loan = await kiosks.loan_of(self.db, session.kiosk, patron.patron_id, barcode=barcode, title=title)
        if loan is None and barcode and " " in barcode:   # an AU line sent back ("BARCODE Title")
            loan = await kiosks.loan_of(self.db, session.kiosk, patron.patron_id, barcode=barcode.split()[0])
        if loan is None:
            return self._refusal(req, session, t("sip2.screen_not_yours", ref=(barcode or title)[:40]))
        return await self._renew_loan(req, session, patron, loan, t, code="30")

    async def _renew_loan(self, req: Request, session: Session, patron: Patronish, loan: kiosks.ItemLine,
                          t: Translator, *, code: str) -> Reply:
        actor = session.kiosk.actor(t.lang)
        book = session.receipts
        try:
            result = await circulation.renew_loan(self.db, actor, loan.loan_id, clock=self.clock,
                                                  expected_renewals=loan.renewals,
                                                  within=book.hook("renew", patron.patron_id))
        except DomainError as refusal:
            book.rolled_back()
            reply = self._refusal(req, session, self._screen(session, refusal, t), code=code)
            return reply
        book.committed()
        due = t.date(result.due_date, SCREEN_DATE)
        reply = Reply(code, "1" + "Y" + "N" + "Y" + self._now(session))
        self._item_fields(reply, req, session, loan.barcode, result.title, result.due_date)
        reply.add("AF", t("sip2.screen_renewed", title=result.title, due=due))
        for line in self._lines(session, t("sip2.print_renewed", title=result.title, due=due)):
            reply.add("AG", line)
        return reply

    async def _renew_all(self, req: Request, session: Session) -> Reply:
        card = req.get("AA").strip()
        patron = await self._find_patron(req, session) if card else None
        t = self._tp(session, patron)
        if patron is None:
            return self._refusal(req, session, t("sip2.screen_card_unknown", ref=card[:32]))
        actor = session.kiosk.actor(t.lang)
        book = session.receipts
        renewed: list[str] = []
        refused: list[str] = []
        lines: list[str] = []
        for item in patron.charged:
            try:
                result = await circulation.renew_loan(self.db, actor, item.loan_id, clock=self.clock,
                                                      expected_renewals=item.renewals,
                                                      within=book.hook("renew", patron.patron_id))
            except DomainError:
                book.rolled_back()
                refused.append(item.barcode or "")
                continue
            book.committed()
            renewed.append(item.barcode or "")
            lines += self._lines(session, t("sip2.print_renewed", title=result.title,
                                             due=t.date(result.due_date, SCREEN_DATE)))
        reply = Reply("66", "1" + count4(len(renewed)) + count4(len(refused)) + self._now(session))
        reply.add("AO", self._institution(session, req), always=True)
        for barcode in renewed:
            reply.add("BM", barcode)
        for barcode in refused:
            reply.add("BN", barcode)
        reply.add("AF", t("sip2.screen_renewed_all", renewed=len(renewed), total=len(patron.charged)))
        for line in lines:
            reply.add("AG", line)
        return reply

    async def _end_session(self, req: Request, session: Session) -> Reply:
        card = req.get("AA").strip()
        patron_id = session.patron_id if card == session.patron_card else None
        if patron_id is not None and session.receipts is not None:
            await session.receipts.end(self.db, patron_id)
        language = None
        if patron_id is not None:
            with contextlib.suppress(DomainError):
                language = (await kiosks.find_patron(self.db, session.kiosk, card, clock=self.clock)).language
        session.patron_card = session.patron_id = session.brief = None
        t = self._t(session, language)
        reply = Reply("36", "Y" + self._now(session))
        reply.add("AO", self._institution(session, req), always=True)
        reply.add("AA", card, always=True)
        reply.add("AF", t("sip2.screen_goodbye"))
        return reply

    # -- refusals -----------------------------------------------------------------------------------
    def _refusal(self, req: Request, session: Session, message: str, *, code: str | None = None) -> Reply:
        """The negative reply of the right type for ``req`` (ok = 0), carrying ``message`` in AF."""
        now = self._now(session)
        institution = self._institution(session, req)
        lang = sip2.language_code(self._t(session).lang)
        kind = code or {"93": "94", "99": "98", "63": "64", "23": "24", "01": "24", "17": "18", "11": "12",
                        "09": "10", "29": "30", "65": "66", "35": "36", "15": "16", "19": "20", "25": "26",
                        "37": "38"}.get(req.code, "96")
        if kind == "94":
            return Reply("94", "0")
        if kind == "98":
            return self._status(req, session, online=False)
        if kind == "96":
            return Reply("96")
        fixed = {
            "64": "Y" * 14 + lang + now + "0000" * 6,
            "24": "Y" * 14 + lang + now,
            "26": "Y" * 14 + lang + now,
            "18": "01" + "00" + "01" + now,
            "12": "0NNN" + now,
            "30": "0NNN" + now,
            "10": "0NNN" + now,
            "66": "0" + "0000" + "0000" + now,
            "36": "N" + now,
            "16": "0N" + now,
            "20": "0" + now,
            "38": "N" + now,
        }[kind]
        reply = Reply(kind, fixed)
        reply.add("AO", institution, always=kind != "20")
        if kind in ("64", "24", "26", "12", "30", "36", "16", "38"):
            reply.add("AA", req.get("AA"), always=True)
        if kind in ("64", "24", "26"):
            reply.add("AE", "", always=True)
            reply.add("BL", "N")
        if kind in ("18", "12", "30", "10", "20"):
            reply.add("AB", req.get("AB"), always=True)
        if kind in ("18", "12", "30"):
            reply.add("AJ", "", always=True)
        if kind in ("12", "30"):
            reply.add("AH", "", always=True)
        if kind == "10":
            reply.add("AQ", "", always=True)
        reply.add("AF", message)
        return reply


def _range(start: str, end: str) -> tuple[int, int]:
    """BP/BQ (1-based, inclusive) → a slice; at most 50 items in one reply."""
    first = int(start) if start.strip().isdigit() else 1
    last = int(end) if end.strip().isdigit() else first + 49
    first = max(first, 1)
    last = max(first, min(last, first + 49))
    return first - 1, last


def _item_text(item: kiosks.ItemLine) -> str:
    """An item line of Patron Information: the barcode (what a kiosk sends back to renew) and the title."""
    return f"{item.barcode} {item.title}" if item.barcode else item.title


async def start_sip2_server(app, settings) -> Sip2Server | None:
    """Start the kiosk server when ``DOCSACH_SIP2_LISTEN`` is set (called by ``docsach run``).

    A setting that cannot work is refused with ``DomainError("sip2.config_…")`` before anything
    listens, so ``docsach run`` can say which one in a sentence."""
    if not settings.sip2_listen:
        return None
    try:
        host, port = parse_listen(settings.sip2_listen)
    except ValueError:
        raise DomainError("sip2.config_listen", value=settings.sip2_listen[:60]) from None
    try:
        codecs.lookup(settings.sip2_encoding)
    except LookupError:
        raise DomainError("sip2.config_encoding", value=settings.sip2_encoding[:40]) from None
    context = None
    if settings.sip2_tls_cert or settings.sip2_tls_key:
        if not (settings.sip2_tls_cert and settings.sip2_tls_key):
            raise DomainError("sip2.config_tls_pair")
        try:
            context = tls_context(settings.sip2_tls_cert, settings.sip2_tls_key)
        except (OSError, ssl.SSLError):
            raise DomainError("sip2.config_tls", cert=settings.sip2_tls_cert, keyfile=settings.sip2_tls_key) from None
    config = Config(host=host, port=port, ssl_context=context, encoding=settings.sip2_encoding)
    try:
        return await Sip2Server(app.deps, config).start()
    except OSError as exc:
        raise DomainError("sip2.config_port", value=settings.sip2_listen[:60], reason=os.strerror(exc.errno) if exc.errno else str(exc)) from None

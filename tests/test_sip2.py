"""The SIP2 kiosk server, driven by a third-party client (PyPI ``sip2``) and by raw sockets.

The client is synchronous, so it runs in a worker thread while the server runs on the test's
event loop, on a real TCP port on 127.0.0.1. Both databases.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from datetime import UTC, date, datetime

import pytest
from Sip2.sip2 import Sip2
from sqlalchemy import func, select

from bot import sip2 as server_module
from bot.sip2 import Config, Sip2Server
from handlers.messages import CollectingChannel
from services import circulation as circ
from services import kiosks, patrons, visits
from services import sip2 as codec
from services.models import AuditEntry, Copy, Hold, Kiosk, Loan, Notification, Patron, Visit
from tests.conftest import ChatDriver, Libraries

PASSWORD = "kiosk-pass-1"


class Client:
    """The PyPI client, each call in a thread (it blocks on its socket)."""

    def __init__(self, port: int, tmp_path, *, tls: bool = False, host: str = "127.0.0.1") -> None:
        self.sip = Sip2()
        self.sip.hostName = host
        self.sip.hostPort = port
        self.sip.tlsEnable = tls
        self.sip.socketTimeout = 15
        self.sip.logfile_path = str(tmp_path)
        self.sip.institutionId = "demo"

    async def connect(self) -> None:
        await asyncio.to_thread(self.sip.connect)

    async def call(self, request: str, parse) -> dict:
        raw = await asyncio.to_thread(self.sip.get_response, request)
        return parse(raw)

    def close(self) -> None:
        self.sip.disconnect()


class Raw:
    """A plain socket speaking bytes: what no client library would send."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.seq = 0

    @classmethod
    async def open(cls, port: int, source: str | None = None) -> Raw:
        kwargs = {"local_addr": (source, 0)} if source else {}
        return cls(*await asyncio.open_connection("127.0.0.1", port, **kwargs))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def reply(self) -> bytes:
        return await asyncio.wait_for(self.reader.readuntil(b"\r"), 10)

    async def ask(self, text: str, seq: str | None = "next") -> str:
        if seq == "next":   # like a kiosk: the next sequence number, 0-9
            seq, self.seq = str(self.seq % 10), self.seq + 1
        await self.send(message(text, seq))
        return (await self.reply()).decode()

    async def login(self, name: str = "K1", password: str = PASSWORD) -> str:
        return await self.ask(f"9300CN{name}|CO{password}|CPdesk|")

    def close(self) -> None:
        self.writer.close()


def message(text: str, seq: str | None = "0") -> bytes:
    """A well-formed request with AY/AZ (or with AZ only when ``seq`` is None)."""
    head = (text + (f"AY{seq}" if seq is not None else "") + "AZ").encode()
    return head + codec.checksum(head).encode() + b"\r"


def stamp() -> str:
    return "20261201    090000"


@pytest.fixture
async def kiosk(libs: Libraries, monkeypatch):
    """The demo library with kiosk K1, the "other" library with kiosk K2, and a running server."""
    monkeypatch.setattr(server_module, "ENABLED_RECHECK", 0.0)
    app = libs.app
    await kiosks.add_kiosk(app.db, "demo", "K1", PASSWORD)
    await kiosks.add_kiosk(app.db, "other", "K2", "other-pass-2")
    server = await Sip2Server(app.deps, Config(port=0, failed_login_delay=0.01)).start()
    yield server
    await server.close()


async def snapshot(db) -> dict:
    """Everything a bad message must leave as it was."""
    async with db.session() as s:
        return {
            "loans": (await s.execute(select(Loan.id, Loan.returned_at, Loan.due_date, Loan.renewals)
                                      .order_by(Loan.id))).all(),
            "copies": (await s.execute(select(Copy.id, Copy.status, Copy.version).order_by(Copy.id))).all(),
            "patrons": (await s.execute(select(Patron.id, Patron.active).order_by(Patron.id))).all(),
            "holds": (await s.execute(select(Hold.id, Hold.status).order_by(Hold.id))).all(),
            "notifications": int(await s.scalar(select(func.count()).select_from(Notification))),
            "visits": int(await s.scalar(select(func.count()).select_from(Visit))),
            "audit": int(await s.scalar(select(func.count()).select_from(AuditEntry).where(
                AuditEntry.action.not_like("kiosk.%")))),
        }


async def free_copy(libs: Libraries) -> tuple[int, str]:
    return await libs.title_with_copies(1)


async def link(app, card: str, user: str, language: str | None = None) -> None:
    actor = await patrons.resolve_actor(app.db, "test", user, user)
    await patrons.link_trusted(app.db, actor, "demo", card, clock=app.deps.clock)
    if language:
        actor = await patrons.resolve_actor(app.db, "test", user, user)
        await patrons.set_language(app.db, actor, language)


# -- the third-party client through a whole kiosk session -------------------------------------------

async def test_a_kiosk_session_with_the_sip2_client(kiosk: Sip2Server, libs: Libraries, tmp_path):
    app = libs.app
    title_id, [barcode] = await free_copy(libs)
    _, [second, _spare] = await libs.title_with_copies(2)
    client = Client(kiosk.config.port, tmp_path)
    await client.connect()
    sip = client.sip
    try:
        login = await client.call(sip.sip_login_request("K1", PASSWORD), sip.sip_login_response)
        assert login["fixed"]["Ok"] == "1"
        status = await client.call(sip.sip_sc_status_request(), sip.sip_sc_status_response)
        assert status["fixed"]["OnlineStatus"] == "Y" and status["fixed"]["ProtocolVersion"] == "2.00"
        assert status["variable"]["BX"] == ["YYYYYYYYYNYNNNYY"]
        assert status["variable"]["AO"] == ["demo"] and status["variable"]["AN"] == ["K1"]
        # dates are the school's local time (09:00 in Lào Cai = 02:00 UTC)
        assert status["fixed"]["TransactionDate"] == "20261201    090000"

        sip.patron = "HS001"
        info = await client.call(sip.sip_patron_information_request("charged"), sip.sip_patron_information_response)
        assert info["variable"]["AE"] == ["Nguyễn Văn An"] and info["variable"]["BL"] == ["Y"]
        assert info["fixed"]["ChargedItemsCount"] == "0000"
        assert info["variable"]["AF"][0].startswith("Xin chào Nguyễn Văn An")

        item = await client.call(sip.sip_item_information_request(barcode), sip.sip_item_information_response)
        assert item["fixed"]["CirculationStatus"] == "03"
        async with app.db.session() as s:
            from services.models import Title

            title = (await s.get(Title, title_id)).title
        assert item["variable"]["AJ"] == [title[:255]]

        out = await client.call(sip.sip_checkout_request(barcode), sip.sip_checkout_response)
        assert out["fixed"]["Ok"] == "1" and out["fixed"]["Desensitize"] == "Y"
        assert out["variable"]["AH"] == ["20261215    235959"]          # 14 days, a school day
        assert "15/12/2026" in out["variable"]["AF"][0]
        assert any("15/12/2026" in line for line in out["variable"]["AG"])
        out2 = await client.call(sip.sip_checkout_request(second), sip.sip_checkout_response)
        assert out2["fixed"]["Ok"] == "1"

        info = await client.call(sip.sip_patron_information_request("charged"), sip.sip_patron_information_response)
        assert info["fixed"]["ChargedItemsCount"] == "0002"
        assert any(line.startswith(barcode + " ") and title[:20] in line for line in info["variable"]["AU"])

        item = await client.call(sip.sip_item_information_request(barcode), sip.sip_item_information_response)
        assert item["fixed"]["CirculationStatus"] == "04" and item["variable"]["AH"] == ["20261215    235959"]

        renew = await client.call(sip.sip_renew_request(barcode), sip.sip_renew_response)
        assert renew["fixed"]["Ok"] == "1" and renew["fixed"]["RenewalOk"] == "Y"
        assert renew["variable"]["AH"] == ["20261229    235959"]     # from the due date, 14 more days

        renew_all = await client.call(sip.sip_renew_all_request(), sip.sip_renew_all_response)
        assert renew_all["fixed"]["Ok"] == "1"
        assert renew_all["fixed"]["RenewedItems"] == "0002" and renew_all["fixed"]["UnrenewedItems"] == "0000"
        assert sorted(renew_all["variable"]["BM"]) == sorted([barcode, second])

        back = await client.call(sip.sip_checkin_request(barcode), sip.sip_checkin_response)
        assert back["fixed"]["Ok"] == "1" and back["fixed"]["Alert"] == "N"
        assert back["variable"]["AA"] == ["HS001"]

        end = await client.call(sip.sip_end_patron_session_request(), sip.sip_end_patron_session_response)
        assert end["fixed"]["EndSession"] == "Y"
    finally:
        await asyncio.to_thread(client.close)

    async with app.db.session() as s:
        channels = {(a, c) for a, c in (await s.execute(select(AuditEntry.action, AuditEntry.channel))).all()}
        open_loans = (await s.execute(select(Copy.barcode).join(Loan, Loan.copy_id == Copy.id)
                                      .where(Loan.returned_at.is_(None)))).scalars().all()
    assert {("loan.checkout", "sip2:K1"), ("loan.renew", "sip2:K1"), ("loan.return", "sip2:K1")} <= channels
    assert open_loans == [second]


async def test_the_client_over_tls(libs: Libraries, tmp_path):
    """With a certificate and key the port speaks TLS; the client accepts the self-signed one."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    await asyncio.to_thread(subprocess.run, ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=localhost", "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out",
                    str(cert)], check=True, capture_output=True)
    await kiosks.add_kiosk(libs.db, "demo", "K1", PASSWORD)
    server = await Sip2Server(libs.app.deps, Config(port=0, ssl_context=server_module.tls_context(str(cert), str(key)))
                              ).start()
    client = Client(server.config.port, tmp_path, tls=True, host="localhost")
    try:
        await client.connect()
        assert isinstance(client.sip._socket, ssl.SSLSocket)
        sip = client.sip
        assert (await client.call(sip.sip_login_request("K1", PASSWORD), sip.sip_login_response))["fixed"]["Ok"] == "1"
        sip.patron = "HS002"
        status = await client.call(sip.sip_patron_status_request(), sip.sip_patron_status_response)
        assert status["variable"]["AE"] == ["Lò Thị Hoa"]
    finally:
        await asyncio.to_thread(client.close)
        await server.close()


# -- receipts in the chat ----------------------------------------------------------------------------

async def test_kiosk_receipts_reach_the_chat_once_with_a_digest(kiosk: Sip2Server, libs: Libraries, clock):
    from bot.scheduler import Sweeper

    app = libs.app
    channel = CollectingChannel("test")
    app.deps.outbound["test"] = channel
    await link(app, "HS001", "chat-an")
    await link(app, "GV001", "chat-ha", language="en")
    _, [one] = await libs.title_with_copies(1)
    _, [two, three] = await libs.title_with_copies(2)

    raw = await Raw.open(kiosk.config.port)
    assert (await raw.login()).startswith("941")
    # An borrows two books and ends the session: one digest
    for barcode in (one, two):
        assert (await raw.ask(f"11YN{stamp()}{' ' * 18}AOdemo|AAHS001|AB{barcode}|AC|")).startswith("121")
    assert (await raw.ask(f"35{stamp()}AOdemo|AAHS001|")).startswith("36Y")
    # the teacher renews nothing but borrows and returns one: one digest of two lines, in English
    assert (await raw.ask(f"11YN{stamp()}{' ' * 18}AOdemo|AAGV001|AB{three}|AC|", "1")).startswith("121")
    assert (await raw.ask(f"09N{stamp()}{stamp()}APdesk|AOdemo|AB{three}|AC|", "2")).startswith("101")
    assert (await raw.ask(f"35{stamp()}AOdemo|AAGV001|", "3")).startswith("36Y")
    raw.close()

    report = await Sweeper(app.router).sweep()
    assert report.messages == 2
    texts = {chat: reply.text for chat, reply in channel.sent}
    assert texts["chat-an"].startswith("🧾 Em vừa mượn trả 2 cuốn")
    assert "hạn trả" in texts["chat-an"] and texts["chat-an"].count("• Mượn") == 2
    assert texts["chat-ha"].startswith("🧾 Self-check kiosk receipt (2 books)")
    assert "• Returned" in texts["chat-ha"] and " em " not in texts["chat-ha"]
    again = await Sweeper(app.router).sweep()
    assert again.messages == 0 and len(channel.sent) == 2

    # a single return later (a new session, no card at the kiosk): one plain line after the quiet time
    raw = await Raw.open(kiosk.config.port)
    await raw.login()
    assert (await raw.ask(f"09N{stamp()}{stamp()}APdesk|AOdemo|AB{one}|AC|")).startswith("101")
    raw.close()
    await asyncio.sleep(0.2)   # the server sees the hang-up and releases the receipt
    await Sweeper(app.router).sweep()
    assert channel.sent[-1][0] == "chat-an"
    assert channel.sent[-1][1].text.startswith("✅ Em đã trả «")
    assert len(channel.sent) == 3


# -- visits ---------------------------------------------------------------------------------------------

async def test_door_check_in_and_kiosk_patron_status_count_one_visit_a_day(kiosk: Sip2Server, libs: Libraries,
                                                                        clock):
    app = libs.app
    await link(app, "HS001", "u-an")
    lib = await libs.actor("TT001")
    door = f"/start v{lib.library_id}"
    chat = ChatDriver(app, user="u-an")
    await chat.say(door)
    assert "đã ghi nhận em đến" in chat.text
    await chat.say(door)
    assert "đã được ghi nhận" in chat.text

    from handlers.messages import Incoming

    [in_group] = await app.router.dispatch(Incoming(channel="test", chat_id="-100", user_id="u-an", text=door,
                                                    chat_type="group"))
    assert "Nguyễn" not in in_group.text and "ghi nhận" not in in_group.text

    guest = ChatDriver(app, user="u-guest")
    await guest.say(door)
    assert "liên kết thẻ" in guest.text

    raw = await Raw.open(kiosk.config.port)
    await raw.login()
    for card in ("HS001", "HS002", "HS002"):
        assert (await raw.ask(f"23000{stamp()}AOdemo|AA{card}|AC|AD|")).startswith("24")
    raw.close()
    async with app.db.session() as s:
        rows = sorted((await s.execute(select(Patron.card_number, Visit.source, Visit.day)
                                       .join(Patron, Patron.id == Visit.patron_id))).all())
    assert rows == [("HS001", "door", date(2026, 12, 1)), ("HS002", "sip2", date(2026, 12, 1))]
    assert await visits.per_day(app.db, lib, date(2026, 11, 30), date(2026, 12, 2)) == [(date(2026, 12, 1), 2)]

    # the next school day counts again
    clock.set(datetime(2026, 12, 2, 1, 0, tzinfo=UTC))
    await chat.say(door)
    assert "đã ghi nhận em đến" in chat.text
    # another library's door is refused
    other = await libs.actor("OT001", "other")
    await chat.say(f"/start v{other.library_id}")
    assert "Trường THCS Khác" in chat.text


# -- rules, holds and languages ----------------------------------------------------------------------

async def test_checkin_sets_aside_for_a_hold_and_screens_speak_the_patrons_language(kiosk: Sip2Server,
                                                                                 libs: Libraries, clock):
    app = libs.app
    title_id, [barcode] = await free_copy(libs)
    hoa = await libs.actor("HS002")
    await link(app, "HS002", "u-hoa", language="en")
    raw = await Raw.open(kiosk.config.port)
    await raw.login()
    assert (await raw.ask(f"11YN{stamp()}{' ' * 18}AOdemo|AAHS001|AB{barcode}|AC|")).startswith("121")
    await circ.place_hold(app.db, hoa, title_id, clock=clock)
    # HS001 may not renew while someone waits
    renew = await raw.ask(f"29NN{stamp()}{' ' * 18}AOdemo|AAHS001|AB{barcode}|AC|", "1")
    assert renew.startswith("300") and "có người đang chờ" in renew
    back = await raw.ask(f"09N{stamp()}{stamp()}APdesk|AOdemo|AB{barcode}|AC|", "2")
    assert back.startswith("101N") and back[5] == "Y"                      # ok, no resensitize, alert
    assert "|CYHS002|" in back and "|DALò Thị Hoa|" in back and "thẻ HS002 (Hoa)" in back
    # Hoa's own screens are in English, dates too
    info = await raw.ask(f"63000{stamp()}Y         AOdemo|AAHS002|AC|", "3")
    assert "|AFHello Lò Thị Hoa!" in info and info[19:37] == stamp() and info[37:41] == "0001"
    assert info[16:19] == "001"   # language: English
    out = await raw.ask(f"11YN{stamp()}{' ' * 18}AOdemo|AAHS002|AB{barcode}|AC|", "4")
    assert out.startswith("121") and "Due: 15/12/2026" in out
    raw.close()


async def test_limits_and_overdue_blocks_apply_at_the_kiosk(kiosk: Sip2Server, libs: Libraries, clock):
    app = libs.app
    from services import rules

    lib = await libs.actor("TT001")
    await rules.set_rule(app.db, lib, "max_loans", 1, role="student")
    _, [a] = await libs.title_with_copies(1)
    _, [b, _c] = await libs.title_with_copies(2)
    raw = await Raw.open(kiosk.config.port)
    await raw.login()
    assert (await raw.ask(f"11YN{stamp()}{' ' * 18}AOdemo|AAHS003|AB{a}|AC|")).startswith("121")
    refused = await raw.ask(f"11YN{stamp()}{' ' * 18}AOdemo|AAHS003|AB{b}|AC|", "1")
    assert refused.startswith("120") and "Đã mượn đủ 1 cuốn" in refused
    status = await raw.ask(f"23000{stamp()}AOdemo|AAHS003|AC|AD|", "2")
    assert status[2] == "Y" and status[7] == "Y"   # charge privileges denied, too many items charged
    # scanning the same book again renews it when the kiosk's policy says so
    again = await raw.ask(f"11YN{stamp()}{' ' * 18}AOdemo|AAHS003|AB{a}|AC|", "3")
    assert again.startswith("121Y")
    # three weeks late: blocked
    clock.set(datetime(2027, 1, 26, 2, 0, tzinfo=UTC))
    await rules.set_rule(app.db, lib, "max_loans", 5, role="student")
    blocked = await raw.ask(f"11YN{stamp()}{' ' * 18}AOdemo|AAHS003|AB{b}|AC|", "4")
    assert blocked.startswith("120") and "quá hạn" in blocked
    raw.close()


# -- what a client library would never send ------------------------------------------------------------

async def test_garbage_never_crashes_the_server_nor_changes_data(kiosk: Sip2Server, libs: Libraries):
    app = libs.app
    _, [barcode] = await free_copy(libs)
    before = await snapshot(app.db)
    port = kiosk.config.port

    # before login: refused, nothing done
    raw = await Raw.open(port)
    early = await raw.ask(f"11YN{stamp()}{' ' * 18}AOdemo|AAHS001|AB{barcode}|AC|")
    assert early.startswith("120") and "chưa đăng nhập" in early
    status = await raw.ask("9900802.00", "1")
    assert status.startswith("98N") and "|BXNNNNNNNNNNNNNNNN|" in status
    assert await raw.login()

    # bad checksum: 96, and the message is not carried out
    good = message(f"11YN{stamp()}{' ' * 18}AOdemo|AAHS001|AB{barcode}|AC|", "2")
    bad = good[:-5] + (b"0000" if not good.endswith(b"AZ0000\r") else b"0001") + b"\r"
    await raw.send(bad)
    assert (await raw.reply()).startswith(b"96AZ")
    # a truncated message: a refusal of the right type
    truncated = await raw.ask("11YN2026", "3")
    assert truncated.startswith("120")
    # binary junk and a 100 KB line: 96, then the connection still works
    await raw.send(bytes(b for b in range(256) if b not in b"\r\n") + b"\r")
    assert (await raw.reply()).startswith(b"96")
    await raw.send(b"63" + b"A" * 100_000 + b"\r")
    assert (await raw.reply()).startswith(b"96")
    assert (await raw.ask("9900802.00", "4")).startswith("98Y")
    # unknown fields are ignored, unsupported messages refused politely
    info = await raw.ask(f"17{stamp()}AOdemo|AB{barcode}|ZZwhatever|", "5")
    assert info.startswith("1803")
    fee = await raw.ask(f"37{stamp()}0100VNDBV1000|AOdemo|AAHS001|", "6")
    assert fee.startswith("38N")
    # another library's card and barcode do not exist for this kiosk
    other_card = await raw.ask(f"11YN{stamp()}{' ' * 18}AOdemo|AAOS001|AB{barcode}|AC|", "7")
    assert other_card.startswith("120") and "OS001" in other_card
    other_item = await raw.ask(f"11YN{stamp()}{' ' * 18}AOother|AAHS001|ABOC0001|AC|", "8")
    assert other_item.startswith("120") and "OC0001" in other_item
    other_info = await raw.ask(f"63000{stamp()}          AOother|AAOS001|AC|", "9")
    assert "|BLN|" in other_info and "Khác" not in other_info
    raw.close()

    # a client that hangs up in the middle of a message
    raw = await Raw.open(port)
    await raw.send(b"9300CNK1|CO")
    raw.close()

    # wrong password, then rate-limited even with the right one (from this address only)
    raw = await Raw.open(port)
    for _ in range(kiosks.NAME_LIMIT[0]):
        assert (await raw.login(password="wrong-password")) .startswith("940")
    assert (await raw.login()).startswith("940")
    raw.close()
    elsewhere = await Raw.open(port, source="127.0.0.2")
    assert (await elsewhere.login()).startswith("941")
    elsewhere.close()

    # a disabled kiosk: its open connection is refused at the next message, and it cannot log in
    live = await Raw.open(port, source="127.0.0.3")
    assert (await live.login()).startswith("941")
    await kiosks.set_enabled(app.db, "K1", False)
    refused = await live.ask(f"11YN{stamp()}{' ' * 18}AOdemo|AAHS001|AB{barcode}|AC|", "1")
    assert refused.startswith("120") and "đã bị tắt" in refused
    assert await live.reader.read() == b""          # and the server hung up
    again = await Raw.open(port, source="127.0.0.3")
    assert (await again.login()).startswith("940")
    again.close()

    # the server still serves kiosks, and nothing changed
    await kiosks.set_enabled(app.db, "K1", True)
    fresh = await Raw.open(port, source="127.0.0.4")
    assert (await fresh.login()).startswith("941")
    assert (await fresh.ask("9900802.00", "1")).startswith("98Y")
    fresh.close()
    assert await snapshot(app.db) == before
    async with app.db.session() as s:
        enabled = (await s.execute(select(Kiosk.enabled).where(Kiosk.name == "K1"))).scalar_one()
    assert enabled


async def test_a_repeated_message_is_answered_again_not_carried_out_twice(kiosk: Sip2Server, libs: Libraries):
    _, [barcode] = await free_copy(libs)
    raw = await Raw.open(kiosk.config.port)
    await raw.login()
    checkout = message(f"11YN{stamp()}{' ' * 18}AOdemo|AAHS001|AB{barcode}|AC|", "5")
    await raw.send(checkout)
    first = await raw.reply()
    await raw.send(checkout)             # the kiosk missed the reply and sends the same message
    assert await raw.reply() == first
    await raw.send(message("97", None))  # or asks for the last reply
    assert await raw.reply() == first
    raw.close()
    async with libs.db.session() as s:
        assert int(await s.scalar(select(func.count()).select_from(AuditEntry)
                                  .where(AuditEntry.action == "loan.checkout"))) == 1


async def test_kiosk_and_librarian_on_one_copy_exactly_one_wins(kiosk: Sip2Server, libs: Libraries, clock):
    db = libs.db
    lib = await libs.actor("TT001")
    _, [barcode] = await libs.title_with_copies(1)
    for _round in range(4):
        raw = await Raw.open(kiosk.config.port)
        await raw.login()

        async def desk():
            try:
                await circ.check_out(db, lib, barcode, "HS002", clock=clock)
                return True
            except Exception:
                return False

        async def at_kiosk(raw: Raw = raw):
            reply = await raw.ask(f"11YN{stamp()}{' ' * 18}AOdemo|AAHS001|AB{barcode}|AC|")
            return reply.startswith("121")

        results = await asyncio.gather(desk(), at_kiosk())
        raw.close()
        assert sorted(results) == [False, True]
        async with db.session() as s:
            loans = (await s.execute(select(Loan).join(Copy, Copy.id == Loan.copy_id)
                                     .where(Copy.barcode == barcode, Loan.returned_at.is_(None)))).scalars().all()
        assert len(loans) == 1
        await circ.check_in(db, lib, barcode, clock=clock)


def test_codec_rules():
    req = codec.parse(message(f"11YN{stamp()}{' ' * 18}AOdemo|AAHS001|ABDS1|XXjunk|AC|", "3"))
    assert req.code == "11" and req.sequence == "3" and req.checksum_ok
    assert req.fixed["transaction_date"] == stamp() and req.get("AB") == "DS1" and req.get("XX") == "junk"
    # renew all without its transaction date (as the PyPI client sends it)
    req = codec.parse(message("65AOdemo|AAHS001|AC|", "1"))
    assert req.fixed["transaction_date"] == "" and req.get("AA") == "HS001"
    # checksums with fewer than four digits, and summed over characters instead of bytes
    head = "9900802.00AY1AZ"
    value = (-sum(head.encode())) & 0xFFFF
    assert codec.parse((head + format(value, "X")).encode()).checksum_ok
    text = "63000" + stamp() + "          AOdemo|AAHS001|AEBùi|AY2AZ"
    by_chars = format((-sum(map(ord, text))) & 0xFFFF, "04X")
    assert codec.parse((text + by_chars).encode()).checksum_ok
    assert codec.parse(b"9900802.00AY1AZFFFF").checksum_ok is False
    with pytest.raises(codec.BadMessage):
        codec.parse(b"\x00\x01garbage")
    with pytest.raises(codec.BadMessage):
        codec.parse(b"42whatever")
    # replies: bars and line breaks in values cannot break the framing; AZ always, AY echoed
    reply = codec.Reply("24", "x").add("AE", "a|b\rc").encode("7")
    assert reply.startswith(b"24xAEa b c|AY7AZ") and reply.endswith(b"\r")
    assert (sum(reply[:-5]) + int(reply[-5:-1], 16)) & 0xFFFF == 0
    assert codec.wrap("Mượn: «Dế Mèn phiêu lưu ký» — hạn trả 15/12/2026", 24) == [
        "Mượn: «Dế Mèn phiêu lưu", "ký» — hạn trả 15/12/2026"]
    assert codec.sip_due(date(2026, 12, 15), "Asia/Ho_Chi_Minh") == "20261215    235959"


async def test_kiosk_accounts(libs: Libraries):
    db = libs.db
    info, password = await kiosks.add_kiosk(db, "demo", "K9")
    assert len(password) >= 12 and info.library_code == "demo"
    async with db.session() as s:
        stored = (await s.execute(select(Kiosk.password_hash).where(Kiosk.name == "K9"))).scalar_one()
    assert stored.startswith("scrypt$") and password not in stored
    assert kiosks.verify_password(password, stored) and not kiosks.verify_password(password + "x", stored)
    for name, pw, key in (("K9", "long-enough", "sip2.kiosk_exists"), ("bad name", "long-enough", "sip2.kiosk_bad_name"),
                          ("K10", "short", "sip2.kiosk_bad_password"), ("K11", "has|bar-inside", "sip2.kiosk_bad_password")):
        with pytest.raises(Exception) as refused:
            await kiosks.add_kiosk(db, "demo", name, pw)
        assert getattr(refused.value, "key", None) == key
    assert [k.name for k in await kiosks.list_kiosks(db, "demo")] == ["K9"]
    assert not (await kiosks.set_enabled(db, "k9", False)).enabled


async def test_kiosk_and_door_commands(libs: Libraries, monkeypatch, tmp_path, capsys):
    import pypdfium2
    import zxingcpp

    from bot import cli

    monkeypatch.setenv("DOCSACH_DATABASE_URL", libs.db.url)
    monkeypatch.setenv("DOCSACH_DEFAULT_LANGUAGE", "vi")
    monkeypatch.chdir(tmp_path)
    assert await cli._main(["kiosk", "add", "K1", "--library", "demo"]) == 0
    out = capsys.readouterr().out
    password = out.rsplit(": ", 1)[1].strip()
    assert "Đã thêm máy tự mượn K1" in out and len(password) >= 12
    assert await cli._main(["kiosk", "add", "K1", "--library", "demo", "--password", "whatever-1"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "Đã có máy tên «K1». Hãy chọn tên khác."
    assert await cli._main(["kiosk", "add", "K2", "--library", "nowhere", "--password", "whatever-1"]) == 2
    assert "Không có thư viện mã «nowhere»" in capsys.readouterr().err
    assert await cli._main(["kiosk", "disable", "K1"]) == 0
    assert await cli._main(["kiosk", "list"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].split("\t")[:3] == ["K1", "demo", "tắt"]
    async with libs.db.session() as s:
        stored = (await s.execute(select(Kiosk.password_hash))).scalar_one()
    assert kiosks.verify_password(password, stored)

    assert await cli._main(["qr", "--door", "--library", "demo", "--bot-username", "docsach_bot",
                            "--out", "door.pdf"]) == 0
    lib = await libs.actor("TT001")
    page = pypdfium2.PdfDocument(str(tmp_path / "door.pdf"))[0]
    [code] = zxingcpp.read_barcodes(page.render(scale=2).to_pil(), formats=zxingcpp.BarcodeFormat.QRCode)
    assert code.text == f"https://t.me/docsach_bot?start=v{lib.library_id}"
    assert "Điểm danh đến thư viện" in page.get_textpage().get_text_range()


async def test_a_windows_1258_kiosk_reads_vietnamese(libs: Libraries):
    """DOCSACH_SIP2_ENCODING=cp1258: names and titles arrive as the kiosk's encoding writes them."""
    import unicodedata

    await kiosks.add_kiosk(libs.db, "demo", "K1", PASSWORD)
    server = await Sip2Server(libs.app.deps, Config(port=0, encoding="cp1258")).start()
    try:
        raw = await Raw.open(server.config.port)
        assert (await raw.login()).startswith("941")
        head = f"63001{stamp()}          AOdemo|AAHS001|AC|AY1AZ".encode("cp1258")
        await raw.send(head + codec.checksum(head).encode() + b"\r")
        reply = await raw.reply()
        assert (sum(reply[:-5]) + int(reply[-5:-1], 16)) & 0xFFFF == 0
        text = unicodedata.normalize("NFC", reply.decode("cp1258"))
        assert "|AENguyễn Văn An|" in text and "?" not in text
        raw.close()
    finally:
        await server.close()

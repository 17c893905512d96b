"""What reached Telegram, precisely (issue 16): failures injected at the socket level under the
real PTB + httpx stack, against the fake Bot API. A failed connect, or a reset before the whole
request was written, is "not sent" (retried, delivered once); a failure after the request was
written is "uncertain" (never repeated)."""

from __future__ import annotations

import errno
from datetime import date

import httpcore
import pytest

from bot.channels import telegram
from handlers.messages import DeliveryFailed, DeliveryUncertain, Reply
from services.models import NotificationStatus
from tests.fake_bot_api import FakeBotApi
from tests.test_reminders import at, lend, link, notices, sweeper_for

pytestmark = pytest.mark.filterwarnings("ignore:.*retry_after.*:telegram.warnings.PTBDeprecationWarning")


class FaultyStream(httpcore.AsyncNetworkStream):
    """A real TCP stream that fails on cue: ``before`` — the connection is reset as the
    sendMessage request starts to be written (nothing of it leaves); ``after`` — the request is
    written whole, then the connection is reset before the answer arrives."""

    def __init__(self, inner: httpcore.AsyncNetworkStream, backend: FaultyBackend) -> None:
        self.inner, self.backend, self.broken = inner, backend, False

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109 - httpcore's API
        if self.broken:
            raise httpcore.WriteError(OSError(errno.EPIPE, "Broken pipe"))
        if b"/sendMessage " in buffer[:200] and self.backend.faults:
            fault = self.backend.faults.pop(0)
            if fault == "before":
                self.broken = True
                await self.inner.aclose()
                raise httpcore.WriteError(ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"))
            self.backend.armed = self
        await self.inner.write(buffer, timeout)

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        if self.broken:
            raise httpcore.ReadError(ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"))
        if self.backend.armed is self:    # "after": the request went out whole; the answer never comes
            self.backend.armed = None
            self.broken = True
            await self.backend.delivered()
            await self.inner.aclose()
            raise httpcore.ReadError(ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"))
        return await self.inner.read(max_bytes, timeout)

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def start_tls(self, *args, **kwargs):
        raise NotImplementedError

    def get_extra_info(self, info: str):
        return self.inner.get_extra_info(info)


class FaultyBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, api: FakeBotApi) -> None:
        self.inner = httpcore.AnyIOBackend()
        self.api = api
        self.faults: list[str] = []
        self.refuse = 0
        self.armed: FaultyStream | None = None

    async def delivered(self) -> None:
        """Let the fake server finish reading the request before the connection drops."""
        await self.api.wait_for("sendMessage", count=len(self.api.calls_to("sendMessage")) + 1, timeout=5)

    async def connect_tcp(self, host, port, timeout=None, local_address=None,  # noqa: ASYNC109
                          socket_options=None):
        if self.refuse:
            self.refuse -= 1
            raise httpcore.ConnectError(ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"))
        inner = await self.inner.connect_tcp(host, port, timeout=timeout, local_address=local_address,
                                             socket_options=socket_options)
        return FaultyStream(inner, self)

    async def connect_unix_socket(self, *args, **kwargs):
        raise NotImplementedError

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


@pytest.fixture
async def faulty(demo_app, fake_bot_api: FakeBotApi):
    backend = FaultyBackend(fake_bot_api)
    async with telegram.running(demo_app, token=fake_bot_api.token, base_url=fake_bot_api.base_url, poll_timeout=1,
                                backoff=(0.05, 0.1), network_backend=backend) as adapter:
        yield fake_bot_api, backend, adapter


transport_only = pytest.mark.parametrize("db", ["sqlite"], indirect=True)


@transport_only
async def test_a_reset_before_the_request_is_written_is_retried_and_delivered_once(faulty):
    api, backend, adapter = faulty
    backend.faults = ["before", "before"]
    delivery = await adapter.channel.send("4242", Reply("Sách sắp đến hạn trả"))
    [message] = api.sent_messages(4242)
    assert message["text"] == "Sách sắp đến hạn trả" and delivery.message_ref == str(message["message_id"])
    assert backend.faults == []


@transport_only
async def test_a_failed_connect_is_not_sent_and_retried(faulty):
    api, backend, adapter = faulty
    await adapter.bot.get_me()
    for conn in list(adapter.bot.request._client._transport._pool.connections):   # no idle connection to reuse
        await conn.aclose()
    backend.refuse = 2
    await adapter.channel.send("4242", Reply("xin chào"))
    assert len(api.sent_messages(4242)) == 1 and backend.refuse == 0
    backend.refuse = 10 ** 6    # never reachable: not sent, so a plain failure to retry later
    for conn in list(adapter.bot.request._client._transport._pool.connections):
        await conn.aclose()
    with pytest.raises(DeliveryFailed) as info:
        await adapter.channel.send("4242", Reply("lần nữa"))
    assert not isinstance(info.value, DeliveryUncertain) and len(api.sent_messages(4242)) == 1


@transport_only
async def test_a_reset_after_the_request_was_written_is_uncertain_and_not_repeated(faulty):
    api, backend, adapter = faulty
    backend.faults = ["after"]
    with pytest.raises(DeliveryUncertain):
        await adapter.channel.send("4242", Reply("có thể đã đến"))
    assert [m["text"] for m in api.sent_messages(4242)] == ["có thể đã đến"]   # it did arrive, once


async def test_resets_before_writing_leave_no_notice_uncertain(faulty, demo_app, clock):
    """The issue's finding: resets before the request left made notices uncertain forever."""
    from sqlalchemy import select

    from services.models import ChatIdentity

    api, backend, adapter = faulty
    cards = ["HS001", "HS002", "HS003", "HS004", "GV001", "TT001"]
    for card in cards:
        await link(demo_app.db, card, channel="telegram")
        await lend(demo_app.db, card, date(2026, 12, 1))
    async with demo_app.db.transaction() as s:
        for identity in (await s.execute(select(ChatIdentity))).scalars():
            identity.chat_id = identity.external_id = str(5000 + cards.index(identity.external_id))
    clock.set(at(2026, 12, 1, 9))
    backend.faults = ["before", "after", "before"]
    report = await sweeper_for(demo_app).sweep()
    statuses = sorted(n.status for n in await notices(demo_app.db))
    assert statuses.count(NotificationStatus.UNCERTAIN) == 1 and statuses.count(NotificationStatus.SENT) == 5
    assert report.uncertain == 1 and report.retry == 0
    for n in range(len(cards)):
        assert len(api.sent_messages(5000 + n)) == 1      # every chat got its notice exactly once


@transport_only
async def test_proxies_from_the_environment_are_still_honoured(app, fake_bot_api, monkeypatch):
    """The traced transport must not drop HTTP(S)_PROXY / NO_PROXY (httpx drops them for custom transports)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]          # nothing listens here: a proxy that is down
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{dead}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with pytest.raises(Exception) as info:
        async with telegram.running(app, token=fake_bot_api.token, base_url=fake_bot_api.base_url, poll_timeout=1,
                                    backoff=(0.01,)):
            pass
    assert "connect" in repr(info.value).lower() or "network" in repr(info.value).lower()
    assert fake_bot_api.calls_to("getMe") == []          # it went to the (dead) proxy, not around it
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    async with telegram.running(app, token=fake_bot_api.token, base_url=fake_bot_api.base_url, poll_timeout=1):
        assert fake_bot_api.calls_to("getMe")

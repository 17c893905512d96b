"""The fake Zalo Bot API server itself: what the adapter's tests rely on it to do."""

from __future__ import annotations

import asyncio
import time

from aiohttp import ClientSession, web

from tests.fake_zalo_api import FakeZaloApi


async def call(api: FakeZaloApi, method: str, token: str | None = None, **params) -> tuple[int, dict]:
    async with ClientSession() as http, http.post(f"{api.base_url}{token or api.token}/{method}", json=params) as r:
        return r.status, await r.json()


async def test_one_update_per_long_poll_and_an_idle_poll_answers_408():
    async with FakeZaloApi() as api:
        api.push_text("c1", "một")
        api.push_text("c1", "hai")
        status, first = await call(api, "getUpdates", timeout=5)
        assert status == 200 and first["result"]["message"]["text"] == "một"
        assert first["result"]["event_name"] == "message.text.received"
        _, second = await call(api, "getUpdates", timeout=5)
        assert second["result"]["message"]["text"] == "hai"
        started = time.monotonic()
        _, idle = await call(api, "getUpdates", timeout=1)
        assert idle == {"ok": False, "error_code": 408, "description": "Request timeout"}
        assert time.monotonic() - started >= 0.9                       # it did wait
        waiting = asyncio.ensure_future(call(api, "getUpdates", timeout=5))
        await asyncio.sleep(0.1)
        api.push_text("c1", "ba")                                      # wakes the waiting poll
        assert (await waiting)[1]["result"]["message"]["text"] == "ba"


async def test_wrong_token_unknown_method_limits_and_faults():
    async with FakeZaloApi() as api:
        assert (await call(api, "getMe", token="1:wrong"))[1]["error_code"] == 401
        assert (await call(api, "sendDocument", chat_id="c1"))[1]["error_code"] == 404
        assert (await call(api, "sendMessage", chat_id="c1", text="x" * 2001))[1]["error_code"] == 400
        api.fail_next("sendMessage", 429)
        api.fail_next("sendMessage", 502, http_status=502)
        assert await call(api, "sendMessage", chat_id="c1", text="a") == (
            200, {"ok": False, "error_code": 429, "description": "Quota exceeded"})
        assert (await call(api, "sendMessage", chat_id="c1", text="a"))[0] == 502
        ok = await call(api, "sendMessage", chat_id="c1", text="a")
        assert ok[1]["ok"] is True and api.texts("c1") == ["a"]
        api.delay("sendMessage", 0.5)
        started = time.monotonic()
        await call(api, "sendMessage", chat_id="c1", text="b")
        assert time.monotonic() - started >= 0.45 and api.texts("c1") == ["a", "b"]


async def test_webhook_delivery_with_the_secret_and_no_polling_meanwhile():
    received: list[tuple[str | None, dict]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((request.headers.get("X-Bot-Api-Secret-Token"), await request.json()))
        return web.json_response({"ok": True})

    server = web.Application()
    server.router.add_post("/hook", hook)
    runner = web.AppRunner(server)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with FakeZaloApi() as api:
            assert (await call(api, "setWebhook", url=f"http://127.0.0.1:{port}/hook",
                               secret_token="short"))[1]["error_code"] == 400
            assert (await call(api, "setWebhook", url=f"http://127.0.0.1:{port}/hook",
                               secret_token="a-long-secret"))[1]["ok"]
            assert (await call(api, "getUpdates", timeout=0))[1]["error_code"] == 409
            api.push_text("c1", "xin chào", times=2)                   # a repeated delivery
            assert await api.wait_until(lambda: len(received) == 2)
            assert {secret for secret, _ in received} == {"a-long-secret"}
            assert received[0][1] == received[1][1] and received[0][1]["result"]["message"]["text"] == "xin chào"
            _, info = await call(api, "getWebhookInfo")
            assert info["result"]["url"].endswith("/hook")
    finally:
        await runner.cleanup()

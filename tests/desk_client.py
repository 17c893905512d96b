"""A browser-like client for the desk over aiohttp's test server (real HTTP on 127.0.0.1)."""

from __future__ import annotations

import re
from html import unescape

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bot.app import App
from services import desk_auth
from tests.conftest import Libraries

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    match = CSRF.search(html)
    assert match, "no CSRF field on the page"
    return unescape(match.group(1))


class Desk:
    """One browser: a cookie jar, the last page, and helpers to sign in and post forms."""

    def __init__(self, client: TestClient, app: App, libs: Libraries) -> None:
        self.client = client
        self.app = app
        self.libs = libs
        self.csrf: str | None = None
        self.last = ""

    async def get(self, path: str, **kwargs):
        response = await self.client.get(path, allow_redirects=False, **kwargs)
        if response.content_type == "text/html":
            self.last = await response.text()
            match = CSRF.search(self.last)
            if match:
                self.csrf = unescape(match.group(1))
        return response

    async def post(self, path: str, data: dict | list | None = None, *, csrf: bool | str = True, **kwargs):
        fields = list(data.items()) if isinstance(data, dict) else list(data or [])
        if csrf is True:
            if self.csrf is None:
                await self.get("/desk/account")
            fields.append(("csrf", self.csrf))
        elif isinstance(csrf, str):
            fields.append(("csrf", csrf))
        response = await self.client.post(path, data=fields, allow_redirects=False, **kwargs)
        if response.content_type == "text/html":
            self.last = await response.text()
        return response

    async def link(self, card: str, library: str = "demo") -> str:
        actor = await self.libs.actor(card, library)
        return await desk_auth.issue_link(self.app.db, actor, clock=self.app.deps.clock)

    async def sign_in(self, card: str, library: str = "demo") -> None:
        token = await self.link(card, library)
        page = await self.get(f"/desk/signin?token={token}")
        assert page.status == 200
        response = await self.post("/desk/signin", {"token": token}, csrf=csrf_of(self.last))
        assert response.status == 303, self.last
        self.csrf = None
        await self.get("/desk/account")


async def desk_server(app: App, **kwargs) -> TestClient:
    from bot.desk import mount

    root = web.Application()
    mount(root, app, **kwargs)
    client = TestClient(TestServer(root, host="127.0.0.1"))
    await client.start_server()
    return client

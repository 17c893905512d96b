"""Shared fixtures: a real, migrated database per test (SQLite always, PostgreSQL when
DOCSACH_TEST_POSTGRES_URL is set), a wired app, and a chat helper that drives the router.

Databases are migrated once per session with Alembic; each test then gets clean tables
(a fresh copy of the migrated SQLite file; TRUNCATE on PostgreSQL), so tests may use several
connections at once — concurrency tests need that, and a rolled-back outer transaction
would hide real locking behaviour.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from bot.app import App, build_app
from bot.config import Settings
from handlers.i18n import Catalogs
from handlers.messages import Incoming, Reply
from services.common import Clock
from services.db import Base, Database, create_engine, upgrade_async

pytest_plugins = ["tests.fake_bot_api"]  # the fake Telegram Bot API server fixture

POSTGRES_URL = os.environ.get("DOCSACH_TEST_POSTGRES_URL")
BACKENDS = ["sqlite"] + (["postgres"] if POSTGRES_URL else [])
SHARED_DATA = Path(os.environ.get("DOCSACH_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


def _in_thread(coro_fn, *args):
    """Run a coroutine on its own loop in a worker thread: session fixtures are requested
    lazily from inside async fixtures, where the test loop is already running."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro_fn(*args)).result()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("db") / "template.db"
    _in_thread(upgrade_async, f"sqlite+aiosqlite:///{path}")
    return path


async def _create_database(server_url: str, name: str, drop: bool = False) -> None:
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            if drop:
                await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            else:
                await conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        await admin.dispose()


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A throw-away database on the test server, migrated once, dropped at the end."""
    assert POSTGRES_URL
    server = make_url(POSTGRES_URL)
    server_url = server.render_as_string(hide_password=False)
    name = f"docsach_test_{uuid.uuid4().hex[:10]}"
    _in_thread(_create_database, server_url, name)
    url = server.set(database=name).render_as_string(hide_password=False)
    try:
        _in_thread(upgrade_async, url)
        yield url
    finally:
        _in_thread(_create_database, server_url, name, True)


async def _migrate_and_load_demo(url: str) -> None:
    from services.demo import load_demo

    database = Database(url)
    try:
        await load_demo(database)
    finally:
        await database.dispose()


@pytest.fixture(scope="session")
def sqlite_demo_template(sqlite_template: Path) -> Path:
    """The migrated template with the demo library already loaded (tests that use it get a copy)."""
    path = sqlite_template.with_name("demo-template.db")
    shutil.copy(sqlite_template, path)
    _in_thread(_migrate_and_load_demo, f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_demo_template(postgres_database: str) -> Iterator[str]:
    """A PostgreSQL template database with the demo library; each demo test gets a clone of it."""
    server = make_url(POSTGRES_URL)
    server_url = server.render_as_string(hide_password=False)
    name = make_url(postgres_database).database + "_demo"
    _in_thread(_create_database, server_url, name)
    url = server.set(database=name).render_as_string(hide_password=False)
    try:
        _in_thread(upgrade_async, url)
        _in_thread(_migrate_and_load_demo, url)
        yield name
    finally:
        _in_thread(_create_database, server_url, name, True)


@pytest.fixture(params=BACKENDS)
async def db(request, tmp_path) -> AsyncIterator[Database]:
    """A migrated database on each backend: empty, or holding the demo library when the test
    asks for ``demo_app`` (cloned from a template, which is much faster than loading it anew)."""
    with_demo = "demo_app" in request.fixturenames
    if request.param == "sqlite":
        path = tmp_path / "test.db"
        template = "sqlite_demo_template" if with_demo else "sqlite_template"
        shutil.copy(request.getfixturevalue(template), path)
        database = Database(f"sqlite+aiosqlite:///{path}")
        yield database
        await database.dispose()
    elif with_demo:
        template = request.getfixturevalue("postgres_demo_template")
        server = make_url(POSTGRES_URL)
        server_url = server.render_as_string(hide_password=False)
        name = f"{template}_{uuid.uuid4().hex[:6]}"
        admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
        async with admin.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
        database = Database(server.set(database=name).render_as_string(hide_password=False))
        try:
            yield database
        finally:
            await database.dispose()
            async with admin.connect() as conn:
                await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            await admin.dispose()
    else:
        url = request.getfixturevalue("postgres_database")
        database = Database(url)
        try:
            yield database
        finally:
            tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
            async with database.engine.begin() as conn:
                await conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
            await database.dispose()


@pytest.fixture(scope="session")
def catalogs() -> Catalogs:
    return Catalogs()


@pytest.fixture
def clock() -> Clock:
    """A fixed clock: Monday 1 December 2026, 09:00 in Lào Cai (02:00 UTC)."""
    return Clock(fixed=datetime(2026, 12, 1, 2, 0, tzinfo=UTC))


@pytest.fixture
def settings(db: Database) -> Settings:
    return Settings(database_url=db.url, secret_key=b"test-secret", secret_key_is_ephemeral=False)


@pytest.fixture
async def app(settings: Settings, db: Database, clock: Clock, catalogs: Catalogs) -> App:
    return build_app(settings, db=db, clock=clock, catalogs=catalogs)


@pytest.fixture
async def demo_app(app: App) -> App:
    """The app with the demo library loaded."""
    from services.demo import load_demo

    await load_demo(app.db)
    return app


class ChatDriver:
    """Talks to the router like one chat user would, and remembers the last buttons."""

    def __init__(self, app: App, user: str = "u1", channel: str = "test", language: str | None = None):
        self.app = app
        self.user = user
        self.channel = channel
        self.language = language
        self.last: list[Reply] = []

    async def say(self, text: str) -> list[Reply]:
        self.last = await self.app.router.dispatch(Incoming(
            channel=self.channel, chat_id=self.user, user_id=self.user, text=text, language_hint=self.language))
        return self.last

    async def press(self, label_or_payload: str) -> list[Reply]:
        payload = self.find_button(label_or_payload) or label_or_payload
        self.last = await self.app.router.dispatch(Incoming(
            channel=self.channel, chat_id=self.user, user_id=self.user, button=payload,
            message_ref="1", language_hint=self.language))
        return self.last

    def find_button(self, label: str) -> str | None:
        for reply in reversed(self.last):
            for row in reply.buttons:
                for button in row:
                    if button.payload and label.lower() in button.label.lower():
                        return button.payload
        return None

    @property
    def text(self) -> str:
        return "\n".join(r.text for r in self.last)


@pytest.fixture
def chat(app: App) -> ChatDriver:
    return ChatDriver(app)


# -- issue 7: reflections and campaigns --------------------------------------------------------

@pytest.fixture
def link_chat(demo_app: App):
    """``await link_chat("u1", "HS001")`` → a ChatDriver whose chat is linked to that demo card."""
    from services import patrons

    async def link(user: str, card: str, language: str | None = None) -> ChatDriver:
        actor = await patrons.resolve_actor(demo_app.db, "test", user, user)
        await patrons.link_trusted(demo_app.db, actor, "demo", card, clock=demo_app.deps.clock)
        return ChatDriver(demo_app, user=user, language=language)

    return link

# -- accounts and circulation (issue 5) ------------------------------------------------------------

class Libraries:
    """The demo library plus a second school ("other"), and actors for their people."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.db = app.db

    async def actor(self, card: str, library: str = "demo"):
        """An Actor for a card, as the service layer sees it (no chat needed)."""
        from sqlalchemy import select

        from services.models import Library, Patron
        from services.patrons import Actor

        async with self.db.session() as s:
            patron, lib = (await s.execute(select(Patron, Library).join(Library, Library.id == Patron.library_id)
                                           .where(Library.code == library, Patron.card_number == card))).one()
        return Actor(identity_id=None, channel="test", chat_id=f"{library}:{card}", language="vi",
                     patron_id=patron.id, library_id=lib.id, library_code=lib.code, role=patron.role,
                     full_name=patron.full_name, class_name=patron.class_name)

    async def add_students(self, count: int, library: str = "demo", prefix: str = "ST") -> list[str]:
        from sqlalchemy import select

        from services.models import Library, Patron, Role

        async with self.db.transaction() as s:
            lib = (await s.execute(select(Library).where(Library.code == library))).scalar_one()
            cards = [f"{prefix}{i:03d}" for i in range(count)]
            s.add_all(Patron(library_id=lib.id, card_number=c, full_name=f"Học Sinh {c}", role=Role.STUDENT,
                             class_name="12A1", grade=12, preferences={}) for c in cards)
        return cards

    async def title_with_copies(self, n: int, library: str = "demo") -> tuple[int, list[str]]:
        """A title with exactly n copies in the library: (title id, barcodes)."""
        from sqlalchemy import func, select

        from services.models import Copy, Library

        async with self.db.session() as s:
            lib_id = (await s.execute(select(Library.id).where(Library.code == library))).scalar_one()
            title_id = (await s.execute(select(Copy.title_id).where(Copy.library_id == lib_id)
                                        .group_by(Copy.title_id).having(func.count() == n)
                                        .order_by(Copy.title_id).limit(1))).scalar_one()
            barcodes = list((await s.execute(select(Copy.barcode).where(
                Copy.library_id == lib_id, Copy.title_id == title_id).order_by(Copy.id))).scalars())
        return title_id, barcodes


@pytest.fixture
async def libs(demo_app: App) -> Libraries:
    """Demo library + a second library "other" (librarian OT001, student OS001, one copy OC0001 of
    the first demo title with a single copy)."""
    from sqlalchemy import func, select

    from services.models import Copy, Library, Patron, Role

    async with demo_app.db.transaction() as s:
        other = Library(code="other", name="Trường THCS Khác", timezone="Asia/Ho_Chi_Minh", settings={})
        s.add(other)
        await s.flush()
        s.add_all([
            Patron(library_id=other.id, card_number="OT001", full_name="Thủ Thư Khác", role=Role.LIBRARIAN,
                   preferences={}),
            Patron(library_id=other.id, card_number="OS001", full_name="Học Sinh Khác", role=Role.STUDENT,
                   class_name="9A1", grade=9, preferences={}),
        ])
        title_id = (await s.execute(select(Copy.title_id).group_by(Copy.title_id).having(func.count() == 1)
                                    .order_by(Copy.title_id).limit(1))).scalar_one()
        s.add(Copy(title_id=title_id, library_id=other.id, barcode="OC0001"))
    return Libraries(demo_app)

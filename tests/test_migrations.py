"""The one migration history runs both ways on SQLite and PostgreSQL and matches the models."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import make_url

from services.db import Base, alembic_config, create_engine
from tests.conftest import BACKENDS, POSTGRES_URL, _create_database, _in_thread


def _diff(url: str) -> list:
    async def run() -> list:
        engine = create_engine(url)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(
                    lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata))
        finally:
            await engine.dispose()

    return asyncio.run(run())


@pytest.mark.parametrize("backend", BACKENDS)
def test_upgrade_downgrade_upgrade_and_models_match(backend: str, tmp_path):
    if backend == "sqlite":
        url, cleanup = f"sqlite+aiosqlite:///{tmp_path / 'm.db'}", None
    else:
        server = make_url(POSTGRES_URL)
        name = f"docsach_mig_{uuid.uuid4().hex[:8]}"
        _in_thread(_create_database, server.render_as_string(hide_password=False), name)
        url = server.set(database=name).render_as_string(hide_password=False)

        def cleanup():
            _in_thread(_create_database, server.render_as_string(hide_password=False), name, True)
    try:
        # A plain (non-async) test: no event loop runs here, so Alembic's env.py may start its own.
        cfg = alembic_config(url)
        command.upgrade(cfg, "head")
        assert _diff(url) == []
        command.downgrade(cfg, "base")
        command.upgrade(cfg, "head")
        assert _diff(url) == []
    finally:
        if cleanup:
            cleanup()

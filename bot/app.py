"""The composition root: settings → database → services → router with every feature registered.

Every entry point (``docsach run`` with its channels and HTTP parts, CLI commands, tests) builds the
same :class:`App`. Channels (``bot/channels/``) and HTTP parts (``bot/server.py``) are started by
``docsach run`` around it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bot.config import Settings
from handlers import account, circulation, desk, inline, ops, reflections, reminders, search, start
from handlers.core import Deps, Router
from handlers.i18n import Catalogs
from services import accounts
from services.common import Clock
from services.db import Database
from services.photos import PhotoStore
from services.search import CatalogSearch

log = logging.getLogger(__name__)

# Feature modules, in the order their commands appear in /help and in the command menu.
FEATURES = [start, search, account, circulation, reflections, reminders, desk, inline, ops]


@dataclass
class App:
    settings: Settings
    db: Database
    deps: Deps
    router: Router

    async def close(self) -> None:
        await self.db.dispose()


def build_app(settings: Settings, *, db: Database | None = None, clock: Clock | None = None,
              catalogs: Catalogs | None = None) -> App:
    """Wire the whole bot. Nothing here talks to the network or the database yet."""
    db = db or Database(settings.database_url)
    deps = Deps(
        db=db,
        catalogs=catalogs or Catalogs(),
        clock=clock or Clock(),
        default_language=settings.default_language,
        timezone=settings.timezone,
        button_secret=settings.secret_key,
        # Link codes are printed by one process (the CLI) and redeemed in another (the bot), so
        # only a configured secret can key them; a per-process random one would break them.
        link_code_key=None if settings.secret_key_is_ephemeral else accounts.code_key(settings.secret_key),
        public_url=settings.public_url,
        photos=PhotoStore(db, settings.files_dir),
    )
    # One search index per process, derived from the database and kept fresh by polling it.
    deps.extras["search"] = CatalogSearch(db, refresh_every=settings.search_refresh_seconds,
                                          snapshot=settings.search_snapshot)
    router = Router(deps)
    for feature in FEATURES:
        feature.register(router)
    from bot import observe

    observe.instrument(router)   # log ids, metrics (issue 14)
    return App(settings=settings, db=db, deps=deps, router=router)

"""Metrics and per-event log ids, attached to the router at the composition root.

Every event the router handles gets an id that all its log lines carry, and is counted by
channel and outcome with its reply time; searches are timed; sweeps and sends are counted by
the scheduler. ``/metrics`` serves them in Prometheus' text format to operators only (addresses
in ``DOCSACH_METRICS_ALLOW``, default loopback, or a ``Authorization: Bearer`` matching
``DOCSACH_METRICS_TOKEN``).

With several worker processes (``docsach run --workers N``) each one writes its samples to
``PROMETHEUS_MULTIPROC_DIR`` and any worker answering a scrape sums them all (prometheus-client's
multiprocess mode). Database figures (outbox backlog, last sweep) are read at scrape time.
"""

from __future__ import annotations

import contextvars
import hmac
import ipaddress
import logging
import os
import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from bot import logs
from services.common import DomainError

log = logging.getLogger(__name__)

MULTIPROC = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0)

UPDATES = Counter("docsach_updates_total", "Updates (messages, button presses) handled, by channel and outcome",
                  ["channel", "outcome"])
REPLY_SECONDS = Histogram("docsach_reply_seconds", "Time from an update reaching the router to its replies",
                          ["channel"], buckets=LATENCY_BUCKETS)
SEARCH_SECONDS = Histogram("docsach_search_seconds", "Catalog search time", buckets=LATENCY_BUCKETS)
SENDS = Counter("docsach_sends_total", "Pushed messages (reminders, notices) by channel and status",
                ["channel", "status"])
SWEEP_SECONDS = Histogram("docsach_sweep_seconds", "Reminder sweep duration",
                          buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600))
POOL_IN_USE = Gauge("docsach_db_pool_in_use", "Database connections checked out of this worker's pool",
                    multiprocess_mode="livesum")
POOL_SIZE = Gauge("docsach_db_pool_size", "Database connections this worker's pool keeps",
                  multiprocess_mode="livesum")

_outcome: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("docsach_outcome", default=None)
DB_ERRORS = (OperationalError, DBAPIError, PoolTimeout, ConnectionError, OSError)


def _classify(exc: BaseException) -> str:
    if isinstance(exc, DomainError):
        return "refused"
    if isinstance(exc, DB_ERRORS):
        return "unavailable"
    return "error"


def instrument(router: Any) -> None:
    """Wrap ``router.dispatch`` (id, timing, outcome) and the search service (timing)."""
    if getattr(router, "_observed", False):
        return
    router._observed = True
    dispatch, route = router.dispatch, router._route

    async def observed_route(event, ctx):
        holder = _outcome.get()
        try:
            result = await route(event, ctx)
        except BaseException as exc:
            if holder is not None:
                holder["outcome"] = _classify(exc)
            raise
        if holder is not None:
            holder["outcome"] = "ok"
        return result

    async def observed_dispatch(event):
        channel = event.channel or "-"
        holder: dict[str, str] = {}
        token = _outcome.set(holder)
        started = time.perf_counter()
        outcome = "error"
        try:
            with logs.bound(logs.new_id(channel[:2])):
                replies = await dispatch(event)
                outcome = holder.get("outcome") or "unavailable"   # failed before routing: the database
                # One line per event: what kind, how it ended, how long. Never the text itself.
                log.info("%s %s: %s, %d replies, %.0f ms", channel, _kind(event), outcome, len(replies),
                         (time.perf_counter() - started) * 1000)
        finally:
            _outcome.reset(token)
            UPDATES.labels(channel, outcome).inc()
            REPLY_SECONDS.labels(channel).observe(time.perf_counter() - started)
        return replies

    router._route = observed_route
    router.dispatch = observed_dispatch
    search = router.deps.extras.get("search")
    if search is not None and hasattr(search, "search") and not getattr(search, "_observed", False):
        inner = search.search

        async def timed_search(*args, **kwargs):
            started = time.perf_counter()
            try:
                return await inner(*args, **kwargs)
            finally:
                SEARCH_SECONDS.observe(time.perf_counter() - started)

        search.search = timed_search
        search._observed = True


def _kind(event) -> str:
    if event.button is not None:
        return "button"
    text = (event.text or "").lstrip()
    if text.startswith("/"):
        return "command /" + text[1:].split(maxsplit=1)[0].split("@")[0][:32] if len(text) > 1 else "command"
    return "photo" if event.photo_ref else "text"


def count_send(channel: str | None, status: str) -> None:
    SENDS.labels(channel or "-", status).inc()


def observe_sweep(seconds: float) -> None:
    SWEEP_SECONDS.observe(seconds)


# -- /metrics ---------------------------------------------------------------------------------------

def _pool_figures(db) -> tuple[int, int]:
    pool = db.engine.sync_engine.pool
    checked_out = getattr(pool, "checkedout", None)
    size = getattr(pool, "size", None)
    return (int(checked_out()) if callable(checked_out) else 0, int(size()) if callable(size) else 0)


async def database_figures(db, clock) -> bytes:
    """Gauges read from the database at scrape time (the same in every worker)."""
    from services import ops

    registry = CollectorRegistry()
    backlog_gauge = Gauge("docsach_outbox_pending", "Notices due and not delivered yet", registry=registry)
    oldest_gauge = Gauge("docsach_outbox_oldest_pending_seconds", "Age of the oldest notice due and not delivered",
                         registry=registry)
    sweep_gauge = Gauge("docsach_last_sweep_timestamp_seconds", "When the last reminder sweep finished (any worker)",
                        registry=registry)
    up = Gauge("docsach_database_up", "1 when the database answered this scrape", registry=registry)
    try:
        backlog = await ops.outbox_backlog(db, clock)
        beat = await ops.last_beat(db, ops.SWEEP)
    except DB_ERRORS:
        up.set(0)
        return generate_latest(registry)
    up.set(1)
    backlog_gauge.set(backlog.pending)
    oldest_gauge.set(backlog.oldest_age(clock.now()))
    if beat is not None:
        sweep_gauge.set(beat.at.timestamp())
    return generate_latest(registry)


def process_figures() -> bytes:
    if MULTIPROC:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY)


def allowed(remote: str | None, authorization: str | None, *, token: str | None, networks: list) -> bool:
    """A scrape is allowed from the listed networks, or anywhere with the right bearer token."""
    if token and authorization:
        scheme, _, supplied = authorization.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(supplied.strip().encode(), token.encode()):
            return True
    try:
        address = ipaddress.ip_address((remote or "").split("%")[0])
    except ValueError:
        return False
    return any(address in network for network in networks)


def parse_networks(text: str | None) -> list:
    spec = text if text is not None else "127.0.0.1/32,::1/128"
    return [ipaddress.ip_network(part.strip(), strict=False) for part in spec.split(",") if part.strip()]


def metrics_handler(db, clock, *, token: str | None = None, allow: str | None = None):
    """An aiohttp handler for ``GET /metrics``."""
    from aiohttp import web

    networks = parse_networks(allow)

    async def handle(request: web.Request) -> web.Response:
        if not allowed(request.remote, request.headers.get("Authorization"), token=token, networks=networks):
            return web.Response(status=403, text="forbidden")
        in_use, size = _pool_figures(db)
        POOL_IN_USE.set(in_use)
        POOL_SIZE.set(size)
        body = process_figures() + await database_figures(db, clock)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return handle


class MetricsPart:
    """``GET /metrics`` on the shared server (an HTTP part, see ``bot/server.py``)."""

    name = "metrics"

    def __init__(self, app) -> None:
        self.handler = metrics_handler(app.db, app.deps.clock, token=os.environ.get("DOCSACH_METRICS_TOKEN") or None,
                                       allow=os.environ.get("DOCSACH_METRICS_ALLOW") or None)

    def mount(self, web_app) -> None:
        web_app.router.add_get("/metrics", self.handler)


def metrics_part(app) -> MetricsPart:
    return MetricsPart(app)

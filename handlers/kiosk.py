"""What the chat says about the library's self-check kiosks and its door.

- ``kiosk_receipt`` notices (services.kiosks): the reader's receipt for what went through a kiosk,
  one line for one book, a digest for several in one session. Students read "em"; teachers and
  staff read a neutral form.
- The door QR (``docsach qr --door``) opens ``/start v<library id>``: a linked reader's visit today.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from handlers.core import Context, Router
from handlers.messages import Incoming, Reply
from handlers.text import short
from services import visits
from services.common import DomainError

DOOR_PREFIX = "v"
ACTIONS = ("checkout", "renew", "return")


def _date(ctx: Context, iso: Any) -> str:
    try:
        return ctx.t.date(date.fromisoformat(str(iso)))
    except ValueError:
        return str(iso or "?")


async def render_receipt(ctx: Context, payload: dict[str, Any]) -> Reply:
    t = ctx.t
    items = [i for i in payload.get("items") or [] if i.get("action") in ACTIONS]
    if len(items) == 1:
        item = items[0]
        return Reply(t(f"sip2.receipt_{item['action']}", title=short(str(item.get("title") or "…"), 120),
                       date=_date(ctx, item.get("due_date"))))
    lines = [t("sip2.receipt_digest", count=len(items))]
    for item in items:
        lines.append(t(f"sip2.receipt_line_{item['action']}", title=short(str(item.get("title") or "…"), 80),
                       date=_date(ctx, item.get("due_date"))))
    due = sorted(str(i.get("due_date")) for i in items if i.get("action") != "return" and i.get("due_date"))
    if due:
        lines.append(t("sip2.receipt_digest_footer", date=_date(ctx, due[0])))
    return Reply("\n".join(lines))


async def door_check_in(event: Incoming, ctx: Context) -> Reply:
    """``/start v<library id>`` from the QR code at the library door."""
    t = ctx.t
    if event.chat_type != "private":   # a visit names the reader: never in a group
        return Reply(t("error.private_only"))
    raw = (event.args or "")[len(DOOR_PREFIX):]
    if not raw.isdigit():
        return Reply(t("start.bad_link"))
    if not ctx.actor.is_linked:
        return Reply(t("sip2.door_link_first"))
    try:
        result = await visits.check_in_at_door(ctx.db, ctx.actor, int(raw), clock=ctx.clock)
    except DomainError as refusal:
        return Reply(t(refusal.key, **refusal.params))
    key = "sip2.door_welcome" if result.recorded else "sip2.door_again"
    return Reply(t(key, name=ctx.actor.full_name or "", library=result.library_name))


def register(router: Router) -> None:
    router.notice("kiosk_receipt", render_receipt)
    router.deep_link(DOOR_PREFIX, door_check_in)

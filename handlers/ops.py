"""Alarm notices for the deployment's admins: what is wrong, since when, and what to do.

The watchdog (``bot/alarms.py``) enqueues them through the outbox; this renders one in the
admin's language. Staff are never "em": the sentences have no pronoun.
"""

from __future__ import annotations

from typing import Any

from handlers.core import Context, Router
from handlers.i18n import N_
from handlers.messages import Reply

NOTICE_KIND = "ops_alarm"
ALARMS = {
    "no_sweep": N_("ops.alarm_no_sweep"),
    "outbox_stuck": N_("ops.alarm_outbox_stuck"),
    "platform_refused": N_("ops.alarm_platform_refused"),
    "database_down": N_("ops.alarm_database_down"),
}


async def render_alarm(ctx: Context, payload: dict[str, Any]) -> Reply:
    key = ALARMS.get(str(payload.get("alarm")), N_("ops.alarm_unknown"))
    params = {k: v for k, v in (payload.get("params") or {}).items() if isinstance(k, str)}
    return Reply(ctx.t("ops.alarm_heading") + "\n" + ctx.t(key, **params))


def register(router: Router) -> None:
    router.notice(NOTICE_KIND, render_alarm)

"""How reminders read, the buttons on them, and the commands that switch them on and off.

Renderers (``router.notice``) turn an outbox payload into a message in the recipient's language
with dates in the school's time zone. Buttons act through the same handlers and services as the
commands: Renew and Cancel hold are circulation's own buttons (``renew``, ``hcancel``), "Stop this
kind of reminder" switches the kind off like ``/reminders`` does.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from handlers.core import Context, Router
from handlers.i18n import N_
from handlers.messages import Button, Incoming, Reply
from handlers.text import short
from services import outbox, reminders
from services.common import DomainError

MAX_BUTTON_ROWS = 6
KIND_LABELS = {
    "due_soon": N_("reminders.kind_due_soon"),
    "due_today": N_("reminders.kind_due_today"),
    "overdue": N_("reminders.kind_overdue"),
    "pickup_tomorrow": N_("reminders.kind_pickup_tomorrow"),
    "hold_ready": N_("reminders.kind_hold_ready"),
    "hold_expired": N_("reminders.kind_hold_expired"),
    "class_overdue": N_("reminders.kind_class_overdue"),
}
LINES = {
    "due_soon": N_("reminders.line_due_soon"),
    "due_today": N_("reminders.line_due_today"),
    "overdue": N_("reminders.line_overdue"),
    "pickup_tomorrow": N_("reminders.line_pickup"),
}
ORDER = {"overdue": 0, "due_today": 1, "pickup_tomorrow": 2, "due_soon": 3}


# -- helpers --------------------------------------------------------------------------------------

def _date(ctx: Context, iso: Any) -> str:
    try:
        return ctx.t.date(date.fromisoformat(str(iso)))
    except ValueError:
        return str(iso or "?")


def _days(ctx: Context, iso: Any) -> int:
    """Whole days from today (school time) to ``iso``: negative when it is past."""
    try:
        return (date.fromisoformat(str(iso)) - ctx.clock.today(ctx.deps.timezone)).days
    except ValueError:
        return 0


def _title(payload: dict[str, Any]) -> str:
    return short(str(payload.get("title") or "…"), 120)


def _renew(ctx: Context, payload: dict[str, Any], label: str) -> Button | None:
    """Circulation's own Renew button (same handler as /loans; the renewal count makes a double
    tap renew once). Shown only where the rules allow a renewal."""
    if not payload.get("loan_id") or not payload.get("renewable", False):
        return None
    return ctx.button(label, "renew", int(payload["loan_id"]), int(payload.get("renewals", 0)))


def _cancel(ctx: Context, payload: dict[str, Any], label: str) -> Button | None:
    """Circulation's own Cancel hold button (same handler as /holds)."""
    return ctx.button(label, "hcancel", int(payload["hold_id"])) if payload.get("hold_id") else None


def _stop(ctx: Context, kind: str) -> list[Button]:
    return [ctx.button(ctx.t("reminders.btn_stop"), "rstop", kind)]


def _rows(*buttons: Button | None) -> list[list[Button]]:
    return [[b] for b in buttons if b is not None]


# -- renderers ------------------------------------------------------------------------------------

async def render_due_soon(ctx: Context, payload: dict[str, Any]) -> Reply:
    t = ctx.t
    text = t("reminders.due_soon", title=_title(payload), date=_date(ctx, payload.get("due_date")),
             days=max(_days(ctx, payload.get("due_date")), 1))
    return Reply(text, buttons=_rows(_renew(ctx, payload, t("reminders.btn_renew"))) + [_stop(ctx, "due_soon")])


async def render_due_today(ctx: Context, payload: dict[str, Any]) -> Reply:
    t = ctx.t
    text = t("reminders.due_today", title=_title(payload), date=_date(ctx, payload.get("due_date")))
    return Reply(text, buttons=_rows(_renew(ctx, payload, t("reminders.btn_renew"))) + [_stop(ctx, "due_today")])


async def render_overdue(ctx: Context, payload: dict[str, Any]) -> Reply:
    t = ctx.t
    text = t("reminders.overdue", title=_title(payload), date=_date(ctx, payload.get("due_date")),
             days=max(-_days(ctx, payload.get("due_date")), 1))
    return Reply(text, buttons=_rows(_renew(ctx, payload, t("reminders.btn_renew"))) + [_stop(ctx, "overdue")])


async def render_pickup_tomorrow(ctx: Context, payload: dict[str, Any]) -> Reply:
    t = ctx.t
    text = t("reminders.pickup_tomorrow", title=_title(payload),
             date=_date(ctx, payload.get("pickup_deadline")))
    return Reply(text, buttons=_rows(_cancel(ctx, payload, t("reminders.btn_cancel_hold")))
                 + [_stop(ctx, "pickup_tomorrow")])


async def render_hold_ready(ctx: Context, payload: dict[str, Any]) -> Reply:
    t = ctx.t
    if payload.get("pickup_deadline"):
        text = t("reminders.hold_ready", title=_title(payload), date=_date(ctx, payload["pickup_deadline"]))
    else:
        text = t("reminders.hold_ready_nodate", title=_title(payload))
    return Reply(text, buttons=_rows(_cancel(ctx, payload, t("reminders.btn_cancel_hold")))
                 + [_stop(ctx, "hold_ready")])


async def render_hold_expired(ctx: Context, payload: dict[str, Any]) -> Reply:
    return Reply(ctx.t("reminders.hold_expired", title=_title(payload)), buttons=[_stop(ctx, "hold_expired")])


async def render_hold_cancelled(ctx: Context, payload: dict[str, Any]) -> Reply:
    """The librarian cancelled the reader's hold (``services.circulation.staff_cancel_hold``)."""
    reason = " ".join(str(payload.get("reason") or "").split())
    if reason:
        return Reply(ctx.t("reminders.hold_cancelled_reason", title=_title(payload), reason=short(reason, 300)))
    return Reply(ctx.t("reminders.hold_cancelled", title=_title(payload)))


async def render_digest(ctx: Context, payload: dict[str, Any]) -> Reply:
    """Several notices for one person in one sweep: one message listing the books."""
    t = ctx.t
    items = sorted(payload.get("items") or [], key=lambda i: (ORDER.get(i.get("kind"), 9), str(i.get("due_date"))))
    lines = [t("reminders.digest_title", count=len(items))]
    buttons: list[list[Button]] = []
    for item in items:
        kind = item.get("kind")
        when = item.get("pickup_deadline") if kind == "pickup_tomorrow" else item.get("due_date")
        lines.append(t(LINES.get(kind, "reminders.line_due_soon"), title=_title(item), date=_date(ctx, when),
                       days=abs(_days(ctx, when))))
        if len(buttons) < MAX_BUTTON_ROWS:
            label = t("reminders.btn_renew_title" if kind != "pickup_tomorrow" else "reminders.btn_cancel_title",
                      title=short(_title(item), 28))
            button = _cancel(ctx, item, label) if kind == "pickup_tomorrow" else _renew(ctx, item, label)
            if button is not None:
                buttons.append([button])
    lines.append(t("reminders.digest_footer"))
    buttons.append([ctx.button(t("reminders.btn_settings"), "rset", "-")])
    return Reply("\n".join(lines), buttons=buttons)


async def render_class_overdue(ctx: Context, payload: dict[str, Any]) -> Reply:
    t = ctx.t
    items = payload.get("items") or []
    lines = [t("reminders.class_title", class_name=payload.get("class_name", ""), count=len(items))]
    for item in items:
        lines.append(t("reminders.class_line", name=item.get("name", ""), card=item.get("card", ""),
                       title=_title(item), date=_date(ctx, item.get("due_date"))))
    return Reply("\n".join(lines), buttons=[_stop(ctx, "class_overdue")])


# -- buttons and commands ------------------------------------------------------------------------

async def press_stop(event: Incoming, ctx: Context, args: list[str]) -> Reply:
    kind = args[0] if args else ""
    await reminders.set_enabled(ctx.db, ctx.actor, kind, False)
    text = ctx.t("reminders.stopped", kind=ctx.t(KIND_LABELS[kind]))
    return Reply(text, toast=text)


async def _settings(ctx: Context, *, edit: bool = False, note: str | None = None) -> Reply:
    t = ctx.t
    state = await reminders.preferences(ctx.db, ctx.actor)
    buttons = [[ctx.button(t("reminders.on" if on else "reminders.off", kind=t(KIND_LABELS[kind])), "rset", kind)]
               for kind, on in state.items()]
    start, end = await reminders.quiet_hours(ctx.db, ctx.actor)
    text = t("reminders.settings_title", start=start.strftime("%H:%M"), end=end.strftime("%H:%M"))
    return Reply(f"{note}\n\n{text}" if note else text, buttons=buttons, edit=edit)


async def show_settings(event: Incoming, ctx: Context) -> Reply:
    """``/reminders`` — or ``/reminders off overdue`` / ``/reminders on due_soon`` typed out."""
    words = event.args.lower().split()
    if len(words) == 2 and words[0] in ("on", "off", "bat", "bật", "tat", "tắt"):
        on = words[0] in ("on", "bat", "bật")
        await reminders.set_enabled(ctx.db, ctx.actor, words[1], on)
        key = "reminders.started" if on else "reminders.stopped"
        return await _settings(ctx, note=ctx.t(key, kind=ctx.t(KIND_LABELS[words[1]])))
    return await _settings(ctx)


async def press_setting(event: Incoming, ctx: Context, args: list[str]) -> Reply:
    kind = args[0] if args else "-"
    if kind == "-":               # "Reminder settings" under a digest: show them
        return await _settings(ctx)
    state = await reminders.preferences(ctx.db, ctx.actor)
    if kind not in state:
        raise DomainError("reminders.unknown_kind", kind=kind[:32])
    await reminders.set_enabled(ctx.db, ctx.actor, kind, not state[kind])
    return await _settings(ctx, edit=True)


async def show_unreachable(event: Incoming, ctx: Context) -> Reply:
    """Staff: who no longer receives reminders because they blocked the bot."""
    rows = await outbox.unreachable_chats(ctx.db, ctx.actor)
    t = ctx.t
    if not rows:
        return Reply(t("reminders.unreachable_none"))
    lines = [t("reminders.unreachable_title", count=len(rows))]
    lines += [t("reminders.unreachable_line", name=r.full_name, card=r.card_number, class_name=r.class_name or "-",
                channel=r.channel, date=t.date(r.since)) for r in rows]
    return Reply("\n".join(lines))


def register(router: Router) -> None:
    router.notice("due_soon", render_due_soon)
    router.notice("due_today", render_due_today)
    router.notice("overdue", render_overdue)
    router.notice("pickup_tomorrow", render_pickup_tomorrow)
    router.notice("hold_ready", render_hold_ready)
    router.notice("hold_expired", render_hold_expired)
    router.notice("hold_cancelled", render_hold_cancelled)
    router.notice("digest", render_digest)
    router.notice("class_overdue", render_class_overdue)
    router.command("reminders", show_settings, help_key="reminders.cmd_reminders",
                   roles={"student", "teacher", "librarian", "admin"}, aliases=("nhacnho",))
    router.command("unreachable", show_unreachable, help_key="reminders.cmd_unreachable",
                   roles={"librarian", "admin"})
    router.button("rstop", press_stop)
    router.button("rset", press_setting)

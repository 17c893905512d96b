"""Reserve, borrow, return and renew in chat.

Students: /loans ("Sách đang mượn") with Renew buttons, /holds with Cancel buttons, the Reserve
button on a book card. Librarians: /checkout (copy barcode or QR payload ``c<id>``, then a card
or a name), /return (/checkin, /tra), /renew BARCODE, /history CARD|BARCODE.
Refusals come from the services as ``DomainError`` and are shown with dates in the reader's language.
"""

from __future__ import annotations

from datetime import date

from handlers.core import LINKED, STAFF, Context, Router
from handlers.i18n import N_
from handlers.messages import Button, Incoming, Reply
from handlers.text import short
from services import accounts, conversations
from services import circulation as circ
from services.common import DomainError
from services.models import HoldStatus

COPY_STATUS = {
    "available": N_("copy.status_available"), "on_loan": N_("copy.status_on_loan"),
    "on_hold_shelf": N_("copy.status_on_hold_shelf"), "in_repair": N_("copy.status_in_repair"),
    "lost": N_("copy.status_lost"), "withdrawn": N_("copy.status_withdrawn"),
    "damaged": N_("copy.status_damaged"),
}


def refusal(ctx: Context, err: DomainError) -> Reply:
    """A service refusal in the reader's language, dates and copy states included."""
    params = {}
    for key, value in err.params.items():
        if isinstance(value, date):
            value = ctx.t.date(value)
        elif key == "status" and value in COPY_STATUS:
            value = ctx.t(COPY_STATUS[value])
        params[key] = value
    return Reply(ctx.t(err.key, **params))


# -- students ------------------------------------------------------------------------------------

async def loans(event: Incoming, ctx: Context) -> Reply:
    views = await circ.my_loans(ctx.db, ctx.actor, clock=ctx.clock)
    t = ctx.t
    if not views:
        return Reply(t("loans.none"))
    lines = [t("loans.title", count=len(views))]
    buttons: list[list[Button]] = []
    for i, v in enumerate(views, 1):
        line = t("loans.line", n=i, title=v.title, due=t.date(v.due_date))
        if v.overdue_days:
            line += " " + t("loans.overdue", days=v.overdue_days)
        lines.append(line)
        if v.renewals_left:
            buttons.append([ctx.button(t("loans.renew_button", n=i, title=short(v.title, 28)), "renew",
                                       v.loan_id, v.renewals)])
    return Reply("\n".join(lines), buttons=buttons)


async def renew_press(event: Incoming, ctx: Context, args: list[str]) -> Reply:
    try:
        loan_id, renewals = int(args[0]), int(args[1])
    except (IndexError, ValueError):
        return Reply(ctx.t("error.button_expired"))
    try:
        result = await circ.renew_loan(ctx.db, ctx.actor, loan_id, clock=ctx.clock, expected_renewals=renewals)
    except DomainError as err:
        reply = refusal(ctx, err)
        reply.toast = short(reply.text, 190)
        return reply
    text = ctx.t("renew.done", title=result.title, due=ctx.t.date(result.due_date), left=result.renewals_left)
    # Replace the pressed /loans list: left as it was, it would still show the old due date.
    listing = await loans(event, ctx)
    return Reply(text + "\n\n" + listing.text, buttons=listing.buttons, edit=True, toast=short(text, 190))


async def holds(event: Incoming, ctx: Context) -> Reply:
    views = await circ.my_holds(ctx.db, ctx.actor)
    t = ctx.t
    if not views:
        return Reply(t("holds.none"))
    lines = [t("holds.title", count=len(views))]
    buttons: list[list[Button]] = []
    for i, v in enumerate(views, 1):
        if v.status == HoldStatus.READY:
            lines.append(t("holds.line_ready", n=i, title=v.title, deadline=t.date(v.pickup_deadline)))
        else:
            lines.append(t("holds.line_waiting", n=i, title=v.title, position=v.position))
        buttons.append([ctx.button(t("holds.cancel_button", n=i, title=short(v.title, 28)), "hcancel", v.hold_id)])
    return Reply("\n".join(lines), buttons=buttons)


async def cancel_press(event: Incoming, ctx: Context, args: list[str]) -> Reply:
    try:
        hold_id = int(args[0])
    except (IndexError, ValueError):
        return Reply(ctx.t("error.button_expired"))
    try:
        result = await circ.cancel_hold(ctx.db, ctx.actor, hold_id, clock=ctx.clock)
    except DomainError as err:
        return refusal(ctx, err)
    return Reply(ctx.t("holds.cancelled", title=result.title))


async def reserve_buttons(ctx: Context, title_id: int) -> list[list[Button]]:
    """Reserve on a book card, for readers linked to a library that owns the title."""
    if not ctx.actor.is_linked:
        return []
    info = await circ.title_availability(ctx.db, ctx.actor, title_id)
    if not info.copies or info.my_loan or info.my_hold_id:
        return []
    return [[ctx.button(ctx.t("hold.reserve_button"), "hold", title_id)]]


async def reserve_press(event: Incoming, ctx: Context, args: list[str]) -> Reply:
    if not ctx.actor.is_linked:
        return Reply(ctx.t("link.required"))
    try:
        title_id = int(args[0])
    except (IndexError, ValueError):
        return Reply(ctx.t("error.button_expired"))
    try:
        result = await circ.place_hold(ctx.db, ctx.actor, title_id, clock=ctx.clock)
    except DomainError as err:
        reply = refusal(ctx, err)
        reply.toast = short(reply.text, 190)
        return reply
    t = ctx.t
    if result.status == HoldStatus.READY:
        text = t("hold.ready_now", title=result.title, deadline=t.date(result.pickup_deadline))
    else:
        text = t("hold.queued", title=result.title, position=result.position)
    return Reply(text + "\n" + t("hold.see_holds"), toast=short(text, 190))


async def history(event: Incoming, ctx: Context) -> Reply:
    t = ctx.t
    ref = event.args.split()[0] if event.args else None
    if ref is None or not ctx.actor.is_staff:
        name, entries = await circ.patron_history(ctx.db, ctx.actor)
        header = t("history.patron", name=name)
    else:
        try:
            name, entries = await circ.patron_history(ctx.db, ctx.actor, ref)
            header = t("history.patron", name=name)
        except DomainError:
            view, entries = await circ.copy_history(ctx.db, ctx.actor, ref)
            header = t("history.copy", title=view.title, barcode=view.barcode,
                       status=t(COPY_STATUS[view.status.value]))
    if not entries:
        return Reply(header + "\n" + t("history.none"))
    lines = [header]
    for e in entries:
        returned = t.date(e.returned_at) if e.returned_at else t("history.not_returned", due=t.date(e.due_date))
        lines.append(t("history.line", title=short(e.title, 40), barcode=e.barcode, card=e.card_number,
                       out=t.date(e.checked_out_at), back=returned))
    return Reply("\n".join(lines))


# -- librarians ----------------------------------------------------------------------------------

async def _do_checkout(ctx: Context, copy_ref: int | str, patron_ref: int | str) -> Reply:
    await ctx.clear_flow("checkout")
    try:
        r = await circ.check_out(ctx.db, ctx.actor, copy_ref, patron_ref, clock=ctx.clock)
    except DomainError as err:
        return refusal(ctx, err)
    t = ctx.t
    text = t("checkout.done", title=r.title, barcode=r.barcode, name=r.patron_name, card=r.card_number,
             due=t.date(r.due_date), count=r.loans_count, limit=r.max_loans)
    if r.fulfilled_hold_id:
        text += "\n" + t("checkout.hold_fulfilled")
    return Reply(text)


async def _ask_patron(ctx: Context, copy_ref: str) -> Reply:
    view = await circ.find_copy(ctx.db, ctx.actor, copy_ref)
    await ctx.set_flow("checkout", step="patron", copy_id=view.copy_id)
    t = ctx.t
    return Reply(t("checkout.ask_patron", title=view.title, barcode=view.barcode,
                   status=t(COPY_STATUS[view.status.value])))


async def _choose_patron(ctx: Context, copy_id: int, query: str) -> Reply:
    matches = await accounts.find_patrons(ctx.db, ctx.actor, query)
    if not matches:
        return Reply(ctx.t("checkout.no_patron", query=short(query, 40)))
    if len(matches) == 1:
        return await _do_checkout(ctx, copy_id, matches[0].patron_id)
    buttons = [[ctx.button(f"{m.full_name} · {m.class_name or ''} · {m.card_number}", "co", copy_id, m.patron_id)]
               for m in matches]
    return Reply(ctx.t("checkout.pick_patron", count=len(matches)), buttons=buttons)


async def checkout(event: Incoming, ctx: Context) -> Reply:
    parts = event.args.split(maxsplit=1)
    if not parts:
        await ctx.set_flow("checkout", step="copy")
        return Reply(ctx.t("checkout.ask_copy"))
    if len(parts) == 1:
        return await _ask_patron(ctx, parts[0])
    view = await circ.find_copy(ctx.db, ctx.actor, parts[0])
    return await _choose_patron(ctx, view.copy_id, parts[1])


async def checkout_flow(event: Incoming, ctx: Context) -> Reply:
    state = await conversations.find_state(ctx.db, event.channel, event.chat_id, "checkout") or {}
    text = event.text.strip()
    if state.get("step") == "patron" and state.get("copy_id"):
        return await _choose_patron(ctx, int(state["copy_id"]), text)
    try:
        return await _ask_patron(ctx, text)
    except DomainError as err:
        reply = refusal(ctx, err)
        reply.text += "\n" + ctx.t("checkout.try_again")
        return reply


async def checkout_press(event: Incoming, ctx: Context, args: list[str]) -> Reply:
    try:
        copy_id, patron_id = int(args[0]), int(args[1])
    except (IndexError, ValueError):
        return Reply(ctx.t("error.button_expired"))
    return await _do_checkout(ctx, copy_id, patron_id)


async def _return_one(ctx: Context, ref: str) -> Reply:
    try:
        r = await circ.check_in(ctx.db, ctx.actor, ref, clock=ctx.clock)
    except DomainError as err:
        return refusal(ctx, err)
    t = ctx.t
    lines = [t("return.done", title=r.title, barcode=r.barcode, name=r.patron_name, card=r.card_number)]
    if r.overdue_days:
        lines.append(t("return.overdue", days=r.overdue_days))
    if r.held_for_card:
        lines.append(t("return.set_aside", name=r.held_for_name, card=r.held_for_card,
                       deadline=t.date(r.pickup_deadline)))
    else:
        lines.append(t("return.to_shelf"))
    return Reply("\n".join(lines))


async def return_cmd(event: Incoming, ctx: Context) -> Reply:
    if event.args:
        return await _return_one(ctx, event.args.split()[0])
    await ctx.set_flow("return")
    return Reply(ctx.t("return.ask"))


async def return_flow(event: Incoming, ctx: Context) -> Reply:
    return await _return_one(ctx, event.text.split()[0])


async def renew_cmd(event: Incoming, ctx: Context) -> Reply:
    if not event.args or not ctx.actor.is_staff:
        return await loans(event, ctx)
    try:
        view = await circ.loan_for_copy(ctx.db, ctx.actor, event.args.split()[0], clock=ctx.clock)
        result = await circ.renew_loan(ctx.db, ctx.actor, view.loan_id, clock=ctx.clock)
    except DomainError as err:
        return refusal(ctx, err)
    return Reply(ctx.t("renew.done_staff", title=result.title, name=view.patron_name, card=view.card_number,
                       due=ctx.t.date(result.due_date), left=result.renewals_left))


def register(router: Router) -> None:
    router.command("loans", loans, help_key="help.cmd_loans", roles=LINKED, aliases=("muon", "sachdangmuon"))
    router.command("holds", holds, help_key="help.cmd_holds", roles=LINKED, aliases=("datcho", "dattruoc"))
    router.command("renew", renew_cmd, help_key="help.cmd_renew", roles=LINKED, aliases=("giahan",))
    router.command("history", history, help_key="help.cmd_history", roles=LINKED, aliases=("lichsu",))
    router.command("checkout", checkout, help_key="help.cmd_checkout", roles=STAFF, aliases=("chomuon",))
    router.command("return", return_cmd, help_key="help.cmd_return", roles=STAFF, aliases=("checkin", "tra"))
    router.button("renew", renew_press)
    router.button("hcancel", cancel_press)
    router.button("hold", reserve_press)
    router.button("co", checkout_press)
    router.flow("checkout", checkout_flow)
    router.flow("return", return_flow)
    router.book_card_buttons(reserve_buttons)

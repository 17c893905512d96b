"""Linking a chat to a library card (/link, a typed code, or the QR deep link ``k<code>``),
/unlink, /me, and the librarian's /codes CLASS."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from handlers.core import LINKED, STAFF, Context, Router
from handlers.i18n import Translator, audience_for
from handlers.messages import Attachment, Incoming, Reply
from services import accounts, catalog, labels
from services.common import DomainError


async def _redeem(ctx: Context, code: str) -> Reply:
    result = await accounts.redeem_link_code(ctx.db, ctx.actor, code, clock=ctx.clock,
                                            key=ctx.deps.link_code_key, source=ctx.event.source)
    # From now on they are a student or a teacher, not a guest: answer in that register.
    t = ctx.deps.catalogs.translator(ctx.actor.language, ctx.deps.timezone, audience_for(result.role))
    where = t("account.linked_class", name=result.class_name) if result.class_name else ""
    return Reply(t("account.linked", name=result.full_name, where=where, library=result.library_name)
                 + "\n\n" + t("account.linked_next"))


async def link(event: Incoming, ctx: Context) -> Reply:
    if event.args:
        return await _redeem(ctx, event.args)
    if ctx.actor.is_linked:
        return Reply(ctx.t("account.already_linked"))
    return Reply(ctx.t("account.link_how"))


async def link_deep(event: Incoming, ctx: Context) -> Reply:
    """``/start k<code>`` from the QR code on a link slip."""
    if ctx.actor.is_linked:
        return Reply(ctx.t("account.already_linked"))
    return await _redeem(ctx, event.args)


async def code_prefilter(event: Incoming, ctx: Context) -> Reply | None:
    """A chat that is not linked yet sends its code as plain text."""
    if ctx.actor.is_linked or not accounts.looks_like_code(event.text):
        return None
    return await _redeem(ctx, event.text)


async def unlink_cmd(event: Incoming, ctx: Context) -> Reply:
    if event.args:  # staff: /unlink CARD
        count = await accounts.unlink(ctx.db, ctx.actor, card=event.args.split()[0], clock=ctx.clock)
        return Reply(ctx.t("account.unlinked_card", card=event.args.split()[0][:32], count=count))
    return Reply(ctx.t("account.unlink_confirm"),
                 buttons=[[ctx.button(ctx.t("account.unlink_yes"), "unlink"),
                           ctx.button(ctx.t("account.unlink_no"), "unlinkno")]])


async def unlink_press(event: Incoming, ctx: Context, args: list[str]) -> Reply:
    if not ctx.actor.is_linked:
        return Reply(ctx.t("account.not_linked"), edit=True)
    await accounts.unlink(ctx.db, ctx.actor, clock=ctx.clock)
    return Reply(ctx.t("account.unlinked"), edit=True)


async def unlink_keep(event: Incoming, ctx: Context, args: list[str]) -> Reply:
    return Reply(ctx.t("account.unlink_kept"), edit=True)


async def me(event: Incoming, ctx: Context) -> Reply:
    p = await accounts.profile(ctx.db, ctx.actor, clock=ctx.clock)
    t = ctx.t
    lines = [
        t("account.me_title", name=p.full_name),
        t("account.me_card", card=p.card_number, role=t(f"account.role_{p.role.value}")),
    ]
    if p.class_name:
        lines.append(t("account.me_class", name=p.class_name))
    lines += [
        t("account.me_library", library=p.library_name),
        t("account.me_counts", loans=p.loans, max_loans=p.rules.max_loans, holds=p.holds,
          max_holds=p.rules.max_holds),
        t("account.me_rules", days=p.rules.loan_days, renewals=p.rules.max_renewals,
          pickup=p.rules.pickup_days),
    ]
    if p.overdue:
        lines.append(t("account.me_overdue", count=p.overdue))
    return Reply("\n".join(lines))


async def codes(event: Incoming, ctx: Context) -> Reply:
    """/codes 11A1: new link codes for a class, as a list and (when labels are available) a PDF."""
    class_name = event.args.strip()[:32]
    if not class_name:
        raise DomainError("account.codes_need_class")
    issued = await accounts.issue_link_codes(ctx.db, ctx.actor, class_name=class_name, clock=ctx.clock,
                                            key=ctx.deps.link_code_key)
    t = ctx.t
    lines = [t("account.codes_title", name=class_name, count=len(issued), expires=t.date(issued[0].expires_at))]
    for item in issued:
        line = t("account.codes_line", name=item.full_name, card=item.card_number, code=item.code)
        link = ctx.deps.printed_link(item.payload)
        if link:
            line += "\n   " + link
        lines.append(line)
    lines.append(t("account.codes_footer"))
    reply = Reply("\n".join(lines))
    # Slips are read by the students they are for: their register, not the librarian's.
    student_t = ctx.deps.catalogs.translator(ctx.actor.language, ctx.deps.timezone, "student")
    pdf = await slips_pdf(issued, link=ctx.deps.printed_link, t=student_t,
                          school=await catalog.library_name(ctx.db, ctx.actor.library_id))
    if pdf is not None:
        reply.attachment = Attachment(filename=f"codes-{class_name}.pdf", data=pdf)
    return reply


async def slips_pdf(issued: list[accounts.IssuedCode], *, link: Callable[[str], str | None],
                    t: Translator, school: str | None) -> bytes:
    """Link slips to cut and hand out: on each, who it is for, the code, the school, the expiry date
    (school time) and one line saying what to do. The QR code opens the link (a landing page, a
    chat) or, with nowhere to open, holds the code itself so a scanner app shows it for typing —
    never a link that opens nothing."""
    links = {item.payload: link(item.payload) for item in issued}
    how = t("account.slip_scan") if any(links.values()) else t("account.slip_send")
    sheet = [labels.Label(
        qr_data=links[item.payload] or item.code,
        lines=[item.full_name,
               " · ".join(p for p in (t("account.slip_class", name=item.class_name) if item.class_name else "",
                                      item.card_number) if p),
               t("account.slip_code", code=item.code),
               t("account.slip_expires", date=t.date(item.expires_at)),
               *([school] if school else []),
               how],
    ) for item in issued]
    classes = sorted({i.class_name for i in issued if i.class_name})
    title = t("account.slip_title", school=school or "", name=", ".join(classes)).strip(" —")
    return await asyncio.to_thread(labels.render_label_sheet, sheet, columns=2, rows=7, title=title)


def register(router: Router) -> None:
    router.command("link", link, help_key="help.cmd_link", aliases=("lienket",))
    router.command("me", me, help_key="help.cmd_me", roles=LINKED, aliases=("toi",))
    router.command("unlink", unlink_cmd, help_key="help.cmd_unlink", roles=LINKED)
    router.command("codes", codes, help_key="help.cmd_codes", roles=STAFF, aliases=("maso",))
    router.button("unlink", unlink_press)
    router.button("unlinkno", unlink_keep)
    router.deep_link("k", link_deep)
    router.prefilter_text(code_prefilter)

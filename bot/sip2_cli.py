"""``docsach kiosk add|list|disable|enable`` and the door check-in label (``docsach qr --door``).

Kept out of bot/cli.py so the command line only wires these in. Every message is translated
(locale domain ``sip2``); refusals are one sentence and a non-zero exit.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from services import kiosks, visits
from services.common import DomainError
from services.db import upgrade_async


def add_parser(sub, handlers: dict) -> None:
    p = sub.add_parser("kiosk", help="self-check kiosks (SIP2 logins): add, list, disable",
                       description="Self-check kiosks log in to docsach's SIP2 server (DOCSACH_SIP2_LISTEN) "
                                   "with a name and password. Each kiosk acts only for its own library.")
    ks = p.add_subparsers(dest="kiosk_command", metavar="ACTION", required=True)
    add = ks.add_parser("add", help="a new kiosk login (prints the password once)",
                        description="Create a kiosk login. Without --password a strong one is generated and "
                                    "printed once; only its scrypt hash is stored.")
    add.add_argument("name", help="the kiosk's SIP2 login (CN), 1-11 of A-Z a-z 0-9 - _, e.g. K1")
    add.add_argument("--library", required=True, help="library code, e.g. demo")
    add.add_argument("--password", default=None, help="at least 8 characters (default: generated)")
    lst = ks.add_parser("list", help="kiosks, their library, state and last login")
    lst.add_argument("--library", default=None, help="only this library's kiosks")
    dis = ks.add_parser("disable", help="stop a kiosk from logging in (an open connection is closed)")
    dis.add_argument("name")
    ena = ks.add_parser("enable", help="let a disabled kiosk log in again")
    ena.add_argument("name")
    handlers["kiosk"] = cmd_kiosk


async def cmd_kiosk(app, args: argparse.Namespace) -> int:
    t = app.deps.catalogs.translator(app.settings.default_language, app.settings.timezone)
    await upgrade_async(app.settings.database_url)
    try:
        if args.kiosk_command == "add":
            info, password = await kiosks.add_kiosk(app.db, args.library, args.name, args.password)
            print(t("sip2.cli_added", name=info.name, library=f"{info.library_name} ({info.library_code})"))
            if args.password is None:
                print(t("sip2.cli_password", password=password))
        elif args.kiosk_command == "list":
            rows = await kiosks.list_kiosks(app.db, args.library)
            if not rows:
                print(t("sip2.cli_none"))
            for k in rows:
                last = t.datetime(k.last_login_at) if k.last_login_at else t("sip2.cli_never")
                state = t("sip2.cli_on") if k.enabled else t("sip2.cli_off")
                print(f"{k.name}\t{k.library_code}\t{state}\t{last}")
        else:
            enable = args.kiosk_command == "enable"
            info = await kiosks.set_enabled(app.db, args.name, enable)
            print(t("sip2.cli_enabled" if enable else "sip2.cli_disabled", name=info.name))
    except DomainError as refusal:
        print(t(refusal.key, **refusal.params), file=sys.stderr)
        return 2
    return 0


async def door_label(app, args: argparse.Namespace) -> int:
    """An A4 poster for the library door: scanning its QR opens ``/start v<library id>`` in the bot
    (a visit needs a linked chat), or in the web chat when only DOCSACH_PUBLIC_URL is set."""
    from handlers.kiosk import DOOR_PREFIX

    t = app.deps.catalogs.translator(app.settings.default_language, app.settings.timezone)
    door = await visits.door(app.db, args.library)
    if door is None:
        print(t("sip2.no_library", library=args.library), file=sys.stderr)
        return 2
    library_id, name = door
    url = door_link(app.deps, f"{DOOR_PREFIX}{library_id}")
    if url is None:
        print(t("sip2.door_no_link"), file=sys.stderr)
        return 2
    pdf = await asyncio.to_thread(door_poster, url, name, t("sip2.label_door_title"), t("sip2.label_door_scan"))
    out = Path(args.out)
    await asyncio.to_thread(out.write_bytes, pdf)
    print(t("sip2.cli_door_written", library=name, path=out))
    return 0


def door_link(deps, payload: str) -> str | None:
    """A messaging app's deep link first (the reader's chat is linked there), else the web chat."""
    for profile in deps.channels.values():
        if profile.link_base and profile.printable:
            return profile.link(payload)
    if deps.public_url:
        return f"{deps.public_url.rstrip('/')}/chat?start={payload}"
    return None


def door_poster(url: str, library: str, heading: str, instruction: str) -> bytes:
    """One page, readable from the corridor: the school, a big heading, a QR a phone reads from a
    metre away, and the instruction."""
    import unicodedata

    from fpdf import FPDF

    from services.labels import _draw_qr, add_fonts

    pdf = FPDF(orientation="P", unit="mm", format="A4")
    pdf.set_auto_page_break(False)
    add_fonts(pdf)
    pdf.set_creator("docsach")
    pdf.set_title(f"{library} — {heading}")
    pdf.add_page()
    nfc = lambda text: unicodedata.normalize("NFC", text)  # noqa: E731
    pdf.set_font("DejaVu", "", 20)
    pdf.set_xy(15, 22)
    pdf.multi_cell(180, 9, nfc(library), align="C")
    pdf.set_font("DejaVu", "B", 34)
    pdf.set_xy(15, pdf.get_y() + 6)
    pdf.multi_cell(180, 14, nfc(heading), align="C")
    side = 150.0
    top = pdf.get_y() + 8
    _draw_qr(pdf, url, (210 - side) / 2, top, side)
    pdf.set_font("DejaVu", "", 22)
    pdf.set_xy(15, top + side + 8)
    pdf.multi_cell(180, 10, nfc(instruction), align="C")
    pdf.set_font("DejaVu", "", 9)
    pdf.set_text_color(110, 110, 110)
    pdf.set_xy(15, 282)
    pdf.cell(180, 5, url, align="C")
    return bytes(pdf.output())

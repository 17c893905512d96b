"""QR label sheets: render the PDF, decode every QR code, and follow it through the router."""

from __future__ import annotations

import pypdfium2
import pytest
import zxingcpp

from bot.cli import build_parser
from handlers.messages import Incoming
from services.labels import Label, catalog_label_items, render_label_sheet


def decode_pdf(pdf: bytes) -> list[list[str]]:
    """The QR contents on each page, in reading order (top to bottom, left to right)."""
    pages = []
    for page in pypdfium2.PdfDocument(pdf):
        found = zxingcpp.read_barcodes(page.render(scale=2).to_pil(), formats=zxingcpp.BarcodeFormat.QRCode)
        found.sort(key=lambda r: (round(r.position.top_left.y / 50), r.position.top_left.x))
        pages.append([r.text for r in found])
    return pages


def pdf_text(pdf: bytes) -> str:
    return "\n".join(page.get_textpage().get_text_range() for page in pypdfium2.PdfDocument(pdf))


def test_generic_sheet_with_vietnamese_and_overflowing_text():
    labels = [Label(f"MÃ-{n}", ["Truyện Kiều " * (8 if n == 0 else 1), "Nguyễn Du", f"PL4378.9 N{n}"])
              for n in range(26)]
    pdf = render_label_sheet(labels, columns=3, rows=8, title="Thư viện Lào Cai")
    assert decode_pdf(pdf) == [[f"MÃ-{n}" for n in range(24)], ["MÃ-24", "MÃ-25"]]
    text = pdf_text(pdf)
    assert "Thư viện Lào Cai — 1/2" in text and "Nguyễn Du" in text
    assert "PL4378.9 N0" in text          # a long title never pushes the call number off
    with pytest.raises(ValueError):
        render_label_sheet(labels, columns=0)


async def test_qr_command_labels_copies_that_open_the_right_book(demo_app, tmp_path, capsys):
    out = tmp_path / "labels.pdf"
    parser, handlers = build_parser()
    args = parser.parse_args(["qr", "--copies", "--library", "demo", "--location", "KE-B", "--limit", "5",
                              "--bot-username", "@docsach_test_bot", "--out", str(out)])
    assert await handlers["qr"](demo_app, args) == 0
    assert "5 labels on 1 A4 page(s)" in capsys.readouterr().out
    _, items = await catalog_label_items(demo_app.db, "copies", "demo", location_code="KE-B", limit=5)
    [codes] = decode_pdf(out.read_bytes())
    assert codes == [f"https://t.me/docsach_test_bot?start=c{item.ref}" for item in items]
    assert all(len(code.split("start=")[1]) <= 64 for code in codes)
    # Scanning a label opens that copy's book card (with the copy marked) through the router.
    for item, code in zip(items, codes, strict=True):
        replies = await demo_app.router.dispatch(Incoming(
            channel="test", chat_id="scanner", user_id="scanner", text=f"/start {code.split('start=')[1]}"))
        assert replies[0].text.startswith(f"📖 {item.lines[0]}"), replies[0].text
        assert item.lines[-2] in replies[0].text          # the scanned copy's barcode


async def test_qr_command_refusals(demo_app, tmp_path, capsys):
    parser, handlers = build_parser()
    base = ["qr", "--shelves", "--library", "demo", "--out", str(tmp_path / "x.pdf")]
    assert await handlers["qr"](demo_app, parser.parse_args(base)) == 2        # no bot username
    assert "--bot-username" in capsys.readouterr().err
    named = [*base, "--bot-username", "b"]
    assert await handlers["qr"](demo_app, parser.parse_args([*named, "--location", "NOPE"])) == 2
    assert "NOPE" in capsys.readouterr().err
    assert await handlers["qr"](demo_app, parser.parse_args([*named[:3], "zz", *named[4:]])) == 2
    assert await handlers["qr"](demo_app, parser.parse_args(named)) == 0
    [codes] = decode_pdf((tmp_path / "x.pdf").read_bytes())
    assert len(codes) == 8 and all(c.startswith("https://t.me/b?start=l") for c in codes)  # 6 shelves (with the textbook shelf KE-G) + 2 corners
    # A shelf's code lists what is on it.
    _, shelves = await catalog_label_items(demo_app.db, "shelves", "demo")
    replies = await demo_app.router.dispatch(Incoming(
        channel="test", chat_id="scanner", user_id="scanner", text=f"/start {codes[0].split('start=')[1]}"))
    assert shelves[0].lines[0] in replies[0].text and replies[0].buttons

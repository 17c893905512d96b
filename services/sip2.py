"""SIP2 (3M Standard Interchange Protocol 2.00) messages: parse what a kiosk sends, build replies.

Pure text handling, no I/O and no database, so every rule of the wire format is tested on its own:

- A message is ``<2-digit code><fixed fields><variable fields>`` ended by CR. Fixed fields have
  fixed widths per message; variable fields are ``<2-letter code><value>|``. Unknown variable
  fields are ignored; a field sent twice keeps every value (``AU`` items, ``AG`` print lines).
- Error detection: a kiosk may end a message with ``AY<seq>AZ<checksum>``. The checksum is the
  two's complement of the 16-bit sum of every byte up to and including ``AZ``. A message whose
  checksum is wrong gets ``96`` (please resend). Replies always carry ``AZ`` and echo ``AY``.
- Dates are ``YYYYMMDDZZZZHHMMSS`` in the school's local time (``ZZZZ`` blank = local).

Kiosks in the field are lenient about widths (the PyPI ``sip2`` client, for one, omits the
transaction date of Renew All and writes checksums without leading zeros), so parsing is too:
a date field that is plainly absent is skipped, and a checksum of 1–4 hex digits is accepted.
"""

from __future__ import annotations

import codecs
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import date, datetime, time
from zoneinfo import ZoneInfo

MAX_FIELD = 255            # the spec's limit for one variable field
DATE_WIDTH = 18

# Fixed fields of each request the server understands: (name, width, is_date).
REQUEST_FIXED: dict[str, tuple[tuple[str, int, bool], ...]] = {
    "93": (("uid_algorithm", 1, False), ("pwd_algorithm", 1, False)),
    "99": (("status_code", 1, False), ("max_print_width", 3, False), ("protocol_version", 4, False)),
    "63": (("language", 3, False), ("transaction_date", 18, True), ("summary", 10, False)),
    "23": (("language", 3, False), ("transaction_date", 18, True)),
    "17": (("transaction_date", 18, True),),
    "11": (("sc_renewal_policy", 1, False), ("no_block", 1, False), ("transaction_date", 18, True),
           ("nb_due_date", 18, True)),
    "09": (("no_block", 1, False), ("transaction_date", 18, True), ("return_date", 18, True)),
    "29": (("third_party_allowed", 1, False), ("no_block", 1, False), ("transaction_date", 18, True),
           ("nb_due_date", 18, True)),
    "65": (("transaction_date", 18, True),),
    "35": (("transaction_date", 18, True),),
    "01": (("card_retained", 1, False), ("transaction_date", 18, True)),
    "97": (),
    # Understood only to refuse them politely (see SUPPORTED): hold, item status update,
    # patron enable, fee paid.
    "15": (("hold_mode", 1, False), ("transaction_date", 18, True)),
    "19": (("transaction_date", 18, True),),
    "25": (("transaction_date", 18, True),),
    "37": (("transaction_date", 18, True), ("fee_type", 2, False), ("payment_type", 2, False),
           ("currency_type", 3, False)),
}

# The 16 positions of the SC Status reply's "supported messages" (BX) field, in the spec's order,
# and whether docsach really carries each one out.
SUPPORTED = (
    ("23", True),   # patron status request
    ("11", True),   # checkout
    ("09", True),   # checkin
    ("01", True),   # block patron
    ("99", True),   # SC/ACS status
    ("97", True),   # request SC/ACS resend
    ("93", True),   # login
    ("63", True),   # patron information
    ("35", True),   # end patron session
    ("37", False),  # fee paid: school libraries here charge no fees
    ("17", True),   # item information
    ("19", False),  # item status update
    ("25", False),  # patron enable
    ("15", False),  # hold: reservations are made in the chat
    ("29", True),   # renew
    ("65", True),   # renew all
)

_DATE = re.compile(r"\d{8}[ 0-9A-Z]{4}\d{6}$")
_TRAILER = re.compile(r"(?:\|?AY(\d))?\|?AZ([0-9A-Fa-f]{1,4})$")
_FIELD_CODE = re.compile(r"[A-Z]{2}")
_UNSAFE = re.compile(r"[|\r\n\x00-\x1f\x7f]")


class BadMessage(ValueError):
    """Not a SIP2 message this server can read (no code, unknown code, not text)."""


@dataclass
class Request:
    code: str
    fixed: dict[str, str]
    fields: dict[str, list[str]] = field(default_factory=dict)
    sequence: str | None = None
    checksum_ok: bool | None = None      # None: the kiosk sent no checksum
    text: str = ""                       # the message as received, without its terminator

    def get(self, code: str, default: str = "") -> str:
        values = self.fields.get(code)
        return values[0] if values else default

    def has(self, code: str) -> bool:
        return code in self.fields


def checksum(data: bytes) -> str:
    """The four hex digits that make the 16-bit sum of ``data`` + checksum zero."""
    return f"{(-sum(data)) & 0xFFFF:04X}"


def _checksum_matches(head: bytes, text_head: str, given: str) -> bool:
    value = int(given, 16)
    if (sum(head) + value) & 0xFFFF == 0:
        return True
    # Some clients sum characters rather than encoded bytes: the same for ASCII, not for "ă".
    return (sum(map(ord, text_head)) + value) & 0xFFFF == 0


def parse(raw: bytes, encoding: str = "utf-8") -> Request:
    """One message (without or with its CR/LF terminator) → :class:`Request`.

    Raises :class:`BadMessage` for what cannot be a request; a wrong checksum is reported in
    ``checksum_ok`` (the caller answers 96) rather than raised.
    """
    raw = raw.rstrip(b"\r\n")
    if b"\x00" in raw:
        raise BadMessage("binary data")
    text = unicodedata.normalize("NFC", raw.decode(encoding, errors="replace"))
    if len(text) < 2 or not text[:2].isdigit():
        raise BadMessage("no message code")
    code = text[:2]
    if code not in REQUEST_FIXED:
        raise BadMessage(f"unknown message code {code}")
    body = text[2:]
    sequence = None
    checksum_ok = None
    trailer = _TRAILER.search(body)
    if trailer is not None:
        sequence = trailer.group(1)
        az_at = 2 + body.rfind("AZ")
        head_text = text[:az_at + 2]
        checksum_ok = _checksum_matches(head_text.encode(encoding, errors="replace"), head_text, trailer.group(2))
        body = body[:trailer.start()]
    fixed: dict[str, str] = {}
    pos = 0
    for name, width, is_date in REQUEST_FIXED[code]:
        chunk = body[pos:pos + width]
        if is_date and not (_DATE.match(chunk) or chunk.strip() == "") and _FIELD_CODE.match(body[pos:pos + 2]):
            fixed[name] = ""      # absent (lenient): the variable fields start here
            continue
        fixed[name] = chunk
        pos += width
    fields: dict[str, list[str]] = {}
    for piece in body[pos:].split("|"):
        if len(piece) < 2 or not _FIELD_CODE.match(piece[:2]):
            continue   # empty, or junk between bars: ignored like any unknown field
        fields.setdefault(piece[:2], []).append(piece[2:2 + MAX_FIELD])
    return Request(code, fixed, fields, sequence, checksum_ok, text)


def clean(value: object, limit: int = MAX_FIELD) -> str:
    """A value that cannot break the framing: no bars, no control characters, at most 255 chars."""
    return _UNSAFE.sub(" ", str(value))[:limit]


@dataclass
class Reply:
    """A response under construction: fixed part, then variable fields in order."""

    code: str
    fixed: str = ""
    fields: list[tuple[str, str]] = field(default_factory=list)

    def add(self, code: str, value: object | None, *, always: bool = False) -> Reply:
        """Add a field; empty optional values are left out, required ones go out empty."""
        if value is None or value == "":
            if always:
                self.fields.append((code, ""))
            return self
        self.fields.append((code, clean(value)))
        return self

    def encode(self, sequence: str | None, encoding: str = "utf-8") -> bytes:
        text = self.code + self.fixed + "".join(f"{c}{v}|" for c, v in self.fields)
        if sequence is not None:
            text += f"AY{sequence}"
        head = (for_encoding(text, encoding) + "AZ").encode(encoding, errors="replace")
        return head + checksum(head).encode("ascii") + b"\r"


_TONES = frozenset("\u0300\u0301\u0303\u0309\u0323")   # grave, acute, tilde, hook above, dot below


def for_encoding(text: str, encoding: str) -> str:
    """Text the kiosk's encoding can carry. Windows-1258 (Vietnamese kiosks that cannot do UTF-8)
    has "ê", "ơ", "ă"… but writes the five tones as combining marks: "ệ" becomes "ê" + dot below.
    Anything still impossible becomes "?"."""
    if codecs.lookup(encoding).name.startswith("utf"):
        return text
    out = []
    for ch in text:
        try:
            ch.encode(encoding)
            out.append(ch)
            continue
        except UnicodeEncodeError:
            pass
        parts = unicodedata.normalize("NFD", ch)
        base = unicodedata.normalize("NFC", "".join(p for p in parts if p not in _TONES))
        out.append(base + "".join(p for p in parts if p in _TONES))
    return "".join(out)


def resend_request() -> bytes:
    """``96``: the message was garbled, send it again (never carries a sequence number)."""
    return Reply("96").encode(None)


# -- fixed-field values -------------------------------------------------------------------------

def flag(value: bool) -> str:
    return "Y" if value else "N"


def sip_datetime(moment: datetime, zone: str | ZoneInfo) -> str:
    """``YYYYMMDD    HHMMSS`` in the school's local time."""
    tz = ZoneInfo(zone) if isinstance(zone, str) else zone
    return moment.astimezone(tz).strftime("%Y%m%d    %H%M%S")


def sip_due(day: date, zone: str | ZoneInfo) -> str:
    """A due date as the end of that school day, local time."""
    tz = ZoneInfo(zone) if isinstance(zone, str) else zone
    return sip_datetime(datetime.combine(day, time(23, 59, 59), tzinfo=tz), tz)


def count4(value: int) -> str:
    return f"{max(0, min(value, 9999)):04d}"


# SIP2 language codes (3M table): 000 unknown/default, 001 English. Vietnamese has no code.
LANGUAGE_CODES = {"en": "001"}


def language_code(lang: str | None) -> str:
    return LANGUAGE_CODES.get(lang or "", "000")


def language_from_code(code: str) -> str | None:
    return next((lang for lang, c in LANGUAGE_CODES.items() if c == code), None)


def supported_messages() -> str:
    return "".join(flag(ok) for _, ok in SUPPORTED)


def wrap(text: str, width: int) -> list[str]:
    """Print lines (AG) no wider than the kiosk's printer, cut on spaces."""
    width = max(16, min(width, MAX_FIELD))
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split():
            while len(word) > width:
                if line:
                    lines.append(line)
                    line = ""
                lines.append(word[:width])
                word = word[width:]
            if not line:
                line = word
            elif len(line) + 1 + len(word) <= width:
                line += " " + word
            else:
                lines.append(line)
                line = word
        lines.append(line)
    return [line for line in lines if line.strip()]

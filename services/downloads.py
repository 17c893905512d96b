"""Documents for chats that cannot carry files (Zalo): a certificate or slip is stored here and
sent as a link that is signed and expires, served by docsach's own web server.

The link names the row and its expiry and carries an HMAC of both under the deployment's secret
key, so it cannot be guessed or extended; the row itself is deleted once it has expired.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select

from services.common import aware
from services.db import Database
from services.models import Download

TTL = timedelta(hours=24)
MAX_BYTES = 20 * 1024 * 1024


@dataclass(frozen=True)
class StoredFile:
    filename: str
    mime_type: str
    data: bytes


def _signature(key: bytes, download_id: int | str, expires: int, kind: str = "download") -> str:
    digest = hmac.new(key, f"{kind}|{download_id}|{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:18]).decode()


def photo_path(ref: str, *, key: bytes, now: datetime, ttl: timedelta = TTL) -> str:
    """A signed, expiring path to a stored photo (``services/photos.py``), for platforms that
    take a photo only as a URL (Zalo's sendPhoto)."""
    expires = int((now + ttl).timestamp())
    return f"/files/photo/{ref}/{expires}/{_signature(key, ref, expires, 'photo')}"


def photo_link_valid(ref: str, expires: int, signature: str, *, key: bytes, now: datetime) -> bool:
    good = _signature(key, ref, expires, "photo")
    return hmac.compare_digest(signature.encode(), good.encode()) and datetime.fromtimestamp(expires, UTC) >= now


def _safe_name(filename: str) -> str:
    """ASCII only (it goes into a URL and a header): "giấy chứng nhận.pdf" → "giay_chung_nhan.pdf"."""
    plain = unicodedata.normalize("NFKD", filename.replace("đ", "d").replace("Đ", "D"))
    plain = "".join(ch for ch in plain if not unicodedata.combining(ch))
    keep = "".join(ch if (ch.isascii() and ch.isalnum()) or ch in "._-" else "_" for ch in plain)[:120]
    return keep.strip("._") or "document"


async def store(db: Database, filename: str, mime_type: str, data: bytes, *, key: bytes, now: datetime,
                ttl: timedelta = TTL) -> tuple[str, datetime]:
    """Keep the file and return (the path of its signed link, when it expires)."""
    if len(data) > MAX_BYTES:
        raise ValueError(f"document too large for a download link ({len(data)} bytes)")
    expires_at = now + ttl
    async with db.transaction() as s:
        row = Download(filename=_safe_name(filename), mime_type=mime_type[:100], data=data,
                       created_at=now, expires_at=expires_at)
        s.add(row)
        await s.flush()
        download_id = row.id
    expires = int(expires_at.timestamp())
    return f"/files/{download_id}/{expires}/{_signature(key, download_id, expires)}/{row.filename}", expires_at


async def fetch(db: Database, download_id: int, expires: int, signature: str, *, key: bytes,
                now: datetime) -> StoredFile | None:
    """The file behind a link, or None when the link is forged, expired or gone."""
    if not hmac.compare_digest(signature.encode(), _signature(key, download_id, expires).encode()):
        return None
    if datetime.fromtimestamp(expires, UTC) < now:
        return None
    async with db.session() as s:
        row = (await s.execute(select(Download).where(Download.id == download_id))).scalar_one_or_none()
    if row is None or aware(row.expires_at) < now:
        return None
    return StoredFile(row.filename, row.mime_type, row.data)


async def prune(db: Database, *, now: datetime) -> int:
    async with db.transaction() as s:
        result = await s.execute(delete(Download).where(Download.expires_at < now))
        return result.rowcount or 0

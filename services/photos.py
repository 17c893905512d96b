"""Photos people send (a handwritten reflection, a drawing), stored by docsach itself.

A platform's own file id (Telegram's ``file_id``) only works on that platform; a moderator on the
web or on another channel could never see it. So every adapter downloads the bytes and calls
:meth:`PhotoStore.store`, which returns a *photo ref* (the SHA-256 of the bytes, 64 hex digits);
the ref is what reflections keep and what ``Reply.photo`` / ``Incoming.photo_ref`` carry. Adapters
turn a ref back into bytes with :meth:`PhotoStore.load` to send or show it.

The bytes live in the database by default (one backup holds everything) or, when the settings name a
files directory (``DOCSACH_FILES_DIR``), in that directory as ``<sha256>.<ext>``.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import or_, select

from services.common import DomainError
from services.db import Database, insert_for
from services.models import Reflection, ReflectionStatus, StoredPhoto
from services.patrons import Actor

MAX_BYTES = 8 * 1024 * 1024
_REF = re.compile(r"^[0-9a-f]{64}$")
_EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp", "image/gif": "gif"}


def sniff(data: bytes) -> str | None:
    """The image type from the first bytes (never trust a client's declared type)."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    return None


def is_ref(value: str | None) -> bool:
    """True for a docsach photo ref; older rows may still hold a platform file id."""
    return bool(value) and bool(_REF.match(value or ""))


@dataclass(frozen=True)
class Photo:
    ref: str
    mime_type: str
    data: bytes

    @property
    def filename(self) -> str:
        return f"{self.ref[:16]}.{_EXTENSIONS.get(self.mime_type, 'bin')}"


class PhotoStore:
    """Stores and loads photo bytes; one per process, built by the composition root."""

    def __init__(self, db: Database, files_dir: str | Path | None = None) -> None:
        self.db = db
        self.files_dir = Path(files_dir) if files_dir else None

    async def store(self, data: bytes, *, library_id: int | None = None) -> str:
        """Keep ``data`` (an image) and return its ref. Storing the same bytes twice is harmless."""
        if not data:
            raise DomainError("reflections.photo_bad")
        if len(data) > MAX_BYTES:
            raise DomainError("photos.too_large", limit=MAX_BYTES // (1024 * 1024))
        mime = sniff(data)
        if mime is None:
            raise DomainError("photos.not_an_image")
        ref = hashlib.sha256(data).hexdigest()
        if self.files_dir is not None:
            path = self.files_dir / f"{ref}.{_EXTENSIONS[mime]}"
            if not path.exists():
                await asyncio.to_thread(_write_atomically, path, data)
        async with self.db.transaction() as s:
            insert = insert_for(s)
            await s.execute(insert(StoredPhoto).values(
                sha256=ref, mime_type=mime, size=len(data), library_id=library_id,
                data=None if self.files_dir is not None else data,
            ).on_conflict_do_nothing(index_elements=["sha256"]))
        return ref

    async def load(self, ref: str) -> Photo | None:
        """The photo behind ``ref``, or None (unknown ref, or a platform file id from before)."""
        if not is_ref(ref):
            return None
        async with self.db.session() as s:
            row = await s.get(StoredPhoto, ref)
        if row is None:
            return None
        data = row.data
        if data is None:
            if self.files_dir is None:
                return None
            path = self.files_dir / f"{ref}.{_EXTENSIONS.get(row.mime_type, 'bin')}"
            try:
                data = await asyncio.to_thread(path.read_bytes)
            except OSError:
                return None
        return Photo(ref, row.mime_type, data)


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".part")
    temporary.write_bytes(data)
    temporary.replace(path)


async def may_view(db: Database, actor: Actor, ref: str) -> bool:
    """Whether ``actor`` may see this photo: their own reflection's, one a moderator of that library
    reviews, or one published with an approved reflection of their library."""
    if not is_ref(ref) or not actor.is_linked:
        return False
    condition = Reflection.patron_id == actor.patron_id
    if actor.can_moderate:
        condition = or_(condition, Reflection.library_id == actor.library_id)
    else:
        condition = or_(condition, (Reflection.library_id == actor.library_id)
                        & (Reflection.status == ReflectionStatus.APPROVED))
    async with db.session() as s:
        found = (await s.execute(select(Reflection.id).where(Reflection.photo_ref == ref, condition)
                                 .limit(1))).scalar_one_or_none()
    return found is not None

"""Output files named on the command line: checked before any work, written whole or not at all.

A librarian who types ``--out ~/Desktop/slips.pdf`` for a folder that does not exist must hear
so *before* codes are issued or an hour of export runs, in one sentence, and nothing may land
somewhere else without saying so. Refusals are :class:`DomainError`\\ s with message keys
(``files.*``, domain ``hardening``), so the CLI prints them in the school's language.

- ``check_writable(path)``: the folder exists, the path is not a folder, and we may write there.
- ``write_bytes(path, data)`` / ``write_text(path, text)``: a regular file is written to a
  temporary file beside it and renamed into place (never half-written); a device such as
  ``/dev/stdout`` is written directly. A failure (disk full…) becomes a DomainError.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from services.common import DomainError

_REASONS = {
    errno.ENOSPC: "files.disk_full", errno.EDQUOT: "files.disk_full",
    errno.EACCES: "files.no_permission", errno.EPERM: "files.no_permission", errno.EROFS: "files.read_only",
    errno.ENOENT: "files.no_folder", errno.ENOTDIR: "files.no_folder", errno.EISDIR: "files.is_folder",
}


def refusal(path: Path | str, exc: OSError) -> DomainError:
    """An OSError about ``path`` as one translatable sentence."""
    key = _REASONS.get(exc.errno or 0, "files.write_failed")
    return DomainError(key, path=str(path), folder=str(Path(path).parent),
                       reason=exc.strerror or exc.__class__.__name__)


def check_writable(path: Path | str) -> Path:
    """Raise a DomainError unless ``path`` can be created or overwritten; returns it as a Path."""
    path = Path(path).expanduser()
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise DomainError("files.is_folder", path=str(path))
    if not folder.is_dir():
        raise DomainError("files.no_folder", path=str(path), folder=str(folder))
    if path.exists():
        if not os.access(path, os.W_OK):
            raise DomainError("files.no_permission", path=str(path))
        return path
    try:   # create and remove a file: the honest test of a folder's permissions and mounts
        fd, probe = tempfile.mkstemp(prefix=".docsach-", dir=folder)
    except OSError as exc:
        raise refusal(path, exc) from exc
    os.close(fd)
    os.unlink(probe)
    return path


def write_bytes(path: Path | str, data: bytes) -> Path:
    path = check_writable(path)
    if path.exists() and not path.is_file():    # /dev/stdout, a pipe: write straight through
        try:
            with path.open("wb") as fh:
                fh.write(data)
        except OSError as exc:
            raise refusal(path, exc) from exc
        return path
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.chmod(temp, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, path)
    except OSError as exc:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise refusal(path, exc) from exc
    return path


def write_text(path: Path | str, text: str, encoding: str = "utf-8") -> Path:
    return write_bytes(path, text.encode(encoding))

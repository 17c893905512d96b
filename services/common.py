"""Small shared pieces of the domain: refusals that carry a message id, and injectable time."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo


class DomainError(Exception):
    """A refusal the user should read: ``key`` is a message id in locales/, ``params`` fill it in.

    Services raise it; handlers translate it into the user's language. It is never a crash.
    """

    def __init__(self, key: str, **params: Any) -> None:
        super().__init__(key)
        self.key = key
        self.params = params


@dataclass(frozen=True, eq=True)
class Reason:
    """Why a row was refused or changed (imports): a message id in locales/ and what fills it in.

    Services say *why* without choosing a language; whoever shows it translates it with
    ``text(t)``, ``t`` being a translator (``t(key, **params) -> str``). A parameter that is itself a
    reason (a field's name) is translated first; a list of reasons is translated and joined with "; ".
    """

    key: str
    params: dict[str, Any] = field(default_factory=dict, hash=False)

    def text(self, t: Callable[..., str]) -> str:
        def value(v: Any) -> Any:
            if isinstance(v, Reason):
                return v.text(t)
            if isinstance(v, list | tuple) and v and all(isinstance(r, Reason) for r in v):
                return "; ".join(r.text(t) for r in v)
            return v

        return t(self.key, **{k: value(v) for k, v in self.params.items()})

    def __str__(self) -> str:
        """Untranslated (logs, and callers that give no translator): the key and its parameters."""
        shown = ", ".join(f"{k}={v if not isinstance(v, list) else '; '.join(map(str, v))}"
                          for k, v in self.params.items())
        return f"{self.key} ({shown})" if shown else self.key


class PermissionDenied(DomainError):
    """The actor's role or library does not allow this action."""

    def __init__(self, key: str = "error.not_allowed", **params: Any) -> None:
        super().__init__(key, **params)


class NotFound(DomainError):
    def __init__(self, key: str = "error.not_found", **params: Any) -> None:
        super().__init__(key, **params)


@dataclass
class Clock:
    """Now, in UTC, and in a school's time zone. Tests pass a fixed or advancing clock."""

    fixed: datetime | None = None

    def now(self) -> datetime:
        return self.fixed if self.fixed is not None else datetime.now(UTC)

    def today(self, tz: str | tzinfo = "Asia/Ho_Chi_Minh") -> date:
        zone = ZoneInfo(tz) if isinstance(tz, str) else tz
        return self.now().astimezone(zone).date()

    def set(self, when: datetime) -> None:
        if when.tzinfo is None:
            raise ValueError("Clock needs an aware datetime")
        self.fixed = when


def aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes for timezone-aware columns: they are UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value

"""When a secret expires or is due for rotation: what users write, and what it means now.

- An expiry (`--expires-at`) belongs to the current value: a new version (set, rotate,
  rollback, import) clears it unless it is given again. An expired secret is still
  served; it is flagged in `ls`, in the `user.secretfs.expired` xattr and in the audit
  records of its opens.
- A rotation period (`--rotate-every`) belongs to the secret: each new version is due
  for rotation that long after it was written. It stays until changed or cleared.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime

from secretfs.errors import UsageError
from secretfs.store import SecretMeta

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(?:\d+[smhdw])+")
_PART = re.compile(r"(\d+)([smhdw])")
MAX_SECONDS = 100 * 366 * 86400  # a century: anything longer is a typo
NS = 1_000_000_000

DURATION_HELP = "a duration such as 90d, 12h, 2w or 1d12h (s, m, h, d, w)"
WHEN_HELP = (
    "an ISO 8601 time (2030-01-31, 2030-01-31T12:00:00Z, 2030-01-31T12:00+02:00; UTC when"
    " no offset is given) or a time from now such as +30d or +12h"
)


@dataclass(frozen=True, slots=True)
class Schedule:
    """What a write sets. `expires_ns`: the new value's expiry (None: it has none).
    `rotate_every_s`: None keeps the secret's period, 0 clears it, else the new period."""

    expires_ns: int | None = None
    rotate_every_s: int | None = None


@dataclass(frozen=True, slots=True)
class Status:
    expires_ns: int | None
    expired: bool
    rotation_due_ns: int | None
    rotation_due: bool

    @property
    def flagged(self) -> bool:
        return self.expired or self.rotation_due


def parse_duration(text: str, what: str = "--rotate-every") -> int:
    """Seconds in `90d`, `12h`, `1d12h`; refuses zero, negatives and anything else."""
    compact = text.strip().lower().removeprefix("+")
    if not _DURATION.fullmatch(compact):
        raise UsageError(f"{what} takes {DURATION_HELP}, not {text[:40]!r}")
    seconds = sum(int(n) * _UNITS[unit] for n, unit in _PART.findall(compact))
    if not 0 < seconds <= MAX_SECONDS:
        raise UsageError(f"{what} must be more than 0 and at most 100 years")
    return seconds


def parse_when(text: str, now_ns: int, what: str = "--expires-at") -> int:
    """Nanoseconds since the epoch for an ISO 8601 time or `+DURATION` from `now_ns`."""
    stripped = text.strip()
    if stripped.startswith("+"):
        return now_ns + parse_duration(stripped, what) * NS
    try:
        if len(stripped) == 10:
            day = date.fromisoformat(stripped)
            moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
        else:
            moment = datetime.fromisoformat(stripped)
    except ValueError:
        raise UsageError(f"{what} takes {WHEN_HELP}, not {text[:40]!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp()) * NS + moment.microsecond * 1000


def status(meta: SecretMeta, now_ns: int) -> Status:
    due_ns = None if not meta.rotate_every_s else meta.updated_ns + meta.rotate_every_s * NS
    return Status(
        expires_ns=meta.expires_ns,
        expired=meta.expires_ns is not None and meta.expires_ns <= now_ns,
        rotation_due_ns=due_ns,
        rotation_due=due_ns is not None and due_ns <= now_ns,
    )


def format_duration(seconds: int) -> str:
    """The shortest exact form: 7776000 -> 90d, 93600 -> 1d2h."""
    if seconds and seconds % _UNITS["w"] == 0:
        return f"{seconds // _UNITS['w']}w"
    out = []
    for unit in ("d", "h", "m", "s"):
        n, seconds = divmod(seconds, _UNITS[unit])
        if n:
            out.append(f"{n}{unit}")
    return "".join(out) or "0s"

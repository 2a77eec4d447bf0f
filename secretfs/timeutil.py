"""Times as users see them: ISO 8601 in UTC, seconds precision."""

from __future__ import annotations

from datetime import UTC, datetime


def iso_time(ns: int) -> str:
    moment = datetime.fromtimestamp(ns / 1e9, UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")

"""Click parameter types shared by every command."""

from __future__ import annotations

import click

#: The largest integer SQLite (and etcd's int64 fields) can hold: no number option may
#: take more, or it ends in an OverflowError instead of a usage message.
INT_MAX = 2**63 - 1


def bounded_int(min_value: int = 1, max_value: int = INT_MAX) -> click.IntRange:
    """An integer option in [min_value, max_value]; out of range is a usage error (exit 2)."""
    return click.IntRange(min_value, min(max_value, INT_MAX))

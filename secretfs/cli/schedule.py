"""Shared pieces of the write commands: expiry options, and what a write reports."""

from __future__ import annotations

import time
from typing import Any

import click

from secretfs import expiry
from secretfs.refs import Ref
from secretfs.store import SecretMeta
from secretfs.timeutil import iso_time
from secretfs.vault import WriteResult

CLEAR = ("none", "never")


def schedule_options(fn: Any) -> Any:
    fn = click.option(
        "--rotate-every",
        metavar="DURATION",
        help="Rotation is due this long after each new version, e.g. 90d (`none` clears).",
    )(fn)
    return click.option(
        "--expires-at",
        metavar="WHEN",
        help="When this value expires: ISO 8601 (2030-01-31T00:00:00Z) or +30d from now"
        " (`none`: no expiry; a new version has none unless given).",
    )(fn)


def parse_schedule(expires_at: str | None, rotate_every: str | None) -> expiry.Schedule:
    """The schedule a write sets from `--expires-at` and `--rotate-every`."""
    expires_ns = None
    if expires_at is not None and expires_at.strip().lower() not in CLEAR:
        expires_ns = expiry.parse_when(expires_at, time.time_ns())
    every = None
    if rotate_every is not None:
        every = 0 if rotate_every.strip().lower() in CLEAR else expiry.parse_duration(rotate_every)
    return expiry.Schedule(expires_ns, every)


def report_write(ref: Ref, result: WriteResult, store_keeps: int) -> None:
    """Notes on stderr about what a write did besides the new version."""
    if result.pruned:
        gone = result.pruned
        span = (
            f"version {gone[0]}"
            if len(gone) == 1
            else f"versions {gone[0]}-{gone[-1]}"
            if list(gone) == list(range(gone[0], gone[-1] + 1))
            else "versions " + ", ".join(map(str, gone))
        )
        click.echo(
            f"pruned {span} of {ref}: the store keeps {store_keeps} versions per secret"
            " (`secretfs config set max-versions N` changes that)",
            err=True,
        )
    if result.expiry_cleared_ns is not None:
        click.echo(
            f"note: the previous value of {ref} had an expiry"
            f" ({iso_time(result.expiry_cleared_ns)}); the new version has none"
            " (give --expires-at to set one)",
            err=True,
        )


def schedule_record(meta: SecretMeta, now_ns: int | None = None) -> dict[str, Any]:
    """The expiry fields of `ls --json` and `rotate --json`."""
    st = expiry.status(meta, time.time_ns() if now_ns is None else now_ns)
    return {
        "expires": None if st.expires_ns is None else iso_time(st.expires_ns),
        "expired": st.expired,
        "rotate_every": None
        if meta.rotate_every_s is None
        else expiry.format_duration(meta.rotate_every_s),
        "rotation_due": None if st.rotation_due_ns is None else iso_time(st.rotation_due_ns),
        "due": st.rotation_due,
    }


def schedule_note(meta: SecretMeta, now_ns: int) -> str:
    """One short text for the NOTE column of `ls`: empty when nothing is set."""
    st = expiry.status(meta, now_ns)
    parts = []
    if st.expires_ns is not None:
        parts.append(
            f"EXPIRED {iso_time(st.expires_ns)}"
            if st.expired
            else f"expires {iso_time(st.expires_ns)}"
        )
    if st.rotation_due_ns is not None:
        parts.append(
            f"ROTATION DUE since {iso_time(st.rotation_due_ns)}"
            if st.rotation_due
            else f"rotate by {iso_time(st.rotation_due_ns)}"
        )
    return "; ".join(parts)

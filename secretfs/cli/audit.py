"""`secretfs audit`: read the append-only audit log (it needs no key, only the file)."""

from __future__ import annotations

import json
import re
import sys
import time
from datetime import UTC, datetime

import click

from secretfs.audit import AuditRecord, iso_time_ns
from secretfs.cli.access import parse_target
from secretfs.cli.common import cli, emit_json, handle_errors, open_vault, store_option, store_path
from secretfs.cli.completion import REF_OR_SCOPE
from secretfs.cli.params import bounded_int
from secretfs.cli.records import json_option
from secretfs.errors import UsageError
from secretfs.refs import DEPLOYMENT, Ref, Scope, parse_ref
from secretfs.store.base import AuditLog
from secretfs.store.location import StoreLocation

FOLLOW_POLL_SECONDS = 0.5
_DURATION = re.compile(r"^(\d+)([smhdw])$")
_MAX_NS = 2**63 - 1
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, now_ns: int | None = None, what: str = "--since") -> int:
    """A time as ns since the epoch: `30s`/`15m`/`2h`/`7d`/`1w` ago, or ISO 8601 (a time
    without a zone is UTC)."""
    now = time.time_ns() if now_ns is None else now_ns
    match = _DURATION.fullmatch(text.strip())
    if match:
        return max(0, now - int(match[1]) * _UNIT_SECONDS[match[2]] * 1_000_000_000)
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"{what} takes a duration (30s, 15m, 2h, 7d, 1w) or an ISO 8601 time"
            f" (2026-01-31, 2026-01-31T12:00:00Z); not {text!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    ns = int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000
    return max(0, min(ns, _MAX_NS))  # the store keeps 64-bit ns: 1970 to 2262


class RefFilter:
    """Which records `--ref` keeps: a secret and its fields, or everything in a scope."""

    def __init__(self, text: str) -> None:
        self.target = parse_target(text)
        if isinstance(self.target, Scope):
            prefix = _scope_prefix(self.target)
            self.exact: tuple[str, ...] = (self.target.key,)
        else:
            prefix = f"{self.target}/"
            self.exact = (str(self.target),)
        self.prefixes = (prefix,)

    def keeps(self, record: AuditRecord) -> bool:
        # `$S:` prefixes every deployment ref and others too: check each candidate exactly.
        if record.ref is None or record.ref in self.exact:
            return record.ref is not None
        try:
            ref = parse_ref(record.ref)
        except UsageError:
            return False
        if isinstance(self.target, Scope):
            return ref.scope == self.target
        return ref.without_field() == self.target


def _scope_prefix(scope: Scope) -> str:
    if scope == DEPLOYMENT:
        return "$S:"
    return str(Ref(scope, "x"))[:-1]


def _print(records: list[AuditRecord], as_json: bool, lines: bool) -> None:
    for r in records:
        if as_json:
            click.echo(json.dumps(r.to_json(), separators=(",", ":")))
        else:
            click.echo(r.to_text())
    if lines:
        sys.stdout.flush()


@cli.group(invoke_without_command=True)
@click.option(
    "--ref",
    "ref",
    metavar="REF|SCOPE",
    type=REF_OR_SCOPE,
    help="Only this secret (and its fields) or scope.",
)
@click.option("--since", metavar="TIME", help="Only from TIME on: 15m, 2h, 7d or ISO 8601.")
@click.option("--json", "as_json", is_flag=True, help="A JSON array; with --follow, JSON lines.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new records until interrupted.")
@click.option("--last", type=bounded_int(), metavar="N", help="Only the last N records.")
@store_option
@click.pass_context
@handle_errors
def audit(
    ctx: click.Context,
    store: StoreLocation | None,
    ref: str | None,
    since: str | None,
    as_json: bool,
    follow: bool,
    last: int | None,
) -> None:
    """Show who opened or changed which secret, when, and how it ended (never values).

    Every open() through a mount (allowed, denied or failed) and every CLI write is
    recorded; records are never changed and survive restarts. Reading it needs access
    to the store file but not the key. Repeats of one denial are summed up in one
    record ("repeated N times from ... to ..."). `audit prune` removes old records.
    """
    if ctx.invoked_subcommand is not None:
        return
    since_ns = parse_since(since) if since else None
    wanted = RefFilter(ref) if ref else None
    backend = store_path(store).open(readonly=True)
    try:
        records = _query(backend, wanted, since_ns, 0)
        if last is not None:
            records = records[-last:]
        if as_json and not follow:
            emit_json([r.to_json() for r in records])
            return
        _print(records, as_json, follow)
        if not follow:
            if not records:
                click.echo("no audit records", err=True)
            return
        # Records not shown so far never match later: only higher ids are new.
        after = records[-1].id if records else 0
        try:
            while True:
                time.sleep(FOLLOW_POLL_SECONDS)
                new = _query(backend, wanted, since_ns, after)
                if new:
                    after = new[-1].id
                    _print(new, as_json, True)
        except KeyboardInterrupt:
            return
    finally:
        backend.close()


def _query(
    backend: AuditLog, wanted: RefFilter | None, since_ns: int | None, after: int
) -> list[AuditRecord]:
    if wanted is None:
        return backend.read_audit(after_id=after, since_ns=since_ns)
    found = backend.read_audit(
        after_id=after, since_ns=since_ns, ref_exact=wanted.exact, ref_prefixes=wanted.prefixes
    )
    return [r for r in found if wanted.keeps(r)]


@audit.command()
@click.option("--before", metavar="TIME", help="Remove records older than TIME: 90d or ISO 8601.")
@click.option("--dry-run", is_flag=True, help="Only say how many records would go.")
@json_option
@store_option
@handle_errors
def prune(
    store: StoreLocation | None, before: str | None, dry_run: bool, as_json: bool = False
) -> None:
    """Remove audit records older than --before (default: the store's audit-max-age).

    Needs the key. Each prune is itself recorded ("pruned N audit records before ...").
    Mounts apply audit-max-age (`secretfs config set audit-max-age 90d`) every hour.
    """
    from secretfs.audit import cli_record
    from secretfs.audit_retention import NS, max_age_s
    from secretfs.audit_retention import prune as prune_records

    with open_vault(store) as vault:
        now = time.time_ns()
        if before is not None:
            before_ns = parse_since(before, now, "--before")
        else:
            age = max_age_s(vault.backend)
            if age is None:
                raise UsageError(
                    "give --before, or set a retention: `secretfs config set audit-max-age 90d`"
                )
            before_ns = now - age * NS
        count = prune_records(
            vault.backend,
            before_ns,
            lambda detail: cli_record("audit", None, detail=detail),
            dry_run=dry_run,
        )
    when = iso_time_ns(before_ns)
    if as_json:
        emit_json({"before": when, "removed": count, "dry_run": dry_run})
        return
    if dry_run:
        click.echo(f"{count} audit records before {when} would be removed")
    else:
        click.echo(f"removed {count} audit records before {when}")

"""`secretfs secret rotate | rollback | prune | expiry`: a secret's versions over time."""

from __future__ import annotations

import time
from typing import Any

import click

from secretfs import expiry
from secretfs.cli.common import emit_json, handle_errors, open_vault, store_option
from secretfs.cli.completion import REF, complete_versions
from secretfs.cli.params import bounded_int
from secretfs.cli.records import write_record
from secretfs.cli.schedule import CLEAR, parse_schedule, report_write, schedule_options
from secretfs.cli.secret import _ref, meta_record, secret
from secretfs.cli.values import take_value, value_options
from secretfs.errors import UsageError
from secretfs.refs import Ref, Scope
from secretfs.store.location import StoreLocation
from secretfs.vault import Vault, WriteMode, WriteResult


def _summary(result: WriteResult, extra: dict[str, Any]) -> dict[str, Any]:
    record = meta_record(result.meta)
    return {
        "ref": record["ref"],
        "previous_version": result.previous_version,
        "new_version": result.meta.version,
        **extra,
        "pruned": list(result.pruned),
        "expires": record["expires"],
        "rotation_due": record["rotation_due"],
    }


@secret.command()
@click.argument("ref", type=REF)
@value_options
@schedule_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@store_option
@handle_errors
def rotate(store: StoreLocation | None, ref: str, as_json: bool, **kw: Any) -> None:
    """Give the existing secret REF a new value, as a new version, atomically.

    Prints the version before and after. Mounts serve the new value to every new open
    within a second; handles opened before keep reading the old one. Fails (exit 3) if
    REF does not exist: use `secret create` or `secret set` for that.
    """
    parsed = _ref(ref)
    source = take_value(kw)
    schedule = parse_schedule(kw.pop("expires_at"), kw.pop("rotate_every"))
    with open_vault(store) as vault:
        value = source.read(vault.max_value_bytes)  # bounded while reading
        result = vault.write(parsed, value, how=WriteMode.UPDATE, schedule=schedule)
        keeps = vault.max_versions
    report_write(parsed, result, keeps)
    if as_json:
        emit_json(write_record(result, "rotated"))
        return
    click.echo(f"rotated {parsed}: version {result.previous_version} -> {result.meta.version}")


@secret.command()
@click.argument("ref", type=REF)
@click.option(
    "--to",
    "to_version",
    type=bounded_int(),
    required=True,
    help="The version to restore.",
    shell_complete=complete_versions,
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@store_option
@handle_errors
def rollback(store: StoreLocation | None, ref: str, to_version: int, as_json: bool) -> None:
    """Make the value of version N of REF current again, as a new version.

    History is never rewritten: rolling back from version 5 to 3 writes version 6 with
    version 3's value. The new version has no expiry (as after any write).
    """
    parsed = _ref(ref)
    with open_vault(store) as vault:
        current = vault.meta(parsed)
        if current.version == to_version:
            raise UsageError(f"version {to_version} of {parsed} is already the current one")
        result = vault.rollback(parsed, to_version)
        keeps = vault.max_versions
    report_write(parsed, result, keeps)
    if as_json:
        emit_json(write_record(result, "rolled_back", to_version))
        return
    click.echo(
        f"rolled back {parsed}: version {result.previous_version} -> {result.meta.version}"
        f" (the value of version {to_version})"
    )


@secret.command()
@click.argument("ref", type=REF, required=False)
@click.option(
    "--keep",
    type=bounded_int(),
    help="Versions to keep, the current one included (default: the store's max-versions).",
)
@click.option("--all", "all_secrets", is_flag=True, help="Prune every secret.")
@click.option("--dry-run", is_flag=True, help="Only say which versions would be removed.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@store_option
@handle_errors
def prune(
    store: StoreLocation | None,
    ref: str | None,
    keep: int | None,
    all_secrets: bool,
    as_json: bool,
    dry_run: bool = False,
) -> None:
    """Remove old versions of REF (or of every secret with --all), keeping the newest.

    A write already prunes to the store's max-versions; this prunes now, or further.
    Each removal is recorded in the audit log. Removed versions cannot be read again.
    """
    if (ref is None) == (not all_secrets):
        raise UsageError("give a REF to prune, or --all")
    if keep is not None and keep < 1:
        raise UsageError("--keep must be at least 1: the current version is always kept")
    with open_vault(store) as vault:
        if dry_run:
            done = _prune_plan(vault, None if all_secrets else _ref(ref or ""), keep)
        elif all_secrets:
            done = vault.prune_all(keep)
        else:
            parsed = _ref(ref or "")
            done = [(parsed, vault.prune(parsed, keep or vault.max_versions))]
    if as_json:
        emit_json([{"ref": str(r), "pruned": gone} for r, gone in done])
        return
    pruned = [(r, gone) for r, gone in done if gone]
    if not pruned:
        click.echo("nothing to prune", err=True)
    verb = "would prune" if dry_run else "pruned"
    for r, gone in pruned:
        click.echo(f"{verb} {r}: {len(gone)} version(s) ({', '.join(map(str, gone))})")
    if dry_run:
        click.echo("nothing was changed (--dry-run)", err=True)


def _prune_plan(vault: Vault, ref: Ref | None, keep: int | None) -> list[tuple[Ref, list[int]]]:
    """What prune would remove: all but the newest `keep` versions, read only."""
    keep = keep or vault.max_versions
    refs = [ref] if ref is not None else [Ref(Scope.from_key(m.scope), m.name)
                                          for m in vault.list_secrets()]  # fmt: skip
    plan = [(r, [v.version for v in vault.history(r)]) for r in refs]
    return [
        (r, versions[:-keep]) for r, versions in plan if ref is not None or len(versions) > keep
    ]


@secret.command(name="expiry")
@click.argument("ref", type=REF)
@schedule_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@store_option
@handle_errors
def expiry_(
    store: StoreLocation | None,
    ref: str,
    expires_at: str | None,
    rotate_every: str | None,
    as_json: bool,
) -> None:
    """Show or change when REF expires and how often it is due for rotation.

    Without options it shows them. `--expires-at none` and `--rotate-every none` clear
    them. No new version is written.
    """
    parsed = _ref(ref)
    with open_vault(store) as vault:
        if expires_at is None and rotate_every is None:
            meta = vault.meta(parsed)
        else:
            schedule = parse_schedule(expires_at, rotate_every)
            meta = vault.set_schedule(
                parsed,
                expires_ns=schedule.expires_ns,
                clear_expiry=expires_at is not None and expires_at.strip().lower() in CLEAR,
                rotate_every_s=schedule.rotate_every_s,
            )
    record = meta_record(meta)
    fields = ("ref", "version", "updated", "expires", "expired", "rotate_every")
    shown = {k: record[k] for k in fields} | {
        "rotation_due": record["rotation_due"],
        "due": record["due"],
    }
    if as_json:
        emit_json(shown)
        return
    state = expiry.status(meta, time.time_ns())
    click.echo(f"{record['ref']} version {record['version']} (written {record['updated']})")
    click.echo(
        "expires: "
        + ("never" if record["expires"] is None else record["expires"])
        + (" (EXPIRED: still served)" if state.expired else "")
    )
    click.echo(
        "rotate every: "
        + ("-" if record["rotate_every"] is None else record["rotate_every"])
        + ("" if record["rotation_due"] is None else f", due {record['rotation_due']}")
        + (" (DUE)" if state.rotation_due else "")
    )

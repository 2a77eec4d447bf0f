"""`secretfs secret …`: create, set, get, ls, rm, history (rotate, rollback, prune and
expiry are in secretfs/cli/versions.py)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from secretfs import expiry, fields, sealing, trash
from secretfs.cli.common import cli, emit_json, handle_errors, open_vault, store_option
from secretfs.cli.completion import REF, SCOPE, complete_client_keys, complete_versions
from secretfs.cli.params import GROUP_ID, USER_ID, bounded_int
from secretfs.cli.records import json_option, removal_record, write_record
from secretfs.cli.schedule import (
    parse_schedule,
    report_write,
    schedule_note,
    schedule_options,
    schedule_record,
)
from secretfs.cli.values import parse_mode, parse_optional_mode, take_value, value_options
from secretfs.errors import UsageError
from secretfs.files import write_file_atomically
from secretfs.refs import Ref, Scope, parse_ref, parse_scope
from secretfs.store import SecretMeta, VersionMeta
from secretfs.store.location import StoreLocation
from secretfs.timeutil import iso_time
from secretfs.vault import WriteMode


def _ref(text: str) -> Ref:
    return parse_ref(text)


# `get` and `read` take the same --version.
older_version = click.option(
    "--version",
    "version",
    type=bounded_int(),
    help="An older version.",
    shell_complete=complete_versions,
)


def owner_options(fn: Any) -> Any:
    fn = click.option("--mode", metavar="OCTAL", help="File mode in the mount, e.g. 0440.")(fn)
    fn = click.option("--gid", type=GROUP_ID, help="Group: a number or a name of this host.")(fn)
    return click.option("--uid", type=USER_ID, help="Owner: a number or a name of this host.")(fn)


def meta_record(meta: SecretMeta) -> dict[str, Any]:
    ref = Ref(Scope.from_key(meta.scope), meta.name)
    return {
        "ref": str(ref),
        "path": ref.path,
        "version": meta.version,
        "size": meta.size,
        "kind": meta.kind,
        "created": iso_time(meta.created_ns),
        "updated": iso_time(meta.updated_ns),
        "uid": meta.uid,
        "gid": meta.gid,
        "mode": None if meta.mode is None else f"{meta.mode:04o}",
        "fingerprint": meta.fingerprint,
        **schedule_record(meta),
    }


def version_record(v: VersionMeta) -> dict[str, Any]:
    return {
        "version": v.version,
        "created": iso_time(v.created_ns),
        "size": v.size,
        "kind": v.kind,
        "key_generation": v.key_gen,
        "fingerprint": v.fingerprint,
    }


@cli.group()
def secret() -> None:
    """Create, change, read and list secrets."""


def _write(
    store: StoreLocation | None, ref_text: str, how: WriteMode, as_json: bool, **kw: Any
) -> None:
    ref = _ref(ref_text)
    source = take_value(kw)
    mode = parse_optional_mode(kw.pop("mode"))
    owner = {"uid": kw.pop("uid"), "gid": kw.pop("gid"), "mode": mode}
    schedule = parse_schedule(kw.pop("expires_at"), kw.pop("rotate_every"))
    with open_vault(store) as vault:
        value = source.read(vault.max_value_bytes)  # bounded while reading
        result = vault.write(ref, value, how=how, owner=owner, schedule=schedule)
        keeps = vault.max_versions
    meta = result.meta
    verb = "created" if result.previous_version == 0 else "updated"
    click.echo(f"{verb} {ref} version {meta.version} ({meta.size} bytes)", err=True)
    report_write(ref, result, keeps)
    if as_json:
        emit_json(write_record(result))


@secret.command()
@click.argument("ref", type=REF)
@value_options
@owner_options
@schedule_options
@json_option
@store_option
@handle_errors
def create(store: StoreLocation | None, ref: str, **kw: Any) -> None:
    """Create a new secret REF; fails (exit 4, "409") if it exists."""
    _write(store, ref, WriteMode.CREATE, **kw)


@secret.command(name="set")
@click.argument("ref", type=REF)
@value_options
@owner_options
@schedule_options
@json_option
@store_option
@handle_errors
def set_(store: StoreLocation | None, ref: str, **kw: Any) -> None:
    """Create REF or add a new version to it."""
    _write(store, ref, WriteMode.UPSERT, **kw)


@secret.command()
@click.argument("ref", type=REF)
@click.option("--field", "field_path", metavar="A/B", help="One field of a JSON secret.")
@older_version
@click.option(
    "--sealed-to",
    metavar="KEY_ID|PUBKEY",
    shell_complete=complete_client_keys,
    help="Seal the value to a registered client key: print a SealedSecret JSON.",
)
@click.option("--raw", is_flag=True, help="With --sealed-to: print the sealed box itself.")
@click.option(
    "--bound", is_flag=True, help="With --sealed-to: seal the ref and version with the value."
)
@store_option
@handle_errors
def get(
    store: StoreLocation | None,
    ref: str,
    field_path: str | None,
    version: int | None,
    sealed_to: str | None,
    raw: bool,
    bound: bool,
) -> None:
    """Print the exact bytes of REF (no newline added), or its value sealed to a client
    key (docs/sealed.md)."""
    parsed = _ref(ref)
    path = parsed.field
    if field_path:
        path = path + _ref(f"{parsed.without_field()}/{field_path}").field
    if (raw or bound) and sealed_to is None:
        raise UsageError("--raw and --bound go with --sealed-to")
    with open_vault(store) as vault:
        vault.check_secret(parsed.without_field())
        # Refuse an unknown or revoked key before anything is decrypted.
        key = None if sealed_to is None else sealing.find_key(vault.auth.client_keys(), sealed_to)
        value = vault.get_value(parsed.without_field(), version)
        meta = vault.meta(parsed.without_field())
        if key is not None:
            full = Ref(parsed.scope, parsed.name, path)
            want = meta.version if version is None else version
            out = fields.extract(value, path) if path else value
            box = sealing.seal_envelope_value(out, key, bound=bound, ref=str(full), version=want)
            vault.record_sealed_get(str(full), want, key, bound)
            if raw:
                sys.stdout.buffer.write(box)
                sys.stdout.buffer.flush()
            else:
                emit_json(sealing.sealed_secret(str(full), want, key.key_id, box))
            return
    _warn_if_expired(parsed, meta, version)
    out = fields.extract(value, path) if path else value
    sys.stdout.buffer.write(out)
    sys.stdout.buffer.flush()


def _warn_if_expired(ref: Ref, meta: SecretMeta, version: int | None) -> None:
    if expiry.status(meta, time.time_ns()).expired and version is None:
        # Still served (an expiry is a reminder, not a lock), but never silently.
        click.echo(
            f"warning: {ref.without_field()} expired at {iso_time(meta.expires_ns or 0)}",
            err=True,
        )


@cli.command(name="read")
@click.argument("ref", type=REF)
@older_version
@click.option(
    "--out-file",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the value to this new file instead of standard output.",
)
@click.option(
    "--file-mode",
    default="0600",
    show_default=True,
    metavar="OCTAL",
    help="With --out-file: the new file's mode, set before the first byte is written.",
)
@click.option("--force", is_flag=True, help="With --out-file: replace an existing file.")
@store_option
@handle_errors
def read(
    store: StoreLocation | None,
    ref: str,
    version: int | None,
    out_file: Path | None,
    file_mode: str,
    force: bool,
) -> None:
    """Print the exact bytes of REF (a JSON field: NAME/FIELD), or write them to a new
    file (like `op read`).

    --out-file creates a new file beside the target with --file-mode (exact: the umask
    does not narrow it), writes and fsyncs it, then moves it into place; an existing
    file is refused (exit 4) unless --force. The value never goes through a wider file."""
    parsed = _ref(ref)
    mode = parse_mode(file_mode, "--file-mode")
    if out_file is None and (force or file_mode != "0600"):
        raise UsageError("--file-mode and --force go with --out-file")
    with open_vault(store) as vault:
        value = vault.get_value(parsed.without_field(), version)
        meta = vault.meta(parsed.without_field())
    _warn_if_expired(parsed, meta, version)
    out = fields.extract(value, parsed.field) if parsed.field else value
    if out_file is None:
        sys.stdout.buffer.write(out)
        sys.stdout.buffer.flush()
        return
    write_file_atomically(out_file, out, mode=mode, replace=force)
    click.echo(f"wrote {parsed} to {out_file} ({len(out)} bytes, mode {mode:04o})", err=True)


@secret.command(name="ls")
@click.argument("scope", type=SCOPE, required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--due", is_flag=True, help="Only secrets that are expired or due for rotation.")
@click.option(
    "--within",
    metavar="DURATION",
    help="With --due: also those that expire or fall due within DURATION (e.g. 7d).",
)
@store_option
@handle_errors
def ls(
    store: StoreLocation | None, scope: str | None, as_json: bool, due: bool, within: str | None
) -> None:
    """List secrets (metadata only, never values), optionally in one SCOPE.

    Expired secrets are still served; they are flagged in the NOTE column (and in
    --json: expired, due)."""
    key = parse_scope(scope).key if scope else None
    if within is not None and not due:
        raise UsageError("--within goes with --due")
    now = time.time_ns()
    horizon = now + (expiry.parse_duration(within, "--within") * expiry.NS if within else 0)
    with open_vault(store) as vault:
        vault.check_integrity()
        metas = vault.list_secrets(key)
    if due:
        metas = [m for m in metas if expiry.status(m, horizon).flagged]
    records = [meta_record(m) for m in metas]
    if as_json:
        emit_json(records)
        return
    if not records:
        click.echo("nothing is expired or due" if due else "no secrets", err=True)
        return
    notes = [schedule_note(m, now) for m in metas]
    width = max(len(r["ref"]) for r in records)
    header = f"{'REF':<{width}}  {'VER':>4}  {'SIZE':>8}  {'KIND':<4}  {'UPDATED':<20}"
    click.echo((header + "  NOTE") if any(notes) else header.rstrip())
    for r, note in zip(records, notes, strict=True):
        line = (
            f"{r['ref']:<{width}}  {r['version']:>4}  {r['size']:>8}  {r['kind']:<4}"
            f"  {r['updated']:<20}  {note}"
        )
        click.echo(line.rstrip())


@secret.command()
@click.argument("ref", type=REF)
@click.option("--force", is_flag=True, help="Remove it even if grants name it (and them).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation on a terminal.")
@click.option(
    "--purge", is_flag=True, help="Keep nothing to restore: every version is deleted now."
)
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@json_option
@store_option
@handle_errors
def rm(
    store: StoreLocation | None,
    ref: str,
    force: bool,
    yes: bool,
    purge: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Remove REF and all its versions; refused (exit 4) while grants name it.

    It stays restorable (`secret restore`) for the store's rm-retention (default 7d;
    `secretfs config set rm-retention`): its versions' ciphertext is kept until then.
    --purge keeps nothing. On a terminal it asks first (--yes: do not); otherwise it
    does not ask."""
    parsed = _ref(ref)
    until: int | None = None
    with open_vault(store) as vault:
        meta, grants = vault.removal_plan(parsed, force=force)
        with_grants = f" and its {len(grants)} grant(s)" if grants else ""
        what = f"{parsed} (at version {meta.version}, every version){with_grants}"
        if dry_run:
            seconds = 0 if purge else trash.retention_s(vault)
            until = time.time_ns() + seconds * expiry.NS if seconds > 0 else None
            click.echo(f"would remove {what}; nothing was changed", err=True)
        else:
            if not yes and sys.stdin.isatty():
                click.confirm(f"remove {what}?", abort=True, err=True)
            until = None if purge else trash.keep(vault, meta, grants, parsed)
            try:
                meta = vault.remove(parsed, force=force)
            except BaseException:
                trash.forget(vault, meta.secret_id)
                raise
            if purge:
                trash.forget(vault, meta.secret_id)  # and any older removal of it
            kept = (
                f"; `secretfs secret restore {parsed}` until {iso_time(until)}"
                if until is not None
                else ", nothing kept"
            )
            click.echo(f"removed {parsed} (it was at version {meta.version}){kept}", err=True)
    if as_json:
        emit_json(removal_record(meta, "purged" if purge else "removed", len(grants), until))


@secret.command()
@click.argument("ref", type=REF, required=False)
@click.option("--list", "show", is_flag=True, help="List what can be restored.")
@json_option
@store_option
@handle_errors
def restore(store: StoreLocation | None, ref: str | None, show: bool, as_json: bool) -> None:
    """Bring back REF removed by `secret rm`: the same versions, owner, mode, schedule and
    grants (those `rm --force` removed), within the store's rm-retention."""
    if show == (ref is not None):
        raise UsageError("give a REF to restore, or --list")
    with open_vault(store) as vault:
        if show:
            kept = trash.listed(vault)
            if as_json:
                emit_json([
                    {"ref": r.ref, "version": r.version, "removed": iso_time(r.removed_ns),
                     "restorable_until": iso_time(r.until_ns)} for r in kept
                ])  # fmt: skip
                return
            for r in kept:
                click.echo(f"{r.ref}  version {r.version}  until {iso_time(r.until_ns)}")
            if not kept:
                click.echo("nothing to restore", err=True)
            return
        parsed = _ref(ref or "")
        meta = trash.restore(vault, parsed)
    click.echo(f"restored {parsed} at version {meta.version}", err=True)
    if as_json:
        emit_json(meta_record(meta))


@secret.command()
@click.argument("ref", type=REF)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@store_option
@handle_errors
def history(store: StoreLocation | None, ref: str, as_json: bool) -> None:
    """List the kept versions of REF (metadata only)."""
    with open_vault(store) as vault:
        records = [version_record(v) for v in vault.history(_ref(ref))]
    if as_json:
        emit_json(records)
        return
    click.echo(f"{'VER':>4}  {'SIZE':>8}  {'KIND':<4}  CREATED")
    for r in records:
        click.echo(f"{r['version']:>4}  {r['size']:>8}  {r['kind']:<4}  {r['created']}")

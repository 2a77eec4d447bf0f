"""`secretfs config show | set`: the store's settings (bounds), changed after `init`."""

from __future__ import annotations

import click

from secretfs import trash
from secretfs.cli.common import cli, emit_json, handle_errors, open_vault, store_option
from secretfs.cli.records import json_option, setting_record
from secretfs.errors import UsageError
from secretfs.expiry import parse_duration
from secretfs.store.location import StoreLocation
from secretfs.vault import MAX_VERSIONS_LIMIT

SETTINGS = {
    "max-versions": "versions kept per secret; a write over it prunes the oldest (audited)",
    "max-value-size": "largest value accepted, in bytes",
    "audit-max-age": "audit records older than this are pruned (mounts: hourly); 0: kept",
    "rm-retention": "a removed secret can be restored this long (`secret restore`); 0: never",
}
MAX_VALUE_SIZE_LIMIT = 64 * 1024 * 1024


@cli.group()
def config() -> None:
    """Show or change the store's settings."""


@config.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@store_option
@handle_errors
def show(store: StoreLocation | None, as_json: bool) -> None:
    """Show every setting."""
    from secretfs.audit_retention import max_age_s

    with open_vault(store) as vault:
        age = max_age_s(vault.backend)
        kept = trash.retention_s(vault)
        values: dict[str, object] = {
            "max-versions": vault.max_versions,
            "max-value-size": vault.max_value_bytes,
            "audit-max-age": f"{age}s" if age else "0",
            "rm-retention": f"{kept}s" if kept else "0",
        }
    if as_json:
        emit_json(values)
        return
    for name, value in values.items():
        click.echo(f"{name:<15} {value!s:<10} {SETTINGS[name]}")


@config.command(name="set")
@click.argument("name", type=click.Choice(sorted(SETTINGS)))
@click.argument("value")
@json_option
@store_option
@handle_errors
def set_(store: StoreLocation | None, name: str, value: str, as_json: bool = False) -> None:
    """Change one setting.

    Lowering max-versions removes nothing at once: each secret is pruned at its next
    write, or now with `secretfs secret prune --all`. audit-max-age takes a duration
    (90d, 12w) or 0 to keep every record.
    """
    if name == "rm-retention":
        seconds = 0 if value.strip() == "0" else parse_duration(value, "rm-retention")
        with open_vault(store) as vault:
            trash.set_retention(vault, seconds)
        what = f"removed secrets are now kept {value}" if seconds else "rm now keeps nothing"
        click.echo(what, err=as_json)
        if as_json:
            emit_json(setting_record(name, f"{seconds}s" if seconds else "0"))
        return
    if name == "audit-max-age":
        seconds = _set_audit_max_age(store, value, as_json)
        if as_json:
            emit_json(setting_record(name, f"{seconds}s" if seconds else "0"))
        return
    if not value.isdigit():
        raise UsageError(f"{name} takes a whole number, not {value[:40]!r}")
    number = int(value)
    with open_vault(store) as vault:
        if name == "max-versions":
            if not 1 <= number <= MAX_VERSIONS_LIMIT:
                raise UsageError(f"max-versions must be between 1 and {MAX_VERSIONS_LIMIT}")
            over = len(vault.backend.secrets_over(number))
            vault.set_limits(max_versions=number)
            click.echo(f"max-versions is now {number}", err=as_json)
            if over:
                click.echo(
                    f"{over} secret(s) keep more versions than that: they are pruned at their"
                    " next write, or now with `secretfs secret prune --all`",
                    err=True,
                )
        else:
            if not 1 <= number <= MAX_VALUE_SIZE_LIMIT:
                raise UsageError(f"max-value-size must be between 1 and {MAX_VALUE_SIZE_LIMIT}")
            vault.set_limits(max_value_bytes=number)
            click.echo(f"max-value-size is now {number} bytes", err=as_json)
    if as_json:
        emit_json(setting_record(name, number))


def _set_audit_max_age(store: StoreLocation | None, value: str, quiet: bool) -> int:
    from secretfs.audit_retention import MAX_AGE_META

    seconds = 0 if value.strip() == "0" else parse_duration(value, "audit-max-age")
    with open_vault(store) as vault, vault.recorded("config") as trail:
        vault.backend.meta_set(MAX_AGE_META, str(seconds).encode())
        trail.record(detail=f"audit-max-age {seconds}s")
    what = f"audit-max-age is now {value}" if seconds else "audit records are now all kept"
    click.echo(what, err=quiet)  # on stderr when stdout carries --json
    return seconds

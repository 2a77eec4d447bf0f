"""`secretfs config show | set`: the store's settings (bounds), changed after `init`."""

from __future__ import annotations

from pathlib import Path

import click

from secretfs.cli import cli, emit_json, handle_errors, open_vault, store_option
from secretfs.cli.params import INT_MAX, bounded_int
from secretfs.errors import UsageError
from secretfs.vault import MAX_VERSIONS_LIMIT

SETTINGS = {
    "max-versions": "versions kept per secret; a write over it prunes the oldest (audited)",
    "max-value-size": "largest value accepted, in bytes",
}
MAX_VALUE_SIZE_LIMIT = 64 * 1024 * 1024


@cli.group()
def config() -> None:
    """Show or change the store's settings."""


@config.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@store_option
@handle_errors
def show(store: Path | None, as_json: bool) -> None:
    """Show every setting."""
    with open_vault(store) as vault:
        values = {"max-versions": vault.max_versions, "max-value-size": vault.max_value_bytes}
    if as_json:
        emit_json(values)
        return
    for name, value in values.items():
        click.echo(f"{name:<15} {value:<10} {SETTINGS[name]}")


@config.command(name="set")
@click.argument("name", type=click.Choice(sorted(SETTINGS)))
@click.argument("value", type=bounded_int(-INT_MAX - 1))
@store_option
@handle_errors
def set_(store: Path | None, name: str, value: int) -> None:
    """Change one setting.

    Lowering max-versions removes nothing at once: each secret is pruned at its next
    write, or now with `secretfs secret prune --all`.
    """
    with open_vault(store) as vault:
        if name == "max-versions":
            if not 1 <= value <= MAX_VERSIONS_LIMIT:
                raise UsageError(f"max-versions must be between 1 and {MAX_VERSIONS_LIMIT}")
            over = len(vault.backend.secrets_over(value))
            vault.set_limits(max_versions=value)
            click.echo(f"max-versions is now {value}")
            if over:
                click.echo(
                    f"{over} secret(s) keep more versions than that: they are pruned at their"
                    " next write, or now with `secretfs secret prune --all`",
                    err=True,
                )
        else:
            if not 1 <= value <= MAX_VALUE_SIZE_LIMIT:
                raise UsageError(f"max-value-size must be between 1 and {MAX_VALUE_SIZE_LIMIT}")
            vault.set_limits(max_value_bytes=value)
            click.echo(f"max-value-size is now {value} bytes")

"""`secretfs init`."""

from __future__ import annotations

import click

from secretfs.cli.common import cli, emit_json, handle_errors, store_option, store_path
from secretfs.cli.params import bounded_int
from secretfs.cli.records import init_record, json_option
from secretfs.keys import KIND_KEY_FILE
from secretfs.store.location import StoreLocation
from secretfs.vault import DEFAULT_MAX_VALUE_BYTES, DEFAULT_MAX_VERSIONS, MAX_VERSIONS_LIMIT, Vault


@cli.command()
@store_option
@click.option(
    "--max-value-size",
    type=bounded_int(1, 64 * 1024 * 1024),
    default=DEFAULT_MAX_VALUE_BYTES,
    show_default=True,
    help="Largest value the store accepts, in bytes.",
)
@click.option(
    "--max-versions",
    type=bounded_int(1, MAX_VERSIONS_LIMIT),
    default=DEFAULT_MAX_VERSIONS,
    show_default=True,
    help="Versions kept per secret; a write over it prunes the oldest"
    " (`secretfs config set max-versions N` changes it later).",
)
@json_option
@handle_errors
def init(
    store: StoreLocation | None, max_value_size: int, max_versions: int, as_json: bool = False
) -> None:
    """Create a new, empty store.

    The key-encryption key comes from $SECRETFS_KEY, else $SECRETFS_PASSWORD (Argon2id),
    else a new key file is written next to the store (mode 0600).
    """
    path = store_path(store)
    source = Vault.init(path, max_value_bytes=max_value_size, max_versions=max_versions)
    if source.kind == KIND_KEY_FILE:
        note = f"key file {source.description} (mode 0600): back it up, apart from the store"
    else:
        note = f"key from {source.description}: the same is needed to open the store"
    if as_json:
        record = init_record(
            str(path), source.kind, source.description, max_value_size, max_versions, [note]
        )
        emit_json(record)
        return
    click.echo(f"created store {path}")
    click.echo(note)

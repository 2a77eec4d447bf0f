"""`secretfs client-key add|ls|rm`: the public keys sealed reads are sealed to
(docs/sealed.md); the sealing itself is secretfs/sealing.py."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from secretfs import sealing
from secretfs.audit import iso_time_ns
from secretfs.cli.common import cli, emit_json, handle_errors, open_vault, store_option
from secretfs.cli.completion import complete_client_keys
from secretfs.cli.params import USER_ID
from secretfs.errors import IntegrityError, UsageError
from secretfs.store import ClientKeyRecord
from secretfs.store.location import StoreLocation


@cli.group(name="client-key")
def client_key() -> None:
    """Client public keys: secrets can be read sealed to them (`secret get --sealed-to`)."""


def _json(key: ClientKeyRecord) -> dict[str, Any]:
    def when(ns: int | None) -> str | None:
        return None if ns is None else iso_time_ns(ns)

    return {
        "key_id": key.key_id,
        "public_key": sealing.public_key_text(key.public_key),
        "fingerprint": sealing.fingerprint(key.public_key),
        "label": key.label,
        "owner_uid": key.owner_uid,
        "created_at": when(key.created_ns),
        "revoked_at": when(key.revoked_ns),
        "last_used_at": when(key.last_used_ns),
    }


def _read_public_key(public_key: str | None, from_file: Path | None, from_stdin: bool) -> bytes:
    given = [x for x in (public_key, from_file, from_stdin or None) if x is not None]
    if len(given) != 1:
        raise UsageError("give the public key once: as an argument, --from-file or --from-stdin")
    if from_file is not None:
        try:
            text = from_file.read_bytes()[:4096]
        except OSError as exc:
            raise UsageError(f"cannot read {from_file}: {exc.strerror}") from None
    elif from_stdin:
        text = sys.stdin.buffer.read(4096)
    else:
        assert public_key is not None
        text = public_key.encode()
    return sealing.parse_public_key(text)


@client_key.command()
@click.argument("public_key", required=False, metavar="[PUBKEY_BASE64]")
@click.option(
    "--from-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Read the base64 public key from a file.",
)
@click.option("--from-stdin", is_flag=True, help="Read the base64 public key from stdin.")
@click.option("--label", default="", help="A note on whose key this is.")
@click.option("--owner", "owner_uid", type=USER_ID, help="The user the key belongs to.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@store_option
@handle_errors
def add(
    store: StoreLocation | None,
    public_key: str | None,
    from_file: Path | None,
    from_stdin: bool,
    label: str,
    owner_uid: int | None,
    as_json: bool,
) -> None:
    """Register a client's X25519 public key (32 bytes, standard base64).

    Prints the new key id (ck_…); the mount then shows .sealed/<key id>/.
    """
    key = _read_public_key(public_key, from_file, from_stdin)
    with open_vault(store) as vault:
        record = vault.add_client_key(key, label, owner_uid)
    if as_json:
        emit_json(_json(record))
        return
    click.echo(record.key_id)
    click.echo(f"registered {sealing.fingerprint(key)}", err=True)


@client_key.command(name="ls")
@click.option("--all", "show_all", is_flag=True, help="Revoked keys too.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@store_option
@handle_errors
def ls(store: StoreLocation | None, show_all: bool, as_json: bool) -> None:
    """List the registered client keys (live ones; --all: revoked too)."""
    with open_vault(store) as vault:
        keys = vault.backend.list_client_keys()
        authentic = {k.key_id for k in vault.auth.client_keys()}
    forged = [k.key_id for k in keys if k.key_id not in authentic]
    keys = [k for k in keys if k.key_id in authentic]
    shown = [k for k in keys if show_all or k.revoked_ns is None]
    if as_json:
        emit_json([_json(k) for k in shown])
        return
    for k in shown:
        d = _json(k)
        state = f"revoked {d['revoked_at']}" if k.revoked_ns is not None else "live"
        owner = "-" if k.owner_uid is None else str(k.owner_uid)
        used = d["last_used_at"] or "never used"
        click.echo(
            f"{k.key_id}  {d['fingerprint']}  owner {owner}  {state}  {used}  {k.label}".rstrip()
        )
    if forged:
        raise IntegrityError(
            f"client key row(s) fail authentication (changed without the key, never sealed"
            f" to): {', '.join(forged)}; see `secretfs doctor`"
        )


@client_key.command(name="rm")
@click.argument("key_id", shell_complete=complete_client_keys)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@store_option
@handle_errors
def rm(store: StoreLocation | None, key_id: str, as_json: bool) -> None:
    """Revoke a client key: nothing is sealed to it again (its record stays, for audit)."""
    if not sealing.is_key_id(key_id):
        raise UsageError(f"{key_id[:40]!r} is not a client key id (ck_<32 hex>)")
    with open_vault(store) as vault:
        record = vault.revoke_client_key(key_id)
    if as_json:
        emit_json(_json(record))
        return
    click.echo(f"revoked {key_id}", err=True)

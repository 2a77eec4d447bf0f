"""`secretfs key status | rotate | passwd`: the key-encryption key and the data keys."""

from __future__ import annotations

import sys
from typing import Any

import click

from secretfs import crypto, keyring, keyrotation, keys
from secretfs.cli.common import cli, emit_json, handle_errors, open_vault, store_option, store_path
from secretfs.cli.params import bounded_int
from secretfs.cli.values import resolve_uri
from secretfs.errors import UsageError
from secretfs.files import read_limited
from secretfs.store.location import StoreLocation
from secretfs.vault import Vault

MIN_PASSWORD_CHARS = 12
KEY_INPUT_LIMIT = 64 * 1024  # a key or password is far smaller; /dev/zero is not read whole


@cli.group()
def key() -> None:
    """The store's keys: status, rotation, password.

    A key-encryption key (KEK: $SECRETFS_KEY, $SECRETFS_PASSWORD or the key file) wraps
    the data key(s) that seal the values. Every command here works while the store is
    mounted, and is safe to kill: run the same command again to finish.
    """


def _read_input(uri: str, what: str) -> bytes:
    """A key or password from env://, file://, cmd:// or `-` (stdin); never from argv."""
    if uri == "-":
        return read_limited(sys.stdin.buffer, KEY_INPUT_LIMIT, f"{what} from standard input")
    if "://" not in uri:
        raise UsageError(
            f"{what} takes env://VAR, file://PATH, cmd://COMMAND or - (stdin), never the"
            " secret itself on the command line"
        )
    return resolve_uri(uri, KEY_INPUT_LIMIT)


def _strip_newline(data: bytes) -> bytes:
    if data.endswith(b"\r\n"):
        return data[:-2]
    return data[:-1] if data.endswith(b"\n") else data


@key.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@store_option
@handle_errors
def status(store: StoreLocation | None, as_json: bool) -> None:
    """Where the KEK comes from, the data key generations, algorithms, and whether the
    key unlocks the store. Exits with the key error's code if it does not."""
    info, error = keyrotation.status(store_path(store))
    if as_json:
        emit_json(info)
    else:
        _print_status(info)
    if error is not None:
        raise error


def _print_status(info: dict[str, Any]) -> None:
    kek = info["kek"]
    source = f"{kek['source']} ({kek['from']})"
    if kek.get("file_mode"):
        source += f", mode {kek['file_mode']}"
    if kek.get("kdf"):
        kdf = kek["kdf"]
        source += f", Argon2id t={kdf['t']} m={kdf['m']} KiB p={kdf['p']}"
    click.echo(f"store:       {info['store']}")
    click.echo(f"key source:  {source}")
    for name, text in info["algorithms"].items():
        click.echo(f"{name + ':':<13}{text}")
    for record in info["data_keys"]:
        line = (
            f"data key:    generation {record['generation']}, created {record['created']},"
            f" {record['versions']} version(s)" + (", ACTIVE" if record["active"] else "")
        )
        if record.get("problem"):
            line += f" -- DAMAGED: {record['problem']}"
        click.echo(line)
    if info["reencryption"]:
        r = info["reencryption"]
        click.echo(
            f"re-encryption: to generation {r['to_generation']}, {r['versions_left']} version(s)"
            " left (`secretfs key rotate --reencrypt` finishes it)"
        )
    if info["kek_rotation"]:
        click.echo(f"key rotation: {info['kek_rotation']}")
    if info["operation"]:
        op = info["operation"]
        state = "running" if op["running"] else "interrupted"
        click.echo(f"operation:   `{op['op']}` (pid {op['pid']}) {state}")
    nodes = info["nodes"]
    if nodes["enrolled"] or nodes["revoked"]:
        click.echo(f"nodes:       {nodes['enrolled']} enrolled, {nodes['revoked']} revoked")
    if info["opened_with"]:
        click.echo(f"opened with: {info['opened_with']}")
    click.echo(f"unlocks:     {'yes' if info['unlocks'] else 'NO'}")


def _progress(done: int, total: int) -> None:
    click.echo(f"re-encrypted {done}/{total} version(s)", err=True)


@key.command()
@click.option(
    "--reencrypt",
    is_flag=True,
    help="Also make a new data key and re-encrypt every value (in batches, resumable).",
)
@click.option(
    "--new-key-from",
    metavar="URI",
    help="The new KEK (64 hex chars or base64) from env://VAR, file://PATH, cmd://COMMAND or"
    " - (stdin). Needed for a $SECRETFS_KEY store; a key-file store gets a random one.",
)
@click.option(
    "--batch-size",
    type=bounded_int(1, 100_000),
    default=keyrotation.DEFAULT_BATCH,
    show_default=True,
    help="Versions re-encrypted per transaction.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--dry-run", is_flag=True, help="Only say what would be re-wrapped and re-encrypted.")
@store_option
@handle_errors
def rotate(
    store: StoreLocation | None,
    reencrypt: bool,
    new_key_from: str | None,
    batch_size: int,
    as_json: bool,
    dry_run: bool = False,
) -> None:
    """Give the store a new key-encryption key: the data key(s) are re-wrapped under it,
    values are not touched (O(1) in the number of secrets).

    \b
    key file:          a new random key replaces the key file (atomically)
    $SECRETFS_PASSWORD: the same password with a new salt (`key passwd` changes it)
    $SECRETFS_KEY:     the key given with --new-key-from

    With --reencrypt, a new data key generation then seals every value again, a batch of
    versions per transaction; the old generation is deleted once nothing uses it. Killed
    at any point, the store still opens and reads; run the same command again to finish
    (it does not start over).
    """
    new_key = None
    if new_key_from is not None:
        new_key = crypto.parse_key_text(
            _read_input(new_key_from, "--new-key-from").decode("ascii", "replace")
        )
    outcome = keyrotation.Outcome()
    if dry_run:
        with open_vault(store) as vault:  # the key must open the store, as for the real one
            _rotation_plan(vault, reencrypt, new_key is not None, outcome)
        outcome.notes.append("nothing was changed (--dry-run)")
    else:
        _rotate(store, reencrypt, new_key, batch_size, as_json, outcome)
    print_outcome(outcome, as_json)


def _rotation_plan(
    vault: Vault, reencrypt: bool, new_key: bool, outcome: keyrotation.Outcome
) -> None:
    """What `key rotate` would do, read only."""
    outcome.data["dry_run"] = True
    kind = vault.kek_source.kind
    info = vault.backend.data_key_info()
    pending = keyrotation.pending_reencryption(vault.backend)
    if kind == keys.KIND_KEY and not new_key:
        if not reencrypt:
            raise UsageError(
                "this store's key comes from $SECRETFS_KEY: give the new key with --new-key-from"
            )
        outcome.notes.append("would keep the KEK ($SECRETFS_KEY): --new-key-from changes it")
    elif not (reencrypt and pending is not None):
        outcome.data["rewrapped"] = len(info)
        outcome.notes.append(
            f"would give the store a new key-encryption key ({kind}) and re-wrap"
            f" {len(info)} data key(s)"
        )
    if reencrypt:
        target = pending if pending is not None else max(g for g, _, _ in info) + 1
        left = sum(count for gen, _, count in info if gen != target)
        outcome.data["generation"] = target
        outcome.data["reencrypted"] = left
        verb = "resume re-encrypting" if pending is not None else "re-encrypt"
        outcome.notes.append(f"would {verb} {left} version(s) under data key generation {target}")


def _rotate(
    store: StoreLocation | None,
    reencrypt: bool,
    new_key: bytes | None,
    batch_size: int,
    as_json: bool,
    outcome: keyrotation.Outcome,
) -> None:
    with open_vault(store) as vault:
        kind = vault.kek_source.kind
        op = "key rotate --reencrypt" if reencrypt else "key rotate"
        with keyrotation.key_operation(vault, op, outcome):
            finished = keyrotation.finish_kek_rotation(vault, outcome)
            pending = keyring.pending_reencryption(vault.backend)
            if reencrypt and pending is not None:
                outcome.notes.append(f"resuming the re-encryption to generation {pending}")
                target = pending
            else:
                if not finished:
                    if kind == keys.KIND_KEY and new_key is None and reencrypt:
                        outcome.notes.append(
                            "the KEK ($SECRETFS_KEY) is unchanged: give --new-key-from to"
                            " change it too"
                        )
                    elif kind == keys.KIND_NODE and not vault.keyring.has_kek and reencrypt:
                        outcome.notes.append(
                            "this node opens the store with its node key: the key-encryption"
                            " key (held elsewhere) is unchanged"
                        )
                    else:
                        keyrotation.rotate_kek(vault, new_key, outcome)
                if pending is not None:
                    outcome.notes.append(
                        f"a re-encryption to generation {pending} is unfinished: run"
                        " `secretfs key rotate --reencrypt` to finish it"
                    )
                target = keyrotation.start_reencryption(vault, outcome) if reencrypt else 0
            if target:
                keyrotation.reencrypt(
                    vault,
                    target,
                    outcome,
                    batch_size=batch_size,
                    progress=None if as_json else _progress,
                )


@key.command()
@click.option(
    "--new-password-from",
    metavar="URI",
    help="env://VAR, file://PATH, cmd://COMMAND or - (stdin). Default: stdin, or a prompt"
    " (asked twice) on a terminal.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@store_option
@handle_errors
def passwd(
    store: StoreLocation | None, new_password_from: str | None, as_json: bool = False
) -> None:
    """Change the password of a $SECRETFS_PASSWORD store (a new salt too).

    The current password comes from $SECRETFS_PASSWORD; the new one never from the
    command line. One trailing newline is dropped from the new password.
    """
    if new_password_from is not None:
        raw = _read_input(new_password_from, "--new-password-from")
    elif sys.stdin.isatty():
        raw = click.prompt(
            "New password", hide_input=True, confirmation_prompt=True, err=True
        ).encode()
    else:
        raw = read_limited(sys.stdin.buffer, KEY_INPUT_LIMIT, "the new password")
    password = _strip_newline(raw)
    if not password:
        raise UsageError("the new password is empty")
    if len(password.decode("utf-8", "replace")) < MIN_PASSWORD_CHARS:
        click.echo(
            f"warning: the new password is shorter than {MIN_PASSWORD_CHARS} characters",
            err=True,
        )
    outcome = keyrotation.Outcome()
    with open_vault(store) as vault:
        with keyrotation.key_operation(vault, "key passwd", outcome):
            keyrotation.finish_kek_rotation(vault, outcome)
            keyrotation.change_password(vault, password, outcome)
    print_outcome(outcome, as_json)


def print_outcome(outcome: keyrotation.Outcome, as_json: bool) -> None:
    """A key operation's record (docs/cli.md, "key rotation"), or its notes as lines."""
    if as_json:
        emit_json({**outcome.data, "notes": outcome.notes})
        return
    for note in outcome.notes:
        click.echo(note)

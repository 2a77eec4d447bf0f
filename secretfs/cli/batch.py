"""`secretfs secret set-many` and `secretfs tls set`: several secrets changed in ONE
transaction, so a mount shows all of them new to the same opens (a certificate never
opens beside the key of another)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import click
from click.decorators import FC

from secretfs import tls as _tls
from secretfs.cli.common import cli, emit_json, handle_errors, open_vault, store_option
from secretfs.cli.completion import REF
from secretfs.cli.secret import secret
from secretfs.cli.values import finish_value, input_options
from secretfs.errors import UsageError
from secretfs.files import read_file_limited, read_limited
from secretfs.refs import Ref, parse_ref
from secretfs.store.location import StoreLocation
from secretfs.vault import BulkOutcome, Vault

PathArg = click.Path(dir_okay=False, path_type=Path)
STDIN_VALUES = 64  # the JSON on stdin may be this many values' size limits long


def _write_all(vault: Vault, items: list[tuple[Ref, bytes]], as_json: bool) -> None:
    """Write `items` in one transaction (a new version where the value changed) and
    report each secret: to stdout as JSON with --json, else a line each on stderr."""
    seen: set[Ref] = set()
    for ref, _ in items:
        if ref in seen:
            raise UsageError(f"{ref} is given twice: nothing was written")
        seen.add(ref)
    outcomes = vault.write_many(items, existing="overwrite")
    _report(outcomes, as_json)


def _report(outcomes: list[BulkOutcome], as_json: bool) -> None:
    if as_json:
        emit_json([{"ref": str(o.ref), "action": o.action, "version": o.version} for o in outcomes])
        return
    for o in outcomes:
        click.echo(f"{o.action} {o.ref} version {o.version}", err=True)


def input_option(i: int) -> Callable[[FC], FC]:
    return input_options()[i]


def _stdin_items(limit: int) -> list[tuple[Ref, str]]:
    """A JSON object {REF: value} from stdin: a string is stored as its UTF-8 bytes,
    any other JSON value as its compact JSON text (a JSON secret, with field files)."""
    raw = read_limited(sys.stdin.buffer, limit, "standard input")
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as exc:
        # The position only: json's message may quote a value.
        raise UsageError(f"standard input is not JSON (line {exc.lineno})") from None
    except UnicodeDecodeError:
        raise UsageError("standard input is not UTF-8 JSON") from None
    if not isinstance(doc, dict):
        raise UsageError('--from-stdin takes a JSON object: {"REF": "value", ...}')
    return [
        (parse_ref(name), v if isinstance(v, str) else json.dumps(v, separators=(",", ":")))
        for name, v in doc.items()
    ]


@secret.command(name="set-many")
@click.option(
    "--from-file",
    "files",
    multiple=True,
    metavar="REF=PATH",
    help="A secret and the file its value is read from (repeatable).",
)
@click.option(
    "--from-stdin",
    is_flag=True,
    help='A JSON object {"REF": "value", ...} on standard input (other JSON values are'
    " stored as JSON text).",
)
@input_option(0)
@input_option(1)
@click.option("--json", "as_json", is_flag=True, help="Print what was done as JSON.")
@store_option
@handle_errors
def set_many(
    store: StoreLocation | None,
    files: tuple[str, ...],
    from_stdin: bool,
    trim: bool,
    allow_empty: bool,
    as_json: bool,
) -> None:
    """Set several secrets in ONE transaction: all change, or none does.

    A mount shows every one of them new at the same instant, so a reader never opens a
    mix of old and new (e.g. a certificate with another certificate's key). A secret
    whose value is already equal is left as it is ("unchanged").
    """
    pairs: list[tuple[Ref, Path]] = []
    for spec in files:
        name, sep, where = spec.partition("=")
        if not sep or not name or not where:
            raise UsageError(f"--from-file takes REF=PATH, not {spec[:60]!r}")
        pairs.append((parse_ref(name), Path(where)))
    if not pairs and not from_stdin:
        raise UsageError(
            "give the secrets with --from-file REF=PATH (repeatable) and/or --from-stdin"
        )
    with open_vault(store) as vault:
        limit = vault.max_value_bytes
        items: list[tuple[Ref, bytes]] = []
        for ref, path in pairs:
            data = read_file_limited(path, limit)
            items.append((ref, finish_value(data, str(path), trim=trim, allow_empty=allow_empty)))
        if from_stdin:
            # Several values in one document: bounded at STDIN_VALUES values' worth.
            for ref, text in _stdin_items(limit * STDIN_VALUES):
                data = finish_value(
                    text.encode(), f"{ref} on stdin", trim=trim, allow_empty=allow_empty
                )
                items.append((ref, data))
        _write_all(vault, items, as_json)


@cli.group(name="tls")
def tls_group() -> None:
    """TLS certificates and their keys, changed together."""


@tls_group.command(name="set")
@click.argument("name", type=REF)
@click.option(
    "--cert",
    "cert_file",
    required=True,
    type=PathArg,
    help="The certificate (PEM; its chain may follow).",
)
@click.option(
    "--key", "key_file", required=True, type=PathArg, help="Its private key (PEM, unencrypted)."
)
@click.option("--ca", "ca_file", type=PathArg, help="A CA bundle (PEM), stored as NAME.ca.crt.")
@click.option("--json", "as_json", is_flag=True, help="Print what was done as JSON.")
@store_option
@handle_errors
def tls_set(
    store: StoreLocation | None,
    name: str,
    cert_file: Path,
    key_file: Path,
    ca_file: Path | None,
    as_json: bool,
) -> None:
    """Check that --key belongs to --cert, then write NAME.crt, NAME.key (and NAME.ca.crt)
    in ONE transaction.

    Nothing is written when a file does not parse or the key does not match the
    certificate. Each value ends with the newline PEM readers need. `tls set tls` gives
    the names kubernetes uses (tls.crt, tls.key). A mount shows the new certificate and
    key to the same opens: `nginx -s reload` never reads a mismatched pair.
    """
    crt_ref, key_ref, ca_ref = _tls.part_refs(parse_ref(name))
    with open_vault(store) as vault:
        limit = vault.max_value_bytes
        parts = _tls.check(
            read_file_limited(cert_file, limit),
            read_file_limited(key_file, limit),
            None if ca_file is None else read_file_limited(ca_file, limit),
        )
        items = [(crt_ref, parts.cert), (key_ref, parts.key)]
        if parts.ca is not None:
            items.append((ca_ref, parts.ca))
        if not as_json:
            click.echo(f"certificate {parts.subject}, valid until {parts.not_after}", err=True)
        _write_all(vault, items, as_json)

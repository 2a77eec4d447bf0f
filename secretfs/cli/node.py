"""`secretfs node enroll | ls | revoke`: per-node keys (docs/cluster.md, "Nodes").

Each node has its own X25519 key pair; the private half stays in its node key file
(0600), the data keys are boxed to each enrolled node's public key from the store's own
key, which each node pins at enrollment (`<node key file>.pins`, 0600). The records and
the sealing are secretfs/keyring.py and secretfs/keyrotation.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from secretfs import crypto, keyring, keyrotation, keys
from secretfs.cli.common import cli, emit_json, handle_errors, open_vault, store_option, store_path
from secretfs.cli.key import print_outcome
from secretfs.errors import KeySourceError, SecretfsError, UsageError
from secretfs.store.location import StoreLocation
from secretfs.timeutil import iso_time


@cli.group()
def node() -> None:
    """Nodes with their own keys: enroll, list, revoke.

    A node opens the store with its own node key once a member has enrolled it; revoking
    a node gives the store a new data key, so values written afterwards never open on it.
    """


def _node_key_path(store: StoreLocation | None) -> Path:
    return keys.node_key_file_path(store_path(store).key_file())


def _own_node_key(path: Path) -> tuple[bytes, bool]:
    """This host's node public key, creating the key pair (0600) when there is none."""
    if path.exists():
        return crypto.box_public_key(keys.read_node_key(path)), False
    private = crypto.box_private_key()
    keys.write_key_file(path, private)
    return crypto.box_public_key(private), True


@node.command()
@click.argument("public_key", required=False, metavar="[PUBKEY]")
@click.option("--label", default="", help="A note on which node this is (a host name).")
@click.option(
    "--store-key",
    metavar="KEY",
    help="On the node: pin the store's key, as the member that enrolled it printed.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@store_option
@handle_errors
def enroll(
    store: StoreLocation | None,
    public_key: str | None,
    label: str,
    store_key: str | None,
    as_json: bool,
) -> None:
    """Enroll a node: box every data key to its public key from the store's key.

    On a new node, without PUBKEY: make this node's key pair (its node key file, 0600)
    and print its public key; run `secretfs node enroll PUBKEY` on a member that opens
    the store to enroll it, then `secretfs node enroll --store-key KEY` on the node with
    the store key the member printed. A host that opens the store enrolls itself.
    """
    outcome = keyrotation.Outcome()
    if public_key is not None:
        if store_key is not None:
            raise UsageError("--store-key is given on the node itself, without PUBKEY")
        try:
            public = crypto.parse_key_text(public_key)
        except SecretfsError:
            raise UsageError("PUBKEY is a node's 32-byte public key (64 hex digits)") from None
        with open_vault(store) as vault, keyrotation.key_operation(vault, "node enroll", outcome):
            keyrotation.enroll_node(vault, public, label, outcome)
        own = vault.keyring.node
        if own is not None and own.public_key == public:
            _pin(Path(own.path), vault.store_id, outcome)
        else:
            outcome.notes.append(
                f"on node {outcome.data['node_id']}, pin the store key:\n"
                f"  secretfs node enroll --store-key {outcome.data['store_key']}"
            )
        print_outcome(outcome, as_json)
        return
    path = _node_key_path(store)
    public, created = _own_node_key(path)
    node_id = keyring.node_id_of(public)
    text = crypto.format_key_text(public)
    outcome.data.update({"node_id": node_id, "public_key": text, "node_key_file": str(path)})
    if created:
        outcome.notes.append(f"new node key {path} (0600) for node {node_id}")
    if store_key is not None:
        try:
            pinned = crypto.parse_key_text(store_key)
        except SecretfsError:
            raise UsageError("--store-key is the store's 32-byte key (64 hex digits)") from None
        backend = store_path(store).open(readonly=True)
        try:
            store_id = backend.meta_get("store_id")
        finally:
            backend.close()
        if store_id is None:
            raise UsageError(f"{store_path(store)} is not an initialized secretfs store")
        keys.write_store_pin(path, store_id, pinned)
        outcome.notes.append(f"pinned the store key in {keys.store_pin_path(path)}")
    try:
        with open_vault(store) as vault:
            if vault.kek_source.kind == keys.KIND_NODE:
                outcome.notes.append(f"node {node_id} is enrolled: it opens the store")
                outcome.data["enrolled"] = True
            else:
                with keyrotation.key_operation(vault, "node enroll", outcome):
                    keyrotation.enroll_node(vault, public, label, outcome)
                _pin(path, vault.store_id, outcome)
                outcome.data["enrolled"] = True
    except KeySourceError as exc:
        outcome.data["enrolled"] = False
        if "was revoked" in str(exc):
            raise KeySourceError(
                f"node {node_id} was revoked: a revoked node key is never enrolled again;"
                f" move {path} away and run `secretfs node enroll` for a new one"
            ) from None
        if "has not pinned" in str(exc):
            outcome.notes.append(
                f"node {node_id} is enrolled but has not pinned the store key: run"
                " `secretfs node enroll --store-key KEY` here, KEY as the member that"
                " enrolled it printed (or from `secretfs node ls` there)"
            )
            print_outcome(outcome, as_json)
            return
        # Enrolled already, the reason (a refused box) says more.
        why = "" if "is not enrolled in" in str(exc) else f" ({exc})"
        outcome.notes.append(
            f"this node cannot open the store yet{why}; on a member that does, run:\n"
            f"  secretfs node enroll {text}"
            + (f" --label {label}" if label else "")
            + "\nthen here: secretfs node enroll --store-key KEY (KEY as the member prints)"
        )
    print_outcome(outcome, as_json)


def _pin(node_key: Path, store_id: bytes, outcome: keyrotation.Outcome) -> None:
    """This host enrolled its own node key: it pins the store key it used itself."""
    keys.write_store_pin(node_key, store_id, crypto.parse_key_text(outcome.data["store_key"]))
    outcome.notes.append(f"pinned the store key in {keys.store_pin_path(node_key)}")


@node.command(name="ls")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@store_option
@handle_errors
def ls(store: StoreLocation | None, as_json: bool) -> None:
    """List enrolled and revoked nodes, and which data key generations each can open."""
    with open_vault(store) as vault:
        backend, kr = vault.backend, vault.keyring
        own = kr.node.node_id if kr.node is not None else None
        wraps = backend.meta_scan(keyring.NODE_WRAP_PREFIX)
        rows: list[dict[str, Any]] = []
        for n in keyring.list_nodes(backend):
            gens = sorted(int(k.split("/")[1]) for k in wraps if k.endswith(f"/{n.node_id}"))
            rows.append(
                {
                    "node_id": n.node_id,
                    "label": n.label,
                    "public_key": crypto.format_key_text(n.public_key),
                    "enrolled_at": iso_time(n.created_ns),
                    "revoked_at": None if n.revoked_ns is None else iso_time(n.revoked_ns),
                    "authentic": vault.auth.node_ok(n),
                    "generations": gens,
                    "this_node": n.node_id == own,
                }
            )
        store_key = kr.store_key(backend)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no nodes enrolled (the store opens with its key-encryption key only)")
    for r in rows:
        state = f"revoked {r['revoked_at']}" if r["revoked_at"] else "enrolled"
        flags = (" (this node)" if r["this_node"] else "") + (
            "" if r["authentic"] else " NOT AUTHENTIC: sealed to nobody"
        )
        shown = ",".join(map(str, r["generations"])) or "-"
        click.echo(f"{r['node_id']}  {r['label'] or '-'}  {state}  generations {shown}{flags}")
    if store_key is not None:
        text = crypto.format_key_text(store_key)
        click.echo(f"store key {text} (each node pins it: `secretfs node enroll --store-key`)")


@node.command()
@click.argument("node_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@store_option
@handle_errors
def revoke(store: StoreLocation | None, node_id: str, as_json: bool) -> None:
    """Revoke a node: nothing is sealed to it any more, and a new data key generation
    re-encrypts every value, so values written from now on never open on it."""
    outcome = keyrotation.Outcome()
    with open_vault(store) as vault, keyrotation.key_operation(vault, "node revoke", outcome):
        keyrotation.revoke_node(vault, node_id, outcome)
        # Always a new generation: one a pending re-encryption made was sealed to the node.
        keyrotation.reencrypt(vault, keyrotation.start_reencryption(vault, outcome), outcome)
    print_outcome(outcome, as_json)

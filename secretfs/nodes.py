"""Stores whose nodes were enrolled before node keys were authenticated (docs/cluster.md,
"Nodes"): the next key holder to open the store for writing moves them over, audited.

Before, a node's copy of a data key was an anonymous sealed box and a node record carried
its own tag outside the store digest. Now each copy is a box from the store's own key
(which each node pins) and each record is tagged under the digest (`mac/n/<id>`). A node
refuses an anonymous box, so until a host with the key moves the store on, a node that
has only those says so (`key_problems`, exit 5) and serves nothing under them.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

from secretfs.authmeta import NODE_TAG
from secretfs.errors import SecretfsError
from secretfs.keyring import (
    NODE_PREFIX,
    NODE_WRAP_PREFIX,
    STORE_KEY_PREFIX,
    is_boxed,
    list_nodes,
)

if TYPE_CHECKING:
    from secretfs.vault import Vault
    from secretfs.vault.core import AuditTrail

log = logging.getLogger(__name__)


def store_key(vault: Vault, trail: AuditTrail) -> bytes:
    """The store key nodes pin, made (audited `store-key`) when the store has none, and
    wrapped under every held generation (inside the caller's transaction)."""
    b = vault.backend
    had = bool(b.meta_scan(STORE_KEY_PREFIX))
    public = vault.keyring.store_key(b, write=True)
    assert public is not None
    if not had:
        boxed = any(is_boxed(w) for w in b.meta_scan(NODE_WRAP_PREFIX).values())
        trail.record(
            action="store-key",
            on=vault.name,
            detail="a new store key; each node pins it"
            + (
                " (the one before is gone: nodes refuse boxes from this one until then)"
                if boxed
                else ""
            ),
        )
        if boxed:
            log.error(
                "%s: the store key was missing: made a new one; every node refuses what is"
                " boxed from it until it pins it (`secretfs node enroll --store-key`)",
                vault.name,
            )
    return public


def needs_migration(vault: Vault) -> bool:
    b = vault.backend
    nodes = list_nodes(b)
    if not nodes:
        return False
    tags = b.meta_scan(NODE_TAG)
    pending = any(vault.auth.node_pending(n, tags) for n in nodes)
    return pending or any(not is_boxed(w) for w in b.meta_scan(NODE_WRAP_PREFIX).values())


def migrate(vault: Vault) -> None:
    """Tag old node records under the digest and seal each anonymous copy again from the
    store's key (one transaction, audited `node-reseal`); best effort: a failure is
    logged, the nodes keep refusing what is not authentic."""
    try:
        if needs_migration(vault):
            _migrate(vault)
    except SecretfsError as exc:
        log.warning("%s: cannot authenticate the nodes' data keys yet: %s", vault.name, exc)


def _migrate(vault: Vault) -> None:
    b, kr, auth = vault.backend, vault.keyring, vault.auth
    with vault.recorded("node-reseal") as trail:
        tags = b.meta_scan(NODE_TAG)
        moved = []
        for node in list_nodes(b):
            if auth.node_pending(node, tags):
                node = dataclasses.replace(node, tag=None)
                b.meta_set(NODE_PREFIX + node.node_id, node.to_json())
                moved.append(node)
        if moved:
            auth.update(nodes=moved)
        live = {n.node_id: n for n in list_nodes(b) if n.revoked_ns is None and auth.node_ok(n)}
        resealed: dict[str, list[int]] = {}
        for key, wrap in sorted(b.meta_scan(NODE_WRAP_PREFIX).items()):
            if is_boxed(wrap):
                continue
            gen_text, node_id = key[len(NODE_WRAP_PREFIX) :].split("/", 1)
            target = live.get(node_id)
            if target is None:
                b.meta_delete(key)  # to a revoked or forged record: sealed to nobody
                continue
            if not kr.has(int(gen_text)):
                continue  # a generation this host cannot open: left refused
            store_key(vault, trail)
            b.meta_set(key, kr.wrap_to_node(int(gen_text), target))
            resealed.setdefault(node_id, []).append(int(gen_text))
        for node_id, gens in resealed.items():
            trail.record(
                on=node_id,
                detail=f"data key generation(s) {', '.join(map(str, gens))} sealed again"
                " from the store's key",
            )
    if resealed or moved:
        log.warning(
            "%s: %d node(s) now get data keys from the store's key; pin it on each"
            " (`secretfs node enroll --store-key KEY`, KEY from `secretfs node ls`)",
            vault.name,
            len(resealed),
        )

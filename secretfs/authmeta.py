"""Authenticated access metadata and rollback detection (docs/security.md).

Every row that decides who may read (secret rows, scope defaults, grants) has a tag from
the Keyring stored in the store's meta beside it (`mac/s/<secret id>`, `mac/c/<scope as
hex>`, `mac/g/<row digest>`). `auth_state` holds the sum of every tag and a serial
counting authenticated writes, tagged itself: a row changed without the key fails its
tag; a row deleted, added or replayed (an older, authentic row) changes the sum; an
older `auth_state` has a lower serial than the one this host saw last (`lastseen`).

Writes keep all of it current in O(rows changed) (`Authenticator.update`); a full check
(`verify_all`) is what `doctor`, the CLI and a mount's load run, and its part for the
access rows (`verify_access`) what a mount runs on each change to them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from secretfs.keyring import (
    DIGEST_MOD,
    FINGERPRINT_SCHEME,
    AuthState,
    Keyring,
    NodeRecord,
    client_key_row,
    grant_row,
    list_nodes,
    node_row,
    scope_row,
    secret_row,
    tag_value,
)
from secretfs.store import ClientKeyRecord, GrantRecord, ScopeMeta, SecretMeta

if TYPE_CHECKING:
    from secretfs.store.base import Backend

SECRET_TAG = "mac/s/"  # noqa: S105 - a key prefix
SCOPE_TAG = "mac/c/"
GRANT_TAG = "mac/g/"
CLIENT_KEY_TAG = "mac/k/"  # client keys decide what is sealed to whom (docs/sealed.md)
NODE_TAG = "mac/n/"  # node records decide which nodes data keys are sealed to
TAMPER = "tamper"  # the audit outcome of a row that fails verification


@dataclass(frozen=True, slots=True)
class Problem:
    """One row (or the store) that fails verification: what, and why."""

    kind: str  # "secret", "scope", "grant", "version", "store"
    what: str
    detail: str
    ref: str | None = None  # the row's audit ref where `what` is not one (a grant's)

    def __str__(self) -> str:
        return f"{self.kind} {self.what}: {self.detail}"


ACCESS_MISMATCH = (
    "the scope defaults, grants and client keys do not add up to their authenticated"
    " digest: one was deleted or replayed"
)


@dataclass(frozen=True, slots=True)
class AccessCheck:
    """The access rows (scope defaults, grants, client keys) sorted by their tags."""

    scopes: list[ScopeMeta]  # every scope as it may be served: failing or deleted is mode 0
    grants: list[GrantRecord]  # the grants that verify
    client_keys: list[ClientKeyRecord]  # the client keys that verify
    problems: list[Problem]  # one per failing row or deleted scope row
    access: int  # the sum of the rows' tags
    adds_up: bool  # the sum is the authenticated state's (False without a state)


def _is_access(key: str) -> bool:
    return key.startswith((SCOPE_TAG, GRANT_TAG, CLIENT_KEY_TAG))


def secret_tag_key(secret_id: int) -> str:
    return f"{SECRET_TAG}{secret_id}"


def scope_tag_key(scope: str) -> str:
    return f"{SCOPE_TAG}{scope.encode().hex()}"


def grant_tag_key(grant: GrantRecord) -> str:
    return f"{GRANT_TAG}{hashlib.blake2b(grant_row(grant), digest_size=16).hexdigest()}"


def client_key_tag_key(key_id: str) -> str:
    return f"{CLIENT_KEY_TAG}{key_id}"


def node_tag_key(node_id: str) -> str:
    return f"{NODE_TAG}{node_id}"


def _secret_text(meta: SecretMeta) -> str:
    return f"#{meta.secret_id} {meta.scope}/{meta.name}"


def _grant_text(g: GrantRecord) -> str:
    return f"{g.kind} {g.principal} on {g.scope}{'/' + g.name if g.name else ''}"


class Authenticator:
    """Tags rows as they are written, and verifies them, with one store's Keyring."""

    def __init__(self, backend: Backend, keyring: Keyring) -> None:
        self.backend = backend
        self.keyring = keyring
        # Rows whose tag verified: this row (SecretMeta is frozen; equal fields, equal
        # tagged bytes) with these tag bytes. A mount's start checks every row twice
        # (the store, then the tree), and a poll sees the same rows again.
        self._secrets_ok: dict[int, tuple[SecretMeta, bytes]] = {}

    # -- writing (inside the write's transaction) ----------------------------------------

    def update(
        self,
        *,
        secrets: Iterable[int] = (),
        scopes: Iterable[str] = (),
        added: Iterable[GrantRecord] = (),
        removed: Iterable[GrantRecord] = (),
        client_keys: Iterable[str] = (),
        nodes: Iterable[NodeRecord] = (),
    ) -> None:
        """Tag the rows a write changed and move the store's digest by their difference
        (node records as written: never deleted, a revoked one is kept)."""
        b, kr = self.backend, self.keyring
        state = kr.read_state(b) or AuthState(0, 0)  # a damaged state shows in verify_all
        digest, access = state.digest, state.access

        def put(key: str, row: bytes | None) -> None:
            nonlocal digest, access
            old = tag_value(b.meta_get(key))
            tag = None if row is None else kr.tag(row)
            if tag is None:
                b.meta_delete(key)
            else:
                b.meta_set(key, tag)
            change = tag_value(tag) - old
            digest += change
            if _is_access(key):
                access += change

        for sid in secrets:
            meta = b.get_meta_by_id(sid)
            put(secret_tag_key(sid), None if meta is None else secret_row(meta))
        for scope in scopes:
            sm = b.get_scope_meta(scope)
            put(scope_tag_key(scope), None if sm is None else scope_row(sm))
        for g in removed:
            put(grant_tag_key(g), None)
        for g in added:
            put(grant_tag_key(g), grant_row(g))
        if client_keys:
            by_id = {k.key_id: k for k in b.list_client_keys()}
            for key_id in client_keys:
                ck = by_id.get(key_id)
                put(client_key_tag_key(key_id), None if ck is None else client_key_row(ck))
        for node in nodes:
            put(node_tag_key(node.node_id), node_row(kr.store_id, node))
        kr.write_state(b, AuthState(digest % DIGEST_MOD, state.serial + 1, access % DIGEST_MOD))

    def _tagged_rows(self) -> list[tuple[str, bytes]]:
        """Every authenticated row as (its tag's meta key, its encoding)."""
        b = self.backend
        rows = [(secret_tag_key(m.secret_id), secret_row(m)) for m in b.changes_since(0)]
        rows += [(scope_tag_key(s.scope), scope_row(s)) for s in b.list_scope_meta()]
        rows += [(grant_tag_key(g), grant_row(g)) for g in b.list_grants()]
        rows += [(client_key_tag_key(k.key_id), client_key_row(k)) for k in b.list_client_keys()]
        store_id = self.keyring.store_id
        rows += [(node_tag_key(n.node_id), node_row(store_id, n)) for n in list_nodes(b)]
        return rows

    def retag_all(self) -> int:
        """Tag every row afresh under the active generation (a new store state); rows
        are taken as they are. Returns how many rows were tagged."""
        b, kr = self.backend, self.keyring
        for key in b.meta_scan("mac/"):
            b.meta_delete(key)
        digest, access, count = 0, 0, 0
        rows = self._tagged_rows()
        for key, row in rows:
            tag = kr.tag(row)
            b.meta_set(key, tag)
            digest += tag_value(tag)
            if _is_access(key):
                access += tag_value(tag)
            count += 1
        old = kr.read_state(b)
        serial = (old.serial if old else 0) + 1
        kr.write_state(b, AuthState(digest % DIGEST_MOD, serial, access % DIGEST_MOD))
        return count

    def rekey(self) -> int:
        """Tag again, under the active generation, every row whose tag verifies now (a
        re-encryption is about to delete the old generations); a row that fails keeps its
        failing tag, and the digest moves only by what was re-tagged."""
        b, kr = self.backend, self.keyring
        state = kr.read_state(b)
        if state is None:
            return 0
        tags = b.meta_scan("mac/")
        rows = self._tagged_rows()
        digest, access, count = state.digest, state.access, 0
        for key, row in rows:
            old = tags.get(key)
            if kr.verify(row, old):
                tag = kr.tag(row)
                b.meta_set(key, tag)
                change = tag_value(tag) - tag_value(old)
                digest += change
                if _is_access(key):
                    access += change
                count += 1
        kr.write_state(b, AuthState(digest % DIGEST_MOD, state.serial + 1, access % DIGEST_MOD))
        return count

    def needs_migration(self) -> bool:
        return self.backend.meta_get("auth_state") is None

    def migrate(self) -> int:
        """A store from before authenticated metadata: tag every row and give every
        version a fingerprint of scheme 2 (inside a transaction). Returns rows tagged."""
        b = self.backend
        if b.meta_get(FINGERPRINT_SCHEME) != b"2":
            for record in list(b.all_sealed()):
                with contextlib.suppress(Exception):
                    fp = self.keyring.refingerprint(record)
                    b.reseal_version(record, record.key_gen, record.ciphertext, fp)
            b.meta_set(FINGERPRINT_SCHEME, b"2")
        return self.retag_all()

    # -- verifying ---------------------------------------------------------------------

    def secret_ok(self, meta: SecretMeta, tags: dict[str, bytes] | None = None) -> bool:
        key = secret_tag_key(meta.secret_id)
        stored = tags.get(key) if tags is not None else self.backend.meta_get(key)
        seen = self._secrets_ok.get(meta.secret_id)
        if seen is not None and seen[1] == stored and seen[0] == meta:
            return True  # verified already: the same row under the same tag
        ok = stored is not None and self.keyring.verify(secret_row(meta), stored)
        if ok and stored is not None:
            self._secrets_ok[meta.secret_id] = (meta, stored)
        return ok

    def secret_problem(self, meta: SecretMeta) -> str | None:
        """Why `meta` fails its tag (None: it verifies). A tag under a generation this
        keyring does not hold cannot be checked (yet): said so, not called a change."""
        stored = self.backend.meta_get(secret_tag_key(meta.secret_id))
        if self.keyring.verify(secret_row(meta), stored):
            return None
        return self.failure("its row", stored)

    def failure(self, what: str, stored: bytes | None) -> str:
        """Why `what`, stored under the tag `stored`, fails: a tag under a generation this
        keyring does not hold cannot be checked (yet), and is said so, never called a
        change made without the key."""
        gen = self.keyring.tag_generation(stored)
        if gen is not None and not self.keyring.has(gen):
            why = self.keyring.damaged.get(gen, "it is not loaded here")
            return f"{what} cannot be verified: its tag is under data key generation {gen} ({why})"
        return f"{what} fails authentication (changed without the key)"

    def scope_ok(self, sm: ScopeMeta, tags: dict[str, bytes] | None = None) -> bool:
        key = scope_tag_key(sm.scope)
        stored = tags.get(key) if tags is not None else self.backend.meta_get(key)
        return self.keyring.verify(scope_row(sm), stored)

    def grant_ok(self, g: GrantRecord, tags: dict[str, bytes] | None = None) -> bool:
        key = grant_tag_key(g)
        stored = tags.get(key) if tags is not None else self.backend.meta_get(key)
        return self.keyring.verify(grant_row(g), stored)

    def client_key_ok(self, key: ClientKeyRecord, tags: dict[str, bytes] | None = None) -> bool:
        tag_key = client_key_tag_key(key.key_id)
        stored = tags.get(tag_key) if tags is not None else self.backend.meta_get(tag_key)
        return self.keyring.verify(client_key_row(key), stored)

    def node_ok(self, node: NodeRecord, tags: dict[str, bytes] | None = None) -> bool:
        key = node_tag_key(node.node_id)
        stored = tags.get(key) if tags is not None else self.backend.meta_get(key)
        return self.keyring.verify(node_row(self.keyring.store_id, node), stored)

    def node_pending(self, node: NodeRecord, tags: dict[str, bytes]) -> bool:
        """A record from before node records were under the digest (its own tag verifies,
        it has none of its own yet): the next key holder's open moves it (nodes.py)."""
        return node_tag_key(node.node_id) not in tags and self.keyring.legacy_node_ok(node)

    def client_keys(self) -> list[ClientKeyRecord]:
        """The store's client keys whose rows verify: a key added or un-revoked without
        the key is never sealed to (a relay with a sealed-only grant could add its own)."""
        tags = self.backend.meta_scan(CLIENT_KEY_TAG)
        return [k for k in self.backend.list_client_keys() if self.client_key_ok(k, tags)]

    def access_sum(
        self,
        scopes: Iterable[ScopeMeta],
        grants: Iterable[GrantRecord],
        tags: dict[str, bytes],
        client_keys: Iterable[ClientKeyRecord] = (),
    ) -> int:
        """The sum of the scope, grant and client-key rows' tags, to compare with
        `AuthState.access`."""
        total = sum(tag_value(tags.get(scope_tag_key(s.scope))) for s in scopes)
        total += sum(tag_value(tags.get(grant_tag_key(g))) for g in grants)
        total += sum(tag_value(tags.get(client_key_tag_key(k.key_id))) for k in client_keys)
        return total % DIGEST_MOD

    def access_tags(self) -> dict[str, bytes]:
        """The tags verify_access() reads (scope, grant and client-key rows), without
        the store's one per secret."""
        b = self.backend
        return {**b.meta_scan(SCOPE_TAG), **b.meta_scan(GRANT_TAG), **b.meta_scan(CLIENT_KEY_TAG)}

    def deleted_scopes(self, scopes: Iterable[ScopeMeta]) -> list[str]:
        """Scopes whose defaults row is gone while its tag is still there (deleted by
        hand: deleting defaults may widen access)."""
        present = {scope_tag_key(s.scope) for s in scopes}
        out = []
        for key in self.backend.meta_scan(SCOPE_TAG):
            if key not in present:
                with contextlib.suppress(ValueError, UnicodeDecodeError):
                    out.append(bytes.fromhex(key[len(SCOPE_TAG) :]).decode())
        return out

    def verify_access(
        self,
        scopes: list[ScopeMeta],
        grants: list[GrantRecord],
        client_keys: list[ClientKeyRecord],
        tags: dict[str, bytes],
        state: AuthState | None,
    ) -> AccessCheck:
        """Each access row against its tag (a failing or deleted scope row reads as mode
        0, a failing grant or client key is left out), and their sum against `state`."""
        served: list[ScopeMeta] = []
        problems: list[Problem] = []
        for sm in scopes:
            if self.scope_ok(sm, tags):
                served.append(sm)
            else:
                why = self.failure("its defaults row", tags.get(scope_tag_key(sm.scope)))
                problems.append(Problem("scope", sm.scope, why))
                served.append(ScopeMeta(sm.scope, 0, 0, 0, sm.seq))
        for scope in self.deleted_scopes(scopes):
            problems.append(Problem("scope", scope, "its defaults row was deleted"))
            served.append(ScopeMeta(scope, 0, 0, 0, 0))
        good_grants = []
        for g in grants:
            if self.grant_ok(g, tags):
                good_grants.append(g)
            else:
                ref = f"{g.scope}/{g.name}" if g.name else g.scope
                why = self.failure("the grant", tags.get(grant_tag_key(g)))
                problems.append(Problem("grant", _grant_text(g), why, ref))
        good_keys = []
        for k in client_keys:
            if self.client_key_ok(k, tags):
                good_keys.append(k)
            else:
                why = self.failure("the client key", tags.get(client_key_tag_key(k.key_id)))
                problems.append(Problem("client-key", k.key_id, why))
        access = self.access_sum(scopes, grants, tags, client_keys)
        adds_up = state is not None and access == state.access
        return AccessCheck(served, good_grants, good_keys, problems, access, adds_up)

    def verify_all(
        self,
        lastseen: LastSeen | None = None,
        *,
        versions: bool = True,
        rows: list[SecretMeta] | None = None,
    ) -> list[Problem]:
        """Every row (`rows`: every secret row as the caller read it, else read here) and
        the store's digest, the serial against what this host saw last, and (with
        `versions`) that each secret's current version row is there."""
        b, kr = self.backend, self.keyring
        problems: list[Problem] = []
        state = kr.read_state(b)
        if state is None:
            what = "missing" if b.meta_get("auth_state") is None else "not authentic"
            problems.append(Problem("store", b.name, f"the authenticated store state is {what}"))
        tags = b.meta_scan("mac/")
        digest = 0
        for meta in b.changes_since(0) if rows is None else rows:
            key = secret_tag_key(meta.secret_id)
            digest += tag_value(tags.get(key))
            if not self.secret_ok(meta, tags):
                why = self.failure("its row", tags.get(key))
                problems.append(Problem("secret", _secret_text(meta), why))
            elif versions and not meta.deleted and b.sealed(meta.secret_id, meta.version) is None:
                problems.append(
                    Problem(
                        "version",
                        _secret_text(meta),
                        f"its current version {meta.version} is missing (deleted or rolled back)",
                    )
                )
        access = self.verify_access(
            b.list_scope_meta(), b.list_grants(), b.list_client_keys(), tags, state
        )
        digest += access.access
        problems += access.problems
        for n in list_nodes(b):
            digest += tag_value(tags.get(node_tag_key(n.node_id)))
            if not self.node_ok(n, tags) and not self.node_pending(n, tags):
                why = self.failure("the node record", tags.get(node_tag_key(n.node_id)))
                problems.append(Problem("node", n.node_id, why))
        if state is not None and digest % DIGEST_MOD != state.digest:
            problems.append(
                Problem(
                    "store",
                    b.name,
                    "the rows do not add up to the authenticated digest: a row was deleted,"
                    " added or rolled back to an older authentic copy",
                )
            )
        if state is not None and not access.adds_up:
            problems.append(Problem("store", b.name, ACCESS_MISMATCH))
        if state is not None and lastseen is not None:
            problems.extend(lastseen.check(kr.store_id, state, b.name))
        return problems


# -- what this host saw last ------------------------------------------------------------


class LastSeen:
    """The highest store serial this host has seen, per store id: a file 0600 beside
    the key file (`.<store>.seen`).

    A store whose authenticated serial is lower was rolled back as a whole (a restore
    from a backup); `secretfs doctor --accept-restore` accepts a deliberate one.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self, store_id: bytes) -> int | None:
        try:
            obj = json.loads(self.path.read_text())
            return int(obj[store_id.hex()])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def check(self, store_id: bytes, state: AuthState, name: str) -> list[Problem]:
        seen = self.read(store_id)
        if seen is not None and state.serial < seen:
            return [
                Problem(
                    "store",
                    name,
                    f"the store is older than this host last saw it (serial {state.serial} <"
                    f" {seen}): restored from a backup or rolled back; if deliberate, run"
                    " `secretfs doctor --accept-restore`",
                )
            ]
        return []

    def record(self, store_id: bytes, serial: int, *, force: bool = False) -> None:
        """Remember `serial` (only ever upwards, unless `force`); best effort."""
        seen = self.read(store_id)
        if not force and seen is not None and seen >= serial:
            return
        with contextlib.suppress(OSError):
            path = self.path
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump({store_id.hex(): serial}, fh)
            os.replace(tmp, path)


__all__ = [
    "ACCESS_MISMATCH",
    "TAMPER",
    "AccessCheck",
    "Authenticator",
    "LastSeen",
    "Problem",
    "node_tag_key",
]

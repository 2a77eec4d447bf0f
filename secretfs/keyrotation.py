"""Key lifecycle: status, a new KEK (re-wrap), a new data key (re-encrypt), a new password.

Every step below is one SQLite transaction or one atomic rename, ordered so that a kill
at any point leaves a store that opens and reads every value.

KEK rotation of a key-file store (the key lives outside the store, so two places change):

1. write the new key to `<key file>.next` (0600 from creation, fsynced)
2. txn: every data key wrapped under the new key as well (`kek_next:<gen>`, with
   `kek_next_check` and the `kek_rotation` mark)
3. rename `<key file>.next` over the key file, fsync the directory
4. txn: the new wrappings replace the old ones; the marks go

Killed after 1 or 2: the old key file is in place and opens the store. Killed after 3:
the new key file is in place and opens the store through `kek_next:<gen>`. The next
`key rotate` (or `key rotate --reencrypt`) finishes the rotation, or forgets it when its
`.next` file is gone, and says which. A `$SECRETFS_KEY` or password store changes in one
transaction.

Re-encryption under a new data key generation:

1. txn: generation N+1, wrapped under the KEK, becomes the active one (new writes use it)
   and the `reencrypt` mark names it
2. txns of at most `batch_size` versions: each opened under its old generation and sealed
   under N+1 (its fingerprint re-keyed too); each batch is atomic
3. txn: only once no version is left under another generation, those generations are
   deleted and the mark goes

Killed anywhere: every version is under its old or its new generation, and both keys are
in the store. The next `key rotate --reencrypt` resumes at step 2.

Only one key operation runs at a time (`key_op` in the store names its process).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from secretfs import crypto, keys
from secretfs import nodes as nodes_module
from secretfs.errors import (
    ConflictError,
    IntegrityError,
    KeySourceError,
    NotFoundError,
    SecretfsError,
    UsageError,
)
from secretfs.keyring import (
    KEK_NEXT,
    KEK_NEXT_CHECK,
    KEK_ROTATION,
    KEY_OP,
    NODE_PREFIX,
    NODE_WRAP_PREFIX,
    REENCRYPT,
    STORE_KEY_PREFIX,
    Keyring,
    NodeRecord,
    key_op_holder,
    list_nodes,
    node_id_of,
    node_wrap_key,
    pending_reencryption,
    running,
    start_ticks,
)
from secretfs.refs import Ref, Scope
from secretfs.store.base import Backend
from secretfs.store.location import StoreLocation, location_of
from secretfs.testhooks import checkpoint
from secretfs.timeutil import iso_time
from secretfs.vault import AuditTrail, Vault

DEFAULT_BATCH = 500

VALUE_CIPHER = "XChaCha20-Poly1305 (libsodium), 256-bit data key"
WRAP_CIPHER = (
    "XChaCha20-Poly1305 under the key-encryption key;"
    " X25519 crypto_box from the store's key to each node key"
)
PASSWORD_KDF = "Argon2id"  # noqa: S105 - an algorithm name

Progress = Callable[[int, int], None]  # (versions done, versions in all)


@dataclass
class Outcome:
    """What a key operation did, as lines for the user (never a key)."""

    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


# -- one key operation at a time ----------------------------------------------------------


@contextlib.contextmanager
def key_operation(vault: Vault, what: str, outcome: Outcome) -> Iterator[None]:
    """Hold the store's key-operation mark; refuse while another live process holds it."""
    backend = vault.backend
    me = {"op": what, "pid": os.getpid(), "start": start_ticks(os.getpid())}
    with backend.transaction():
        holder = key_op_holder(backend)
        if holder is not None and running(holder):
            raise ConflictError(
                f"another key operation (`{holder.get('op')}`, pid {holder.get('pid')}) is"
                " running on this store: wait for it to finish"
            )
        if holder is not None:
            since = holder.get("since_ns")
            when = f" started {iso_time(since)}" if isinstance(since, int) and since else ""
            outcome.notes.append(
                f"an earlier `{holder.get('op')}`{when} was interrupted; picking up from where"
                " it stopped"
            )
        backend.meta_set(KEY_OP, json.dumps({**me, "since_ns": time.time_ns()}).encode())
    try:
        yield
    finally:
        with backend.transaction():
            backend.meta_delete(KEY_OP)


# -- status ----------------------------------------------------------------------------


def status(
    path: StoreLocation | os.PathLike[str],
) -> tuple[dict[str, Any], SecretfsError | None]:
    """What `key status` shows; the error, if the key does not unlock the store."""
    backend = location_of(path).open()
    try:
        return _status(backend)
    finally:
        backend.close()


def _status(backend: Backend) -> tuple[dict[str, Any], SecretfsError | None]:
    source = keys.env_source() or keys.KekSource(keys.KIND_KEY_FILE, str(backend.key_file()))
    kek_info: dict[str, Any] = {
        "source": source.kind,
        "from": source.description,
        "store_initialized_with": _text(backend.meta_get("kek_kind")),
    }
    if source.kind == keys.KIND_KEY_FILE:
        key_path = Path(source.description)
        try:
            kek_info["file_mode"] = f"{stat.S_IMODE(key_path.stat().st_mode):04o}"
        except OSError:
            kek_info["file_mode"] = None
    raw_params = backend.meta_get("kdf_params")
    if raw_params is not None:
        kek_info["kdf"] = json.loads(raw_params)
    active = int(backend.meta_get("active_gen") or b"0")
    info: dict[str, Any] = {
        "store": backend.name,
        "kek": kek_info,
        "algorithms": {
            "values": VALUE_CIPHER,
            "key wrap": WRAP_CIPHER,
            **({"password": PASSWORD_KDF} if raw_params is not None else {}),
        },
        "data_keys": [
            {
                "generation": gen,
                "created": iso_time(created),
                "active": gen == active,
                "versions": count,
            }
            for gen, created, count in backend.data_key_info()
        ],
        "reencryption": None,
        "kek_rotation": None,
        "operation": None,
    }
    mark = backend.meta_get(REENCRYPT)
    if mark is not None:
        target = int(mark)
        info["reencryption"] = {
            "to_generation": target,
            "versions_left": backend.versions_not_under(target),
        }
    if backend.meta_get(KEK_ROTATION) is not None:
        info["kek_rotation"] = "interrupted: run `secretfs key rotate` to finish it"
    holder = key_op_holder(backend)
    if holder is not None:
        info["operation"] = {
            "op": holder.get("op"),
            "pid": holder.get("pid"),
            "running": running(holder),
        }
    error: SecretfsError | None = None
    nodes = list_nodes(backend)
    info["nodes"] = {
        "enrolled": sum(n.revoked_ns is None for n in nodes),
        "revoked": sum(n.revoked_ns is not None for n in nodes),
    }
    info["opened_with"] = None
    try:
        unlocked = Keyring.unlock(backend)
        info["opened_with"] = unlocked.kek_source.description
        try:
            store_key = unlocked.store_key(backend)  # what each node pins (docs/cluster.md)
        except SecretfsError as exc:
            store_key, info["store_key_problem"] = None, str(exc)
        info["store_key"] = None if store_key is None else crypto.format_key_text(store_key)
        damaged = unlocked.damaged
        for gen, problem in damaged.items():
            for record in info["data_keys"]:
                if record["generation"] == gen:
                    record["problem"] = problem
        info["unlocks"] = True
    except SecretfsError as exc:
        info["unlocks"] = False
        error = exc
    return info, error


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode(errors="replace")


# -- KEK rotation --------------------------------------------------------------------------


def rotate_kek(vault: Vault, new_key: bytes | None, outcome: Outcome) -> None:
    """Give the store a new KEK: generated for a key-file store (or `new_key`), a new salt
    for a password store, `new_key` for a $SECRETFS_KEY store."""
    _require_whole(vault)
    kind = vault.kek_source.kind
    if kind == keys.KIND_NODE and vault.keyring.has_kek:
        # A node that also holds the store's key file: that key file is rotated.
        _rotate_key_file(vault, new_key or crypto.random_key(), outcome)
    elif kind == keys.KIND_NODE:
        raise UsageError(
            f"this host opens the store with {vault.kek_source.description}, not the"
            " key-encryption key: `key rotate` changes that key, so run it where the key is;"
            " `key rotate --reencrypt` (a new data key) works here"
        )
    elif kind == keys.KIND_KEY_FILE:
        _rotate_key_file(vault, new_key or crypto.random_key(), outcome)
    elif kind == keys.KIND_PASSWORD:
        if new_key is not None:
            raise UsageError(
                "this store's key comes from $SECRETFS_PASSWORD: `key rotate` gives it a new"
                " salt; change the password with `secretfs key passwd`"
            )
        salt, params = crypto.new_salt(), _kdf_params(vault.backend)
        kek = keys.kek_from_password(salt, params)
        _rewrap_in_one(vault, kek, outcome, "key-rotate", salt=salt, params=params)
        outcome.notes.append(
            "the key-encryption key was derived again from $SECRETFS_PASSWORD with a new salt"
        )
    else:
        if new_key is None:
            raise UsageError(
                "this store's key comes from $SECRETFS_KEY: give the new key with"
                " --new-key-from (env://VAR, file://PATH, cmd://COMMAND or - for stdin);"
                " generate one with `openssl rand -hex 32`"
            )
        _rewrap_in_one(vault, new_key, outcome, "key-rotate")
        outcome.notes.append(
            "the store now opens only with the new key: set $SECRETFS_KEY to it wherever the"
            " store is used (running mounts keep serving, but restart them with the new key"
            " before a `key rotate --reencrypt`)"
        )


def change_password(vault: Vault, password: bytes, outcome: Outcome) -> None:
    """A new password and a new salt for a password store, in one transaction."""
    if vault.kek_source.kind != keys.KIND_PASSWORD:
        raise UsageError(
            f"this store's key comes from {vault.kek_source.description}, not a password:"
            " `key passwd` is for stores opened with $SECRETFS_PASSWORD"
        )
    _require_whole(vault)
    salt, params = crypto.new_salt(), _kdf_params(vault.backend)
    kek = crypto.derive_kek(password, salt, params)
    _rewrap_in_one(vault, kek, outcome, "key-passwd", salt=salt, params=params)
    outcome.notes.append(
        "password changed: set $SECRETFS_PASSWORD to the new one wherever the store is used"
        " (running mounts keep serving, but restart them with the new password before a"
        " `key rotate --reencrypt`)"
    )


def _kdf_params(backend: Backend) -> crypto.KdfParams:
    """The store's Argon2id costs: a new salt or password keeps them."""
    raw = backend.meta_get("kdf_params")
    return crypto.KdfParams() if raw is None else crypto.KdfParams.from_json(raw.decode())


def _require_whole(vault: Vault) -> None:
    missing = vault.keyring.missing(vault.backend)
    if missing:
        raise IntegrityError(
            f"data key generation(s) {', '.join(map(str, missing))} cannot be unlocked, so they"
            " cannot be wrapped under a new key: restore the store from a backup first"
            " (`secretfs doctor` tells more)"
        )


def _rewrap_in_one(
    vault: Vault,
    kek: bytes,
    outcome: Outcome,
    action: str,
    *,
    salt: bytes | None = None,
    params: crypto.KdfParams | None = None,
) -> None:
    backend, keyring = vault.backend, vault.keyring
    with vault.recorded(action) as trail:
        now = time.time_ns()
        for gen, wrapped in keyring.wrapped_keys(kek).items():
            if gen in backend.data_keys():
                backend.put_data_key(gen, wrapped, now)
        backend.meta_set("kek_check", keyring.kek_check(kek))
        if salt is not None and params is not None:
            backend.meta_set("kdf_salt", salt)
            backend.meta_set("kdf_params", params.to_json().encode())
            backend.meta_set("kdf_check", crypto.kdf_record_digest(salt, params.to_json().encode()))
        trail.record(detail=f"{len(keyring.generations)} data key(s) re-wrapped")
    keyring.use_kek(kek)
    outcome.data["rewrapped"] = len(keyring.generations)


def _rotate_key_file(vault: Vault, new_kek: bytes, outcome: Outcome) -> None:
    backend = vault.backend
    key_path = _key_file(vault)
    _clean_leftovers(key_path, outcome)
    try:
        next_path = keys.write_next_key_file(key_path, new_kek)
    except (OSError, UsageError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise KeySourceError(
            f"cannot write a new key file beside {key_path}: {reason}; nothing was"
            " changed (a key file on a read-only volume is rotated where it is made)"
        ) from None
    checkpoint("kek:next-written")
    with vault.recorded("key-rotate") as trail:
        for gen, wrapped in vault.keyring.wrapped_keys(new_kek).items():
            backend.meta_set(f"{KEK_NEXT}{gen}", wrapped)
        backend.meta_set(KEK_NEXT_CHECK, vault.keyring.kek_check(new_kek))
        backend.meta_set(
            KEK_ROTATION,
            json.dumps({"next": str(next_path), "since_ns": time.time_ns()}).encode(),
        )
        trail.record(detail=f"new key prepared in {next_path}")
    checkpoint("kek:prepared")
    _install(key_path)
    checkpoint("kek:key-file-replaced")
    _commit_next(vault, new_kek)
    outcome.notes.append(
        f"new key-encryption key in {key_path}; {len(vault.keyring.generations)} data key(s)"
        " re-wrapped: back the new key file up (backups of the store from before now need"
        " the old key file)"
    )
    outcome.data["key_file"] = str(key_path)
    outcome.data["rewrapped"] = len(vault.keyring.generations)


def _key_file(vault: Vault) -> Path:
    """The key file itself: a symlink to it (a secrets volume) stays a symlink."""
    if vault.kek_source.kind == keys.KIND_NODE:
        return vault.backend.key_file().resolve()
    return Path(vault.kek_source.description).resolve()


def _commit_next(vault: Vault, new_kek: bytes | None) -> None:
    """The `.next` wrappings replace the old ones (`new_kek` None: the KEK held now)."""
    backend, keyring = vault.backend, vault.keyring
    with vault.recorded("key-rotate") as trail:
        gens = backend.data_keys()
        fresh = keyring.wrapped_keys(new_kek)
        for gen in gens:
            # A generation added since step 2 cannot happen under the key_op mark.
            wrapped = backend.meta_get(f"{KEK_NEXT}{gen}") or fresh[gen]
            backend.put_data_key(gen, wrapped, 0)
        check = backend.meta_get(KEK_NEXT_CHECK) or keyring.kek_check(new_kek)
        backend.meta_set("kek_check", check)
        _drop_next(backend)
        trail.record(detail=f"{len(gens)} data key(s) re-wrapped")
    if new_kek is not None:
        keyring.use_kek(new_kek)


def _install(key_path: Path) -> None:
    try:
        keys.install_next_key_file(key_path)
    except OSError as exc:
        raise KeySourceError(
            f"cannot put the new key in place of {key_path}: {exc.strerror}. The store opens"
            " with the old key file still; fix that and run `secretfs key rotate` again to"
            " finish"
        ) from None


def _drop_next(backend: Backend) -> None:
    for gen in backend.data_keys():
        backend.meta_delete(f"{KEK_NEXT}{gen}")
    backend.meta_delete(KEK_NEXT_CHECK)
    backend.meta_delete(KEK_ROTATION)


def _clean_leftovers(key_path: Path, outcome: Outcome) -> None:
    for leftover in keys.leftover_key_files(key_path):
        leftover.unlink(missing_ok=True)
        outcome.notes.append(f"removed {leftover}, left by an interrupted key rotation")


def finish_kek_rotation(vault: Vault, outcome: Outcome) -> bool:
    """Finish (or forget) a key-file KEK rotation that was killed; True if there was one."""
    backend = vault.backend
    if backend.meta_get(KEK_ROTATION) is None:
        return False
    key_path = _key_file(vault)
    next_check = backend.meta_get(KEK_NEXT_CHECK)
    if next_check and vault.keyring.kek_matches(next_check):
        # Killed after the new key file was put in place: only the store is behind.
        _commit_next(vault, None)
        outcome.notes.append(
            f"finished an interrupted key rotation: {key_path} holds the new key (back it up)"
        )
        return True
    next_path = keys.next_key_file_path(key_path)
    candidate: bytes | None = None
    if vault.kek_source.kind in (keys.KIND_KEY_FILE, keys.KIND_NODE):
        with contextlib.suppress(SecretfsError):
            candidate = keys.read_key_file(next_path)
    if candidate is not None and next_check and vault.keyring.kek_matches(next_check, candidate):
        _install(key_path)
        checkpoint("kek:key-file-replaced")
        _commit_next(vault, candidate)
        outcome.notes.append(
            f"finished an interrupted key rotation: {key_path} now holds the new key (back it up)"
        )
        return True
    with vault.recorded("key-rotate") as trail:
        _drop_next(backend)
        trail.record(detail="an interrupted rotation was undone")
    outcome.notes.append(
        f"undid an interrupted key rotation whose new key ({next_path}) was gone or did not"
        " match: the key is unchanged"
    )
    return True


# -- re-encryption -------------------------------------------------------------------------


def start_reencryption(vault: Vault, outcome: Outcome) -> int:
    """Add a data key generation, make it the active one, mark the re-encryption."""
    backend, keyring = vault.backend, vault.keyring
    _require_whole(vault)
    with vault.recorded("key-reencrypt") as trail:
        gen, wrapped = keyring.add_generation(list(backend.data_keys()))
        backend.put_data_key(gen, wrapped, time.time_ns())
        # Sealed to every live node in the same transaction: a mount learns the generation
        # (its watch, its next refresh) before any value sealed under it exists.
        sealed_to = _wrap_to_nodes(vault, gen, trail)
        if not wrapped and not sealed_to:
            raise KeySourceError(
                "this host has no key-encryption key and no enrolled node is live: the new"
                " data key would be sealed to nobody; nothing was changed"
            )
        backend.meta_set("active_gen", str(gen).encode())
        backend.meta_set(REENCRYPT, str(gen).encode())
        trail.record(detail=f"started: data key generation {gen}")
    keyring.sync_active(backend)
    outcome.notes.append(f"new data key generation {gen}; new writes use it from now on")
    checkpoint("reencrypt:started")
    return gen


def reencrypt(
    vault: Vault,
    target: int,
    outcome: Outcome,
    *,
    batch_size: int = DEFAULT_BATCH,
    progress: Progress | None = None,
) -> None:
    """Seal every version under generation `target`, `batch_size` per transaction, then
    delete the generations nothing uses any more."""
    backend, keyring = vault.backend, vault.keyring
    if not keyring.has(target):
        keyring.refresh(backend)
    if not keyring.has(target):
        raise KeySourceError(
            f"data key generation {target} (the re-encryption's target) cannot be unlocked"
        )
    total = backend.versions_not_under(target)
    done = 0
    damaged: list[str] = []
    for _attempt in range(3):
        after = (0, 0)
        while True:
            with backend.transaction():
                batch = backend.sealed_batch(target, after, batch_size)
                if not batch:
                    break
                touched: list[int] = []
                for sealed in batch:
                    try:
                        blob, fp = keyring.reseal(sealed, target)
                    except IntegrityError:
                        ref = Ref(Scope.from_key(sealed.scope), sealed.name)
                        damaged.append(f"{ref} v{sealed.version}")
                        continue
                    backend.reseal_version(sealed, target, blob, fp)
                    touched.append(sealed.secret_id)
                if touched:
                    # Same versions, new fingerprints: a mount picks up the new metadata.
                    backend.touch_secrets(sorted(set(touched)), backend.next_seq())
                after = (batch[-1].secret_id, batch[-1].version)
                done += len(touched)
            checkpoint("reencrypt:batch")
            if progress is not None:
                progress(done, max(total, done))
        if damaged or _finish_reencryption(vault, target, outcome):
            break
    if damaged:
        shown = ", ".join(damaged[:10]) + (
            f" and {len(damaged) - 10} more" if len(damaged) > 10 else ""
        )
        raise IntegrityError(
            f"{len(damaged)} version(s) do not decrypt and stay under their old data key:"
            f" {shown}. Remove them (`secretfs secret prune` or `secretfs secret rm`) or"
            " restore the store from a backup, then run `secretfs key rotate --reencrypt`"
            f" again to finish ({done} version(s) were re-encrypted)"
        )
    outcome.data["reencrypted"] = done
    outcome.data["generation"] = target


def _finish_reencryption(vault: Vault, target: int, outcome: Outcome) -> bool:
    """Delete the old generations, but only when no version uses them (else False)."""
    backend = vault.backend
    with vault.recorded("key-reencrypt") as trail:
        if backend.versions_not_under(target):
            return False  # written concurrently under an old generation: another pass
        old = sorted(g for g in backend.data_keys() if g != target)
        vault.auth.rekey()  # the metadata tags (node records' too) move to the new generation
        for gen in old:
            backend.delete_data_key(gen)
            backend.meta_delete(f"{STORE_KEY_PREFIX}{gen}")
            for key in backend.meta_scan(f"{NODE_WRAP_PREFIX}{gen}/"):
                backend.meta_delete(key)
        backend.meta_delete(REENCRYPT)
        trail.record(
            detail=f"done: generation {target}; removed generation(s)"
            f" {', '.join(map(str, old)) or 'none'}",
        )
    vault.keyring.drop(old)
    outcome.notes.append(
        f"every value is sealed under data key generation {target}"
        + (f"; removed generation(s) {', '.join(map(str, old))}" if old else "")
    )
    return True


# -- nodes (per-node keys: docs/cluster.md, "Nodes") --------------------------------------


def _live_nodes(vault: Vault, trail: AuditTrail) -> list[NodeRecord]:
    """Enrolled, not revoked, and authentic: the nodes data keys are sealed to. A record
    whose tag fails (written without the key) is named in `trail` and sealed to nobody."""
    out = []
    for node in list_nodes(vault.backend):
        if node.revoked_ns is not None:
            continue
        if not vault.auth.node_ok(node):
            trail.record(
                outcome="tamper",
                detail="node record fails authentication: not sealed to",
                action="node-tamper",
                on=node.node_id,
            )
            continue
        out.append(node)
    return out


def _wrap_to_nodes(vault: Vault, gen: int, trail: AuditTrail) -> list[str]:
    """Seal generation `gen` to every live node, from the store's key (wrapped under `gen`
    too, so a key holder of `gen` alone has it), inside `trail`'s transaction."""
    nodes = _live_nodes(vault, trail)
    if nodes or vault.backend.meta_scan(STORE_KEY_PREFIX):
        nodes_module.store_key(vault, trail)
    for node in nodes:
        vault.backend.meta_set(
            node_wrap_key(gen, node.node_id), vault.keyring.wrap_to_node(gen, node)
        )
    return [n.node_id for n in nodes]


def enroll_node(vault: Vault, public_key: bytes, label: str, outcome: Outcome) -> NodeRecord:
    """Record a node and seal every data key generation to it, in one transaction."""
    _require_whole(vault)
    backend, keyring = vault.backend, vault.keyring
    node_id = node_id_of(public_key)
    with vault.recorded("node-enroll", node_id) as trail:
        existing = next((n for n in list_nodes(backend) if n.node_id == node_id), None)
        if existing is not None and existing.revoked_ns is not None:
            raise ConflictError(
                f"node {node_id} was revoked: a revoked node key is never enrolled again;"
                " on that node, move its node key file away and run `secretfs node enroll`"
                " for a new one"
            )
        record = (
            existing
            if existing is not None and vault.auth.node_ok(existing)
            else NodeRecord(node_id, public_key, label, time.time_ns())
        )
        backend.meta_set(NODE_PREFIX + node_id, record.to_json())
        vault.auth.update(nodes=[record])
        store_key = nodes_module.store_key(vault, trail)
        for gen in keyring.generations:
            backend.meta_set(node_wrap_key(gen, node_id), keyring.wrap_to_node(gen, record))
        trail.record(detail=f"{len(keyring.generations)} data key generation(s) sealed to it")
    outcome.notes.append(
        (
            f"node {node_id} was enrolled already: its copies of the data keys were sealed again"
            if existing is not None
            else f"node {node_id} enrolled"
        )
        + f" ({len(keyring.generations)} data key generation(s) sealed to it)"
    )
    outcome.data.update(
        {
            "node_id": node_id,
            "generations": keyring.generations,
            "store_key": crypto.format_key_text(store_key),
        }
    )
    return record


def revoke_node(vault: Vault, node_id: str, outcome: Outcome) -> None:
    """Mark the node revoked and drop what was sealed to it (one transaction); the caller
    then re-encrypts (start_reencryption, reencrypt) so its old copies stop mattering."""
    backend = vault.backend
    with vault.recorded("node-revoke", node_id) as trail:
        node = next((n for n in list_nodes(backend) if n.node_id == node_id), None)
        if node is None:
            raise NotFoundError(f"no node {node_id} in {backend.name} (`secretfs node ls`)")
        if node.revoked_ns is None:
            revoked = dataclasses.replace(node, revoked_ns=time.time_ns(), tag=None)
            backend.meta_set(NODE_PREFIX + node_id, revoked.to_json())
            vault.auth.update(nodes=[revoked])
        for key in backend.meta_scan(NODE_WRAP_PREFIX):
            if key.endswith(f"/{node_id}"):
                backend.meta_delete(key)
        trail.record(detail="revoked; a new data key generation follows")
    outcome.notes.append(f"node {node_id} revoked: nothing is sealed to it any more")


__all__ = [
    "DEFAULT_BATCH",
    "Outcome",
    "change_password",
    "enroll_node",
    "finish_kek_rotation",
    "key_operation",
    "pending_reencryption",
    "reencrypt",
    "revoke_node",
    "rotate_kek",
    "start_reencryption",
    "status",
]

"""Removed secrets kept for a while (`secret rm`), brought back by `secret restore`.

What a removal keeps is what it deleted: each kept version's ciphertext (still sealed to
its secret, version and data key: nothing is decrypted) and metadata, the secret's owner,
mode, schedule and its own grants. It is kept in the store's meta records, through the
backend operations every backend has, for the store's `rm-retention` (default 7 days;
0 keeps nothing), then dropped by the next `rm` or `restore`. `rm --purge` keeps
nothing. A restore puts back the same version numbers, so a version number still never
names two values.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from secretfs.errors import ConflictError, IntegrityError, NotFoundError
from secretfs.refs import Ref
from secretfs.store import GrantRecord, SecretMeta
from secretfs.vault import Vault

RETENTION_META = "rm_retention_s"  # meta key: seconds a removed secret is kept
DEFAULT_RETENTION_S = 7 * 86400
_INDEX = "trash"  # meta key: JSON list of the kept removals
_PURPOSE = b"removed secret"
NS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Removed:
    """One kept removal (never a value)."""

    secret_id: int
    ref: str
    version: int
    removed_ns: int
    until_ns: int


def retention_s(vault: Vault) -> int:
    raw = vault.backend.meta_get(RETENTION_META)
    return DEFAULT_RETENTION_S if raw is None else int(raw)


def set_retention(vault: Vault, seconds: int) -> None:
    with vault.recorded("config") as trail:
        vault.backend.meta_set(RETENTION_META, str(seconds).encode())
        trail.record(detail=f"rm-retention {seconds}s")


def keep(vault: Vault, meta: SecretMeta, grants: list[GrantRecord], ref: Ref) -> int | None:
    """Before a removal: keep what it will delete; returns until when (None: not kept)."""
    seconds = retention_s(vault)
    if seconds <= 0:
        return None
    now = time.time_ns()
    backend = vault.backend
    versions = backend.history(meta.secret_id)
    digests: dict[str, str] = {}
    record: dict[str, Any] = {
        "ref": str(ref),
        "scope": meta.scope,
        "name": meta.name,
        "version": meta.version,
        "created_ns": meta.created_ns,
        "owner": [meta.uid, meta.gid, meta.mode],
        "schedule": [meta.expires_ns, meta.rotate_every_s],
        "grants": [[g.kind, g.principal, g.created_ns, g.form] for g in grants],
        "versions": [
            [v.version, v.created_ns, v.size, v.kind, v.key_gen, v.fingerprint] for v in versions
        ],
        "ciphertexts": digests,
        "removed_ns": now,
        "until_ns": now + seconds * NS,
    }
    with backend.transaction():
        _drop_expired(vault, now)
        _drop(vault, meta.secret_id)  # an older removal of the same secret: this one wins
        for v in versions:
            sealed = backend.sealed(meta.secret_id, v.version)
            if sealed is not None:
                backend.meta_set(_version_key(meta.secret_id, v.version), sealed.ciphertext)
                digests[str(v.version)] = hashlib.sha256(sealed.ciphertext).hexdigest()
        body = json.dumps(record, sort_keys=True).encode()
        tagged = {
            "record": body.decode(),
            "gen": vault.active_gen,
            "tag": vault.record_tag(_PURPOSE, body),
        }
        backend.meta_set(_key(meta.secret_id), json.dumps(tagged).encode())
        index = _index(vault)
        index.append(meta.secret_id)
        backend.meta_set(_INDEX, json.dumps(index).encode())
    return now + seconds * NS


def forget(vault: Vault, secret_id: int) -> None:
    """A removal that did not happen (refused after `keep`): keep nothing of it."""
    with vault.backend.transaction():
        _drop(vault, secret_id)


def listed(vault: Vault) -> list[Removed]:
    out = []
    for secret_id in _index(vault):
        record = _record(vault, secret_id)
        if record is not None and record["until_ns"] > time.time_ns():
            out.append(
                Removed(
                    secret_id,
                    record["ref"],
                    record["version"],
                    record["removed_ns"],
                    record["until_ns"],
                )
            )
    return out


def restore(vault: Vault, ref: Ref) -> SecretMeta:
    """Bring a removed secret back as it was: versions, owner, schedule, grants."""
    backend = vault.backend
    with backend.transaction():  # on its own: a refused restore still drops the expired
        _drop_expired(vault, time.time_ns())
    with vault.audited("restore", ref) as trail:
        current = backend.get_meta(ref.scope.key, ref.name)
        record = None if current is None else _record(vault, current.secret_id)
        if current is None or record is None:
            raise NotFoundError(
                f"no removed secret {ref} to restore (removed more than the store's"
                " rm-retention ago, removed with --purge, or never there)"
            )
        have = backend.data_keys()
        if any(v[4] not in have for v in record["versions"]):
            raise ConflictError(
                f"secret {ref} was removed before a `key rotate --reencrypt` retired its"
                " data key: it cannot be restored"
            )
        _check(vault, ref, record)
        if not current.deleted or current.version != record["version"]:
            raise ConflictError(
                f"secret {ref} was written again after it was removed (409): remove it"
                " first to restore the removed one"
            )
        sid = current.secret_id
        seq = backend.next_seq()
        backend.revive_secret(sid, record["created_ns"], seq)
        for version, created_ns, size, kind, key_gen, fingerprint in record["versions"]:
            ciphertext = backend.meta_get(_version_key(sid, version))
            digest = None if ciphertext is None else hashlib.sha256(ciphertext).hexdigest()
            if ciphertext is None or digest != record["ciphertexts"].get(str(version)):
                raise IntegrityError(f"the kept copy of {ref} version {version} was changed")
            backend.put_version(
                sid, version, created_ns=created_ns, size=size, kind=kind, key_gen=key_gen,
                fingerprint=fingerprint, ciphertext=ciphertext, seq=seq,
            )  # fmt: skip
        uid, gid, mode = record["owner"]
        backend.set_owner(sid, uid, gid, mode, seq)
        expires_ns, rotate_every_s = record["schedule"]
        backend.set_schedule(sid, expires_ns, rotate_every_s, seq)
        for kind, principal, created_ns, form in record["grants"]:
            backend.add_grant(ref.scope.key, ref.name, kind, principal, created_ns, seq, form)
        # The restored rows are tagged like any write (docs/security.md): unauthenticated,
        # the mount would serve the secret to nobody and ignore its grants.
        restored = [g for g in backend.list_grants(ref.scope.key, ref.name) if g.name == ref.name]
        vault.auth.update(secrets=[sid], added=restored)
        _drop(vault, sid)
        trail.record(record["version"])
    return vault.meta(ref)


def _drop_expired(vault: Vault, now_ns: int) -> None:
    for secret_id in _index(vault):
        record = _record(vault, secret_id)
        if record is None or record["until_ns"] <= now_ns:
            _drop(vault, secret_id)


def _drop(vault: Vault, secret_id: int) -> None:
    backend = vault.backend
    record = _record(vault, secret_id)
    for v in [] if record is None else record["versions"]:
        backend.meta_delete(_version_key(secret_id, v[0]))
    backend.meta_delete(_key(secret_id))
    index = _index(vault)
    if secret_id in index:
        index.remove(secret_id)
        if index:
            backend.meta_set(_INDEX, json.dumps(index).encode())
        else:
            backend.meta_delete(_INDEX)


def _index(vault: Vault) -> list[int]:
    raw = vault.backend.meta_get(_INDEX)
    return [] if raw is None else [int(i) for i in json.loads(raw)]


def _record(vault: Vault, secret_id: int) -> dict[str, Any] | None:
    """The kept record as stored (checked by _check before anything is restored)."""
    raw = vault.backend.meta_get(_key(secret_id))
    if raw is None:
        return None
    try:
        tagged = json.loads(raw)
        record = dict(json.loads(tagged["record"]))
    except (ValueError, KeyError, TypeError):
        return {"until_ns": 0, "versions": [], "_bad": True}  # dropped as expired
    record["_raw"], record["_tag"] = tagged["record"].encode(), tagged.get("tag")
    record["_gen"] = tagged.get("gen")
    return record


def _check(vault: Vault, ref: Ref, record: dict[str, Any]) -> None:
    gen = record.get("_gen")
    tag = None if not isinstance(gen, int) else vault.record_tag(_PURPOSE, record["_raw"], gen)
    if record.get("_bad") or tag is None or tag != record["_tag"]:
        raise IntegrityError(f"the kept copy of {ref} failed authentication: not restored")
    if record["scope"] != ref.scope.key or record["name"] != ref.name:
        raise IntegrityError(f"the kept copy of {ref} names another secret: not restored")


def _key(secret_id: int) -> str:
    return f"trash/{secret_id}"


def _version_key(secret_id: int, version: int) -> str:
    return f"trash/{secret_id}/{version}"

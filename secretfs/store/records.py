"""The record logic every backend shares: one owner for what a row means.

A backend keeps only its storage primitives. Here, backend-neutral:

- the argument shapes of `put_version` (`NewVersion`) and `read_audit` (`AuditQuery`);
- row mapping: a stored row (an SQLite row or a JSON record, both by field name) to the
  records of `secretfs.store`, and an audit record to its stored fields;
- audit filtering (`select_audit`) and which versions a prune drops (`versions_to_prune`);
- `KeyValueRecords`: the whole record logic over a few key-value primitives (committed
  reads by key and by prefix, the open transaction's writes), which the etcd and the
  in-memory backends implement.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import Any, Protocol, TypedDict, TypeVar, Unpack

import orjson

from secretfs.audit import AuditRecord
from secretfs.errors import IntegrityError, StoreError
from secretfs.store import (
    ClientKeyRecord,
    GrantRecord,
    ScopeMeta,
    SealedVersion,
    SecretMeta,
    VersionMeta,
)
from secretfs.testhooks import checkpoint


class NewVersion(TypedDict):
    """`put_version`'s keyword arguments: one new sealed version of a secret."""

    created_ns: int
    size: int
    kind: str
    key_gen: int
    fingerprint: str
    ciphertext: bytes
    seq: int


class AuditQuery(TypedDict, total=False):
    """`read_audit`'s filters: records after `after_id`, from `since_ns`, whose ref is one
    of `ref_exact` or starts with one of `ref_prefixes` (text, not patterns); `limit`."""

    after_id: int
    since_ns: int | None
    ref_exact: tuple[str, ...]
    ref_prefixes: tuple[str, ...]
    limit: int | None


# -- row mapping: a stored row by field name -> a record ----------------------------------


class Row(Protocol):
    """A stored row by field name: a dict (a JSON record) or an SQLite row."""

    def __getitem__(self, key: str, /) -> Any: ...

    def get(self, key: str, /) -> Any: ...


def _opt(value: Any) -> int | None:
    return None if value is None else int(value)


def secret_meta(row: Row) -> SecretMeta:
    """A secret's row: `SecretMeta`'s fields, `id` for secret_id."""
    return SecretMeta(
        secret_id=int(row["id"]),
        # A mount holds one of these per secret: share the few distinct strings.
        scope=sys.intern(str(row["scope"])),
        name=str(row["name"]),
        version=int(row["version"]),
        deleted=bool(row["deleted"]),
        size=int(row["size"]),
        kind=sys.intern(str(row["kind"])),
        created_ns=int(row["created_ns"]),
        updated_ns=int(row["updated_ns"]),
        uid=_opt(row["uid"]),
        gid=_opt(row["gid"]),
        mode=_opt(row["mode"]),
        fingerprint=str(row["fingerprint"]),
        seq=int(row["seq"]),
        expires_ns=_opt(row["expires_ns"]),
        rotate_every_s=_opt(row["rotate_every_s"]),
    )


def scope_meta(row: Row) -> ScopeMeta:
    return ScopeMeta(
        str(row["scope"]), _opt(row["uid"]), _opt(row["gid"]), _opt(row["mode"]), int(row["seq"])
    )


def grant_record(row: Row) -> GrantRecord:
    return GrantRecord(
        str(row["scope"]),
        str(row["name"]),
        str(row["kind"]),
        int(row["principal"]),
        int(row["created_ns"]),
        str(row.get("form") or "plain"),  # absent: a grant made before sealed reads
    )


def client_key_record(row: Row, public_key: bytes) -> ClientKeyRecord:
    """A client key's row; its public key decoded by the caller (bytes or base64)."""
    return ClientKeyRecord(
        str(row["key_id"]),
        public_key,
        str(row.get("label") or ""),
        _opt(row.get("owner_uid")),
        int(row["created_ns"]),
        _opt(row.get("revoked_ns")),
        _opt(row.get("last_used_ns")),
    )


def version_meta(row: Row) -> VersionMeta:
    return VersionMeta(
        int(row["version"]),
        int(row["created_ns"]),
        int(row["size"]),
        str(row["kind"]),
        int(row["key_gen"]),
        str(row["fingerprint"]),
    )


def sealed_version(row: Row, ciphertext: bytes) -> SealedVersion:
    return SealedVersion(
        int(row["secret_id"]),
        str(row["scope"]),
        str(row["name"]),
        int(row["version"]),
        int(row["key_gen"]),
        ciphertext,
    )


AUDIT_FIELDS = tuple(f.name for f in dataclasses.fields(AuditRecord) if f.name != "id")


def audit_row(record: AuditRecord) -> dict[str, Any]:
    """An audit record's stored fields (its id is the store's)."""
    return {name: getattr(record, name) for name in AUDIT_FIELDS}


def audit_record(row: Row) -> AuditRecord:
    def opt_str(value: Any) -> str | None:
        return None if value is None else str(value)

    return AuditRecord(
        time_ns=int(row["time_ns"]),
        source=str(row["source"]),
        action=str(row["action"]),
        ref=opt_str(row["ref"]),
        version=_opt(row["version"]),
        uid=_opt(row["uid"]),
        gid=_opt(row["gid"]),
        pid=_opt(row["pid"]),
        process=opt_str(row["process"]),
        outcome=str(row["outcome"]),
        detail=opt_str(row["detail"]),
        id=int(row["id"]),
    )


# -- audit filtering and pruning ------------------------------------------------------------


def audit_matches(record: AuditRecord, query: AuditQuery) -> bool:
    """Whether `record` passes `query`'s filters (its limit aside)."""
    if record.id <= query.get("after_id", 0):
        return False
    since_ns = query.get("since_ns")
    if since_ns is not None and record.time_ns < since_ns:
        return False
    exact, prefixes = query.get("ref_exact", ()), query.get("ref_prefixes", ())
    if not (exact or prefixes):
        return True
    ref = record.ref
    return ref is not None and (ref in exact or any(ref.startswith(p) for p in prefixes))


def select_audit(records: Iterable[AuditRecord], query: AuditQuery) -> list[AuditRecord]:
    """The records (in id order) that pass `query`, up to its limit."""
    limit = query.get("limit")
    out: list[AuditRecord] = []
    for record in records:
        if limit is not None and len(out) >= limit:
            break
        if audit_matches(record, query):
            out.append(record)
    return out


def local_status(backend: str, name: str, seq: int) -> dict[str, Any]:
    """`ChangeFeed.status()` of a store read where it is kept: always connected, current."""
    return {
        "backend": backend,
        "store": name,
        "connected": True,
        "last_revision": seq,
        "stale_since": None,
    }


def versions_to_prune(versions: Iterable[int], keep: int) -> list[int]:
    """Which versions a prune to the newest `keep` drops (never the current, newest one)."""
    ordered = sorted(versions)
    return ordered[: max(0, len(ordered) - max(1, keep))]


# -- the record logic over key-value primitives ---------------------------------------------


def damaged(key: bytes, why: str, what: str = "record") -> IntegrityError:
    return IntegrityError(
        f"{what} {key.decode(errors='replace')} is damaged ({why}); `secretfs doctor`"
        " checks every record; restore the store from its backup (docs/operations.md)"
    )


def damaged_fields(key: bytes, what: str = "record") -> IntegrityError:
    """A record whose fields are missing or of the wrong type: what every backend's row
    parser raises, so the message is one."""
    return damaged(key, "fields are missing or of the wrong type", what)


_R = TypeVar("_R")


def parsed_record(key: bytes, raw: bytes, parse: Callable[[Row], _R], what: str = "record") -> _R:
    """`parse` of a JSON record; a damaged one (not JSON, or fields missing or of the
    wrong type) is an IntegrityError naming its key (never its content)."""
    try:
        return parse(json_record(key, raw, what))
    except (KeyError, TypeError, ValueError):
        raise damaged_fields(key, what) from None


def json_record(key: bytes, raw: bytes, what: str = "record") -> Any:
    """A JSON record as stored; a damaged one is an IntegrityError naming its key (never
    its content)."""
    try:
        # orjson: ~4x json's speed (a mount parses every row at its load: 100k rows, ~0.6 s
        # saved); it refuses what is not UTF-8 too, as a damaged record.
        return orjson.loads(raw)
    except ValueError:
        raise damaged(key, "not valid JSON", what) from None


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


class RecordsBase:
    """What every backend's records share above their storage."""

    def add_grant(
        self,
        scope: str,
        name: str,
        kind: str,
        principal: int,
        created_ns: int,
        seq: int,
        form: str = "plain",
    ) -> bool:
        """Add a grant; False if it was there already (nothing changes then)."""
        return self._add_grant(GrantRecord(scope, name, kind, principal, created_ns, form), seq)

    def _add_grant(self, grant: GrantRecord, seq: int) -> bool:
        raise NotImplementedError


class KeyValueRecords(RecordsBase):
    """The store's records as keys under one prefix, JSON values (layout: etcd/records.py).

    A subclass provides the storage: `_prefix`, committed reads (`_read`,
    `_read_prefix`), the open transaction's writes (`_pending`) and `name`; every
    record operation of the backend contract is here, once.
    """

    _prefix: bytes
    _txn: Any = None  # the open transaction, of the backend's own kind (_begin)
    RECORD_NAME = "record"  # how a damaged record is named in messages

    @property
    def name(self) -> str:
        raise NotImplementedError

    def _begin(self) -> Any:
        """A transaction opening: what its reads and writes start from."""
        raise NotImplementedError

    def _commit(self, txn: Any) -> None:
        """Write all of `txn`, or none of it (and raise)."""
        raise NotImplementedError

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction: all of it commits, or none of it."""
        if self._txn is not None:
            raise StoreError("internal: a transaction inside a transaction")
        self._txn = txn = self._begin()
        try:
            yield
        finally:
            self._txn = None
        checkpoint("before-commit")
        self._commit(txn)
        checkpoint("after-commit")

    def _pending(self) -> dict[bytes, bytes | None] | None:
        """The open transaction's writes (None: a deletion); None outside one."""
        raise NotImplementedError

    def _read(self, key: bytes) -> bytes | None:
        """A committed value, as the open transaction or snapshot sees the store."""
        raise NotImplementedError

    def _read_prefix(self, prefix: bytes) -> dict[bytes, bytes]:
        """Every committed key under `prefix`, as `_read` sees them."""
        raise NotImplementedError

    def _get(self, key: bytes) -> bytes | None:
        pending = self._pending()
        if pending is not None and key in pending:
            return pending[key]
        return self._read(key)

    def _scan(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        """Every key under `prefix` and its value, sorted, this transaction's writes in."""
        found = self._read_prefix(prefix)
        for key, value in (self._pending() or {}).items():
            if key.startswith(prefix):
                if value is None:
                    found.pop(key, None)
                else:
                    found[key] = value
        return sorted(found.items())

    def _writes(self) -> dict[bytes, bytes | None]:
        pending = self._pending()
        if pending is None:
            raise StoreError("internal: a write to the store outside a transaction")
        return pending

    def _put(self, key: bytes, value: bytes) -> None:
        self._writes()[key] = value

    def _delete(self, key: bytes) -> None:
        self._writes()[key] = None

    # -- keys and JSON --------------------------------------------------------------------

    def _key(self, *parts: str) -> bytes:
        return self._prefix + "/".join(parts).encode()

    def _record(self, key: bytes, raw: bytes) -> Any:
        return json_record(key, raw, self.RECORD_NAME)

    def _get_json(self, key: bytes) -> dict[str, Any] | None:
        raw = self._get(key)
        return None if raw is None else dict(self._record(key, raw))

    def _put_json(self, key: bytes, value: dict[str, Any]) -> None:
        # Compact, keys sorted: as json.dumps(separators=(",", ":"), sort_keys=True) wrote
        # them (for these records of strings, integers and None), about 10x as fast.
        self._put(key, orjson.dumps(value, option=orjson.OPT_SORT_KEYS))

    # -- meta ----------------------------------------------------------------------------

    def meta_get(self, key: str) -> bytes | None:
        return self._get(self._key("d/meta", key))

    def meta_set(self, key: str, value: bytes) -> None:
        self._put(self._key("d/meta", key), value)

    def meta_delete(self, key: str) -> None:
        self._delete(self._key("d/meta", key))

    def meta_scan(self, prefix: str) -> dict[str, bytes]:
        """Every meta entry whose key starts with `prefix`."""
        base = self._key("d/meta", "")
        return {k[len(base) :].decode(): v for k, v in self._scan(self._key("d/meta", prefix))}

    def _counter(self, key: str) -> int:
        value = self.meta_get(key)
        return int(value) if value else 0

    def next_seq(self) -> int:
        seq = self._counter("seq") + 1
        self.meta_set("seq", str(seq).encode())
        return seq

    def current_seq(self) -> int:
        return self._counter("seq")

    def _access_changed(self, seq: int) -> None:
        # Grants are deleted outright, so a mount watches this mark, not their records.
        self.meta_set("access_seq", str(seq).encode())

    def access_seq(self) -> int:
        return self._counter("access_seq")

    # -- data keys -----------------------------------------------------------------------

    def _dk_key(self, gen: int) -> bytes:
        return self._key("d/dk", f"{gen:010d}")

    def data_keys(self) -> dict[int, bytes]:
        out = {}
        for key, raw in self._scan(self._key("d/dk/")):
            out[int(key.rsplit(b"/", 1)[1])] = unb64(self._record(key, raw)["wrapped"])
        return out

    def put_data_key(self, gen: int, wrapped: bytes, created_ns: int) -> None:
        old = self._get_json(self._dk_key(gen))
        created = int(old["created_ns"]) if old else created_ns
        self._put_json(self._dk_key(gen), {"wrapped": b64(wrapped), "created_ns": created})

    def delete_data_key(self, gen: int) -> None:
        self._delete(self._dk_key(gen))

    def data_key_info(self) -> list[tuple[int, int, int]]:
        counts: dict[int, int] = {}
        for version in self._versions(self._key("d/v/")):
            counts[version["key_gen"]] = counts.get(version["key_gen"], 0) + 1
        out = []
        for key, raw in self._scan(self._key("d/dk/")):
            gen = int(key.rsplit(b"/", 1)[1])
            out.append((gen, int(self._record(key, raw)["created_ns"]), counts.get(gen, 0)))
        return out

    # -- secrets -------------------------------------------------------------------------

    def _row_key(self, scope: str, name: str) -> bytes:
        return self._key("d/s/") + scope.encode() + b"\0" + name.encode()

    def _id_key(self, secret_id: int) -> bytes:
        return self._key("d/id", f"{secret_id:012d}")

    def _version_key(self, secret_id: int, version: int) -> bytes:
        return self._key("d/v", f"{secret_id:012d}", f"{version:012d}")

    def _versions_prefix(self, secret_id: int) -> bytes:
        return self._key("d/v", f"{secret_id:012d}") + b"/"

    def _row(self, secret_id: int) -> dict[str, Any] | None:
        where = self._get(self._id_key(secret_id))
        if where is None:
            return None
        scope, _, name = where.decode().partition("\0")
        return self._get_json(self._row_key(scope, name))

    def _secret_meta(self, key: bytes, raw: bytes) -> SecretMeta:
        return parsed_record(key, raw, secret_meta, self.RECORD_NAME)

    def _metas(self, scope: str | None = None) -> list[SecretMeta]:
        prefix = self._key("d/s/")
        if scope is not None:
            prefix += scope.encode() + b"\0"
        return [self._secret_meta(key, raw) for key, raw in self._scan(prefix)]

    def _put_row(self, row: dict[str, Any]) -> None:
        self._put_json(self._row_key(row["scope"], row["name"]), row)

    def _row_or_fail(self, secret_id: int) -> dict[str, Any]:
        row = self._row(secret_id)
        if row is None:
            raise StoreError(f"{self.name}: secret #{secret_id} has no record")
        return row

    def get_meta(self, scope: str, name: str) -> SecretMeta | None:
        key = self._row_key(scope, name)
        raw = self._get(key)
        return None if raw is None else self._secret_meta(key, raw)

    def get_meta_by_id(self, secret_id: int) -> SecretMeta | None:
        where = self._get(self._id_key(secret_id))
        if where is None:
            return None
        scope, _, name = where.decode().partition("\0")
        return self.get_meta(scope, name)

    def list_meta(self, scope: str | None = None) -> list[SecretMeta]:
        metas = [m for m in self._metas(scope) if not m.deleted]
        return sorted(metas, key=lambda m: (m.scope, m.name))

    def changes_since(self, seq: int) -> list[SecretMeta]:
        return sorted((m for m in self._metas() if m.seq > seq), key=lambda m: m.seq)

    def list_scopes(self) -> list[str]:
        return sorted({m.scope for m in self._metas() if not m.deleted})

    def add_secret(self, scope: str, name: str, created_ns: int, seq: int) -> int:
        secret_id = self._counter("next_id") + 1
        self.meta_set("next_id", str(secret_id).encode())
        self._put(self._id_key(secret_id), f"{scope}\0{name}".encode())
        self._put_row(
            {
                "id": secret_id,
                "scope": scope,
                "name": name,
                "version": 0,
                "deleted": False,
                "created_ns": created_ns,
                "updated_ns": created_ns,
                "size": 0,
                "kind": "raw",
                "fingerprint": "",
                "uid": None,
                "gid": None,
                "mode": None,
                "expires_ns": None,
                "rotate_every_s": None,
                "seq": seq,
            }
        )
        return secret_id

    def revive_secret(self, secret_id: int, created_ns: int, seq: int) -> None:
        row = self._row_or_fail(secret_id)
        row.update(
            deleted=False,
            created_ns=created_ns,
            updated_ns=created_ns,
            uid=None,
            gid=None,
            mode=None,
            expires_ns=None,
            rotate_every_s=None,
            seq=seq,
        )
        self._put_row(row)

    def put_version(self, secret_id: int, version: int, **new: Unpack[NewVersion]) -> None:
        """A new version (`NewVersion`'s fields), which becomes the current one."""
        row = self._row_or_fail(secret_id)
        key = self._version_key(secret_id, version)
        if self._get(key) is not None:
            raise StoreError(f"{self.name}: secret #{secret_id} has a version {version}")
        record: dict[str, Any] = {k: v for k, v in new.items() if k != "seq"}
        record.update(scope=row["scope"], name=row["name"], ciphertext=b64(new["ciphertext"]))
        self._put_json(key, record)
        row.update(
            version=version,
            seq=new["seq"],
            size=new["size"],
            kind=new["kind"],
            updated_ns=new["created_ns"],
            fingerprint=new["fingerprint"],
        )
        self._put_row(row)

    def set_owner(
        self, secret_id: int, uid: int | None, gid: int | None, mode: int | None, seq: int
    ) -> None:
        row = self._row_or_fail(secret_id)
        row.update(uid=uid, gid=gid, mode=mode, seq=seq)
        self._put_row(row)

    def set_schedule(
        self, secret_id: int, expires_ns: int | None, rotate_every_s: int | None, seq: int
    ) -> None:
        row = self._row_or_fail(secret_id)
        row.update(expires_ns=expires_ns, rotate_every_s=rotate_every_s, seq=seq)
        self._put_row(row)

    def remove_secret(self, secret_id: int, seq: int) -> None:
        """Drop every version; keep a tombstone so versions are never numbered twice."""
        for key, _ in self._scan(self._versions_prefix(secret_id)):
            self._delete(key)
        row = self._row_or_fail(secret_id)
        row.update(
            deleted=True, seq=seq, size=0, kind="raw", fingerprint="", updated_ns=row["created_ns"]
        )
        self._put_row(row)

    def _versions(self, prefix: bytes) -> Iterator[dict[str, Any]]:
        """Version records (with `secret_id` and `version` added)."""
        for key, raw in self._scan(prefix):
            record = self._record(key, raw)
            _, sid, ver = key.rsplit(b"/", 2)
            record["secret_id"], record["version"] = int(sid), int(ver)
            yield record

    def history(self, secret_id: int) -> list[VersionMeta]:
        return [version_meta(v) for v in self._versions(self._versions_prefix(secret_id))]

    @staticmethod
    def _sealed(v: dict[str, Any]) -> SealedVersion:
        return sealed_version(v, unb64(v["ciphertext"]))

    def sealed(self, secret_id: int, version: int) -> SealedVersion | None:
        record = self._get_json(self._version_key(secret_id, version))
        if record is None:
            return None
        record.update(secret_id=secret_id, version=version)
        return self._sealed(record)

    def all_sealed(self) -> Iterator[SealedVersion]:
        for v in self._versions(self._key("d/v/")):
            yield self._sealed(v)

    def prune_versions(self, secret_id: int, keep: int) -> list[int]:
        """Delete all but the newest `keep` versions (the current one is the newest)."""
        versions = [v["version"] for v in self._versions(self._versions_prefix(secret_id))]
        gone = versions_to_prune(versions, keep)
        for version in gone:
            self._delete(self._version_key(secret_id, version))
        return gone

    def secrets_over(self, keep: int) -> list[int]:
        counts: dict[int, int] = {}
        for v in self._versions(self._key("d/v/")):
            counts[v["secret_id"]] = counts.get(v["secret_id"], 0) + 1
        return sorted(sid for sid, n in counts.items() if n > keep)

    def versions_not_under(self, gen: int) -> int:
        return sum(1 for v in self._versions(self._key("d/v/")) if v["key_gen"] != gen)

    def sealed_batch(self, not_gen: int, after: tuple[int, int], limit: int) -> list[SealedVersion]:
        out = []
        for v in self._versions(self._key("d/v/")):
            if v["key_gen"] != not_gen and (v["secret_id"], v["version"]) > after:
                out.append(self._sealed(v))
                if len(out) >= limit:
                    break
        return out

    def reseal_version(
        self, old: SealedVersion, new_gen: int, ciphertext: bytes, fingerprint: str
    ) -> None:
        key = self._version_key(old.secret_id, old.version)
        record = self._get_json(key)
        if record is None or int(record["key_gen"]) != old.key_gen:
            return
        record.update(key_gen=new_gen, ciphertext=b64(ciphertext), fingerprint=fingerprint)
        self._put_json(key, record)
        row = self._row(old.secret_id)
        if row is not None and int(row["version"]) == old.version:
            row["fingerprint"] = fingerprint
            self._put_row(row)

    def touch_secrets(self, secret_ids: list[int], seq: int) -> None:
        for secret_id in secret_ids:
            row = self._row_or_fail(secret_id)
            row["seq"] = seq
            self._put_row(row)

    # -- scope defaults and grants --------------------------------------------------------

    def _scope_meta(self, key: bytes, raw: bytes) -> ScopeMeta:
        return parsed_record(key, raw, scope_meta, self.RECORD_NAME)

    def get_scope_meta(self, scope: str) -> ScopeMeta | None:
        key = self._key("d/sc/") + scope.encode()
        raw = self._get(key)
        return None if raw is None else self._scope_meta(key, raw)

    def list_scope_meta(self) -> list[ScopeMeta]:
        metas = [self._scope_meta(key, raw) for key, raw in self._scan(self._key("d/sc/"))]
        return sorted(metas, key=lambda m: m.scope)

    def set_scope_owner(
        self, scope: str, uid: int | None, gid: int | None, mode: int | None, seq: int
    ) -> None:
        self._put_json(
            self._key("d/sc/") + scope.encode(),
            {"scope": scope, "uid": uid, "gid": gid, "mode": mode, "seq": seq},
        )
        self._access_changed(seq)

    def _grant_key(self, scope: str, name: str, kind: str, principal: int) -> bytes:
        return self._key("d/g/") + f"{scope}\0{name}\0{kind}\0{principal}".encode()

    def list_grants(self, scope: str | None = None, name: str | None = None) -> list[GrantRecord]:
        prefix = self._key("d/g/")
        if scope is not None:
            prefix += scope.encode() + b"\0"
            if name is not None:
                prefix += name.encode() + b"\0"
        out = [grant_record(self._record(key, raw)) for key, raw in self._scan(prefix)]
        return sorted(out, key=lambda g: (g.scope, g.name, g.kind, g.principal))

    def _add_grant(self, grant: GrantRecord, seq: int) -> bool:
        key = self._grant_key(grant.scope, grant.name, grant.kind, grant.principal)
        if self._get(key) is not None:
            return False
        self._put_json(key, {**dataclasses.asdict(grant), "seq": seq})
        self._access_changed(seq)
        return True

    def remove_grant(self, grant: GrantRecord, seq: int) -> bool:
        key = self._grant_key(grant.scope, grant.name, grant.kind, grant.principal)
        if self._get(key) is None:
            return False
        self._delete(key)
        self._access_changed(seq)
        return True

    # -- client keys ---------------------------------------------------------------------

    @staticmethod
    def _client_key(d: dict[str, Any]) -> ClientKeyRecord:
        return client_key_record(d, unb64(d["public_key"]))

    def list_client_keys(self) -> list[ClientKeyRecord]:
        keys = [self._client_key(self._record(k, raw)) for k, raw in self._scan(self._key("d/ck/"))]
        return sorted(keys, key=lambda k: (k.created_ns, k.key_id))

    def _put_client_key(self, record: ClientKeyRecord, seq: int) -> None:
        fields = dataclasses.asdict(record)
        fields.update(public_key=b64(record.public_key), seq=seq)
        self._put_json(self._key("d/ck", record.key_id), fields)

    def add_client_key(self, record: ClientKeyRecord, seq: int) -> None:
        self._put_client_key(record, seq)
        self._access_changed(seq)

    def revoke_client_key(self, key_id: str, revoked_ns: int, seq: int) -> bool:
        d = self._get_json(self._key("d/ck", key_id))
        if d is None or d.get("revoked_ns") is not None:
            return False
        self._put_client_key(replace(self._client_key(d), revoked_ns=revoked_ns), seq)
        self._access_changed(seq)
        return True

    def touch_client_keys(self, used: dict[str, int]) -> None:
        for key_id, ns in used.items():
            d = self._get_json(self._key("d/ck", key_id))
            if d is not None and ns > (_opt(d.get("last_used_ns")) or 0):
                self._put_client_key(
                    replace(self._client_key(d), last_used_ns=ns), int(d.get("seq", 0))
                )

    # -- consistency (doctor) ---------------------------------------------------------------

    def foreign_key_problems(self) -> int:
        """Versions of no secret, or sealed under a data key the store does not have."""
        gens = set(self.data_keys())
        ids = {int(key.rsplit(b"/", 1)[1]) for key, _ in self._scan(self._key("d/id/"))}
        return sum(
            1
            for v in self._versions(self._key("d/v/"))
            if v["secret_id"] not in ids or v["key_gen"] not in gens
        )

    def integrity_check(self) -> str:
        """`ok`, or which record does not parse (meta, ids and the lock are not JSON)."""
        for key, raw in self._scan(self._key("d/")):
            if key.startswith((self._key("d/meta/"), self._key("d/id/"))):
                continue
            if key == self._key("d/lock"):
                continue
            try:
                json.loads(raw)
            except ValueError:
                return f"record {key.decode(errors='replace')} is not valid JSON"
        return "ok"

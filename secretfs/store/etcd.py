"""The etcd v3 backend: the SQLite backend's rows as keys under one prefix.

etcd holds only what SQLite holds: sealed, row-bound ciphertext and metadata. Keys
never leave the nodes. We talk to etcd through its JSON gateway (`/v3/kv/range`,
`/v3/kv/txn`, `/v3/watch`, keys and values base64) with httpx.

Layout, under the store's prefix P (e.g. `/secretfs/`):

    P d/meta/<k>                         meta values (store id, wrapped-key checks, seq...)
    P d/dk/<gen>                         a wrapped data key
    P d/s/<scope>\\0<name>                a secret's row (JSON; its current version's size,
                                          kind, time and fingerprint copied in)
    P d/id/<id>                          <scope>\\0<name> of secret <id>
    P d/v/<id>/<version>                 a sealed version (JSON, ciphertext base64)
    P d/sc/<scope>                       a scope's owner and mode defaults
    P d/g/<scope>\\0<name>\\0<kind>\\0<id>  a grant (its "form" absent: "plain")
    P d/ck/<key_id>                      a client key (sealed reads; public key base64)
    P d/lock                             bumped by every write: the commit compares on it
    P a/<time>-<random>                  a batch of audit records (never compared on)

A transaction reads at the revision where it began (a snapshot) with its own writes
laid over, and commits as ONE etcd Txn that compares the mod_revision of `d/lock` with
what it was at the start: any other write in between makes it fail with
WriteConflictError, and nothing is written. Writers are serialized optimistically, so
two admins rotating one secret at once make two versions, never a lost update.

A mount calls `follow()`: every `d/` key is copied into memory once and kept current
by a watch from the last revision seen; reads are then answered from memory and never
wait on etcd. A health thread reads `d/lock` every second: it says whether the cluster
answers (the status file), and restarts a watch that fell behind.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

from secretfs.audit import AuditRecord
from secretfs.errors import IntegrityError, StoreError, StoreExistsError, WriteConflictError
from secretfs.store import (
    ClientKeyRecord,
    GrantRecord,
    ScopeMeta,
    SealedVersion,
    SecretMeta,
    VersionMeta,
)
from secretfs.store.location import EtcdLocation, key_file_path
from secretfs.testhooks import checkpoint
from secretfs.timeutil import iso_time

log = logging.getLogger(__name__)
# httpx logs every request at INFO: noise in a mount's log, so only its warnings.
logging.getLogger("httpx").setLevel(logging.WARNING)

ENV_TIMEOUT = "SECRETFS_ETCD_TIMEOUT"
ENV_CACERT = "SECRETFS_ETCD_CACERT"
ENV_CERT = "SECRETFS_ETCD_CERT"
ENV_CERT_KEY = "SECRETFS_ETCD_KEY"
DEFAULT_TIMEOUT = 2.0  # seconds for one request; a cluster without quorum fails this fast
CONNECT_TIMEOUT = 1.0
HEALTH_SECONDS = 1.0  # how often a mount checks that the cluster answers
RETRY_SECONDS = 0.5  # between attempts to re-establish a broken watch
# Cancel a watch (and fail a request) on a member that has lost its leader, rather
# than leave it silently waiting: the gateway passes this on as gRPC metadata.
_LEADER = {"Grpc-Metadata-hasleader": "true"}


def _record(key: bytes, raw: bytes) -> Any:
    """A JSON record as stored; a damaged one is an IntegrityError naming its key (never
    its content)."""
    try:
        return json.loads(raw)
    except ValueError:
        raise _damaged(key, "not valid JSON") from None


def _damaged(key: bytes, why: str) -> IntegrityError:
    return IntegrityError(
        f"etcd record {key.decode(errors='replace')} is damaged ({why}); `secretfs doctor`"
        " checks every record; restore the store from its backup (docs/cluster.md)"
    )


class CompactedError(StoreError):
    """A read at a revision etcd has compacted away."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def prefix_end(prefix: bytes) -> bytes:
    """The first key after every key that starts with `prefix`."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


def _timeout() -> float:
    raw = os.environ.get(ENV_TIMEOUT)
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        raise StoreError(f"${ENV_TIMEOUT}={raw!r} is not a number of seconds") from None
    if not 0 < value <= 600:
        raise StoreError(f"${ENV_TIMEOUT} must be between 0 and 600 seconds")
    return value


class Gateway:
    """etcd's JSON gateway on each endpoint in turn: the one that answered last first."""

    def __init__(self, location: EtcdLocation, timeout: float | None = None) -> None:
        self.location = location
        self.timeout = _timeout() if timeout is None else timeout
        self._urls = location.urls()
        self._good = 0
        # Plain etcd:// speaks only http:// (no redirects followed): no TLS context to
        # build, which saves loading the CA bundle (~0.1 s) on every CLI command.
        verify: bool | str = (os.environ.get(ENV_CACERT) or True) if location.tls else False
        cert = os.environ.get(ENV_CERT)
        key = os.environ.get(ENV_CERT_KEY)
        self._client = httpx.Client(
            timeout=httpx.Timeout(self.timeout, connect=min(CONNECT_TIMEOUT, self.timeout)),
            verify=verify,
            cert=(cert, key) if cert and key else cert or None,
            trust_env=False,  # never through an HTTP proxy
            headers=_LEADER,
        )
        self._watch_lock = threading.Lock()
        self._watch_response: httpx.Response | None = None

    def close(self) -> None:
        self.stop_watch()
        self._client.close()

    def _order(self) -> list[int]:
        n = len(self._urls)
        return [(self._good + i) % n for i in range(n)]

    def call(self, path: str, body: dict[str, Any], *, write: bool = False) -> dict[str, Any]:
        """POST to the first endpoint that answers; StoreError naming every one tried.

        A write that reached a member but got no answer is not sent again (it may have
        been applied): that is an error of its own.
        """
        problems: list[str] = []
        for index in self._order():
            url = self._urls[index]
            try:
                response = self._client.post(url + path, json=body)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                problems.append(f"{url}: cannot connect ({_reason(exc)})")
                continue
            except httpx.TimeoutException:
                if write:
                    raise StoreError(
                        f"etcd at {url} did not confirm the write within {self.timeout:g}s"
                        " (no quorum?): it may or may not have been applied; check with"
                        " `secretfs history` before writing again"
                    ) from None
                problems.append(f"{url}: no answer within {self.timeout:g}s (no quorum?)")
                continue
            except httpx.HTTPError as exc:
                if write:
                    raise StoreError(
                        f"etcd at {url} broke off during the write ({_reason(exc)}): it may or"
                        " may not have been applied"
                    ) from None
                problems.append(f"{url}: {_reason(exc)}")
                continue
            try:
                data = response.json()
            except ValueError:
                problems.append(f"{url}: HTTP {response.status_code}, not an etcd answer")
                continue
            if response.status_code != 200:
                message = str(data.get("message") or data.get("error") or response.status_code)
                if "compacted" in message:
                    raise CompactedError(f"etcd: {message}")
                if "too many operations" in message:
                    raise StoreError(
                        f"etcd refused the write: {message} (raise the cluster's"
                        " --max-txn-ops, or write fewer secrets at once)"
                    )
                if "request is too large" in message:
                    raise StoreError(
                        f"etcd refused the write: {message} (raise the cluster's"
                        " --max-request-bytes, or lower the store's max value size)"
                    )
                if write and "no leader" not in message:
                    raise StoreError(f"etcd at {url}: {message}")
                problems.append(f"{url}: {message}")
                continue
            self._good = index
            return dict(data)
        raise StoreError(
            f"cannot reach the etcd cluster of {self.location}: " + "; ".join(problems)
        )

    def range(
        self, key: bytes, end: bytes | None = None, *, revision: int = 0
    ) -> tuple[list[dict[str, Any]], int]:
        body: dict[str, Any] = {"key": _b64(key)}
        if end is not None:
            body["range_end"] = _b64(end)
        if revision:
            body["revision"] = str(revision)
        data = self.call("/v3/kv/range", body)
        return list(data.get("kvs", [])), int(data["header"]["revision"])

    def watch(
        self, key: bytes, end: bytes, start_revision: int
    ) -> Generator[dict[str, Any], None, None]:
        """The watch's results, from the first endpoint that takes it; StoreError when
        none does, or when the stream breaks."""
        body = {
            "create_request": {
                "key": _b64(key),
                "range_end": _b64(end),
                "start_revision": str(start_revision),
            }
        }
        problems: list[str] = []
        for index in self._order():
            url = self._urls[index]
            timeout = httpx.Timeout(None, connect=CONNECT_TIMEOUT)
            try:
                with self._client.stream(
                    "POST", url + "/v3/watch", json=body, timeout=timeout
                ) as response:
                    if response.status_code != 200:
                        problems.append(f"{url}: HTTP {response.status_code}")
                        continue
                    with self._watch_lock:
                        self._watch_response = response
                    self._good = index
                    for line in response.iter_lines():
                        if not line.strip():
                            continue
                        message = json.loads(line)
                        if "error" in message:
                            error = message["error"]
                            raise StoreError(f"etcd watch at {url}: {error.get('message', error)}")
                        yield dict(message.get("result", {}))
            except httpx.HTTPError as exc:
                problems.append(f"{url}: {_reason(exc)}")
                if self._watch_response is not None:
                    break  # it was established, then broke: the caller decides what next
                continue
            finally:
                with self._watch_lock:
                    self._watch_response = None
            problems.append(f"{url}: the watch ended")
            break
        raise StoreError(f"etcd watch on {self.location}: " + "; ".join(problems))

    def stop_watch(self) -> None:
        """Break the current watch stream (from another thread)."""
        with self._watch_lock:
            response = self._watch_response
        if response is not None:
            with contextlib.suppress(Exception):
                response.close()


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text[:200] if text else type(exc).__name__


@dataclass(slots=True)
class _Txn:
    revision: int  # reads see the store as of here
    lock_revision: int  # mod_revision of d/lock then (0: never written)
    writes: dict[bytes, bytes | None] = field(default_factory=dict)  # None: delete


@dataclass(slots=True)
class _Follow:
    """A mount's in-memory copy of every `d/` key and how current it is."""

    kv: dict[bytes, bytes]
    revision: int  # the watch resumes after this
    version: int = 0  # bumped on every change: data_version()
    watching: bool = False
    reachable: bool = True
    stale_since: float | None = None
    problem: str | None = None
    lag: int = 0
    threads: list[threading.Thread] = field(default_factory=list)


def _opt(value: Any) -> int | None:
    return None if value is None else int(value)


class EtcdBackend:
    """A secretfs store under one key prefix of an etcd v3 cluster."""

    def __init__(self, location: EtcdLocation, gateway: Gateway | None = None) -> None:
        self.location = location
        self._gw = gateway if gateway is not None else Gateway(location)
        self._p = location.key_prefix
        self._txn: _Txn | None = None
        self._snapshot_rev: int | None = None
        self._follow: _Follow | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()

    # -- opening -------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return str(self.location)

    def key_file(self) -> Path:
        return key_file_path(self.location)

    @classmethod
    def open(cls, location: EtcdLocation) -> EtcdBackend:
        backend = cls(location)
        try:
            if backend.meta_get("store_id") is None:
                raise StoreError(
                    f"no secretfs store at {location}: run `secretfs init --store {location}`"
                )
        except BaseException:
            backend.close()
            raise
        return backend

    @classmethod
    def exists(cls, location: EtcdLocation) -> bool:
        backend = cls(location)
        try:
            return backend.meta_get("store_id") is not None
        finally:
            backend.close()

    @classmethod
    def create(cls, location: EtcdLocation, init: Callable[[EtcdBackend], None]) -> None:
        """Create the store in one transaction; refused if one exists at the prefix."""
        backend = cls(location)
        try:
            with backend.transaction():
                if backend._scan(backend._p):
                    raise StoreExistsError(
                        f"a store already exists at {location} (or other keys are under"
                        f" {location.key_prefix.decode()}): choose another prefix"
                    )
                init(backend)
        except WriteConflictError:
            raise StoreError(f"another `secretfs init` created {location} first") from None
        finally:
            backend.close()

    def open_another(self) -> EtcdBackend:
        return EtcdBackend(self.location)

    def close(self) -> None:
        self._stop.set()
        self._gw.close()
        watch_gw: Gateway | None = getattr(self, "_watch_gw", None)
        if watch_gw is not None:
            watch_gw.stop_watch()
        follow = self._follow
        if follow is not None:
            for thread in follow.threads:
                thread.join(timeout=2)

    # -- raw keys ------------------------------------------------------------------------

    def _key(self, *parts: str) -> bytes:
        return self._p + "/".join(parts).encode()

    def _read_revision(self) -> int:
        if self._txn is not None:
            return self._txn.revision
        return self._snapshot_rev or 0

    def _local(self) -> bool:
        return self._follow is not None and self._txn is None and self._snapshot_rev is None

    def _remote_range(self, key: bytes, end: bytes | None) -> list[dict[str, Any]]:
        try:
            return self._gw.range(key, end, revision=self._read_revision())[0]
        except CompactedError:
            if self._txn is None:
                raise
            raise WriteConflictError(
                f"{self.location} changed too much during this write (its history was"
                " compacted under it); nothing was written: retry"
            ) from None

    def _get(self, key: bytes) -> bytes | None:
        txn = self._txn
        if txn is not None and key in txn.writes:
            return txn.writes[key]
        if self._local():
            assert self._follow is not None
            with self._lock:
                return self._follow.kv.get(key)
        kvs = self._remote_range(key, None)
        return _unb64(kvs[0].get("value")) if kvs else None

    def _scan(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        if self._local():
            assert self._follow is not None
            with self._lock:
                found = {k: v for k, v in self._follow.kv.items() if k.startswith(prefix)}
        else:
            kvs = self._remote_range(prefix, prefix_end(prefix))
            found = {_unb64(kv["key"]): _unb64(kv.get("value")) for kv in kvs}
        if self._txn is not None:
            for key, value in self._txn.writes.items():
                if key.startswith(prefix):
                    if value is None:
                        found.pop(key, None)
                    else:
                        found[key] = value
        return sorted(found.items())

    def _put(self, key: bytes, value: bytes) -> None:
        if self._txn is None:
            raise StoreError("internal: a write to the store outside a transaction")
        self._txn.writes[key] = value

    def _delete(self, key: bytes) -> None:
        if self._txn is None:
            raise StoreError("internal: a write to the store outside a transaction")
        self._txn.writes[key] = None

    def _get_json(self, key: bytes) -> dict[str, Any] | None:
        raw = self._get(key)
        return None if raw is None else dict(_record(key, raw))

    def _put_json(self, key: bytes, value: dict[str, Any]) -> None:
        self._put(key, json.dumps(value, separators=(",", ":"), sort_keys=True).encode())

    # -- transactions --------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction: all of it commits (one etcd Txn), or none of it."""
        if self._txn is not None:
            raise StoreError("internal: a transaction inside a transaction")
        lock = self._key("d/lock")
        kvs, revision = self._gw.range(lock)
        lock_rev = int(kvs[0].get("mod_revision", 0)) if kvs else 0
        self._txn = txn = _Txn(revision, lock_rev)
        try:
            yield
        finally:
            self._txn = None
        checkpoint("before-commit")
        self._commit(txn)
        checkpoint("after-commit")

    def _commit(self, txn: _Txn) -> None:
        if not txn.writes:
            return
        ops: list[dict[str, Any]] = []
        for key, value in txn.writes.items():
            if value is None:
                ops.append({"request_delete_range": {"key": _b64(key)}})
            else:
                ops.append({"request_put": {"key": _b64(key), "value": _b64(value)}})
        compare: list[dict[str, Any]] = []
        data = self._p + b"d/"
        if any(k.startswith(data) for k in txn.writes):
            # Audit records alone are appended blindly; anything else serializes on d/lock.
            lock = self._key("d/lock")
            stamp = f"{time.time_ns()} {os.getpid()}".encode()
            ops.append({"request_put": {"key": _b64(lock), "value": _b64(stamp)}})
            compare.append(
                {
                    "key": _b64(lock),
                    "target": "MOD",
                    "result": "EQUAL",
                    "mod_revision": str(txn.lock_revision),
                }
            )
        answer = self._gw.call(
            "/v3/kv/txn", {"compare": compare, "success": ops, "failure": []}, write=True
        )
        if not answer.get("succeeded"):
            raise WriteConflictError(
                f"another writer changed {self.location} during this write; nothing was"
                " written: retry"
            )

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """Every read inside sees one committed state (one etcd revision)."""
        if self._txn is not None or self._snapshot_rev is not None:
            yield
            return
        _, revision = self._gw.range(self._key("d/lock"))
        self._snapshot_rev = revision
        try:
            yield
        finally:
            self._snapshot_rev = None

    # -- meta ----------------------------------------------------------------------------

    def meta_get(self, key: str) -> bytes | None:
        return self._get(self._key("d/meta", key))

    def meta_set(self, key: str, value: bytes) -> None:
        self._put(self._key("d/meta", key), value)

    def meta_delete(self, key: str) -> None:
        self._delete(self._key("d/meta", key))

    def _counter(self, key: str) -> int:
        value = self.meta_get(key)
        return int(value) if value else 0

    def next_seq(self) -> int:
        seq = self._counter("seq") + 1
        self.meta_set("seq", str(seq).encode())
        return seq

    def current_seq(self) -> int:
        return self._counter("seq")

    def data_version(self) -> int:
        if self._follow is not None:
            with self._lock:
                return self._follow.version
        return self._gw.range(self._key("d/lock"))[1]

    def _access_changed(self, seq: int) -> None:
        self.meta_set("access_seq", str(seq).encode())

    def access_seq(self) -> int:
        return self._counter("access_seq")

    # -- data keys -----------------------------------------------------------------------

    def _dk_key(self, gen: int) -> bytes:
        return self._key("d/dk", f"{gen:010d}")

    def data_keys(self) -> dict[int, bytes]:
        out = {}
        for key, raw in self._scan(self._key("d/dk/")):
            out[int(key.rsplit(b"/", 1)[1])] = _unb64(_record(key, raw)["wrapped"])
        return out

    def put_data_key(self, gen: int, wrapped: bytes, created_ns: int) -> None:
        old = self._get_json(self._dk_key(gen))
        created = int(old["created_ns"]) if old else created_ns
        self._put_json(self._dk_key(gen), {"wrapped": _b64(wrapped), "created_ns": created})

    def delete_data_key(self, gen: int) -> None:
        self._delete(self._dk_key(gen))

    def data_key_info(self) -> list[tuple[int, int, int]]:
        counts: dict[int, int] = {}
        for version in self._versions(self._key("d/v/")):
            counts[version["key_gen"]] = counts.get(version["key_gen"], 0) + 1
        out = []
        for key, raw in self._scan(self._key("d/dk/")):
            gen = int(key.rsplit(b"/", 1)[1])
            out.append((gen, int(_record(key, raw)["created_ns"]), counts.get(gen, 0)))
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

    def _put_row(self, row: dict[str, Any]) -> None:
        self._put_json(self._row_key(row["scope"], row["name"]), row)

    def _row_or_fail(self, secret_id: int) -> dict[str, Any]:
        row = self._row(secret_id)
        if row is None:
            raise StoreError(f"{self.location}: secret #{secret_id} has no record")
        return row

    @staticmethod
    def _meta(row: dict[str, Any]) -> SecretMeta:
        return SecretMeta(
            secret_id=int(row["id"]),
            scope=str(row["scope"]),
            name=str(row["name"]),
            version=int(row["version"]),
            deleted=bool(row["deleted"]),
            size=int(row["size"]),
            kind=str(row["kind"]),
            created_ns=int(row["created_ns"]),
            updated_ns=int(row["updated_ns"]),
            uid=_opt(row.get("uid")),
            gid=_opt(row.get("gid")),
            mode=_opt(row.get("mode")),
            fingerprint=str(row["fingerprint"]),
            seq=int(row["seq"]),
            expires_ns=_opt(row.get("expires_ns")),
            rotate_every_s=_opt(row.get("rotate_every_s")),
        )

    def _rows(self, scope: str | None = None) -> list[dict[str, Any]]:
        prefix = self._key("d/s/")
        if scope is not None:
            prefix += scope.encode() + b"\0"
        return [_record(key, raw) for key, raw in self._scan(prefix)]

    def get_meta(self, scope: str, name: str) -> SecretMeta | None:
        row = self._get_json(self._row_key(scope, name))
        return None if row is None else self._meta(row)

    def get_meta_by_id(self, secret_id: int) -> SecretMeta | None:
        row = self._row(secret_id)
        return None if row is None else self._meta(row)

    def list_meta(self, scope: str | None = None) -> list[SecretMeta]:
        metas = [self._meta(r) for r in self._rows(scope) if not r["deleted"]]
        return sorted(metas, key=lambda m: (m.scope, m.name))

    def changes_since(self, seq: int) -> list[SecretMeta]:
        metas = [self._meta(r) for r in self._rows() if int(r["seq"]) > seq]
        return sorted(metas, key=lambda m: m.seq)

    def list_scopes(self) -> list[str]:
        return sorted({str(r["scope"]) for r in self._rows() if not r["deleted"]})

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

    def put_version(
        self,
        secret_id: int,
        version: int,
        *,
        created_ns: int,
        size: int,
        kind: str,
        key_gen: int,
        fingerprint: str,
        ciphertext: bytes,
        seq: int,
    ) -> None:
        row = self._row_or_fail(secret_id)
        key = self._version_key(secret_id, version)
        if self._get(key) is not None:
            raise StoreError(f"{self.location}: secret #{secret_id} has a version {version}")
        self._put_json(
            key,
            {
                "scope": row["scope"],
                "name": row["name"],
                "created_ns": created_ns,
                "size": size,
                "kind": kind,
                "key_gen": key_gen,
                "fingerprint": fingerprint,
                "ciphertext": _b64(ciphertext),
            },
        )
        row.update(
            version=version,
            seq=seq,
            size=size,
            kind=kind,
            updated_ns=created_ns,
            fingerprint=fingerprint,
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
        """Version records (with `secret_id`, `version` and raw `ciphertext` added)."""
        for key, raw in self._scan(prefix):
            record = _record(key, raw)
            _, sid, ver = key.rsplit(b"/", 2)
            record["secret_id"], record["version"] = int(sid), int(ver)
            yield record

    def history(self, secret_id: int) -> list[VersionMeta]:
        return [
            VersionMeta(
                int(v["version"]),
                int(v["created_ns"]),
                int(v["size"]),
                str(v["kind"]),
                int(v["key_gen"]),
                str(v["fingerprint"]),
            )
            for v in self._versions(self._versions_prefix(secret_id))
        ]

    @staticmethod
    def _sealed(v: dict[str, Any]) -> SealedVersion:
        return SealedVersion(
            int(v["secret_id"]),
            str(v["scope"]),
            str(v["name"]),
            int(v["version"]),
            int(v["key_gen"]),
            _unb64(v["ciphertext"]),
        )

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
        gone = sorted(versions)[: max(0, len(versions) - max(1, keep))]
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
        record.update(key_gen=new_gen, ciphertext=_b64(ciphertext), fingerprint=fingerprint)
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

    @staticmethod
    def _scope_meta(key: bytes, raw: bytes) -> ScopeMeta:
        d = _record(key, raw)
        try:
            return ScopeMeta(
                str(d["scope"]), _opt(d["uid"]), _opt(d["gid"]), _opt(d["mode"]), int(d["seq"])
            )
        except (KeyError, TypeError, ValueError):
            raise _damaged(key, "fields are missing or of the wrong type") from None

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
        out = []
        for key, raw in self._scan(prefix):
            d = _record(key, raw)
            out.append(
                GrantRecord(
                    str(d["scope"]),
                    str(d["name"]),
                    str(d["kind"]),
                    int(d["principal"]),
                    int(d["created_ns"]),
                    str(d.get("form", "plain")),
                )
            )
        return sorted(out, key=lambda g: (g.scope, g.name, g.kind, g.principal))

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
        key = self._grant_key(scope, name, kind, principal)
        if self._get(key) is not None:
            return False
        self._put_json(
            key,
            {
                "scope": scope,
                "name": name,
                "kind": kind,
                "principal": principal,
                "created_ns": created_ns,
                "seq": seq,
                "form": form,
            },
        )
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

    def _client_key(self, d: dict[str, Any]) -> ClientKeyRecord:
        return ClientKeyRecord(
            str(d["key_id"]),
            _unb64(d["public_key"]),
            str(d.get("label", "")),
            _opt(d.get("owner_uid")),
            int(d["created_ns"]),
            _opt(d.get("revoked_ns")),
            _opt(d.get("last_used_ns")),
        )

    def list_client_keys(self) -> list[ClientKeyRecord]:
        keys = [self._client_key(_record(k, raw)) for k, raw in self._scan(self._key("d/ck/"))]
        return sorted(keys, key=lambda k: (k.created_ns, k.key_id))

    def _put_client_key(self, record: ClientKeyRecord, seq: int) -> None:
        self._put_json(
            self._key("d/ck", record.key_id),
            {
                "key_id": record.key_id,
                "public_key": _b64(record.public_key),
                "label": record.label,
                "owner_uid": record.owner_uid,
                "created_ns": record.created_ns,
                "revoked_ns": record.revoked_ns,
                "last_used_ns": record.last_used_ns,
                "seq": seq,
            },
        )

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

    # -- audit ---------------------------------------------------------------------------

    def append_audit(self, records: list[AuditRecord]) -> None:
        if not records:
            return
        batch = [
            {
                "time_ns": r.time_ns,
                "source": r.source,
                "action": r.action,
                "ref": r.ref,
                "version": r.version,
                "uid": r.uid,
                "gid": r.gid,
                "pid": r.pid,
                "process": r.process,
                "outcome": r.outcome,
                "detail": r.detail,
            }
            for r in records
        ]
        key = self._key("a", f"{time.time_ns():020d}-{os.urandom(6).hex()}")
        self._put(key, json.dumps(batch, separators=(",", ":")).encode())

    def read_audit(
        self,
        *,
        after_id: int = 0,
        since_ns: int | None = None,
        ref_exact: tuple[str, ...] = (),
        ref_prefixes: tuple[str, ...] = (),
        limit: int | None = None,
    ) -> list[AuditRecord]:
        """Records after `after_id`, oldest first. A record's id is the etcd revision of
        its batch times 10000 plus its place in the batch."""
        prefix = self._key("a/")
        kvs, _ = self._gw.range(prefix, prefix_end(prefix))
        out: list[AuditRecord] = []
        for kv in kvs:
            base = int(kv["mod_revision"]) * 10000
            for index, d in enumerate(json.loads(_unb64(kv.get("value")))):
                record = AuditRecord(
                    time_ns=int(d["time_ns"]),
                    source=str(d["source"]),
                    action=str(d["action"]),
                    ref=d["ref"],
                    version=_opt(d["version"]),
                    uid=_opt(d["uid"]),
                    gid=_opt(d["gid"]),
                    pid=_opt(d["pid"]),
                    process=d["process"],
                    outcome=str(d["outcome"]),
                    detail=d["detail"],
                    id=base + index,
                )
                if record.id <= after_id:
                    continue
                if since_ns is not None and record.time_ns < since_ns:
                    continue
                if ref_exact or ref_prefixes:
                    ref = record.ref or ""
                    if record.ref is None or not (
                        ref in ref_exact or any(ref.startswith(p) for p in ref_prefixes)
                    ):
                        continue
                out.append(record)
        out.sort(key=lambda r: r.id)
        return out if limit is None else out[:limit]

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
        for key, raw in self._scan(self._key("d/")):
            if key.startswith(self._key("d/meta/")) or key == self._key("d/lock"):
                continue
            if key.startswith(self._key("d/id/")):
                continue
            try:
                json.loads(raw)
            except ValueError:
                return f"record {key.decode(errors='replace')} is not valid JSON"
        return "ok"

    # -- a mount: an in-memory copy kept current by a watch ---------------------------------

    def follow(self) -> None:
        """Load every `d/` key, then keep the copy current from a watch (a thread), and
        check the cluster every HEALTH_SECONDS (another). Reads are then local."""
        if self._follow is not None:
            return
        kv, revision = self._load_all()
        self._follow = _Follow(kv, revision)
        for target, name in ((self._watch_loop, "watch"), (self._health_loop, "health")):
            thread = threading.Thread(target=target, name=f"secretfs-etcd-{name}", daemon=True)
            self._follow.threads.append(thread)
            thread.start()

    def _load_all(self) -> tuple[dict[bytes, bytes], int]:
        prefix = self._key("d/")
        kvs, revision = self._gw.range(prefix, prefix_end(prefix))
        return {_unb64(kv["key"]): _unb64(kv.get("value")) for kv in kvs}, revision

    def _resync(self) -> None:
        kv, revision = self._load_all()
        assert self._follow is not None
        with self._lock:
            self._follow.kv = kv
            self._follow.revision = revision
            self._follow.version += 1
        log.info("etcd: reloaded %d keys of %s at revision %d", len(kv), self.location, revision)

    def _watch_loop(self) -> None:
        follow = self._follow
        assert follow is not None
        prefix = self._key("d/")
        watch_gw = Gateway(self.location, timeout=self._gw.timeout)
        self._watch_gw = watch_gw
        try:
            while not self._stop.is_set():
                try:
                    self._watch_once(watch_gw, follow, prefix)
                except StoreError as exc:
                    self._set_watching(False, str(exc))
                if self._stop.wait(RETRY_SECONDS):
                    break
        finally:
            watch_gw.close()

    def _watch_once(self, gw: Gateway, follow: _Follow, prefix: bytes) -> None:
        results = gw.watch(prefix, prefix_end(prefix), follow.revision + 1)
        with contextlib.closing(results):
            self._apply_watch(results, follow)

    def _apply_watch(self, results: Iterator[dict[str, Any]], follow: _Follow) -> None:
        for result in results:
            if self._stop.is_set():
                return
            compacted = int(result.get("compact_revision", 0) or 0)
            if compacted or result.get("canceled"):
                reason = result.get("cancel_reason") or f"compacted at revision {compacted}"
                log.warning("etcd watch on %s ended (%s): reloading in full", self.location, reason)
                self._resync()
                return
            if result.get("created"):
                self._set_watching(True, None)
            events = result.get("events") or []
            if not events:
                continue
            with self._lock:
                for event in events:
                    kv = event["kv"]
                    key = _unb64(kv["key"])
                    if event.get("type") == "DELETE":
                        follow.kv.pop(key, None)
                    else:
                        follow.kv[key] = _unb64(kv.get("value"))
                    follow.revision = max(follow.revision, int(kv.get("mod_revision", 0)))
                follow.version += 1

    def _health_loop(self) -> None:
        follow = self._follow
        assert follow is not None
        gw = Gateway(self.location, timeout=min(self._gw.timeout, HEALTH_SECONDS))
        lock = self._key("d/lock")
        try:
            while not self._stop.wait(HEALTH_SECONDS):
                try:
                    kvs, _ = gw.range(lock)
                except StoreError as exc:
                    self._set_reachable(False, str(exc))
                    continue
                self._set_reachable(True, None)
                written = int(kvs[0].get("mod_revision", 0)) if kvs else 0
                with self._lock:
                    behind = written > follow.revision
                    follow.lag = follow.lag + 1 if behind else 0
                    lag = follow.lag
                if lag >= 2:
                    # Writes went on that the watch did not bring: start it again.
                    log.warning("etcd watch on %s fell behind: restarting it", self.location)
                    with self._lock:
                        follow.lag = 0
                    watch_gw = getattr(self, "_watch_gw", None)
                    if watch_gw is not None:
                        watch_gw.stop_watch()
        finally:
            gw.close()

    def _set_watching(self, watching: bool, problem: str | None) -> None:
        self._update(lambda f: setattr(f, "watching", watching), problem)

    def _set_reachable(self, reachable: bool, problem: str | None) -> None:
        self._update(lambda f: setattr(f, "reachable", reachable), problem)

    def _update(self, change: Callable[[_Follow], None], problem: str | None) -> None:
        follow = self._follow
        assert follow is not None
        with self._lock:
            was = follow.watching and follow.reachable
            change(follow)
            now = follow.watching and follow.reachable
            if problem is not None:
                follow.problem = problem
            if now:
                follow.problem = None
            if was and not now:
                follow.stale_since = time.time()
            elif now:
                follow.stale_since = None
            revision = follow.revision
        if was and not now:
            log.warning(
                "etcd cluster of %s unreachable: serving the last state seen (revision %d): %s",
                self.location,
                revision,
                problem,
            )
        elif now and not was:
            log.info(
                "etcd cluster of %s answers: following from revision %d", self.location, revision
            )

    def status(self) -> dict[str, Any]:
        follow = self._follow
        if follow is None:
            return {"backend": "etcd", "store": self.name, "connected": None}
        with self._lock:
            stale = follow.stale_since
            return {
                "backend": "etcd",
                "store": self.name,
                "connected": follow.watching and follow.reachable,
                "last_revision": follow.revision,
                "stale_since": None if stale is None else iso_time(int(stale * 1e9)),
                "problem": follow.problem,
            }

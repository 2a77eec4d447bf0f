"""The storage backend contract: what the vault, the daemon and the CLI ask of a store.

Four parts, each a Protocol; a caller that needs one part is typed with that part:

    Records           secrets, versions, scopes, grants, client keys, data keys, meta,
                      in transactions and snapshots
    AuditLog          append, read (filtered), compact, prune
    ChangeFeed        what a mount follows: data_version, changes_since, follow, status
    ConsistencyChecks what `doctor` asks of the store's own structure

`Backend` is all four. Three implementations: `SqliteBackend` (one file, the embedded
default), `EtcdBackend` (an etcd v3 cluster) and `MemoryBackend` (this process only:
tests, and a `Vault` without a file). The record logic they share is store/records.py.
They hold the same sealed, row-bound records and metadata; none ever sees a key or a
plaintext. Every write method runs inside `transaction()`; a backend whose writers can
collide (etcd, memory) raises `WriteConflictError` from the end of the transaction, and
the vault retries. A backend raises only `SecretfsError`s (StoreError for its own
failures), never its driver's exceptions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol, Unpack

from secretfs.audit import AuditRecord
from secretfs.clock import SYSTEM, Clock
from secretfs.store import (
    ClientKeyRecord,
    GrantRecord,
    ScopeMeta,
    SealedVersion,
    SecretMeta,
    VersionMeta,
)
from secretfs.store.records import AuditQuery, NewVersion


class Following(Protocol):
    """What keeps a followed copy current: each of `loops()` runs on a thread of its own,
    owned by whoever follows (the daemon: children of its nursery), until `stop()`."""

    def loops(self) -> Sequence[Callable[[], None]]: ...

    def stop(self) -> None: ...


class Records(Protocol):
    """Rows in, rows out. Every write method runs inside `transaction()`."""

    @property
    def name(self) -> str:
        """The store as its user names it (a path or a URL), for messages."""
        ...

    def key_file(self) -> Path:
        """Where this store's key file is when neither $SECRETFS_KEY nor a password is used."""
        ...

    def open_another(self) -> Backend:
        """A second, independent handle on the same store (the mount's audit writer)."""
        ...

    def close(self) -> None: ...

    def transaction(self) -> AbstractContextManager[None]: ...

    def snapshot(self) -> AbstractContextManager[None]: ...

    def write_batch(self, sizes: list[int]) -> int:
        """How many of these new values (their sizes, in order) one transaction may
        write (at least 1): all of them where a transaction has no bound (SQLite)."""
        ...

    def prefetch_secrets(self, refs: list[tuple[str, str]]) -> None:
        """Inside a transaction or snapshot: read what writing these (scope, name)
        secrets will read, in few round trips. A hint; a no-op where reads are local."""
        ...

    # -- meta and counters ----------------------------------------------------------------

    def meta_get(self, key: str) -> bytes | None: ...

    def meta_set(self, key: str, value: bytes) -> None: ...

    def meta_delete(self, key: str) -> None: ...

    def meta_scan(self, prefix: str) -> dict[str, bytes]:
        """Every meta entry whose key starts with `prefix` (the metadata tags)."""
        ...

    def next_seq(self) -> int: ...

    def current_seq(self) -> int: ...

    def access_seq(self) -> int: ...

    # -- data keys ------------------------------------------------------------------------

    def data_keys(self) -> dict[int, bytes]: ...

    def put_data_key(self, gen: int, wrapped: bytes, created_ns: int) -> None: ...

    def delete_data_key(self, gen: int) -> None: ...

    def data_key_info(self) -> list[tuple[int, int, int]]: ...

    # -- secrets and versions -------------------------------------------------------------

    def get_meta(self, scope: str, name: str) -> SecretMeta | None: ...

    def get_meta_by_id(self, secret_id: int) -> SecretMeta | None: ...

    def list_meta(self, scope: str | None = None) -> list[SecretMeta]: ...

    def list_scopes(self) -> list[str]: ...

    def add_secret(self, scope: str, name: str, created_ns: int, seq: int) -> int: ...

    def revive_secret(self, secret_id: int, created_ns: int, seq: int) -> None: ...

    def put_version(self, secret_id: int, version: int, **new: Unpack[NewVersion]) -> None:
        """A new version (`NewVersion`'s fields), which becomes the secret's current one."""
        ...

    def set_owner(
        self, secret_id: int, uid: int | None, gid: int | None, mode: int | None, seq: int
    ) -> None: ...

    def set_schedule(
        self, secret_id: int, expires_ns: int | None, rotate_every_s: int | None, seq: int
    ) -> None: ...

    def remove_secret(self, secret_id: int, seq: int) -> None: ...

    def history(self, secret_id: int) -> list[VersionMeta]: ...

    def sealed(self, secret_id: int, version: int) -> SealedVersion | None: ...

    def all_sealed(self) -> Iterator[SealedVersion]: ...

    def prune_versions(self, secret_id: int, keep: int) -> list[int]: ...

    def secrets_over(self, keep: int) -> list[int]: ...

    def versions_not_under(self, gen: int) -> int: ...

    def sealed_batch(
        self, not_gen: int, after: tuple[int, int], limit: int
    ) -> list[SealedVersion]: ...

    def reseal_version(
        self, old: SealedVersion, new_gen: int, ciphertext: bytes, fingerprint: str
    ) -> None: ...

    def touch_secrets(self, secret_ids: list[int], seq: int) -> None: ...

    # -- scope defaults and grants ---------------------------------------------------------

    def get_scope_meta(self, scope: str) -> ScopeMeta | None: ...

    def list_scope_meta(self) -> list[ScopeMeta]: ...

    def set_scope_owner(
        self, scope: str, uid: int | None, gid: int | None, mode: int | None, seq: int
    ) -> None: ...

    def list_grants(
        self, scope: str | None = None, name: str | None = None
    ) -> list[GrantRecord]: ...

    def add_grant(
        self,
        scope: str,
        name: str,
        kind: str,
        principal: int,
        created_ns: int,
        seq: int,
        form: str = "plain",
    ) -> bool: ...

    def remove_grant(self, grant: GrantRecord, seq: int) -> bool: ...

    # -- client keys (sealed reads; secretfs/sealing.py) -----------------------------------

    def list_client_keys(self) -> list[ClientKeyRecord]: ...

    def add_client_key(self, record: ClientKeyRecord, seq: int) -> None: ...

    def revoke_client_key(self, key_id: str, revoked_ns: int, seq: int) -> bool: ...

    def touch_client_keys(self, used: dict[str, int]) -> None:
        """Set last_used_ns of each key id to its time (never moving it back)."""
        ...


class AuditLog(Protocol):
    """Who did or tried what, never a value: appended in the write's own transaction."""

    def append_audit(self, records: list[AuditRecord]) -> None:
        """Inside `transaction()`: these records, committed with the write."""
        ...

    def read_audit(self, **query: Unpack[AuditQuery]) -> list[AuditRecord]:
        """The records that pass `query` (store/records.py), oldest first."""
        ...

    def compact_audit(self, before_ns: int) -> int:
        """Merge what the store keeps of the records before `before_ns` into fewer
        entries, every record and its id unchanged; how many entries went (0: nothing
        to merge)."""
        ...

    def prune_audit(self, before_ns: int, *, dry_run: bool = False) -> int:
        """Delete the records older than `before_ns` (`audit prune`, audit-max-age); how
        many. Called inside `transaction()`; etcd commits its deletes in Txns of its own."""
        ...


class ChangeFeed(Protocol):
    """What a mount follows to see the store change."""

    def data_version(self) -> int:
        """Changes whenever the store changes: a cheap poll."""
        ...

    def changes_since(self, seq: int) -> list[SecretMeta]:
        """Every secret (removed ones included) changed after `seq`, oldest change first."""
        ...

    def follow(self, clock: Clock = SYSTEM) -> Following | None:
        """Serve reads from a copy kept current in memory (a mount): reads never wait on
        the network. What keeps it current is for the caller to run; None where reads
        are local already."""
        ...

    def status(self) -> dict[str, Any]:
        """backend, connected, last_revision, stale_since: the mount's status file."""
        ...


class ConsistencyChecks(Protocol):
    """The store's structure, for `doctor` (no key needed)."""

    def foreign_key_problems(self) -> int:
        """Versions of no secret, or sealed under a data key the store does not have."""
        ...

    def integrity_check(self) -> str:
        """`ok`, or the first problem found in the store's own structure."""
        ...


class Backend(Records, AuditLog, ChangeFeed, ConsistencyChecks, Protocol):
    """The whole contract, for callers that need every part (the vault, the daemon)."""

"""The storage backend protocol: what the vault, the daemon and the CLI ask of a store.

Two implementations: `SqliteBackend` (one file, the embedded default) and
`EtcdBackend` (an etcd v3 cluster). Both hold the same sealed, row-bound records and
metadata; neither ever sees a key or a plaintext. Every write method runs inside
`transaction()`; a backend whose writers can collide (etcd) raises
`WriteConflictError` from the end of the transaction, and the vault retries.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

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


class Following(Protocol):
    """What keeps a followed copy current: each of `loops()` runs on a thread of its own,
    owned by whoever follows (the daemon: children of its nursery), until `stop()`."""

    def loops(self) -> Sequence[Callable[[], None]]: ...

    def stop(self) -> None: ...


class Backend(Protocol):
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

    def follow(self, clock: Clock = SYSTEM) -> Following | None:
        """Serve reads from a copy kept current in memory (a mount): reads never wait on
        the network. What keeps it current is for the caller to run; None where reads
        are local already."""
        ...

    def status(self) -> dict[str, Any]:
        """backend, connected, last_revision, stale_since: the mount's status file."""
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

    def data_version(self) -> int:
        """Changes whenever the store changes: a cheap poll."""
        ...

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

    def changes_since(self, seq: int) -> list[SecretMeta]: ...

    def list_scopes(self) -> list[str]: ...

    def add_secret(self, scope: str, name: str, created_ns: int, seq: int) -> int: ...

    def revive_secret(self, secret_id: int, created_ns: int, seq: int) -> None: ...

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
    ) -> None: ...

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

    # -- audit ----------------------------------------------------------------------------

    def append_audit(self, records: list[AuditRecord]) -> None: ...

    def read_audit(
        self,
        *,
        after_id: int = 0,
        since_ns: int | None = None,
        ref_exact: tuple[str, ...] = (),
        ref_prefixes: tuple[str, ...] = (),
        limit: int | None = None,
    ) -> list[AuditRecord]: ...

    # -- consistency checks (doctor) -------------------------------------------------------

    def foreign_key_problems(self) -> int: ...

    def integrity_check(self) -> str: ...

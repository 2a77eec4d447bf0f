"""The in-memory backend: a whole store in this process, gone when the process exits.

For tests (the backend contract suite runs over SQLite, etcd and this) and for a `Vault`
with no file behind it. `memory://NAME` names a store of this process: every open of
one name sees one store, as every open of one file does.

The records are etcd's (store/records.py over a dict of keys). A committed state is
never changed in place: a commit makes a new one. So a snapshot or a transaction reads
the state it began on, with a transaction's own writes laid over, and a transaction
commits all of its writes or none; when another writer committed a change in between,
the commit raises WriteConflictError and the vault tries again (as on etcd).
"""

from __future__ import annotations

import bisect
import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Unpack

from secretfs import keys
from secretfs.audit import AuditRecord
from secretfs.checks import Check
from secretfs.clock import SYSTEM, Clock
from secretfs.errors import StoreError, StoreExistsError, WriteConflictError
from secretfs.store.records import AuditQuery, KeyValueRecords, local_status, select_audit

if TYPE_CHECKING:
    from secretfs.store.base import Backend

SCHEME = "memory://"


@dataclass(frozen=True, slots=True)
class _State:
    """One committed state of a store: replaced by a commit, never changed."""

    data: dict[bytes, bytes] = field(default_factory=dict)
    keys: tuple[bytes, ...] = ()  # data's keys, sorted: scans by prefix bisect
    data_revision: int = 0  # moved by a commit that changes records (what conflicts)
    revision: int = 0  # moved by every commit (data_version)
    audit: tuple[AuditRecord, ...] = ()  # by id
    next_audit_id: int = 1


@dataclass(slots=True)
class _Store:
    state: _State = field(default_factory=_State)
    lock: threading.Lock = field(default_factory=threading.Lock)


_STORES: dict[str, _Store] = {}
_STORES_LOCK = threading.Lock()


@dataclass(slots=True)
class _Txn:
    base: _State
    writes: dict[bytes, bytes | None] = field(default_factory=dict)  # None: delete
    audit: list[AuditRecord] = field(default_factory=list)
    prune_before_ns: int | None = None


@dataclass(frozen=True, slots=True)
class MemoryLocation:
    """`memory://NAME`: a store in this process's memory (a `StoreLocation`)."""

    name: str

    @classmethod
    def parse(cls, text: str) -> MemoryLocation:
        return cls(text.removeprefix(SCHEME))

    def __str__(self) -> str:
        return SCHEME + self.name

    def _store(self) -> _Store | None:
        with _STORES_LOCK:
            return _STORES.get(self.name)

    def open(self, *, readonly: bool = False) -> MemoryBackend:
        store = self._store()
        if store is None:
            raise StoreError(f"no store at {self}: run `secretfs init` (or pass --store)")
        return MemoryBackend(self, store)

    def exists(self) -> bool:
        return self._store() is not None

    def create(self, init: Callable[[Backend], None]) -> None:
        """Create the store with `init` run in its first transaction; refused if one
        exists. Nobody sees it before `init` has committed."""
        if self.exists():
            raise StoreExistsError(f"a store already exists at {self}")
        store = _Store()
        backend = MemoryBackend(self, store)
        with backend.transaction():
            init(backend)
        with _STORES_LOCK:
            if self.name in _STORES:
                raise StoreExistsError(f"a store already exists at {self}")
            _STORES[self.name] = store

    def remove(self) -> None:
        """Forget the store (a test's clean-up); open handles keep what they hold."""
        with _STORES_LOCK:
            _STORES.pop(self.name, None)

    def key_file(self) -> Path:
        """`$SECRETFS_KEY_FILE`, else as an etcd store's (no file here to put it beside)."""
        return keys.remote_key_file_path("memory", self.name)

    def local_file(self) -> Path | None:
        return None

    def doctor_checks(self) -> tuple[list[Check], bool]:
        if not self.exists():
            return [
                Check("store", "fail", f"no store at {self} in this process", "run `init` first")
            ], False
        return [Check("store", "ok", f"in-memory store at {self} (this process only)")], True


class MemoryBackend(KeyValueRecords):
    """A store in this process: the shared record logic over a dict of keys."""

    def __init__(self, location: MemoryLocation, store: _Store) -> None:
        self.location = location
        self._store = store
        self._prefix = b""
        self._txn: _Txn | None = None
        self._view: _State | None = None  # inside snapshot(): the state it began on

    # -- the contract beyond records ---------------------------------------------------------

    @property
    def name(self) -> str:
        return str(self.location)

    def key_file(self) -> Path:
        return self.location.key_file()

    def open_another(self) -> MemoryBackend:
        return MemoryBackend(self.location, self._store)

    def close(self) -> None:
        """Nothing to release: the store lives as long as the process (or `remove()`)."""

    def dump(self) -> list[tuple[bytes, bytes]]:
        """Every key and value as held, and the audit records: what a look at the
        store's memory would find (as `etcdctl get --prefix` shows an etcd store)."""
        state = self._store.state
        audit = [(b"audit/%d" % r.id, repr(r).encode()) for r in state.audit]
        return sorted(state.data.items()) + audit

    def write_batch(self, sizes: list[int]) -> int:
        return max(1, len(sizes))  # no bound on a transaction

    def prefetch_secrets(self, refs: list[tuple[str, str]]) -> None:
        pass  # reads are local

    # -- key-value primitives (store/records.py) --------------------------------------------

    def _state(self) -> _State:
        if self._txn is not None:
            return self._txn.base
        return self._view if self._view is not None else self._store.state

    def _pending(self) -> dict[bytes, bytes | None] | None:
        return None if self._txn is None else self._txn.writes

    def _read(self, key: bytes) -> bytes | None:
        return self._state().data.get(key)

    def _read_prefix(self, prefix: bytes) -> dict[bytes, bytes]:
        state = self._state()
        found: dict[bytes, bytes] = {}
        for key in state.keys[bisect.bisect_left(state.keys, prefix) :]:
            if not key.startswith(prefix):
                break
            found[key] = state.data[key]
        return found

    def _writing(self) -> _Txn:
        if self._txn is None:
            raise StoreError("internal: a write to the store outside a transaction")
        return self._txn

    # -- transactions and snapshots --------------------------------------------------------

    def _begin(self) -> _Txn:
        return _Txn(self._store.state)

    def _commit(self, txn: _Txn) -> None:
        if not (txn.writes or txn.audit or txn.prune_before_ns is not None):
            return
        with self._store.lock:
            now = self._store.state
            if txn.writes and now.data_revision != txn.base.data_revision:
                raise WriteConflictError(
                    f"another writer changed {self.name} during this write; nothing was"
                    " written: retry"
                )
            state = replace(now, revision=now.revision + 1)
            if txn.writes:
                data = dict(now.data)
                for key, value in txn.writes.items():
                    if value is None:
                        data.pop(key, None)
                    else:
                        data[key] = value
                state = replace(
                    state, data=data, keys=tuple(sorted(data)), data_revision=now.revision + 1
                )
            audit = now.audit
            if txn.prune_before_ns is not None:
                audit = tuple(r for r in audit if r.time_ns >= txn.prune_before_ns)
            first = now.next_audit_id
            added = tuple(replace(r, id=first + n) for n, r in enumerate(txn.audit))
            self._store.state = replace(
                state, audit=audit + added, next_audit_id=first + len(added)
            )

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """Every read inside sees one committed state."""
        if self._txn is not None or self._view is not None:
            yield
            return
        self._view = self._store.state
        try:
            yield
        finally:
            self._view = None

    # -- the audit log ---------------------------------------------------------------------

    def append_audit(self, records: list[AuditRecord]) -> None:
        self._writing().audit.extend(records)

    def read_audit(self, **query: Unpack[AuditQuery]) -> list[AuditRecord]:
        return select_audit(self._state().audit, query)

    def compact_audit(self, before_ns: int) -> int:
        """Nothing to merge: the records are one list already."""
        return 0

    def prune_audit(self, before_ns: int, *, dry_run: bool = False) -> int:
        """Delete the records older than `before_ns` (inside `transaction()`); how many."""
        count = sum(1 for r in self._state().audit if r.time_ns < before_ns)
        if not dry_run and count:
            self._writing().prune_before_ns = before_ns
        return count

    # -- the change feed -------------------------------------------------------------------

    def data_version(self) -> int:
        return self._store.state.revision

    def follow(self, clock: Clock = SYSTEM) -> None:
        """Reads are local already; `data_version` moves with every commit."""

    def status(self) -> dict[str, Any]:
        return local_status("memory", self.name, self.current_seq())

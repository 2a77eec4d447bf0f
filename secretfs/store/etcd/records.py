"""The etcd v3 backend's records: the SQLite backend's rows as keys under one prefix.

etcd holds only what SQLite holds: sealed, row-bound ciphertext and metadata. Keys
never leave the nodes. Every Txn (writes, and the reads a write batches) and a mount's
load of the whole store go over gRPC (txn.py, kvgrpc.py); single reads and the watch
through etcd's JSON gateway (gateway.py); all with httpx.

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

import bisect
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Unpack

import orjson

from secretfs.audit import AuditRecord
from secretfs.clock import SYSTEM, Clock
from secretfs.errors import (
    SecretfsError,
    StoreError,
    StoreExistsError,
    StoreUnavailableError,
    WriteConflictError,
)
from secretfs.store import SecretMeta
from secretfs.store.etcd.follower import Follower
from secretfs.store.etcd.gateway import (
    DEFAULT_LOAD_TIMEOUT,
    ENV_LOAD_TIMEOUT,
    LOAD_PAGE,
    CompactedError,
    Gateway,
    UnknownOutcomeError,
    env_seconds,
    max_txn_ops,
    prefix_end,
)
from secretfs.store.etcd.txn import Delete, Op, Put, Range, Txn, unb64
from secretfs.store.records import (
    AuditQuery,
    KeyValueRecords,
    audit_record,
    audit_row,
    damaged,
    json_record,
    select_audit,
)
from secretfs.testhooks import fault

if TYPE_CHECKING:
    from secretfs.store.etcd.location import EtcdLocation

log = logging.getLogger(__name__)

TXN_RESERVED_OPS = 8  # a write's own keys: d/lock, counters, its audit batch
AUDIT_CHUNK_BYTES = 256 << 10  # compact_audit() merges batches into keys up to this
# A mount's writer compacts batches older than this, every AUDIT_COMPACT_EVERY batches.
AUDIT_COMPACT_AGE_NS = 600 * 10**9
AUDIT_COMPACT_EVERY = 200
# prefetch_secrets() reads all rows and tags when it wants at least 1/DENSE_SHARE of them.
DENSE_SHARE = 4
RECENT_COMMIT_SECONDS = 1.0  # a transaction this soon after our commit starts from it
COMMIT_TRIES = 3  # sends of one Txn whose outcome was unknown (its compare dedupes)
TXN_BYTES = 1 << 20  # under etcd's default --max-request-bytes (1.5 MiB)


RECORD_NAME = "etcd record"


def _record(key: bytes, raw: bytes) -> Any:
    return json_record(key, raw, RECORD_NAME)


@dataclass(slots=True)
class _Txn:
    revision: int  # reads see the store as of here
    lock_revision: int  # mod_revision of d/lock then (0: never written)
    writes: dict[bytes, bytes | None] = field(default_factory=dict)  # None: delete
    next_id: int | None = None  # what our last commit left it at (a guess: prefetch)
    audit: list[dict[str, Any]] = field(default_factory=list)  # one a/ key at commit


def _start(span: tuple[bytes, bytes]) -> bytes:
    return span[0]


@dataclass(slots=True)
class _ReadCache:
    """What prefetch() read: exact keys, and whole ranges (a key in one of them that is
    not in `kv` does not exist). It holds while d/lock's mod_revision is `lock`: every
    write of a d/ key changes d/lock in the same Txn, so the reads hold at any revision
    where d/lock is unchanged; and after our own commit compared on it, they hold with
    that commit's writes laid over (_carry)."""

    lock: int
    kv: dict[bytes, bytes | None] = field(default_factory=dict)
    ranges: list[tuple[bytes, bytes]] = field(default_factory=list)  # sorted, disjoint
    _sorted: list[bytes] | None = None  # kv's keys in order, built when first scanned

    def knows(self, start: bytes, end: bytes | None = None) -> bool:
        if end is None:
            if start in self.kv:
                return True
            end = start + b"\0"
        # The one range that could hold it: the last to start at or before `start`.
        at = bisect.bisect_right(self.ranges, start, key=_start) - 1
        return at >= 0 and end <= self.ranges[at][1]

    def add_range(self, start: bytes, end: bytes) -> None:
        """[start, end) was read whole: merged with the ranges it touches (an import's
        batches read the versions of the next ids, one range after the other)."""
        ranges = self.ranges
        lo = bisect.bisect_left(ranges, start, key=_start)
        if lo and ranges[lo - 1][1] >= start:
            lo -= 1
        hi = lo
        while hi < len(ranges) and ranges[hi][0] <= end:
            start, end = min(start, ranges[hi][0]), max(end, ranges[hi][1])
            hi += 1
        ranges[lo:hi] = [(start, end)]

    def put(self, key: bytes, value: bytes | None) -> None:
        if key not in self.kv and self._sorted is not None:
            bisect.insort(self._sorted, key)
        self.kv[key] = value

    def scan(self, start: bytes, end: bytes) -> dict[bytes, bytes]:
        """The keys in [start, end) that exist: the range, not the whole cache."""
        if self._sorted is None:
            self._sorted = sorted(self.kv)
        keys = self._sorted
        out = {}
        for at in range(bisect.bisect_left(keys, start), len(keys)):
            key = keys[at]
            if key >= end:
                break
            value = self.kv[key]
            if value is not None:
                out[key] = value
        return out


def _unchanged(kvs: Iterable[dict[str, Any]]) -> list[tuple[bytes, int]]:
    """Txn compares: each of these keys (as the gateway gave them) is as it was read."""
    return [(unb64(kv["key"]), int(kv["mod_revision"])) for kv in kvs]


def _audit_batch(kv: dict[str, Any]) -> list[dict[str, Any]]:
    """The records of one audit key, each with its id (see read_audit)."""
    key = unb64(kv["key"])
    records = _record(key, unb64(kv.get("value")))
    if not isinstance(records, list):
        raise damaged(key, "not a list of audit records", RECORD_NAME)
    base = int(kv["mod_revision"]) * 10000
    for index, d in enumerate(records):
        d.setdefault("id", base + index)
    return records


class EtcdBackend(KeyValueRecords):
    """A secretfs store under one key prefix of an etcd v3 cluster: the shared record
    logic (store/records.py) over etcd reads, transactions and a mount's follower."""

    RECORD_NAME = RECORD_NAME

    def __init__(self, location: EtcdLocation, gateway: Gateway | None = None) -> None:
        self.location = location
        self._gw = gateway if gateway is not None else Gateway(location)
        self._prefix = location.key_prefix
        self._txn: _Txn | None = None
        self._snapshot_rev: int | None = None
        self._snapshot_lock: int | None = None  # d/lock's mod_revision in the snapshot
        self._follower: Follower | None = None
        self._cache: _ReadCache | None = None
        self._audit_commits = 0
        self._parsed: dict[bytes, tuple[bytes, SecretMeta]] = {}  # see _parsed_row
        # After our own commit: (its revision, when, next_id then). The next transaction
        # soon after starts there without reading d/lock (its compare still guards it),
        # and prefetch_secrets() reads the tags of the ids it will likely give at once.
        self._committed: tuple[int, float, int | None] | None = None

    # -- opening -------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return str(self.location)

    def key_file(self) -> Path:
        return self.location.key_file()

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
                if backend._scan(backend._prefix):
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
        self._gw.close()
        if self._follower is not None:
            self._follower.close()

    # -- raw keys ------------------------------------------------------------------------

    def _read_revision(self) -> int:
        if self._txn is not None:
            return self._txn.revision
        return self._snapshot_rev or 0

    def _local(self) -> bool:
        return self._follower is not None and self._txn is None and self._snapshot_rev is None

    @contextlib.contextmanager
    def _history_kept(self) -> Iterator[None]:
        """A write's read at a revision etcd compacted away: the write conflicts (it is
        retried from the start), never reads a newer state as if it were its own."""
        try:
            yield
        except CompactedError:
            if self._txn is None:
                raise
            raise WriteConflictError(
                f"{self.location} changed too much during this write (its history was"
                " compacted under it); nothing was written: retry"
            ) from None

    def _remote_range(self, key: bytes, end: bytes | None) -> list[dict[str, Any]]:
        with self._history_kept():
            return self._gw.range(key, end, revision=self._read_revision())[0]

    def _pending(self) -> dict[bytes, bytes | None] | None:
        return None if self._txn is None else self._txn.writes

    def _read(self, key: bytes) -> bytes | None:
        if self._local():
            assert self._follower is not None
            return self._follower.get(key)
        cache = self._cached()
        if cache is not None and cache.knows(key):
            return cache.kv.get(key)
        kvs = self._remote_range(key, None)
        return unb64(kvs[0].get("value")) if kvs else None

    def _lock_seen(self) -> int | None:
        """d/lock's mod_revision as this transaction or snapshot reads the store."""
        if self._txn is not None:
            return self._txn.lock_revision
        return self._snapshot_lock

    def _cached(self) -> _ReadCache | None:
        cache = self._cache
        lock = self._lock_seen()
        return cache if cache is not None and lock is not None and cache.lock == lock else None

    def _cache_now(self) -> _ReadCache:
        """The read cache of this transaction or snapshot: what was read before, while
        it still holds, else a new one."""
        cache = self._cached()
        if cache is None:
            lock = self._lock_seen()
            assert lock is not None, "a read outside a transaction or snapshot"
            cache = self._cache = _ReadCache(lock)
        return cache

    def _fetch(self, keys: list[bytes], ranges: list[tuple[bytes, bytes]]) -> None:
        """Read exact `keys` and whole `ranges` at the read revision in as few
        round trips as --max-txn-ops allows (one Txn of range requests each)."""
        revision = self._read_revision()
        cache = self._cache_now()
        wanted: list[tuple[bytes, bytes | None]] = [(k, None) for k in keys if not cache.knows(k)]
        wanted += [(lo, hi) for lo, hi in ranges if not cache.knows(lo, hi)]
        step = max(1, max_txn_ops())
        for at in range(0, len(wanted), step):
            chunk = wanted[at : at + step]
            # At a fixed revision a member's own copy is as good as the leader's (history
            # does not change): no ReadIndex round, ~3 ms less per read. One that has
            # not applied it yet says "future revision": then ask for the leader's.
            serializable = revision > 0
            with self._history_kept():
                try:
                    answer = self._gw.txn(self._ranges(chunk, revision, serializable))
                except StoreUnavailableError as exc:
                    if "future revision" not in str(exc):
                        raise
                    answer = self._gw.txn(self._ranges(chunk, revision, False))
            for (start, end), kvs in zip(chunk, answer.ranges, strict=True):
                if end is None:
                    cache.put(start, kvs[0].value if kvs else None)
                else:
                    cache.add_range(start, end)
                    for kv in kvs:
                        cache.put(kv.key, kv.value)

    @staticmethod
    def _ranges(chunk: list[tuple[bytes, bytes | None]], revision: int, serializable: bool) -> Txn:
        return Txn([Range(start, end, revision, serializable) for start, end in chunk])

    def prefetch_secrets(self, refs: list[tuple[str, str]]) -> None:
        """Read what writing new versions of these secrets will read: one round trip
        per --max-txn-ops keys (two when some exist already, or right after no commit of
        ours), instead of about five per secret. In a snapshot too: write_many reads
        once for all its batches, and each then reads nothing while d/lock is unchanged.

        When the secrets are a good part of the store (an import into a new one), their
        rows and tags are read as whole ranges, in pages, not key by key."""
        if self._local() or (self._txn is None and self._snapshot_rev is None):
            return
        from secretfs.authmeta import SECRET_TAG, secret_tag_key  # above the store: not at import

        rows = [self._row_key(scope, name) for scope, name in refs]
        meta, tags = self._key("d/meta/"), self._key("d/meta", SECRET_TAG)
        # Every meta key but the secrets' tags (one per secret: the store's size).
        ranges = [(meta, tags), (prefix_end(tags), prefix_end(meta))]
        dense = False
        if len(rows) > max_txn_ops():
            self._fetch([], ranges)
            # next_id counts every secret ever made: no more rows or tags than that.
            dense = len(rows) * DENSE_SHARE >= self._counter("next_id")
            if dense:
                self._fetch_all(self._key("d/s/"))
                self._fetch_all(tags)
        keys = [] if dense else list(rows)
        hint = None if self._txn is None else self._txn.next_id
        if hint is not None:
            # Right after our own commit next_id is likely known: read now what new
            # secrets need (their tags and versions: absent), not in a second round trip.
            keys += [self._key("d/meta", secret_tag_key(hint + 1 + i)) for i in range(len(rows))]
            ranges.append(
                (self._versions_prefix(hint + 1), self._versions_prefix(hint + 1 + len(rows)))
            )
        self._fetch(keys, ranges)
        keys, ranges, ids = [], [], []
        for key in rows:
            raw = self._get(key)
            if raw is None:
                continue
            secret_id = int(_record(key, raw)["id"])
            ids.append(secret_id)
            keys.append(self._id_key(secret_id))
            versions = self._versions_prefix(secret_id)
            ranges.append((versions, prefix_end(versions)))
        missing = len(rows) - len(ids)
        if missing:
            # New secrets take the next ids: one range covers all their (absent) versions.
            first = self._counter("next_id") + 1
            ranges.append((self._versions_prefix(first), self._versions_prefix(first + missing)))
            ids += range(first, first + missing)
        keys += [self._key("d/meta", secret_tag_key(i)) for i in ids]
        self._fetch(keys, ranges)  # nothing left to read when the guess was right

    def _fetch_all(self, prefix: bytes) -> None:
        """Every key under `prefix` into the read cache, in pages (a whole range in one
        answer could be most of a large store)."""
        cache = self._cache_now()
        end = prefix_end(prefix)
        if cache.knows(prefix, end):
            return
        deadline = time.monotonic() + env_seconds(ENV_LOAD_TIMEOUT, DEFAULT_LOAD_TIMEOUT)
        with self._history_kept():
            found, _ = self._gw.load(
                [(prefix, end)], deadline=deadline, revision=self._read_revision()
            )
        for key, value in found.items():
            cache.put(key, value)
        cache.add_range(prefix, end)

    def write_batch(self, sizes: list[int]) -> int:
        """How many of these values (their sizes, in order) one Txn can write within
        --max-txn-ops and --max-request-bytes (at least one)."""
        per_secret = 4  # id, row, version, and one pruned version
        count = max(1, (max_txn_ops() - TXN_RESERVED_OPS) // per_secret)
        total = 0
        for n, size in enumerate(sizes[:count]):
            total += size * 4 // 3 + 2048  # base64 in the record, plus row and overhead
            if n and total > TXN_BYTES:
                return n
        return min(count, len(sizes)) or 1

    def _read_prefix(self, prefix: bytes) -> dict[bytes, bytes]:
        if self._local():
            assert self._follower is not None
            found = self._follower.scan(prefix)
        elif (cache := self._cached()) is not None and cache.knows(prefix, prefix_end(prefix)):
            found = cache.scan(prefix, prefix_end(prefix))
        else:
            kvs = self._remote_range(prefix, prefix_end(prefix))
            found = {unb64(kv["key"]): unb64(kv.get("value")) for kv in kvs}
        return found

    # -- transactions --------------------------------------------------------------------

    def _begin(self) -> _Txn:
        """A transaction (one etcd Txn at commit) starts from d/lock as read now, or
        as our own commit just left it."""
        committed, self._committed = self._committed, None
        if committed is not None and time.monotonic() - committed[1] < RECENT_COMMIT_SECONDS:
            # d/lock is as our commit left it unless another writer came since, which
            # the commit's compare refuses (WriteConflictError: the write is retried).
            return _Txn(committed[0], committed[0], next_id=committed[2])
        kvs, revision = self._gw.range(self._key("d/lock"))
        lock_rev = int(kvs[0].get("mod_revision", 0)) if kvs else 0
        return _Txn(revision, lock_rev)

    def _commit(self, txn: _Txn) -> None:
        writes = dict(txn.writes)
        if txn.audit:
            # One audit key per transaction, however many records it carries.
            key = self._key("a", f"{time.time_ns():020d}-{os.urandom(6).hex()}")
            writes[key] = orjson.dumps(txn.audit)  # compact JSON, ~10x json's speed
        if not writes:
            return
        ops: list[Op] = [
            Delete(key) if value is None else Put(key, value) for key, value in writes.items()
        ]
        unchanged: list[tuple[bytes, int]] = []
        data = self._prefix + b"d/"
        lock = self._key("d/lock")
        # Unique to this write: reading d/lock back tells whether it was applied.
        stamp = f"{time.time_ns()} {os.getpid()} {os.urandom(6).hex()}".encode()
        if any(k.startswith(data) for k in writes):
            # Audit records alone are appended blindly; anything else serializes on d/lock.
            ops.append(Put(lock, stamp))
            unchanged.append((lock, txn.lock_revision))
        request = Txn(ops, unchanged)
        for attempt in range(1, COMMIT_TRIES + 1):
            try:
                if fault("etcd-txn-unsent"):
                    raise UnknownOutcomeError("test: the write was never sent")
                answer = self._gw.txn(request, write=True)
                if fault("etcd-txn-answer-lost"):
                    raise UnknownOutcomeError("test: the write's answer was lost")
            except UnknownOutcomeError as exc:
                if not unchanged:
                    raise StoreError(
                        f"{exc}: these audit records may or may not have been written"
                    ) from None
                if self._applied(lock, stamp, txn.lock_revision, str(exc)):
                    return
                # Not applied (yet): the same Txn again. Its compare on d/lock lets at
                # most one of the two apply, so a retried batch never doubles a version.
                log.warning("%s: not applied as read back; sending it again", exc)
                continue
            if answer.succeeded:
                if not unchanged:
                    self._audit_written()
                    return
                next_id = writes.get(self._key("d/meta", "next_id"))
                self._committed = (
                    answer.revision,
                    time.monotonic(),
                    int(next_id) if next_id else None,
                )
                self._carry(txn, writes, answer.revision)
                return
            if attempt > 1 and self._applied(lock, stamp, txn.lock_revision, "resent"):
                return  # the first send was applied after all
            raise WriteConflictError(
                f"another writer changed {self.location} during this write; nothing was"
                " written: retry"
            )
        raise StoreError(
            f"etcd did not confirm the write to {self.location} after {COMMIT_TRIES} tries,"
            " and reading back shows it was not applied: nothing was written; retry later"
        )

    def _carry(self, txn: _Txn, writes: dict[bytes, bytes | None], revision: int) -> None:
        """After our commit that compared d/lock: what we had read, with what we wrote
        laid over, is the store as of `revision` (nobody wrote d/ in between, or the
        compare would have failed). The next batch of an import reads nothing again."""
        cache = self._cache
        if cache is None or cache.lock != txn.lock_revision:
            self._cache = None
            return
        for key, value in writes.items():
            cache.put(key, value)
        cache.lock = revision

    def _audit_written(self) -> None:
        """Every AUDIT_COMPACT_EVERY audit-only commits (a mount's writer makes one a
        flush), merge the batches older than AUDIT_COMPACT_AGE_NS into fewer keys."""
        self._audit_commits += 1
        if self._audit_commits % AUDIT_COMPACT_EVERY:
            return
        try:
            removed = self.compact_audit(time.time_ns() - AUDIT_COMPACT_AGE_NS)
        except SecretfsError as exc:
            log.warning("etcd: cannot compact the audit log of %s yet: %s", self.location, exc)
            return
        if removed:
            log.info("etcd: merged %d audit batches of %s", removed, self.location)

    def _applied(self, lock: bytes, stamp: bytes, lock_revision: int, why: str) -> bool:
        """After a write of unknown outcome: read d/lock back. Ours there: applied.
        Unchanged: not applied (yet). Another writer's: ours never will be."""
        try:
            kvs, _ = self._gw.range(lock)
        except StoreError as exc:
            raise StoreError(
                f"{why}, and reading it back failed too ({exc}): it may or may not have been"
                " applied; check with `secretfs history` before writing again"
            ) from None
        if kvs and unb64(kvs[0].get("value")) == stamp:
            return True
        now = int(kvs[0].get("mod_revision", 0)) if kvs else 0
        if now == lock_revision:
            return False
        raise WriteConflictError(
            f"another writer changed {self.location} during this write; nothing was written: retry"
        )

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """Every read inside sees one committed state (one etcd revision)."""
        if self._txn is not None or self._snapshot_rev is not None:
            yield
            return
        kvs, revision = self._gw.range(self._key("d/lock"))
        self._snapshot_rev = revision
        self._snapshot_lock = int(kvs[0].get("mod_revision", 0)) if kvs else 0
        try:
            yield
        finally:
            # What it read stays cached: transactions that find d/lock unchanged use it.
            self._snapshot_rev = self._snapshot_lock = None

    def changes_since(self, seq: int) -> list[SecretMeta]:
        follower = self._follower
        if follower is None or not self._local():
            return super().changes_since(seq)
        # A mount: only the rows that changed, not every row, each parsed once.
        metas = [self._parsed_row(k, raw) for k, raw in follower.changed_rows(seq)]
        return sorted((m for m in metas if m.seq > seq), key=lambda m: m.seq)

    def _parsed_row(self, key: bytes, raw: bytes) -> SecretMeta:
        """A mount's row as SecretMeta, parsed once while its bytes stay the same (a
        mount's load reads every row twice: to verify the store, then to serve it)."""
        known = self._parsed.get(key)
        if known is not None and known[0] is raw:
            return known[1]
        meta = self._secret_meta(key, raw)
        self._parsed[key] = (raw, meta)
        return meta

    def data_version(self) -> int:
        if self._follower is not None:
            return self._follower.version
        return self._gw.range(self._key("d/lock"))[1]

    # -- audit ---------------------------------------------------------------------------

    def append_audit(self, records: list[AuditRecord]) -> None:
        if not records:
            return
        if self._txn is None:
            raise StoreError("internal: a write to the store outside a transaction")
        self._txn.audit.extend(audit_row(r) for r in records)

    def read_audit(self, **query: Unpack[AuditQuery]) -> list[AuditRecord]:
        """Records that pass `query`, oldest first. A record's id is the etcd revision of
        its batch times 10000 plus its place in the batch (kept in the record when
        compact_audit() merged batches)."""
        prefix = self._key("a/")
        deadline = time.monotonic() + env_seconds(ENV_LOAD_TIMEOUT, DEFAULT_LOAD_TIMEOUT)
        kvs, _ = self._gw.range_all(prefix, prefix_end(prefix), page=LOAD_PAGE, deadline=deadline)
        records = [audit_record(d) for kv in kvs for d in _audit_batch(kv)]
        return select_audit(sorted(records, key=lambda r: r.id), query)

    def compact_audit(self, before_ns: int) -> int:
        """Merge the audit batches written before `before_ns` into keys of up to
        AUDIT_CHUNK_BYTES, each record keeping its id; the number of keys removed.

        Each merge is one Txn that commits only if its batches are unchanged, so two
        writers compacting at once never lose or double a record.
        """
        prefix = self._key("a/")
        end = self._key("a", f"{before_ns:020d}")
        deadline = time.monotonic() + env_seconds(ENV_LOAD_TIMEOUT, DEFAULT_LOAD_TIMEOUT)
        kvs, _ = self._gw.range_all(prefix, end, page=LOAD_PAGE, deadline=deadline)
        most = max(2, max_txn_ops() - 1)
        groups: list[list[dict[str, Any]]] = [[]]
        size = 0
        for kv in kvs:
            length = len(kv.get("value") or "")
            if groups[-1] and (size + length > AUDIT_CHUNK_BYTES or len(groups[-1]) >= most):
                groups.append([])
                size = 0
            groups[-1].append(kv)
            size += length
        removed = 0
        for group in groups:
            if len(group) < 2:
                continue
            records = [d for kv in group for d in _audit_batch(kv)]
            first = unb64(group[0]["key"])  # the merged key sorts where its first batch did
            key = first.rsplit(b"-", 1)[0] + f"-m{os.urandom(6).hex()}".encode()
            value = orjson.dumps(records)
            merge: list[Op] = [Put(key, value)]
            merge += [Delete(unb64(kv["key"])) for kv in group]
            try:
                answer = self._gw.txn(Txn(merge, _unchanged(group)), write=True)
            except UnknownOutcomeError:
                break  # applied or not, every record is in exactly one key: try again later
            if answer.succeeded:
                removed += len(group) - 1
        return removed

    def prune_audit(self, before_ns: int, *, dry_run: bool = False) -> int:
        """Remove the audit records older than `before_ns`; returns how many.

        A key whose records are all older is deleted, one holding newer ones too is
        rewritten with those (each keeping its id). Every key is scanned: a batch is named
        when it was committed, after its records were made. Each Txn of at most etcd's
        limits commits only if its keys are unchanged (a compaction that merged them keeps
        those records for the next prune, never loses or doubles one).
        """
        prefix = self._key("a/")
        deadline = time.monotonic() + env_seconds(ENV_LOAD_TIMEOUT, DEFAULT_LOAD_TIMEOUT)
        kvs, _ = self._gw.range_all(prefix, prefix_end(prefix), page=LOAD_PAGE, deadline=deadline)
        plans: list[tuple[dict[str, Any], int, bytes | None]] = []  # (key, removed, kept)
        for kv in kvs:
            records = _audit_batch(kv)
            kept = [d for d in records if int(d["time_ns"]) >= before_ns]
            if len(kept) < len(records):
                value = orjson.dumps(kept) if kept else None
                plans.append((kv, len(records) - len(kept), value))
        if dry_run:
            return sum(removed for _, removed, _ in plans)
        most = max(1, max_txn_ops() - 1)
        removed_total, start = 0, 0
        while start < len(plans):
            group, size = [plans[start]], len(plans[start][2] or b"")
            start += 1
            while start < len(plans) and len(group) < most:
                size += len(plans[start][2] or b"")
                if size > TXN_BYTES:
                    break
                group.append(plans[start])
                start += 1
            prune: list[Op] = [
                Delete(unb64(kv["key"])) if value is None else Put(unb64(kv["key"]), value)
                for kv, _, value in group
            ]
            try:
                answer = self._gw.txn(Txn(prune, _unchanged(kv for kv, _, _ in group)), write=True)
            except UnknownOutcomeError:
                break  # applied or not, the next prune finds what is left
            if answer.succeeded:
                removed_total += sum(removed for _, removed, _ in group)
        # What is left is merged too: retention and aggregation on one pass, hourly.
        try:
            self.compact_audit(time.time_ns() - AUDIT_COMPACT_AGE_NS)
        except SecretfsError as exc:
            log.warning("etcd: cannot compact the audit log of %s yet: %s", self.location, exc)
        return removed_total

    # -- a mount: an in-memory copy kept current by a watch ---------------------------------

    def follow(self, clock: Clock = SYSTEM) -> Follower:
        """Load every `d/` key: reads are then local. The Follower keeps the copy current
        while its loops run (the caller runs them; `close()` stops them)."""
        if self._follower is None:
            self._follower = Follower(self.location, self._gw.timeout, clock)
            self._parsed = self._follower.parsed
        return self._follower

    def status(self) -> dict[str, Any]:
        if self._follower is None:
            return {"backend": "etcd", "store": self.name, "connected": None}
        return self._follower.status()

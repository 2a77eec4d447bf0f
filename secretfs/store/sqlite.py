"""The embedded backend: one SQLite file in WAL mode, ciphertext and metadata only."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import os
import sqlite3
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, Unpack

from secretfs import keys
from secretfs.audit import AuditRecord
from secretfs.checks import Check, mode_check
from secretfs.clock import SYSTEM, Clock
from secretfs.errors import StoreError, StoreExistsError
from secretfs.files import fsync_dir
from secretfs.store import (
    ClientKeyRecord,
    GrantRecord,
    ScopeMeta,
    SealedVersion,
    SecretMeta,
    VersionMeta,
)
from secretfs.store.records import (
    AUDIT_FIELDS,
    AuditQuery,
    NewVersion,
    RecordsBase,
    audit_record,
    audit_row,
    client_key_record,
    damaged_fields,
    grant_record,
    local_status,
    scope_meta,
    sealed_version,
    secret_meta,
    select_audit,
    version_meta,
    versions_to_prune,
)
from secretfs.testhooks import checkpoint

if TYPE_CHECKING:
    from secretfs.store.base import Backend

SCHEMA_VERSION = 1
_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE meta (
    k TEXT PRIMARY KEY,
    v BLOB NOT NULL
) STRICT;
CREATE TABLE data_keys (
    gen INTEGER PRIMARY KEY,
    wrapped BLOB NOT NULL,
    created_ns INTEGER NOT NULL
) STRICT;
CREATE TABLE secrets (
    id INTEGER PRIMARY KEY,
    scope TEXT NOT NULL,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    created_ns INTEGER NOT NULL,
    uid INTEGER,
    gid INTEGER,
    mode INTEGER,
    expires_ns INTEGER,
    rotate_every_s INTEGER,
    seq INTEGER NOT NULL,
    UNIQUE (scope, name)
) STRICT;
CREATE INDEX secrets_seq ON secrets (seq);
CREATE TABLE versions (
    secret_id INTEGER NOT NULL REFERENCES secrets (id),
    version INTEGER NOT NULL,
    created_ns INTEGER NOT NULL,
    size INTEGER NOT NULL,
    kind TEXT NOT NULL,
    key_gen INTEGER NOT NULL REFERENCES data_keys (gen),
    fingerprint TEXT NOT NULL,
    ciphertext BLOB NOT NULL,
    PRIMARY KEY (secret_id, version)
) STRICT;
-- Owner and mode defaults of a whole scope (NULL: inherit from the mount).
CREATE TABLE scopes (
    scope TEXT PRIMARY KEY,
    uid INTEGER,
    gid INTEGER,
    mode INTEGER,
    seq INTEGER NOT NULL
) STRICT;
-- Extra readers of a secret (name != '') or of every secret in a scope (name = '').
CREATE TABLE grants (
    id INTEGER PRIMARY KEY,
    scope TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    kind TEXT NOT NULL CHECK (kind IN ('uid', 'gid')),
    principal INTEGER NOT NULL,
    created_ns INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    form TEXT NOT NULL DEFAULT 'plain' CHECK (form IN ('plain', 'sealed')),
    UNIQUE (scope, name, kind, principal)
) STRICT;
-- Append-only: who did or tried what, never a value.
CREATE TABLE audit (
    id INTEGER PRIMARY KEY,
    time_ns INTEGER NOT NULL,
    source TEXT NOT NULL,
    action TEXT NOT NULL,
    ref TEXT,
    version INTEGER,
    uid INTEGER,
    gid INTEGER,
    pid INTEGER,
    process TEXT,
    outcome TEXT NOT NULL,
    detail TEXT
) STRICT;
CREATE INDEX audit_time ON audit (time_ns);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit records cannot be changed'); END;
CREATE TABLE audit_prune (before_ns INTEGER NOT NULL) STRICT;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
    WHEN NOT EXISTS (SELECT 1 FROM audit_prune WHERE OLD.time_ns < before_ns)
    BEGIN SELECT RAISE(ABORT, 'audit records cannot be deleted'); END;
"""
# Deletes pass the trigger only below the bound a prune writes in its own transaction.
_AUDIT_PRUNE_DDL = (
    "CREATE TABLE IF NOT EXISTS audit_prune (before_ns INTEGER NOT NULL) STRICT",
    "DROP TRIGGER IF EXISTS audit_no_delete",
    _SCHEMA[_SCHEMA.index("CREATE TRIGGER audit_no_delete") :].strip().rstrip(";"),
)

# Sealed reads (secretfs/sealing.py): added to format 1 in place, so a store made before
# them gets the table and the grants' form column when first opened for writing.
_SEALING_SCHEMA = """
CREATE TABLE IF NOT EXISTS client_keys (
    key_id TEXT PRIMARY KEY,
    public_key BLOB NOT NULL,
    label TEXT NOT NULL DEFAULT '',
    owner_uid INTEGER,
    created_ns INTEGER NOT NULL,
    revoked_ns INTEGER,
    last_used_ns INTEGER,
    seq INTEGER NOT NULL
) STRICT
"""
_GRANT_FORM_COLUMN = (
    "ALTER TABLE grants ADD COLUMN form TEXT NOT NULL DEFAULT 'plain'"
    " CHECK (form IN ('plain', 'sealed'))"
)

# A writer that changes what the mount shows without moving the change counters the
# daemon follows (secrets.seq, meta access_seq): sqlite3 by hand, a restore tool, an
# older secretfs. These triggers move them, so the change reaches the mount within a
# poll. (Who can write the file can also drop them: authenticity is the MACs' job.)
# Our own writes move the counters themselves, once: next_seq() marks the transaction
# (meta 'writing', deleted again before COMMIT, so never seen by anyone else).
_FOREIGN = "NOT EXISTS (SELECT 1 FROM meta WHERE k = 'writing')"
# meta.v holds the counters as ASCII digits in a BLOB (see meta_set).
_NEXT_SEQ = """
    INSERT INTO meta (k, v) VALUES ('seq', CAST('1' AS BLOB)) ON CONFLICT (k) DO UPDATE
        SET v = CAST(CAST(CAST(CAST(v AS TEXT) AS INTEGER) + 1 AS TEXT) AS BLOB);"""
_CURRENT_SEQ = "(SELECT CAST(CAST(v AS TEXT) AS INTEGER) FROM meta WHERE k = 'seq')"
_ACCESS_CHANGED = f"""
    INSERT INTO meta (k, v) VALUES ('access_seq', CAST(CAST({_CURRENT_SEQ} AS TEXT) AS BLOB))
        ON CONFLICT (k) DO UPDATE SET v = excluded.v;"""  # noqa: S608 - constants only
_CHANGE_TRIGGERS = (
    f"""CREATE TRIGGER IF NOT EXISTS secrets_change_seq AFTER UPDATE ON secrets
    WHEN NEW.seq = OLD.seq AND {_FOREIGN} BEGIN {_NEXT_SEQ}
    UPDATE secrets SET seq = {_CURRENT_SEQ} WHERE id = NEW.id; END""",  # noqa: S608
    *(
        f"""CREATE TRIGGER IF NOT EXISTS versions_{name}_seq AFTER {event} ON versions
    WHEN {_FOREIGN} BEGIN {_NEXT_SEQ}
    UPDATE secrets SET seq = {_CURRENT_SEQ} WHERE id = OLD.secret_id; END"""  # noqa: S608
        # Metadata only: a re-encryption rewrites ciphertext and moves seq itself.
        for name, event in (
            ("update", "UPDATE OF secret_id, version, created_ns, size, kind"),
            ("delete", "DELETE"),
        )
    ),
    *(
        f"""CREATE TRIGGER IF NOT EXISTS {table}_{event.lower()}_seq AFTER {event} ON {table}
    WHEN {_FOREIGN} BEGIN {_NEXT_SEQ} {_ACCESS_CHANGED} END"""
        for table in ("scopes", "grants")
        for event in ("INSERT", "UPDATE", "DELETE")
    ),
)

# A secret's row by the field names of store/records.py's row mapping.
_META_COLUMNS = """
    s.id, s.scope, s.name, s.version, s.deleted, coalesce(v.size, 0) AS size,
    coalesce(v.kind, 'raw') AS kind, s.created_ns,
    coalesce(v.created_ns, s.created_ns) AS updated_ns, s.uid, s.gid, s.mode,
    coalesce(v.fingerprint, '') AS fingerprint, s.seq, s.expires_ns, s.rotate_every_s
"""
_META_FROM = "secrets s LEFT JOIN versions v ON v.secret_id = s.id AND v.version = s.version"
_SEALED_COLUMNS = "v.secret_id, s.scope, s.name, v.version, v.key_gen, v.ciphertext"
_SEALED_FROM = "versions v JOIN secrets s ON s.id = v.secret_id"


class _Row(sqlite3.Row):
    """A row by index or by column name, read as a mapping by store/records.py."""

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except IndexError:
            return default


def _table_row(parse: Callable[[_Row], _T], table: str) -> Callable[[_Row], _T]:
    """`parse` of a row of `table`. A STRICT table holds a value of the wrong type only if
    its file was written around SQLite: such a row is a damaged record naming its table
    and id, never its content (not a ValueError from deep inside a command)."""

    def parsed(row: _Row) -> _T:
        try:
            return parse(row)
        except (KeyError, TypeError, ValueError):
            rowid = row.get("id", row.get("secret_id"))
            which = f"{rowid} of table {table}" if type(rowid) is int else f"of table {table}"
            raise damaged_fields(which.encode(), "row") from None

    return parsed


_secret_meta = _table_row(secret_meta, "secrets")
_scope_meta = _table_row(scope_meta, "scopes")
_grant_record = _table_row(grant_record, "grants")
_version_meta = _table_row(version_meta, "versions")
_audit_record = _table_row(audit_record, "audit")
_client_key = _table_row(lambda r: client_key_record(r, bytes(r["public_key"])), "client_keys")
_sealed = _table_row(lambda r: sealed_version(r, bytes(r["ciphertext"])), "versions")


@contextlib.contextmanager
def _store_errors() -> Iterator[None]:
    """SQLite's errors as the one hierarchy's StoreError (exit 7). SQLite's messages name
    tables and states, never bound values."""
    try:
        yield
    except sqlite3.Error as exc:
        raise StoreError(f"store: {exc}") from None


def _errors_mapped(cls: type[_T]) -> type[_T]:
    """Every public method and class method of `cls` raises StoreError, never
    sqlite3.Error (the context managers map their own: see transaction())."""

    def mapped(fn: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.isgeneratorfunction(fn):

            @functools.wraps(fn)
            def generator(*args: Any, **kwargs: Any) -> Iterator[Any]:
                with _store_errors():
                    yield from fn(*args, **kwargs)

            return generator

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            with _store_errors():
                return fn(*args, **kwargs)

        return call

    inherited = {k: v for klass in reversed(cls.__mro__[:-1]) for k, v in vars(klass).items()}
    for name, attr in inherited.items():
        if name.startswith("_") or name in ("transaction", "snapshot"):
            continue
        if isinstance(attr, classmethod):
            setattr(cls, name, classmethod(mapped(attr.__func__)))
        elif inspect.isfunction(attr):
            setattr(cls, name, mapped(attr))
    return cls


@dataclass(frozen=True, slots=True)
class SqliteLocation:
    """A store file on this machine (a `StoreLocation`)."""

    path: Path

    def __str__(self) -> str:
        return str(self.path)

    def open(self, *, readonly: bool = False) -> SqliteBackend:
        return SqliteBackend.open(self.path, readonly=readonly)

    def exists(self) -> bool:
        return self.path.exists()

    def create(self, init: Callable[[Backend], None]) -> None:
        SqliteBackend.create(self.path, init)

    def key_file(self) -> Path:
        return keys.key_file_path(self.path)

    def local_file(self) -> Path | None:
        return self.path

    def doctor_checks(self) -> tuple[list[Check], bool]:
        store = self.path
        if not store.exists():
            return [
                Check(
                    "store",
                    "fail",
                    f"no store at {store}",
                    "create one with `secretfs init`, or point --store / $SECRETFS_STORE at it",
                )
            ], False
        out = [mode_check("store", store, "encrypted store")]
        for suffix in ("-wal", "-shm"):
            side = Path(f"{store}{suffix}")
            if side.exists():
                out.append(mode_check(f"store{suffix}", side, "store's journal"))
        parent = store.parent.stat()
        if parent.st_mode & 0o002 and not parent.st_mode & stat.S_ISVTX:
            out.append(
                Check(
                    "store directory",
                    "fail",
                    f"{store.parent} is writable by everyone: anyone may replace the store",
                    f"chmod o-w {store.parent}",
                )
            )
        return out, True


@_errors_mapped
class SqliteBackend(RecordsBase):
    """Rows in, rows out. Every write method runs inside `transaction()`."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self._writing = False  # this transaction has taken a seq (see _FOREIGN)

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def create(cls, path: Path, init: Callable[[SqliteBackend], None]) -> None:
        """Create a store file (0600) with `init` run in its first transaction.

        Built under a temporary name and linked into place, so a crash leaves either no
        store or a complete one, and an existing store is never overwritten.
        """
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if path.exists():
            raise StoreExistsError(f"a store already exists at {path}")
        tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot create store at {path}: {exc.strerror}") from None
        os.close(fd)
        try:
            backend = cls(cls._connect(tmp), path)
            try:
                backend._conn.executescript(_SCHEMA)
                backend._conn.execute(_SEALING_SCHEMA)
                backend._add_change_triggers()
                backend._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                with backend.transaction():
                    init(backend)
            finally:
                backend.close()
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise StoreExistsError(f"a store already exists at {path}") from None
            fsync_dir(path.parent)
        finally:
            for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()

    @classmethod
    def open(cls, path: Path, *, readonly: bool = False) -> SqliteBackend:
        if not path.exists():
            raise StoreError(f"no store at {path}: run `secretfs init` (or pass --store)")
        backend = cls(cls._connect(path, readonly=readonly), path)
        try:
            version = backend._conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{path} is not a secretfs store: {exc}") from None
        if version != SCHEMA_VERSION:
            raise StoreError(
                f"{path} has store format {version}; this secretfs reads format {SCHEMA_VERSION}"
            )
        if not readonly:
            backend._add_sealing()
            backend._add_change_triggers()  # stores made before they existed get them here
        return backend

    def _has_sealing(self) -> bool:
        cols = self._conn.execute("PRAGMA table_info(grants)").fetchall()
        return any(c[1] == "form" for c in cols)

    def _add_sealing(self) -> None:
        """Add the client-keys table and the grants' form column if missing (idempotent)."""
        if self._has_sealing():
            return
        try:
            with self.transaction():
                if not self._has_sealing():  # another process may have just done it
                    self._conn.execute(_GRANT_FORM_COLUMN)
                    self._conn.execute(_SEALING_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot add sealed reads to {self.path}: {exc}") from None

    def _add_change_triggers(self) -> None:
        if self._conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name LIKE '%_seq'"
        ).fetchone()[0] != len(_CHANGE_TRIGGERS):
            # Each its own autocommit (like the schema): no extra transaction to count.
            for trigger in _CHANGE_TRIGGERS:
                self._conn.execute(trigger)

    @staticmethod
    def _connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
        # New -wal/-shm files inherit the db's mode only via umask: keep them 0600 too.
        old_umask = os.umask(0o077)
        try:
            uri = f"file:{path}?mode={'ro' if readonly else 'rw'}"
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            conn.row_factory = _Row
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA busy_timeout = 10000")
            conn.execute("PRAGMA secure_delete = ON")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open store {path}: {exc}") from None
        finally:
            os.umask(old_umask)
        return conn

    def close(self) -> None:
        self._conn.close()

    def close_replaced(self) -> None:
        """Close when the path now names another file (a restore): the WAL is emptied into
        the old file first, or SQLite would read the old pages into the new one."""
        with contextlib.suppress(sqlite3.Error):
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._conn.close()

    # -- the backend protocol (secretfs/store/base.py) beyond rows --------------------------

    @property
    def name(self) -> str:
        return str(self.path)

    def key_file(self) -> Path:
        return keys.key_file_path(self.path)

    def open_another(self) -> SqliteBackend:
        return SqliteBackend.open(self.path)

    def follow(self, clock: Clock = SYSTEM) -> None:
        """Reads are local already; `data_version` tells a mount of every commit."""

    def status(self) -> dict[str, object]:
        return local_status("sqlite", self.name, self.current_seq())

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction: all of it commits, or none of it."""
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise StoreError(f"cannot write to {self.path}: {exc} (another writer?)") from None
        try:
            with _store_errors():
                try:
                    yield
                    if self._writing:
                        self._conn.execute("DELETE FROM meta WHERE k = 'writing'")
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                checkpoint("before-commit")
                self._conn.execute("COMMIT")
                checkpoint("after-commit")
        finally:
            self._writing = False

    def write_batch(self, sizes: list[int]) -> int:
        return max(1, len(sizes))  # one file, one transaction of any size

    def prefetch_secrets(self, refs: list[tuple[str, str]]) -> None:
        pass  # reads are local

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """A read transaction: every read inside sees one committed state, no lock taken."""
        with _store_errors():
            self._conn.execute("BEGIN DEFERRED")
            try:
                yield
            finally:
                self._conn.execute("COMMIT")

    # -- meta ----------------------------------------------------------------------------

    def meta_get(self, key: str) -> bytes | None:
        row = self._conn.execute("SELECT v FROM meta WHERE k = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def meta_set(self, key: str, value: bytes) -> None:
        self._conn.execute(
            "INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
            (key, value),
        )

    def meta_delete(self, key: str) -> None:
        self._conn.execute("DELETE FROM meta WHERE k = ?", (key,))

    def meta_scan(self, prefix: str) -> dict[str, bytes]:
        """Every meta entry whose key starts with `prefix`."""
        rows = self._conn.execute(
            "SELECT k, v FROM meta WHERE substr(k, 1, ?) = ?", (len(prefix), prefix)
        )
        return {str(k): bytes(v) for k, v in rows}

    def next_seq(self) -> int:
        """Bump and return the store-wide change counter (inside a transaction)."""
        row = self._conn.execute("SELECT v FROM meta WHERE k = 'seq'").fetchone()
        seq = int(row[0]) + 1 if row else 1
        self.meta_set("seq", str(seq).encode())
        if not self._writing:
            self.meta_set("writing", b"1")
            self._writing = True
        return seq

    def current_seq(self) -> int:
        value = self.meta_get("seq")
        return int(value) if value else 0

    def data_version(self) -> int:
        """Changes whenever another connection commits: a cheap poll."""
        return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    # -- data keys -----------------------------------------------------------------------

    def data_keys(self) -> dict[int, bytes]:
        rows = self._conn.execute("SELECT gen, wrapped FROM data_keys").fetchall()
        return {int(gen): bytes(wrapped) for gen, wrapped in rows}

    def put_data_key(self, gen: int, wrapped: bytes, created_ns: int) -> None:
        self._conn.execute(
            "INSERT INTO data_keys (gen, wrapped, created_ns) VALUES (?, ?, ?)"
            " ON CONFLICT (gen) DO UPDATE SET wrapped = excluded.wrapped",
            (gen, wrapped, created_ns),
        )

    # -- secrets -------------------------------------------------------------------------

    def get_meta(self, scope: str, name: str) -> SecretMeta | None:
        row = self._conn.execute(
            f"SELECT {_META_COLUMNS} FROM {_META_FROM} WHERE s.scope = ? AND s.name = ?",  # noqa: S608
            (scope, name),
        ).fetchone()
        return None if row is None else _secret_meta(row)

    def list_meta(self, scope: str | None = None) -> list[SecretMeta]:
        where, args = (
            ("WHERE s.deleted = 0", ())
            if scope is None
            else (
                "WHERE s.deleted = 0 AND s.scope = ?",
                (scope,),
            )
        )
        rows = self._conn.execute(
            f"SELECT {_META_COLUMNS} FROM {_META_FROM} {where} ORDER BY s.scope, s.name",  # noqa: S608
            args,
        ).fetchall()
        return [_secret_meta(r) for r in rows]

    def changes_since(self, seq: int) -> list[SecretMeta]:
        """Every secret (removed ones included) changed after `seq`, oldest change first."""
        rows = self._conn.execute(
            f"SELECT {_META_COLUMNS} FROM {_META_FROM} WHERE s.seq > ? ORDER BY s.seq",  # noqa: S608
            (seq,),
        )
        # Row by row, not fetchall(): a mount starting on 100k secrets peaks lower.
        return [_secret_meta(r) for r in rows]

    def list_scopes(self) -> list[str]:
        rows = self._conn.execute(
            "SELECT DISTINCT scope FROM secrets WHERE deleted = 0 ORDER BY scope"
        ).fetchall()
        return [str(r[0]) for r in rows]

    def add_secret(self, scope: str, name: str, created_ns: int, seq: int) -> int:
        cur = self._conn.execute(
            "INSERT INTO secrets (scope, name, version, deleted, created_ns, seq)"
            " VALUES (?, ?, 0, 0, ?, ?)",
            (scope, name, created_ns, seq),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def revive_secret(self, secret_id: int, created_ns: int, seq: int) -> None:
        self._conn.execute(
            "UPDATE secrets SET deleted = 0, created_ns = ?, uid = NULL, gid = NULL,"
            " mode = NULL, expires_ns = NULL, rotate_every_s = NULL, seq = ? WHERE id = ?",
            (created_ns, seq, secret_id),
        )

    def put_version(self, secret_id: int, version: int, **new: Unpack[NewVersion]) -> None:
        """A new version (`NewVersion`'s fields), which becomes the current one."""
        self._conn.execute(
            "INSERT INTO versions (secret_id, version, created_ns, size, kind, key_gen,"
            " fingerprint, ciphertext) VALUES (:secret_id, :version, :created_ns, :size, :kind,"
            " :key_gen, :fingerprint, :ciphertext)",
            {**new, "secret_id": secret_id, "version": version},
        )
        self._conn.execute(
            "UPDATE secrets SET version = ?, seq = ? WHERE id = ?", (version, new["seq"], secret_id)
        )

    def set_owner(
        self, secret_id: int, uid: int | None, gid: int | None, mode: int | None, seq: int
    ) -> None:
        self._conn.execute(
            "UPDATE secrets SET uid = ?, gid = ?, mode = ?, seq = ? WHERE id = ?",
            (uid, gid, mode, seq, secret_id),
        )

    def remove_secret(self, secret_id: int, seq: int) -> None:
        """Drop every version; keep a tombstone so versions are never numbered twice."""
        self._conn.execute("DELETE FROM versions WHERE secret_id = ?", (secret_id,))
        self._conn.execute("UPDATE secrets SET deleted = 1, seq = ? WHERE id = ?", (seq, secret_id))

    def history(self, secret_id: int) -> list[VersionMeta]:
        rows = self._conn.execute(
            "SELECT version, created_ns, size, kind, key_gen, fingerprint FROM versions"
            " WHERE secret_id = ? ORDER BY version",
            (secret_id,),
        ).fetchall()
        return [_version_meta(r) for r in rows]

    def sealed(self, secret_id: int, version: int) -> SealedVersion | None:
        row = self._conn.execute(
            f"SELECT {_SEALED_COLUMNS} FROM {_SEALED_FROM}"  # noqa: S608 - constants only
            " WHERE v.secret_id = ? AND v.version = ?",
            (secret_id, version),
        ).fetchone()
        return None if row is None else _sealed(row)

    def all_sealed(self) -> Iterator[SealedVersion]:
        cur = self._conn.execute(
            f"SELECT {_SEALED_COLUMNS} FROM {_SEALED_FROM}"  # noqa: S608 - constants only
            " ORDER BY v.secret_id, v.version"
        )
        for row in cur:
            yield _sealed(row)

    # -- scope defaults and grants --------------------------------------------------------

    def _access_changed(self, seq: int) -> None:
        # Grants are deleted outright, so the daemon watches this mark, not their rows.
        self.meta_set("access_seq", str(seq).encode())

    def access_seq(self) -> int:
        """The store seq of the last change to a scope default or a grant (0: none)."""
        value = self.meta_get("access_seq")
        return int(value) if value else 0

    def get_scope_meta(self, scope: str) -> ScopeMeta | None:
        row = self._conn.execute(
            "SELECT scope, uid, gid, mode, seq FROM scopes WHERE scope = ?", (scope,)
        ).fetchone()
        return None if row is None else _scope_meta(row)

    def list_scope_meta(self) -> list[ScopeMeta]:
        rows = self._conn.execute(
            "SELECT scope, uid, gid, mode, seq FROM scopes ORDER BY scope"
        ).fetchall()
        return [_scope_meta(r) for r in rows]

    def set_scope_owner(
        self, scope: str, uid: int | None, gid: int | None, mode: int | None, seq: int
    ) -> None:
        self._conn.execute(
            "INSERT INTO scopes (scope, uid, gid, mode, seq) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (scope) DO UPDATE SET uid = excluded.uid, gid = excluded.gid,"
            " mode = excluded.mode, seq = excluded.seq",
            (scope, uid, gid, mode, seq),
        )
        self._access_changed(seq)

    def list_grants(self, scope: str | None = None, name: str | None = None) -> list[GrantRecord]:
        """Grants, all or of one scope; with `name`, only those on that secret ('' = scope)."""
        sql = (
            "SELECT scope, name, kind, principal, created_ns, form FROM grants"
            if self._has_sealing()
            else "SELECT scope, name, kind, principal, created_ns, 'plain' AS form FROM grants"
        )  # the latter: an older store opened read-only
        args: tuple[object, ...] = ()
        if scope is not None:
            sql += " WHERE scope = ?"
            args = (scope,)
            if name is not None:
                sql += " AND name = ?"
                args = (scope, name)
        rows = self._conn.execute(sql + " ORDER BY scope, name, kind, principal", args).fetchall()
        return [_grant_record(r) for r in rows]

    def _add_grant(self, grant: GrantRecord, seq: int) -> bool:
        cur = self._conn.execute(
            "INSERT INTO grants (scope, name, kind, principal, created_ns, seq, form)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (
                grant.scope,
                grant.name,
                grant.kind,
                grant.principal,
                grant.created_ns,
                seq,
                grant.form,
            ),
        )
        if cur.rowcount == 1:
            self._access_changed(seq)
            return True
        return False

    def remove_grant(self, grant: GrantRecord, seq: int) -> bool:
        cur = self._conn.execute(
            "DELETE FROM grants WHERE scope = ? AND name = ? AND kind = ? AND principal = ?",
            (grant.scope, grant.name, grant.kind, grant.principal),
        )
        if cur.rowcount:
            self._access_changed(seq)
        return cur.rowcount > 0

    # -- client keys ---------------------------------------------------------------------

    def list_client_keys(self) -> list[ClientKeyRecord]:
        if not self._has_sealing():
            return []
        rows = self._conn.execute(
            "SELECT key_id, public_key, label, owner_uid, created_ns, revoked_ns, last_used_ns"
            " FROM client_keys ORDER BY created_ns, key_id"
        ).fetchall()
        return [_client_key(r) for r in rows]

    def add_client_key(self, record: ClientKeyRecord, seq: int) -> None:
        self._conn.execute(
            "INSERT INTO client_keys (key_id, public_key, label, owner_uid, created_ns,"
            " revoked_ns, last_used_ns, seq) VALUES (:key_id, :public_key, :label, :owner_uid,"
            " :created_ns, :revoked_ns, :last_used_ns, :seq)",
            {**dataclasses.asdict(record), "seq": seq},
        )
        self._access_changed(seq)  # the mount's .sealed tree follows the keys

    def revoke_client_key(self, key_id: str, revoked_ns: int, seq: int) -> bool:
        cur = self._conn.execute(
            "UPDATE client_keys SET revoked_ns = ?, seq = ?"
            " WHERE key_id = ? AND revoked_ns IS NULL",
            (revoked_ns, seq, key_id),
        )
        if cur.rowcount:
            self._access_changed(seq)
        return cur.rowcount > 0

    def touch_client_keys(self, used: dict[str, int]) -> None:
        self._conn.executemany(
            "UPDATE client_keys SET last_used_ns = max(coalesce(last_used_ns, 0), ?)"
            " WHERE key_id = ?",
            [(ns, key_id) for key_id, ns in used.items()],
        )

    # -- audit ---------------------------------------------------------------------------

    def append_audit(self, records: list[AuditRecord]) -> None:
        self._conn.executemany(
            f"INSERT INTO audit ({', '.join(AUDIT_FIELDS)})"  # noqa: S608 - constants only
            f" VALUES ({', '.join(':' + f for f in AUDIT_FIELDS)})",
            [audit_row(r) for r in records],
        )

    def prune_audit(self, before_ns: int, *, dry_run: bool = False) -> int:
        """Delete the audit records older than `before_ns` (inside `transaction()`);
        returns how many. A store made before pruning existed gets its trigger here."""
        count: int = self._conn.execute(
            "SELECT count(*) FROM audit WHERE time_ns < ?", (before_ns,)
        ).fetchone()[0]
        if dry_run or not count:
            return count
        for statement in _AUDIT_PRUNE_DDL:
            self._conn.execute(statement)
        self._conn.execute("INSERT INTO audit_prune (before_ns) VALUES (?)", (before_ns,))
        self._conn.execute("DELETE FROM audit WHERE time_ns < ?", (before_ns,))
        self._conn.execute("DELETE FROM audit_prune")
        return count

    def read_audit(self, **query: Unpack[AuditQuery]) -> list[AuditRecord]:
        """Records that pass `query`, oldest first: SQL narrows by id and time (indexed),
        store/records.py filters (the refs) and limits."""
        where, args = "id > ?", [query.get("after_id", 0)]
        since_ns = query.get("since_ns")
        if since_ns is not None:
            where += " AND time_ns >= ?"
            args.append(since_ns)
        columns = "id, " + ", ".join(AUDIT_FIELDS)
        rows = self._conn.execute(
            f"SELECT {columns} FROM audit WHERE {where} ORDER BY id",  # noqa: S608 - constants
            args,
        )
        return select_audit((_audit_record(r) for r in rows), query)

    def compact_audit(self, before_ns: int) -> int:
        """Nothing to merge: every record is a row of one table already."""
        return 0

    # -- kept versions, expiry, key generations --------------------------------------------

    def set_schedule(
        self, secret_id: int, expires_ns: int | None, rotate_every_s: int | None, seq: int
    ) -> None:
        self._conn.execute(
            "UPDATE secrets SET expires_ns = ?, rotate_every_s = ?, seq = ? WHERE id = ?",
            (expires_ns, rotate_every_s, seq, secret_id),
        )

    def prune_versions(self, secret_id: int, keep: int) -> list[int]:
        """Delete all but the newest `keep` versions (the current one is the newest)."""
        rows = self._conn.execute("SELECT version FROM versions WHERE secret_id = ?", (secret_id,))
        gone = versions_to_prune((int(r[0]) for r in rows), keep)
        if gone:
            self._conn.execute(
                "DELETE FROM versions WHERE secret_id = ? AND version <= ?", (secret_id, gone[-1])
            )
        return gone

    def secrets_over(self, keep: int) -> list[int]:
        """Ids of secrets that keep more than `keep` versions."""
        rows = self._conn.execute(
            "SELECT secret_id FROM versions GROUP BY secret_id HAVING count(*) > ?"
            " ORDER BY secret_id",
            (keep,),
        ).fetchall()
        return [int(r[0]) for r in rows]

    def get_meta_by_id(self, secret_id: int) -> SecretMeta | None:
        row = self._conn.execute(
            f"SELECT {_META_COLUMNS} FROM {_META_FROM} WHERE s.id = ?",  # noqa: S608
            (secret_id,),
        ).fetchone()
        return None if row is None else _secret_meta(row)

    def data_key_info(self) -> list[tuple[int, int, int]]:
        """(generation, created_ns, versions sealed under it) for every data key."""
        rows = self._conn.execute(
            "SELECT d.gen, d.created_ns, (SELECT count(*) FROM versions v WHERE v.key_gen = d.gen)"
            " FROM data_keys d ORDER BY d.gen"
        ).fetchall()
        return [(int(g), int(c), int(n)) for g, c, n in rows]

    def delete_data_key(self, gen: int) -> None:
        self._conn.execute("DELETE FROM data_keys WHERE gen = ?", (gen,))

    def versions_not_under(self, gen: int) -> int:
        row = self._conn.execute(
            "SELECT count(*) FROM versions WHERE key_gen != ?", (gen,)
        ).fetchone()
        return int(row[0])

    def sealed_batch(self, not_gen: int, after: tuple[int, int], limit: int) -> list[SealedVersion]:
        """Up to `limit` versions not sealed under `not_gen`, after (secret_id, version)."""
        rows = self._conn.execute(
            f"SELECT {_SEALED_COLUMNS} FROM {_SEALED_FROM}"  # noqa: S608 - constants only
            " WHERE v.key_gen != ? AND (v.secret_id, v.version) > (?, ?)"
            " ORDER BY v.secret_id, v.version LIMIT ?",
            (not_gen, after[0], after[1], limit),
        ).fetchall()
        return [_sealed(r) for r in rows]

    def reseal_version(
        self, old: SealedVersion, new_gen: int, ciphertext: bytes, fingerprint: str
    ) -> None:
        self._conn.execute(
            "UPDATE versions SET key_gen = ?, ciphertext = ?, fingerprint = ?"
            " WHERE secret_id = ? AND version = ? AND key_gen = ?",
            (new_gen, ciphertext, fingerprint, old.secret_id, old.version, old.key_gen),
        )

    def touch_secrets(self, secret_ids: list[int], seq: int) -> None:
        """Mark secrets changed (a mount re-reads their metadata) without a new version."""
        self._conn.executemany(
            "UPDATE secrets SET seq = ? WHERE id = ?", [(seq, sid) for sid in secret_ids]
        )

    def foreign_key_problems(self) -> int:
        return len(self._conn.execute("PRAGMA foreign_key_check").fetchall())

    def integrity_check(self) -> str:
        return str(self._conn.execute("PRAGMA integrity_check").fetchone()[0])

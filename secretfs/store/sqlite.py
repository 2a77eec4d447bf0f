"""The embedded backend: one SQLite file in WAL mode, ciphertext and metadata only."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

from secretfs.errors import StoreError
from secretfs.store import SealedVersion, SecretMeta, VersionMeta

SCHEMA_VERSION = 1

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
"""

_META_COLUMNS = """
    s.id, s.scope, s.name, s.version, s.deleted, coalesce(v.size, 0), coalesce(v.kind, 'raw'),
    s.created_ns, coalesce(v.created_ns, s.created_ns), s.uid, s.gid, s.mode,
    coalesce(v.fingerprint, ''), s.seq
"""
_META_FROM = "secrets s LEFT JOIN versions v ON v.secret_id = s.id AND v.version = s.version"


def _meta(row: tuple[object, ...]) -> SecretMeta:
    (sid, scope, name, version, deleted, size, kind, created, updated, uid, gid, mode, fp, seq) = (
        row
    )
    return SecretMeta(
        secret_id=int(sid),  # type: ignore[call-overload]
        scope=str(scope),
        name=str(name),
        version=int(version),  # type: ignore[call-overload]
        deleted=bool(deleted),
        size=int(size),  # type: ignore[call-overload]
        kind=str(kind),
        created_ns=int(created),  # type: ignore[call-overload]
        updated_ns=int(updated),  # type: ignore[call-overload]
        uid=None if uid is None else int(uid),  # type: ignore[call-overload]
        gid=None if gid is None else int(gid),  # type: ignore[call-overload]
        mode=None if mode is None else int(mode),  # type: ignore[call-overload]
        fingerprint=str(fp),
        seq=int(seq),  # type: ignore[call-overload]
    )


class SqliteBackend:
    """Rows in, rows out. Every write method runs inside `transaction()`."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def create(cls, path: Path, init: Callable[[SqliteBackend], None]) -> None:
        """Create a store file (0600) with `init` run in its first transaction.

        Built under a temporary name and linked into place, so a crash leaves either no
        store or a complete one, and an existing store is never overwritten.
        """
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if path.exists():
            raise StoreError(f"a store already exists at {path}")
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
                backend._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                with backend.transaction():
                    init(backend)
            finally:
                backend.close()
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise StoreError(f"a store already exists at {path}") from None
            _fsync_dir(path.parent)
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
        return backend

    @staticmethod
    def _connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
        # New -wal/-shm files inherit the db's mode only via umask: keep them 0600 too.
        old_umask = os.umask(0o077)
        try:
            uri = f"file:{path}?mode={'ro' if readonly else 'rw'}"
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
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

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction: all of it commits, or none of it."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        else:
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

    def next_seq(self) -> int:
        """Bump and return the store-wide change counter (inside a transaction)."""
        row = self._conn.execute("SELECT v FROM meta WHERE k = 'seq'").fetchone()
        seq = int(row[0]) + 1 if row else 1
        self.meta_set("seq", str(seq).encode())
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
        return None if row is None else _meta(row)

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
        return [_meta(r) for r in rows]

    def changes_since(self, seq: int) -> list[SecretMeta]:
        """Every secret (removed ones included) changed after `seq`, oldest change first."""
        rows = self._conn.execute(
            f"SELECT {_META_COLUMNS} FROM {_META_FROM} WHERE s.seq > ? ORDER BY s.seq",  # noqa: S608
            (seq,),
        ).fetchall()
        return [_meta(r) for r in rows]

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
            " mode = NULL, seq = ? WHERE id = ?",
            (created_ns, seq, secret_id),
        )

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
        self._conn.execute(
            "INSERT INTO versions (secret_id, version, created_ns, size, kind, key_gen,"
            " fingerprint, ciphertext) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (secret_id, version, created_ns, size, kind, key_gen, fingerprint, ciphertext),
        )
        self._conn.execute(
            "UPDATE secrets SET version = ?, seq = ? WHERE id = ?", (version, seq, secret_id)
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
        return [
            VersionMeta(int(v), int(c), int(n), str(k), int(g), str(f)) for v, c, n, k, g, f in rows
        ]

    def sealed(self, secret_id: int, version: int) -> SealedVersion | None:
        row = self._conn.execute(
            "SELECT s.scope, s.name, v.key_gen, v.ciphertext FROM versions v"
            " JOIN secrets s ON s.id = v.secret_id WHERE v.secret_id = ? AND v.version = ?",
            (secret_id, version),
        ).fetchone()
        if row is None:
            return None
        scope, name, gen, blob = row
        return SealedVersion(secret_id, str(scope), str(name), version, int(gen), bytes(blob))

    def all_sealed(self) -> Iterator[SealedVersion]:
        cur = self._conn.execute(
            "SELECT v.secret_id, s.scope, s.name, v.version, v.key_gen, v.ciphertext"
            " FROM versions v JOIN secrets s ON s.id = v.secret_id ORDER BY v.secret_id, v.version"
        )
        for sid, scope, name, version, gen, blob in cur:
            yield SealedVersion(
                int(sid), str(scope), str(name), int(version), int(gen), bytes(blob)
            )

    def integrity_check(self) -> str:
        return str(self._conn.execute("PRAGMA integrity_check").fetchone()[0])


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""The mounted tree as pure logic: inodes, directory entries and attributes.

No FUSE here: the daemon feeds it store changes (`apply`) and the FS adapter asks it
questions. Nothing here decrypts a value except to learn a JSON secret's field names,
and what it keeps of that is the shape (names and sizes), never a value.

Sealed reads (secretfs/sealing.py): `.sealed/<key id>/` mirrors the tree of secret
files (no field files) for each live client key; each open seals the value afresh to
that key. Who may read a secret may open its sealed files, and so may a sealed-only
grantee, who may not open the plain file.

A secret's file has one inode per version: a new version is a new inode, so a handle
opened before keeps its snapshot and the kernel's page cache for it, while new lookups
see the new inode once the old directory entry is invalidated.
"""

from __future__ import annotations

import functools
import json
import stat
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from secretfs import expiry, fields, sealing
from secretfs.access import NOBODY, READ, WRITE, Caller, Layer, Readers, allowed
from secretfs.errors import NotFoundError
from secretfs.refs import Ref, Scope
from secretfs.store import ClientKeyRecord, GrantRecord, ScopeMeta, SecretMeta
from secretfs.timeutil import iso_time

ROOT_INODE = 1
DIR_MODE = 0o555  # structural directories; listings are filtered per caller instead
TOP_DIRS = ("deployment", "env", "project")
# The mount's own state (backend, connected, last revision, stale since) as JSON: a
# read-only file at the root that anyone may read, found by name but never listed.
STATUS_FILE = ".secretfs-status"
FSNAME = "secretfs"
# Every secret's file has these extended attributes, plus "expires" and "rotation-due"
# when it has them set (secretfs/expiry.py).
XATTRS = ("ref", "version", "created", "fingerprint", "expired")

_T = TypeVar("_T")


def mount_source(store: str) -> str:
    """The fsname a mount of `store` shows in mountinfo: a comma would end the mount
    option, so etcd://a:2379,b:2379/p shows as a:2379+b:2379."""
    return f"{FSNAME}:{store.replace(',', '+')}"


# Sealed copies of the tree, one per live client key; found by name but never listed.
SEALED_DIR = ".sealed"

NodeKind = Literal["dir", "secret", "fielddir", "field", "status"]
Shape = dict[str, "Shape | int"]  # a JSON container: name -> sub-container or leaf size


@dataclass(frozen=True, slots=True)
class Node:
    """One file or directory. `secret`/`field` are set for everything under a secret."""

    inode: int
    kind: NodeKind
    path: str  # relative to the mount root; "" for the root
    secret: SecretMeta | None = None
    field: tuple[str, ...] = ()
    # Under SEALED_DIR: "" for it, else the client key id (`path` is then the path in
    # the key's mirror of the tree). None: the plain tree.
    sealed: str | None = None

    @property
    def name(self) -> str:
        """Its name in its directory (a sealed key's directory: the key id)."""
        if not self.path and self.sealed is not None:
            return self.sealed or SEALED_DIR
        return self.path.rsplit("/", 1)[-1]

    @property
    def is_dir(self) -> bool:
        return self.kind in ("dir", "fielddir")

    @property
    def ref(self) -> Ref:
        assert self.secret is not None
        return Ref(Scope.from_key(self.secret.scope), self.secret.name, self.field)


@dataclass(frozen=True, slots=True)
class Attr:
    inode: int
    mode: int  # full st_mode, type bits included
    uid: int
    gid: int
    size: int
    mtime_ns: int
    ctime_ns: int
    nlink: int


@dataclass(frozen=True, slots=True)
class Owner:
    """The mount's defaults for what a secret does not set itself."""

    uid: int
    gid: int
    mode: int = 0o400


@dataclass(slots=True)
class Invalidation:
    """What the kernel may hold that a change made stale."""

    entries: list[tuple[int, str]] = field(default_factory=list)  # (parent inode, name)
    # Entries whose file was replaced or removed -> the inode it had: the kernel is told
    # that file was deleted (FUSE_NOTIFY_DELETE), so its inotify watchers get DELETE_SELF.
    replaced: dict[tuple[int, str], int] = field(default_factory=dict)
    inodes: list[int] = field(default_factory=list)  # attributes to drop

    def __bool__(self) -> bool:
        return bool(self.entries or self.inodes)

    def extend(self, other: Invalidation) -> None:
        self.entries.extend(other.entries)
        self.replaced.update(other.replaced)
        self.inodes.extend(other.inodes)


ValueLoader = Callable[[int, int], bytes]  # (secret_id, version) -> plaintext
StatusSource = Callable[[], dict[str, Any]]  # the backend's status, for STATUS_FILE


class Tree:
    def __init__(
        self,
        owner: Owner,
        load_value: ValueLoader,
        now_ns: int,
        status: StatusSource | None = None,
    ) -> None:
        self.owner = owner
        self._load_value = load_value
        self._status = status
        self._started_ns = now_ns
        self._scopes: dict[str, dict[str, SecretMeta]] = {}
        self._by_id: dict[int, SecretMeta] = {}
        self._inodes: dict[tuple[Any, ...], int] = {}
        self._nodes: dict[int, Node] = {}
        self._lookups: dict[int, int] = {}
        self._next_inode = ROOT_INODE + 1
        self._dir_mtime: dict[str, int] = {}
        self._shapes: OrderedDict[tuple[int, int], Shape | None] = OrderedDict()
        self._scope_defaults: dict[str, Layer] = {}
        self._grants: dict[tuple[str, str], Readers] = {}  # (scope, name or "") -> readers
        self._sealed_grants: dict[tuple[str, str], Readers] = {}  # sealed-only readers
        self._client_keys: dict[str, bytes] = {}  # live key id -> public key
        self.client_key_records: list[ClientKeyRecord] = []
        self._nodes[ROOT_INODE] = Node(ROOT_INODE, "dir", "")
        self._inodes[("dir", "")] = ROOT_INODE
        # (secret_id, version) -> inodes of its field files and directories below NAME.d,
        # so a new version names them for deletion without a walk over every node.
        self._field_inodes: dict[tuple[int, int], set[int]] = {}

    # -- feeding -------------------------------------------------------------------------

    def apply(self, changes: Iterable[SecretMeta], now_ns: int) -> Invalidation:
        """Take changed secrets (removed ones have `deleted`); say what to invalidate."""
        out = Invalidation()
        for meta in changes:
            old = self._by_id.get(meta.secret_id)
            if old is not None and old.version == meta.version and not meta.deleted:
                # Same version, new owner or mode: same inodes, new attributes.
                self._store(meta)
                out.inodes.extend(
                    n.inode
                    for n in self._nodes.values()
                    if n.secret is not None and n.secret.secret_id == meta.secret_id
                )
                continue
            if old is not None:
                self._drop(old)
                self._stale_entries(old, out)
                self._stale_sealed_entries(old, out)
            if not meta.deleted:
                self._store(meta)
            self._touch_dirs(meta.scope, now_ns, out)
        return out

    def set_access(
        self, scopes: Iterable[ScopeMeta], grants: Iterable[GrantRecord]
    ) -> Invalidation:
        """Take every scope default and grant; say which attributes they made stale."""
        defaults = {s.scope: Layer(s.uid, s.gid, s.mode) for s in scopes}
        changed = {
            key
            for key in self._scope_defaults.keys() | defaults.keys()
            if self._scope_defaults.get(key, Layer()) != defaults.get(key, Layer())
        }
        self._scope_defaults = defaults
        grants = list(grants)
        self._grants = _readers_by_target(g for g in grants if g.form == "plain")
        self._sealed_grants = _readers_by_target(g for g in grants if g.form == "sealed")
        # Grants change no attribute; scope defaults change every file's in the scope.
        out = Invalidation()
        if changed:
            out.inodes.extend(
                n.inode
                for n in self._nodes.values()
                if n.secret is not None and n.secret.scope in changed
            )
        return out

    def set_client_keys(self, keys: Iterable[ClientKeyRecord]) -> Invalidation:
        """Take every client key; a revoked one's `.sealed/<key id>` goes away."""
        keys = list(keys)
        self.client_key_records = keys  # revoked ones too: the resolver names them
        live = sealing.live_keys(keys)
        out = Invalidation()
        sealed_root = self._inodes.get(("sealed",))
        if sealed_root is not None:
            out.entries.extend((sealed_root, k) for k in self._client_keys.keys() - live.keys())
            out.inodes.append(sealed_root)
        if not live and self._client_keys:
            out.entries.append((ROOT_INODE, SEALED_DIR))
        self._client_keys = live
        return out

    def _store(self, meta: SecretMeta) -> None:
        self._scopes.setdefault(meta.scope, {})[meta.name] = meta
        self._by_id[meta.secret_id] = meta

    def _drop(self, meta: SecretMeta) -> None:
        del self._by_id[meta.secret_id]
        names = self._scopes.get(meta.scope)
        if names is not None:
            names.pop(meta.name, None)
            if not names:
                del self._scopes[meta.scope]

    def _stale_entries(self, old: SecretMeta, out: Invalidation) -> None:
        parent = self._inodes.get(("dir", old.scope))
        if parent is None:
            return
        sid, ver = old.secret_id, old.version
        self._stale_file(out, parent, old.name, self._inodes.get(("secret", sid, ver)))
        if old.kind == "json":
            # Field files first, deepest first: a directory's entry goes after its children.
            known = [self._nodes[i] for i in self._field_inodes.get((sid, ver), ())]
            for node in sorted(known, key=lambda n: -len(n.field)):
                up = self._inodes.get(("fielddir", sid, ver, node.field[:-1]))
                if up is not None:
                    # A directory is told plainly: "deleted" would need it empty in the kernel.
                    gone = node.inode if node.kind == "field" else None
                    self._stale_file(out, up, node.field[-1], gone)
            out.entries.append((parent, old.name + ".d"))

    def _stale_sealed_entries(self, old: SecretMeta, out: Invalidation) -> None:
        for key_id in self._client_keys:
            parent = self._inodes.get(("sdir", key_id, old.scope))
            if parent is not None:
                out.entries.append((parent, old.name))

    @staticmethod
    def _stale_file(out: Invalidation, parent: int, name: str, inode: int | None) -> None:
        out.entries.append((parent, name))
        if inode is not None:
            out.replaced[(parent, name)] = inode

    def _touch_dirs(self, scope_key: str, now_ns: int, out: Invalidation) -> None:
        parts = scope_key.split("/")
        for depth in range(len(parts) + 1):
            path = "/".join(parts[:depth])
            self._dir_mtime[path] = now_ns
            inode = self._inodes.get(("dir", path))
            if inode is not None:
                out.inodes.append(inode)
            parent = self._inodes.get(("dir", "/".join(parts[: depth - 1])))
            if depth and parent is not None and not _is_dir_path(path, self._scopes):
                # The directory went away with its last secret.
                out.entries.append((parent, parts[depth - 1]))

    # -- inodes --------------------------------------------------------------------------

    def _node(self, key: tuple[Any, ...], kind: NodeKind, path: str, **kw: Any) -> Node:
        inode = self._inodes.get(key)
        if inode is None:
            inode = self._next_inode
            self._next_inode += 1
            self._inodes[key] = inode
            node = self._nodes[inode] = Node(inode, kind, path, **kw)
            if node.field and node.secret is not None:
                ids = (node.secret.secret_id, node.secret.version)
                self._field_inodes.setdefault(ids, set()).add(inode)
        return self._nodes[inode]

    def known(self) -> list[SecretMeta]:
        """Every secret the tree serves (a re-opened store is compared with them)."""
        return list(self._by_id.values())

    def get(self, inode: int) -> Node | None:
        return self._nodes.get(inode)

    def meta(self, scope: str, name: str) -> SecretMeta | None:
        """The secret `name` of `scope` (a scope key) as the mount serves it now."""
        return self._scopes.get(scope, {}).get(name)

    def remember(self, inode: int) -> None:
        """The kernel got a reference to `inode` (lookup, readdirplus)."""
        self._lookups[inode] = self._lookups.get(inode, 0) + 1

    def forget(self, inode: int, count: int) -> None:
        left = self._lookups.get(inode, 0) - count
        if left > 0:
            self._lookups[inode] = left
            return
        self._lookups.pop(inode, None)
        node = self._nodes.get(inode)
        if node is None or inode == ROOT_INODE:
            return
        del self._nodes[inode]
        for key in _keys_of(node):
            if self._inodes.get(key) == inode:
                del self._inodes[key]
        if node.field and node.secret is not None:
            ids = (node.secret.secret_id, node.secret.version)
            fields_left = self._field_inodes.get(ids)
            if fields_left is not None:
                fields_left.discard(inode)
                if not fields_left:
                    del self._field_inodes[ids]

    @property
    def inode_count(self) -> int:
        return len(self._nodes)

    # -- questions -----------------------------------------------------------------------

    def lookup(self, parent: Node, name: str) -> Node | None:
        if parent.kind == "fielddir":
            return self._field_child(parent, name)
        if parent.kind != "dir":
            return None
        if parent.sealed is not None:
            return self._sealed_lookup(parent, name)
        if parent.path == "" and name == STATUS_FILE and self._status is not None:
            return self._node(("status",), "status", STATUS_FILE)
        if parent.path == "" and name == SEALED_DIR and self._client_keys:
            return self._node(("sealed",), "dir", "", sealed="")
        path = _join(parent.path, name)
        if _is_dir_path(path, self._scopes):
            return self._node(("dir", path), "dir", path)
        names = self._scopes.get(parent.path)
        if names is None:
            return None
        meta = names.get(name)
        if meta is not None:
            return self._node(("secret", meta.secret_id, meta.version), "secret", path, secret=meta)
        if name.endswith(".d"):
            meta = names.get(name[:-2])
            if meta is not None and meta.kind == "json":
                return self._node(
                    ("fielddir", meta.secret_id, meta.version, ()),
                    "fielddir",
                    path,
                    secret=meta,
                )
        return None

    def _sealed_lookup(self, parent: Node, name: str) -> Node | None:
        """A name under SEALED_DIR: a live key's directory, or its mirror of the tree."""
        if parent.sealed == "":
            if name not in self._client_keys:
                return None
            return self._node(("sdir", name, ""), "dir", "", sealed=name)
        key_id = parent.sealed
        if key_id not in self._client_keys:
            return None
        path = _join(parent.path, name)
        if _is_dir_path(path, self._scopes):
            return self._node(("sdir", key_id, path), "dir", path, sealed=key_id)
        meta = self._scopes.get(parent.path, {}).get(name)
        if meta is None:
            return None
        return self._node(
            ("ssecret", key_id, meta.secret_id, meta.version),
            "secret",
            path,
            secret=meta,
            sealed=key_id,
        )

    def listdir(self, parent: Node) -> list[Node]:
        if parent.kind == "fielddir":
            shape = self._shape_at(parent)
            return [n for n in (self._field_child(parent, k) for k in shape or {}) if n]
        if parent.kind != "dir":
            return []
        if parent.sealed == "":
            return [n for n in (self._sealed_lookup(parent, k) for k in self._client_keys) if n]
        out: list[Node] = []
        for name in _dir_children(parent.path, self._scopes):
            if parent.sealed is not None and name.endswith(".d") and parent.path in self._scopes:
                continue  # no field files in the sealed tree
            node = self.lookup(parent, name)
            if node is not None:
                out.append(node)
        return out

    def attr(self, node: Node) -> Attr:
        if node.kind == "status":
            size = len(self.status_text())
            now = time.time_ns()
            return Attr(node.inode, stat.S_IFREG | 0o444, 0, 0, size, now, now, 1)
        if node.kind == "dir":
            mtime = self._dir_mtime.get(node.path, self._started_ns)
            owner = self.owner
            return Attr(
                node.inode, stat.S_IFDIR | DIR_MODE, owner.uid, owner.gid, 0, mtime, mtime, 2
            )
        meta = self.current(node)
        uid, gid, mode = self.ownership(meta)
        if node.kind == "fielddir":
            dir_mode = mode | ((mode & 0o444) >> 2)  # x where r: a readable dir is traversable
            return Attr(
                node.inode,
                stat.S_IFDIR | dir_mode,
                uid,
                gid,
                0,
                meta.updated_ns,
                meta.updated_ns,
                2,
            )
        if node.sealed is not None:
            size = meta.size + sealing.OVERHEAD
        else:
            size = meta.size if node.kind == "secret" else self._field_size(node)
        return Attr(
            node.inode, stat.S_IFREG | mode, uid, gid, size, meta.updated_ns, meta.updated_ns, 1
        )

    def current(self, node: Node) -> SecretMeta:
        """The node's secret, with the newest owner and mode if it is still its version."""
        assert node.secret is not None
        now = self._by_id.get(node.secret.secret_id)
        return now if now is not None and now.version == node.secret.version else node.secret

    def superseded(self, node: Node) -> bool:
        """Is `node` a version the tree no longer serves (a newer one, or removed)?"""
        if node.secret is None or node.kind == "status":
            return False
        now = self._by_id.get(node.secret.secret_id)
        return now is None or now.version != node.secret.version

    def load_current(
        self, meta: SecretMeta, load: Callable[[SecretMeta], _T], catch_up: Callable[[], bool]
    ) -> tuple[SecretMeta, _T]:
        """`load(meta)`, or, if its version is gone from the store (NotFoundError: pruned,
        or the secret removed, after the tree last polled), `load` of the version current
        once `catch_up` took the store's changes in. Once: a store that keeps moving ends
        in NotFoundError, not a loop. (fs.open answers ESTALE: the kernel retries.)"""
        try:
            return meta, load(meta)
        except NotFoundError:
            catch_up()
            now = self._by_id.get(meta.secret_id)
            if now is None or now.version == meta.version:
                raise
        return now, load(now)

    def expired(self, node: Node, now_ns: int) -> bool:
        """Whether the version an open of `node` serves has expired (still served)."""
        meta = self.current(node)
        return meta.expires_ns is not None and expiry.status(meta, now_ns).expired

    def xattr_names(self, node: Node) -> list[str]:
        """The extended attributes of a secret's file (after `user.secretfs.`)."""
        meta = self.current(node)
        names = [*XATTRS]
        if meta.expires_ns is not None:
            names.append("expires")
        if meta.rotate_every_s:
            names.append("rotation-due")
        return names

    def xattr_value(self, node: Node, key: str, now_ns: int) -> bytes | None:
        """The value of one extended attribute of a secret's file; None: it has none."""
        meta = self.current(node)
        if key == "ref":
            return str(node.ref).encode()
        if key == "version":
            return str(meta.version).encode()
        if key == "created":
            # When this version was written, as ISO 8601 UTC.
            return iso_time(meta.updated_ns).encode()
        if key == "fingerprint":
            return meta.fingerprint.encode()
        state = expiry.status(meta, now_ns)
        if key == "expired":
            return b"true" if state.expired else b"false"
        if key == "expires" and state.expires_ns is not None:
            return iso_time(state.expires_ns).encode()
        if key == "rotation-due" and state.rotation_due_ns is not None:
            return iso_time(state.rotation_due_ns).encode()
        return None

    def ownership(self, meta: SecretMeta) -> tuple[int, int, int]:
        """uid, gid and mode, each from the secret, else its scope, else the mount.

        (access.resolve says the same, with sources; this is the fast path of every open.)
        """
        uid, gid, mode = meta.uid, meta.gid, meta.mode
        if uid is None or gid is None or mode is None:
            scope = self._scope_defaults.get(meta.scope)
            if scope is not None:
                uid = scope.uid if uid is None else uid
                gid = scope.gid if gid is None else gid
                mode = scope.mode if mode is None else mode
        return (
            self.owner.uid if uid is None else uid,
            self.owner.gid if gid is None else gid,
            self.owner.mode if mode is None else mode,
        )

    def readers(self, meta: SecretMeta) -> Readers:
        """Who grants let read the secret: its own grants and its scope's."""
        return self._grants.get((meta.scope, meta.name), NOBODY) | self._grants.get(
            (meta.scope, ""), NOBODY
        )

    def may(self, node: Node, caller: Caller, want: int) -> bool:
        """May `caller` do `want` (READ/EXEC bits) on `node`: mode bits, then grants."""
        if node.secret is None:
            return want & WRITE == 0  # structural directories are r-x (DIR_MODE) for all
        meta = self.current(node)
        if node.sealed is not None:
            return want & WRITE == 0 and self.may_read_sealed(meta, caller)
        uid, gid, mode = self.ownership(meta)
        if node.kind == "fielddir":
            mode |= (mode & 0o444) >> 2
        return allowed(mode, uid, gid, caller, want, self._readers_if_any(meta))

    def may_read(self, meta: SecretMeta, caller: Caller) -> bool:
        uid, gid, mode = self.ownership(meta)
        return allowed(mode, uid, gid, caller, READ, self._readers_if_any(meta))

    def may_read_sealed(self, meta: SecretMeta, caller: Caller) -> bool:
        """Who may read the value may read it sealed; so may a sealed-only grantee."""
        if self.may_read(meta, caller):
            return True
        grants = self._sealed_grants
        return bool(grants) and (
            grants.get((meta.scope, meta.name), NOBODY) | grants.get((meta.scope, ""), NOBODY)
        ).admits(caller)

    def _readers_if_any(self, meta: SecretMeta) -> Readers:
        return self.readers(meta) if self._grants else NOBODY

    def visible(self, node: Node, caller: Caller) -> bool:
        """Whether a directory listing shows `node` to `caller`.

        A secret (or its field directory) shows only to who may read it; a scope
        directory only to who may read a secret in it. The top directories always show.
        """
        if node.secret is not None:
            return self.may(node, caller, READ)
        if node.kind != "dir" or node.path in TOP_DIRS or node.path == "":
            return True
        may_read = self.may_read if node.sealed is None else self.may_read_sealed
        names = self._scopes.get(node.path)
        if names is not None:  # a scope directory (@svc, env/e, project/p/e)
            return any(may_read(meta, caller) for meta in names.values())
        prefix = node.path + "/"  # project/p: any of its environments
        return any(
            may_read(meta, caller)
            for key, names in self._scopes.items()
            if key.startswith(prefix)
            for meta in names.values()
        )

    def scopes(self) -> Iterable[tuple[str, dict[str, SecretMeta]]]:
        """Every scope key with its secrets (name -> current meta), for a scan."""
        return self._scopes.items()

    def find(self, scope: str, name: str) -> SecretMeta | None:
        """The current meta of one secret, or None."""
        names = self._scopes.get(scope)
        return None if names is None else names.get(name)

    def status_text(self) -> bytes:
        """STATUS_FILE's content: the backend's status as one JSON object."""
        status = self._status() if self._status is not None else {}
        return (json.dumps(status, sort_keys=True) + "\n").encode()

    def read(self, node: Node) -> bytes:
        """Decrypt the node's content (a whole secret or one field) for an open handle."""
        if node.kind == "status":
            return self.status_text()
        assert node.secret is not None
        return self.content(node, self._load_value(node.secret.secret_id, node.secret.version))

    def content(self, node: Node, value: bytes) -> bytes:
        """What the node's file holds, given its secret's whole value (this version's):
        for a sealed file, a fresh sealed box of it (NotFoundError once the key is gone)."""
        if node.sealed is not None:
            public_key = self._client_keys.get(node.sealed)
            if public_key is None:
                raise NotFoundError(f"client key {node.sealed} is revoked")
            return sealing.seal(value, public_key)
        if node.kind == "field":
            return fields.extract(value, node.field)
        return value

    # -- JSON fields ---------------------------------------------------------------------

    def _field_child(self, parent: Node, name: str) -> Node | None:
        shape = self._shape_at(parent)
        if shape is None or name not in shape:
            return None
        meta = parent.secret
        assert meta is not None
        path = (*parent.field, name)
        kind: NodeKind = "fielddir" if isinstance(shape[name], dict) else "field"
        return self._node(
            (kind, meta.secret_id, meta.version, path),
            kind,
            _join(parent.path, name),
            secret=meta,
            field=path,
        )

    def _shape_at(self, node: Node) -> Shape | None:
        assert node.secret is not None
        shape: Shape | int | None = self._shape(node.secret)
        for part in node.field:
            if not isinstance(shape, dict):
                return None
            shape = shape.get(part)
        return shape if isinstance(shape, dict) else None

    def _field_size(self, node: Node) -> int:
        assert node.secret is not None
        parent = Node(0, "fielddir", "", node.secret, node.field[:-1])
        shape = self._shape_at(parent)
        leaf = shape.get(node.field[-1]) if shape else None
        return leaf if isinstance(leaf, int) else 0

    def _shape(self, meta: SecretMeta) -> Shape | None:
        key = (meta.secret_id, meta.version)
        if key in self._shapes:
            self._shapes.move_to_end(key)
            return self._shapes[key]
        doc = fields.parse(self._load_value(meta.secret_id, meta.version))
        try:
            shape = _shape_of(doc) if doc is not None else None
        except RecursionError:  # nested deeper than the stack left here: no fields
            shape = None
        self._shapes[key] = shape
        if len(self._shapes) > 4096:
            self._shapes.popitem(last=False)
        return shape


def _shape_of(node: Any) -> Shape:
    out: Shape = {}
    for name, child in fields.children(node):
        out[name] = _shape_of(child) if fields.is_container(child) else len(fields.render(child))
    return out


def _readers_by_target(grants: Iterable[GrantRecord]) -> dict[tuple[str, str], Readers]:
    uids: dict[tuple[str, str], set[int]] = {}
    gids: dict[tuple[str, str], set[int]] = {}
    for g in grants:
        (uids if g.kind == "uid" else gids).setdefault((g.scope, g.name), set()).add(g.principal)
    return {
        key: Readers(frozenset(uids.get(key, ())), frozenset(gids.get(key, ())))
        for key in uids.keys() | gids.keys()
    }


def _keys_of(node: Node) -> list[tuple[Any, ...]]:
    if node.sealed == "":
        return [("sealed",)]
    if node.sealed is not None:
        assert node.kind in ("dir", "secret")
        if node.kind == "dir":
            return [("sdir", node.sealed, node.path)]
        assert node.secret is not None
        return [("ssecret", node.sealed, node.secret.secret_id, node.secret.version)]
    if node.kind == "dir":
        return [("dir", node.path)]
    if node.kind == "status":
        return [("status",)]
    assert node.secret is not None
    sid, ver = node.secret.secret_id, node.secret.version
    if node.kind == "secret":
        return [("secret", sid, ver)]
    return [(node.kind, sid, ver, node.field)]


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _is_dir_path(path: str, scopes: dict[str, dict[str, SecretMeta]]) -> bool:
    """A structural directory: a top dir, a scope that has secrets, or a prefix of one."""
    if path in TOP_DIRS:
        return True
    if path in scopes:
        return True
    prefix = path + "/"
    return path.startswith("project/") and any(k.startswith(prefix) for k in scopes)


def _dir_children(path: str, scopes: dict[str, dict[str, SecretMeta]]) -> list[str]:
    if path in scopes:
        names: list[str] = []
        for name, meta in scopes[path].items():
            names.append(name)
            if meta.kind == "json":
                names.append(name + ".d")
        return sorted(names)
    if path == "":
        services = {k for k in scopes if k.startswith("@")}
        return [*TOP_DIRS, *sorted(services)]
    prefix = path + "/"
    below = {k[len(prefix) :].split("/", 1)[0] for k in scopes if k.startswith(prefix)}
    return sorted(below)


@functools.lru_cache(maxsize=8192)
def ref_text(scope: str, name: str, field: tuple[str, ...]) -> str:
    """The ref of a secret's (or field's) file as text, for audit records."""
    # Building a Ref validates every name: too slow to repeat on each audited open.
    return str(Ref(Scope.from_key(scope), name, field))

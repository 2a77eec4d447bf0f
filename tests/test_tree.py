"""The mounted tree as pure logic (SPEC §3), driven without FUSE.

Secrets are SecretMeta records built by hand; values come from a dict through the real
`load_value(secret_id, version) -> bytes` interface, which counts its calls.
"""

from __future__ import annotations

import stat
from dataclasses import fields as dataclass_fields
from dataclasses import is_dataclass, replace
from typing import Any

import pytest

from secretfs import fields
from secretfs.refs import DEPLOYMENT, Ref, Scope, parse_ref
from secretfs.store import SecretMeta
from secretfs.tree import ROOT_INODE, Attr, Invalidation, Node, Owner, Tree

UID, GID = 1000, 1001
T0 = 1_700_000_000_000_000_000  # when the tree was built
T1 = T0 + 5_000_000_000

DB = (
    b'{"user": "admin", "password": "hunter2-s3cr3t", "port": 5432, "price": 2.50,'
    b' "big": 1e3, "tls": true, "debug": false, "ca": null, "name": "P\xc3\xa4ssw\xc3\xb6rd",'
    b' "replicas": [{"host": "db-a.internal"}, {"host": "db-b.internal"}],'
    b' "opts": {"pool": {"max": 10}, "tags": ["x", "y", "z"]}}'
)
DB_FIELDS = ["big", "ca", "debug", "name", "opts", "password", "port", "price", "replicas"]
DB_FIELDS += ["tls", "user"]


class Store:
    """Secret values by (secret_id, version); `load` is the tree's value loader."""

    def __init__(self) -> None:
        self.values: dict[tuple[int, int], bytes] = {}
        self.loads: list[tuple[int, int]] = []
        self._ids: dict[tuple[str, str], int] = {}
        self._current: dict[int, SecretMeta] = {}

    def load(self, secret_id: int, version: int) -> bytes:
        self.loads.append((secret_id, version))
        return self.values[(secret_id, version)]

    def put(self, scope: str, name: str, value: bytes, **kw: Any) -> SecretMeta:
        """A new secret, or a new version of an existing one (like `set`)."""
        sid = self._ids.setdefault((scope, name), len(self._ids) + 1)
        old = self._current.get(sid)
        version = old.version + 1 if old is not None else 1
        self.values[(sid, version)] = value
        meta = SecretMeta(
            secret_id=sid,
            scope=scope,
            name=name,
            version=version,
            deleted=False,
            size=len(value),
            kind="json" if fields.parse(value) is not None else "raw",
            created_ns=old.created_ns if old is not None else T0 - 10**9,
            updated_ns=kw.pop("updated_ns", T0 - 10**9 + version),
            uid=kw.pop("uid", None),
            gid=kw.pop("gid", None),
            mode=kw.pop("mode", None),
            fingerprint=f"fp-{sid}-{version}",
            seq=len(self.values),
        )
        assert not kw, kw
        self._current[sid] = meta
        return meta

    def chown(self, meta: SecretMeta, **kw: Any) -> SecretMeta:
        """Same version, new uid/gid/mode (like `chmod`/`chown`)."""
        meta = replace(meta, seq=meta.seq + 1000, **kw)
        self._current[meta.secret_id] = meta
        return meta

    def remove(self, meta: SecretMeta) -> SecretMeta:
        meta = replace(self._current[meta.secret_id], deleted=True, seq=meta.seq + 2000)
        self._current[meta.secret_id] = meta
        return meta


@pytest.fixture
def store() -> Store:
    return Store()


@pytest.fixture
def tree(store: Store) -> Tree:
    return Tree(Owner(UID, GID), store.load, T0)


def root(tree: Tree) -> Node:
    node = tree.get(ROOT_INODE)
    assert node is not None
    return node


def walk(tree: Tree, path: str, *, remember: bool = False) -> Node | None:
    """Look `path` up one component at a time, as the kernel does."""
    node: Node | None = root(tree)
    for part in path.split("/") if path else []:
        assert node is not None
        node = tree.lookup(node, part)
        if node is None:
            return None
        if remember:
            tree.remember(node.inode)
    return node


def must(tree: Tree, path: str, *, remember: bool = False) -> Node:
    node = walk(tree, path, remember=remember)
    assert node is not None, path
    return node


def ls(tree: Tree, path: str) -> list[str]:
    return sorted(n.path.rsplit("/", 1)[-1] for n in tree.listdir(must(tree, path)))


def populate(tree: Tree, store: Store, *secrets: tuple[str, str, bytes]) -> list[SecretMeta]:
    metas = [store.put(scope, name, value) for scope, name, value in secrets]
    tree.apply(metas, T0)
    return metas


# --------------------------------------------------------------------------- structure


def test_root_lists_the_top_directories_even_when_empty(tree: Tree) -> None:
    assert ls(tree, "") == ["deployment", "env", "project"]
    for top in ("deployment", "env", "project"):
        node = must(tree, top)
        assert node.kind == "dir"
        assert node.is_dir
        assert node.path == top
        assert tree.listdir(node) == []
    assert walk(tree, "@api") is None
    assert walk(tree, "nope") is None
    assert walk(tree, "deployment/db") is None


def test_service_directories_show_only_with_secrets(tree: Tree, store: Store) -> None:
    populate(
        tree,
        store,
        ("@api", "token", b"t0k"),
        ("@web", "key", b"k"),
        ("deployment", "db", b"x"),
    )
    assert ls(tree, "") == ["@api", "@web", "deployment", "env", "project"]
    assert ls(tree, "@api") == ["token"]
    assert must(tree, "@api").kind == "dir"
    token = must(tree, "@api/token")
    assert token.kind == "secret"
    assert token.path == "@api/token"
    assert token.ref == parse_ref("$S:@api/token")
    assert walk(tree, "@db") is None


def test_env_and_project_structure(tree: Tree, store: Store) -> None:
    populate(
        tree,
        store,
        ("env/staging", "db", b"s"),
        ("env/staging", "cache", b"c"),
        ("env/prod", "db", b"p"),
        ("project/shop/prod", "db", b"sp"),
        ("project/shop/dev", "db", b"sd"),
        ("project/blog/prod", "key", b"bp"),
    )
    assert ls(tree, "env") == ["prod", "staging"]
    assert ls(tree, "env/staging") == ["cache", "db"]
    assert ls(tree, "project") == ["blog", "shop"]
    assert ls(tree, "project/shop") == ["dev", "prod"]
    assert ls(tree, "project/shop/prod") == ["db"]
    assert ls(tree, "project/blog/prod") == ["key"]
    assert ls(tree, "deployment") == []
    for path in ("env/staging", "project/shop", "project/shop/prod"):
        assert must(tree, path).kind == "dir"
        assert must(tree, path).path == path

    db = must(tree, "env/staging/db")
    assert (db.kind, db.path, db.field) == ("secret", "env/staging/db", ())
    assert db.ref == parse_ref("$S::staging/db")
    assert db.ref.path == db.path
    shop = must(tree, "project/shop/prod/db")
    assert shop.ref == Ref(Scope("project", project="shop", env="prod"), "db")
    assert shop.ref.path == shop.path
    assert tree.read(shop) == b"sp"

    for missing in ("env/qa", "project/shop/qa", "project/nope", "env/staging/nope"):
        assert walk(tree, missing) is None
    # Secrets are files: nothing below them, nothing listed in them.
    assert tree.lookup(db, "x") is None
    assert tree.listdir(db) == []


def test_lookups_of_the_same_path_give_the_same_node(tree: Tree, store: Store) -> None:
    populate(tree, store, ("deployment", "db", DB))
    assert must(tree, "deployment").inode == must(tree, "deployment").inode
    assert must(tree, "deployment/db") == must(tree, "deployment/db")
    assert must(tree, "deployment/db.d/port") == must(tree, "deployment/db.d/port")
    inodes = [must(tree, p).inode for p in ("", "deployment", "deployment/db", "deployment/db.d")]
    assert len(set(inodes)) == len(inodes)
    assert inodes[0] == ROOT_INODE


# --------------------------------------------------------------------------- JSON fields


def test_json_secret_gets_a_sibling_field_directory(tree: Tree, store: Store) -> None:
    populate(tree, store, ("deployment", "db", DB), ("deployment", "token", b"plain"))
    assert ls(tree, "deployment") == ["db", "db.d", "token"]
    assert walk(tree, "deployment/token.d") is None
    assert walk(tree, "deployment/db.d.d") is None

    fd = must(tree, "deployment/db.d")
    assert (fd.kind, fd.path, fd.field) == ("fielddir", "deployment/db.d", ())
    assert fd.is_dir
    assert fd.ref == Ref(DEPLOYMENT, "db")
    assert ls(tree, "deployment/db.d") == DB_FIELDS

    port = must(tree, "deployment/db.d/port")
    assert (port.kind, port.path, port.field) == ("field", "deployment/db.d/port", ("port",))
    assert not port.is_dir
    assert port.ref == parse_ref("$S:db/port")
    assert port.ref.path == port.path
    # A field file is a leaf.
    assert tree.lookup(port, "x") is None
    assert tree.listdir(port) == []


def test_nested_objects_and_arrays_are_directories(tree: Tree, store: Store) -> None:
    populate(tree, store, ("env/prod", "db", DB))
    replicas = must(tree, "env/prod/db.d/replicas")
    assert replicas.kind == "fielddir"
    assert replicas.field == ("replicas",)
    assert ls(tree, "env/prod/db.d/replicas") == ["0", "1"]
    first = must(tree, "env/prod/db.d/replicas/0")
    assert first.kind == "fielddir"
    assert ls(tree, "env/prod/db.d/replicas/0") == ["host"]
    host = must(tree, "env/prod/db.d/replicas/1/host")
    assert host.kind == "field"
    assert host.field == ("replicas", "1", "host")
    assert host.ref == parse_ref("$S::prod/db/replicas/1/host")
    assert host.path == "env/prod/db.d/replicas/1/host"
    assert tree.read(host) == b"db-b.internal"

    assert ls(tree, "env/prod/db.d/opts") == ["pool", "tags"]
    assert ls(tree, "env/prod/db.d/opts/pool") == ["max"]
    assert ls(tree, "env/prod/db.d/opts/tags") == ["0", "1", "2"]
    assert tree.read(must(tree, "env/prod/db.d/opts/tags/2")) == b"z"
    for missing in ("replicas/2", "replicas/01", "replicas/-1", "opts/nope", "port/x"):
        assert walk(tree, "env/prod/db.d/" + missing) is None


def test_top_level_array_and_empty_containers(tree: Tree, store: Store) -> None:
    populate(
        tree,
        store,
        ("deployment", "list", b'["a", 2, [3, [4]], {}, []]'),
        ("deployment", "empty", b"{}"),
        ("deployment", "none", b"[]"),
    )
    assert ls(tree, "deployment") == ["empty", "empty.d", "list", "list.d", "none", "none.d"]
    assert ls(tree, "deployment/list.d") == ["0", "1", "2", "3", "4"]
    assert [n.kind for n in tree.listdir(must(tree, "deployment/list.d"))] == [
        "field",
        "field",
        "fielddir",
        "fielddir",
        "fielddir",
    ]
    assert ls(tree, "deployment/list.d/2") == ["0", "1"]
    assert ls(tree, "deployment/list.d/2/1") == ["0"]
    assert tree.read(must(tree, "deployment/list.d/2/1/0")) == b"4"
    assert ls(tree, "deployment/list.d/3") == []
    assert ls(tree, "deployment/empty.d") == []
    assert ls(tree, "deployment/none.d") == []


def test_keys_that_cannot_be_file_names_are_left_out(tree: Tree, store: Store) -> None:
    long_ok, long_bad = "k" * 255, "k" * 256
    wide_ok, wide_bad = "é" * 127, "é" * 128  # 254 and 256 bytes of UTF-8
    value = (
        '{"": 1, ".": 2, "..": 3, "a/b": 4, "/": 5, "nul\\u0000": 6, "lone\\ud800": 7,'
        f' "{long_bad}": 8, "{wide_bad}": 9, "{long_ok}": 10, "{wide_ok}": 11, "ok": 12,'
        ' "...": 13, "a b": 14, "sub": {"": 0, "..": 0, "x/y": 0, "fine": 0}}'
    ).encode()
    populate(tree, store, ("deployment", "odd", value))
    assert ls(tree, "deployment/odd.d") == sorted(["...", "a b", long_ok, "ok", "sub", wide_ok])
    assert ls(tree, "deployment/odd.d/sub") == ["fine"]
    fd = must(tree, "deployment/odd.d")
    for bad in ("", ".", "..", "a/b", "/", "nul\x00", long_bad, wide_bad, "lone\ud800"):
        assert tree.lookup(fd, bad) is None
    assert tree.read(must(tree, f"deployment/odd.d/{wide_ok}")) == b"11"


def test_a_value_that_does_not_parse_has_an_empty_field_directory(tree: Tree, store: Store) -> None:
    meta = replace(store.put("deployment", "bad", b"{not json"), kind="json")
    tree.apply([meta], T0)
    assert ls(tree, "deployment") == ["bad", "bad.d"]
    assert ls(tree, "deployment/bad.d") == []
    assert walk(tree, "deployment/bad.d/x") is None


def test_deeply_nested_json_does_not_crash_the_tree(tree: Tree, store: Store) -> None:
    depth = 100_000
    meta = replace(store.put("deployment", "deep", b"[" * depth + b"]" * depth), kind="json")
    tree.apply([meta], T0)
    assert ls(tree, "deployment/deep.d") == []


def test_a_lone_surrogate_in_a_value_does_not_break_the_directory(tree: Tree, store: Store) -> None:
    populate(tree, store, ("deployment", "odd", b'{"s": "a\\ud800", "ok": "fine"}'))
    assert ls(tree, "deployment/odd.d") == ["ok", "s"]
    node = must(tree, "deployment/odd.d/s")
    assert tree.attr(node).size == len(tree.read(node))
    assert tree.read(must(tree, "deployment/odd.d/ok")) == b"fine"


# --------------------------------------------------------------------------- attributes


def test_secret_attributes_default_to_the_mount_owner(tree: Tree, store: Store) -> None:
    value = "päss\x00\n".encode()
    meta = store.put("deployment", "pw", value, updated_ns=T0 - 123)
    tree.apply([meta], T1)
    node = must(tree, "deployment/pw")
    a = tree.attr(node)
    assert a == Attr(
        inode=node.inode,
        mode=stat.S_IFREG | 0o400,
        uid=UID,
        gid=GID,
        size=len(value),
        mtime_ns=T0 - 123,
        ctime_ns=T0 - 123,
        nlink=1,
    )
    assert a.size == 7  # bytes, not characters


def test_mount_owner_mode_is_the_default_mode(store: Store) -> None:
    tree = Tree(Owner(7, 8, 0o440), store.load, T0)
    populate(tree, store, ("deployment", "x", b"1"))
    a = tree.attr(must(tree, "deployment/x"))
    assert (a.mode, a.uid, a.gid) == (stat.S_IFREG | 0o440, 7, 8)


def test_directory_attributes(tree: Tree, store: Store) -> None:
    populate(tree, store, ("project/shop/prod", "db", b"x"), ("@api", "t", b"y"))
    for path in ("", "deployment", "env", "project", "project/shop", "project/shop/prod", "@api"):
        node = must(tree, path)
        a = tree.attr(node)
        assert stat.S_ISDIR(a.mode), path
        assert stat.S_IMODE(a.mode) == 0o555, path
        assert (a.inode, a.uid, a.gid, a.size) == (node.inode, UID, GID, 0)
        assert a.nlink >= 2


def test_directory_mtime_follows_changes(tree: Tree, store: Store) -> None:
    assert tree.attr(must(tree, "deployment")).mtime_ns == T0
    tree.apply([store.put("env/qa", "x", b"1")], T1)
    for path in ("", "env", "env/qa"):
        assert tree.attr(must(tree, path)).mtime_ns == T1
    assert tree.attr(must(tree, "deployment")).mtime_ns == T0


def test_field_attributes(tree: Tree, store: Store) -> None:
    meta = store.put("deployment", "db", DB, updated_ns=T0 + 42)
    tree.apply([meta], T1)
    expected_sizes = {
        "user": 5,
        "password": 14,
        "port": 4,
        "price": 4,  # "2.50"
        "big": 3,  # "1e3"
        "tls": 4,
        "debug": 5,
        "ca": 0,
        "name": len("Pässwörd".encode()),
    }
    for name, size in expected_sizes.items():
        node = must(tree, f"deployment/db.d/{name}")
        a = tree.attr(node)
        assert a.size == size, name
        assert a.size == len(tree.read(node)), name
        assert (a.mode, a.uid, a.gid) == (stat.S_IFREG | 0o400, UID, GID)
        assert (a.mtime_ns, a.ctime_ns, a.nlink) == (T0 + 42, T0 + 42, 1)
    for path in ("db.d", "db.d/replicas", "db.d/replicas/0", "db.d/opts/tags"):
        a = tree.attr(must(tree, "deployment/" + path))
        assert stat.S_ISDIR(a.mode)
        assert stat.S_IMODE(a.mode) == 0o500, path
        assert (a.uid, a.gid, a.mtime_ns) == (UID, GID, T0 + 42)
    assert tree.attr(must(tree, "deployment/db.d/replicas/0/host")).size == 13


def test_per_secret_owner_and_mode(tree: Tree, store: Store) -> None:
    meta = store.put("deployment", "db", DB, uid=0, gid=55, mode=0o440)
    plain = store.put("deployment", "other", b"x")
    tree.apply([meta, plain], T0)
    a = tree.attr(must(tree, "deployment/db"))
    assert (a.mode, a.uid, a.gid) == (stat.S_IFREG | 0o440, 0, 55)
    a = tree.attr(must(tree, "deployment/db.d"))
    assert (a.mode, a.uid, a.gid) == (stat.S_IFDIR | 0o550, 0, 55)
    a = tree.attr(must(tree, "deployment/db.d/opts/pool"))
    assert (a.mode, a.uid, a.gid) == (stat.S_IFDIR | 0o550, 0, 55)
    a = tree.attr(must(tree, "deployment/db.d/opts/pool/max"))
    assert (a.mode, a.uid, a.gid) == (stat.S_IFREG | 0o440, 0, 55)
    # Only what the secret sets is overridden; the rest comes from the mount.
    a = tree.attr(must(tree, "deployment/other"))
    assert (a.mode, a.uid, a.gid) == (stat.S_IFREG | 0o400, UID, GID)
    partial = store.put("deployment", "half", b"{}", gid=9)
    tree.apply([partial], T0)
    a = tree.attr(must(tree, "deployment/half"))
    assert (a.mode, a.uid, a.gid) == (stat.S_IFREG | 0o400, UID, 9)


def test_mode_zero_is_an_override_not_a_default(tree: Tree, store: Store) -> None:
    tree.apply([store.put("deployment", "locked", b"{}", mode=0, uid=0, gid=0)], T0)
    assert tree.attr(must(tree, "deployment/locked")).mode == stat.S_IFREG
    assert tree.attr(must(tree, "deployment/locked.d")).mode == stat.S_IFDIR
    assert tree.attr(must(tree, "deployment/locked")).uid == 0


@pytest.mark.parametrize(
    ("mode", "dir_mode"),
    [
        (0o400, 0o500),
        (0o440, 0o550),
        (0o444, 0o555),
        (0o640, 0o750),
        (0o604, 0o705),
        (0o044, 0o055),
        (0o600, 0o700),
        (0o200, 0o200),
        (0o000, 0o000),
    ],
)
def test_field_directory_gets_x_where_r(tree: Tree, store: Store, mode: int, dir_mode: int) -> None:
    tree.apply([store.put("deployment", "db", DB, mode=mode)], T0)
    assert tree.attr(must(tree, "deployment/db.d")).mode == stat.S_IFDIR | dir_mode
    assert tree.attr(must(tree, "deployment/db.d/replicas")).mode == stat.S_IFDIR | dir_mode
    assert tree.attr(must(tree, "deployment/db.d/user")).mode == stat.S_IFREG | mode
    assert tree.attr(must(tree, "deployment/db")).mode == stat.S_IFREG | mode


# --------------------------------------------------------------------------- decryption


def test_non_json_secrets_are_never_decrypted_for_metadata(tree: Tree, store: Store) -> None:
    populate(
        tree,
        store,
        ("deployment", "a", b"one"),
        ("@api", "b", b"two"),
        ("env/x", "c", b"[not json"),
        ("project/p/e", "d", b"4"),
    )
    for _ in range(2):
        for path in ("deployment/a", "@api/b", "env/x/c", "project/p/e/d"):
            node = must(tree, path)
            tree.attr(node)
            tree.listdir(node)
            tree.lookup(node, "x")
            assert walk(tree, path + ".d") is None
        for path in ("", "deployment", "@api", "env", "env/x", "project", "project/p"):
            for child in tree.listdir(must(tree, path)):
                tree.attr(child)
    assert store.loads == []
    assert tree.read(must(tree, "deployment/a")) == b"one"
    assert store.loads == [(1, 1)]


def test_json_secret_metadata_needs_no_value_until_fields_are_asked(
    tree: Tree, store: Store
) -> None:
    populate(tree, store, ("deployment", "db", DB))
    for child in tree.listdir(must(tree, "deployment")):
        tree.attr(child)
    tree.attr(must(tree, "deployment/db.d"))
    assert store.loads == []


def test_json_shape_is_computed_once_per_version(tree: Tree, store: Store) -> None:
    (meta,) = populate(tree, store, ("deployment", "db", DB))
    for _ in range(3):
        for path in ("deployment/db.d", "deployment/db.d/replicas", "deployment/db.d/opts/tags"):
            for child in tree.listdir(must(tree, path)):
                tree.attr(child)
        tree.attr(must(tree, "deployment/db.d/replicas/1/host"))
        assert walk(tree, "deployment/db.d/nope") is None
    assert store.loads == [(meta.secret_id, 1)]

    # A new owner at the same version keeps the shape.
    tree.apply([store.chown(meta, mode=0o440)], T1)
    ls(tree, "deployment/db.d")
    assert store.loads == [(meta.secret_id, 1)]

    # A new version is a new shape: loaded once more, then cached again.
    tree.apply([store.put("deployment", "db", b'{"only": "this"}')], T1)
    for _ in range(3):
        assert ls(tree, "deployment/db.d") == ["only"]
        assert tree.attr(must(tree, "deployment/db.d/only")).size == 4
    assert store.loads == [(meta.secret_id, 1), (meta.secret_id, 2)]


def _reachable(obj: Any) -> list[Any]:
    """Every value held by `obj` through containers and records, callables excluded."""
    seen: set[int] = set()
    out: list[Any] = []
    stack = [obj]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        out.append(item)
        if isinstance(item, str | bytes | bytearray | memoryview | int | float | type(None)):
            continue
        if callable(item):  # the value loader: it is the store, not the tree's memory
            continue
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend(item)
        elif is_dataclass(item):
            stack.extend(getattr(item, f.name) for f in dataclass_fields(item))
        elif hasattr(item, "__dict__"):
            stack.extend(vars(item).values())
    return out


def test_the_tree_keeps_names_and_sizes_never_values(tree: Tree, store: Store) -> None:
    secrets = ["hunter2-s3cr3t", "db-a.internal", "db-b.internal", "Pässwörd", "admin"]
    (meta,) = populate(tree, store, ("deployment", "db", DB))
    for path in ("deployment/db.d", "deployment/db.d/replicas/0", "deployment/db.d/opts/pool"):
        for child in tree.listdir(must(tree, path)):
            tree.attr(child)
    read = [
        tree.read(must(tree, "deployment/db.d/password")),
        tree.read(must(tree, "deployment/db")),
    ]
    assert read[0] == b"hunter2-s3cr3t"

    # The cached shape: names and leaf sizes only.
    shape = tree._shapes[(meta.secret_id, meta.version)]
    assert shape is not None
    assert shape["password"] == len(b"hunter2-s3cr3t")
    assert shape["replicas"] == {"0": {"host": 13}, "1": {"host": 13}}
    assert shape["opts"] == {"pool": {"max": 2}, "tags": {"0": 1, "1": 1, "2": 1}}

    def leaves(s: Any) -> list[Any]:
        return [x for v in s.values() for x in (leaves(v) if isinstance(v, dict) else [v])]

    assert all(type(x) is int for x in leaves(shape))

    held = _reachable(tree)
    for item in held:
        assert not isinstance(item, bytes | bytearray | memoryview), item
        if isinstance(item, str):
            for secret in secrets:
                assert secret not in item
    assert not any(type(x).__name__ == "_Number" for x in held)


# --------------------------------------------------------------------------- read


def test_read_returns_the_exact_bytes_of_the_secret(tree: Tree, store: Store) -> None:
    values = {
        "bin": b"\x00\xff\xfe binary\r\n",
        "nl": b"line\n",
        "ws": b"  padded  ",
        "empty": b"",
        "json": b' {"a": 1} \n',
        "num": b"2.50",
    }
    populate(tree, store, *(("deployment", k, v) for k, v in values.items()))
    for name, value in values.items():
        node = must(tree, f"deployment/{name}")
        assert tree.read(node) == value
        assert tree.attr(node).size == len(value)


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("user", b"admin"),
        ("password", b"hunter2-s3cr3t"),
        ("name", "Pässwörd".encode()),
        ("port", b"5432"),
        ("price", b"2.50"),
        ("big", b"1e3"),
        ("tls", b"true"),
        ("debug", b"false"),
        ("ca", b""),
        ("replicas/0/host", b"db-a.internal"),
        ("opts/pool/max", b"10"),
        ("opts/tags/1", b"y"),
    ],
)
def test_read_a_field_renders_it(tree: Tree, store: Store, field: str, expected: bytes) -> None:
    populate(tree, store, ("deployment", "db", DB))
    node = must(tree, f"deployment/db.d/{field}")
    assert tree.read(node) == expected
    assert tree.attr(node).size == len(expected)


def test_read_exact_number_text(tree: Tree, store: Store) -> None:
    value = b"[2.50, 1e3, 1E+3, -0, 0.1e-2, 12345678901234567890123, 1.000000000000000000001]"
    populate(tree, store, ("deployment", "n", value))
    got = [tree.read(n) for n in tree.listdir(must(tree, "deployment/n.d"))]
    assert got == [
        b"2.50",
        b"1e3",
        b"1E+3",
        b"-0",
        b"0.1e-2",
        b"12345678901234567890123",
        b"1.000000000000000000001",
    ]


# --------------------------------------------------------------------------- changes


def test_new_version_gives_a_new_inode_and_invalidates_entries(tree: Tree, store: Store) -> None:
    (db, token) = populate(tree, store, ("deployment", "db", DB), ("deployment", "token", b"t1"))
    dep = must(tree, "deployment", remember=True)
    old_db = must(tree, "deployment/db", remember=True)
    old_fd = must(tree, "deployment/db.d", remember=True)
    old_pw = must(tree, "deployment/db.d/password", remember=True)
    old_token = must(tree, "deployment/token", remember=True)

    new = b'{"password": "rotated", "extra": 1}'
    inval = tree.apply([store.put("deployment", "db", new, updated_ns=T1)], T1)
    assert isinstance(inval, Invalidation)
    assert (dep.inode, "db") in inval.entries
    assert (dep.inode, "db.d") in inval.entries
    assert (dep.inode, "token") not in inval.entries
    assert dep.inode in inval.inodes  # its mtime changed
    # The replaced files are named, so the kernel tells their watchers (DELETE_SELF): a
    # field file before its directory, which is told plainly.
    assert inval.replaced == {
        (dep.inode, "db"): old_db.inode,
        (old_fd.inode, "password"): old_pw.inode,
    }
    assert inval.entries.index((old_fd.inode, "password")) < inval.entries.index(
        (dep.inode, "db.d")
    )

    new_db = must(tree, "deployment/db")
    assert new_db.inode != old_db.inode
    assert new_db.path == old_db.path
    assert tree.current(new_db).version == 2
    assert tree.attr(new_db).size == len(new)
    assert tree.attr(new_db).mtime_ns == T1
    assert tree.read(new_db) == new
    new_fd = must(tree, "deployment/db.d")
    assert new_fd.inode != old_fd.inode
    assert ls(tree, "deployment/db.d") == ["extra", "password"]
    new_pw = must(tree, "deployment/db.d/password")
    assert new_pw.inode != old_pw.inode
    assert tree.read(new_pw) == b"rotated"
    # The other secret keeps its inode.
    assert must(tree, "deployment/token").inode == old_token.inode

    # A raw secret has no .d entry to invalidate.
    inval = tree.apply([store.put("deployment", "token", b"t2")], T1)
    assert (dep.inode, "token") in inval.entries
    assert (dep.inode, "token.d") not in inval.entries
    assert must(tree, "deployment/token").inode != old_token.inode
    assert db.secret_id != token.secret_id


def test_old_nodes_keep_reading_their_own_version(tree: Tree, store: Store) -> None:
    populate(tree, store, ("deployment", "db", DB))
    old_db = must(tree, "deployment/db")
    old_pw = must(tree, "deployment/db.d/password")
    old_fd = must(tree, "deployment/db.d")
    old_size = tree.attr(old_db).size
    tree.apply([store.put("deployment", "db", b'{"password": "v2"}')], T1)
    tree.apply([store.put("deployment", "db", b'{"password": "v3-longer"}')], T1)

    assert tree.read(old_db) == DB
    assert tree.current(old_db).version == 1
    assert tree.attr(old_db).size == old_size
    assert tree.read(old_pw) == b"hunter2-s3cr3t"
    assert tree.attr(old_pw).size == len(b"hunter2-s3cr3t")
    assert "replicas" in {n.path.rsplit("/", 1)[-1] for n in tree.listdir(old_fd)}
    assert tree.read(must(tree, "deployment/db.d/password")) == b"v3-longer"


def test_no_entry_invalidation_for_a_directory_the_kernel_does_not_know(
    tree: Tree, store: Store
) -> None:
    populate(tree, store, ("deployment", "db", DB), ("env/prod", "db", DB))
    inval = tree.apply([store.put("deployment", "db", b"{}")], T1)
    assert inval.entries == []
    dep = must(tree, "deployment", remember=True)
    tree.forget(dep.inode, 1)
    inval = tree.apply([store.put("deployment", "db", b"[]")], T1)
    assert inval.entries == []
    # Only the scope the kernel knows gets its entries dropped.
    prod = must(tree, "env/prod", remember=True)
    inval = tree.apply([store.put("deployment", "db", b"x"), store.put("env/prod", "db", b"y")], T1)
    assert inval.entries == [(prod.inode, "db"), (prod.inode, "db.d")]


def test_json_to_raw_version_drops_the_field_directory(tree: Tree, store: Store) -> None:
    populate(tree, store, ("deployment", "db", DB))
    dep = must(tree, "deployment", remember=True)
    inval = tree.apply([store.put("deployment", "db", b"now raw")], T1)
    assert (dep.inode, "db.d") in inval.entries
    assert ls(tree, "deployment") == ["db"]
    assert walk(tree, "deployment/db.d") is None
    inval = tree.apply([store.put("deployment", "db", b'{"back": true}')], T1)
    assert ls(tree, "deployment") == ["db", "db.d"]
    assert (dep.inode, "db.d") not in inval.entries


def test_owner_or_mode_change_keeps_inodes_and_drops_attributes(tree: Tree, store: Store) -> None:
    (meta,) = populate(tree, store, ("deployment", "db", DB))
    dep = must(tree, "deployment", remember=True)
    nodes = {
        p: must(tree, p, remember=True)
        for p in ("deployment/db", "deployment/db.d", "deployment/db.d/port")
    }
    nodes["deployment/db.d/replicas/0/host"] = must(tree, "deployment/db.d/replicas/0/host")
    loads = len(store.loads)

    inval = tree.apply([store.chown(meta, uid=0, gid=50, mode=0o440)], T1)
    assert inval.entries == []
    for path, node in nodes.items():
        assert must(tree, path).inode == node.inode, path
        assert node.inode in inval.inodes, path
    assert dep.inode not in inval.inodes
    assert len(store.loads) == loads

    a = tree.attr(nodes["deployment/db"])
    assert (a.mode, a.uid, a.gid) == (stat.S_IFREG | 0o440, 0, 50)
    a = tree.attr(nodes["deployment/db.d"])
    assert (a.mode, a.uid, a.gid) == (stat.S_IFDIR | 0o550, 0, 50)
    a = tree.attr(nodes["deployment/db.d/port"])
    assert (a.mode, a.uid, a.gid) == (stat.S_IFREG | 0o440, 0, 50)
    assert tree.current(nodes["deployment/db"]).mode == 0o440
    # Back to the defaults.
    tree.apply([store.chown(meta, uid=None, gid=None, mode=None)], T1)
    a = tree.attr(nodes["deployment/db"])
    assert (a.mode, a.uid, a.gid) == (stat.S_IFREG | 0o400, UID, GID)


def test_removed_secret_is_gone(tree: Tree, store: Store) -> None:
    db, _ = populate(tree, store, ("deployment", "db", DB), ("deployment", "keep", b"k"))
    dep = must(tree, "deployment", remember=True)
    old = must(tree, "deployment/db", remember=True)
    inval = tree.apply([store.remove(db)], T1)
    assert (dep.inode, "db") in inval.entries
    assert (dep.inode, "db.d") in inval.entries
    assert dep.inode in inval.inodes
    assert walk(tree, "deployment/db") is None
    assert walk(tree, "deployment/db.d") is None
    assert ls(tree, "deployment") == ["keep"]
    # The deployment directory always stays.
    assert ls(tree, "") == ["deployment", "env", "project"]
    # An open handle's node still reads its snapshot.
    assert tree.read(old) == DB


def test_removing_an_unknown_secret_is_harmless(tree: Tree, store: Store) -> None:
    ghost = store.remove(store.put("deployment", "ghost", b"x"))
    inval = tree.apply([ghost], T1)
    assert inval.entries == []
    assert walk(tree, "deployment/ghost") is None


def test_service_scope_disappears_with_its_last_secret(tree: Tree, store: Store) -> None:
    a, b = populate(tree, store, ("@api", "a", b"1"), ("@api", "b", b"2"))
    api = must(tree, "@api", remember=True)
    inval = tree.apply([store.remove(a)], T1)
    assert (ROOT_INODE, "@api") not in inval.entries
    assert (api.inode, "a") in inval.entries
    inval = tree.apply([store.remove(b)], T1)
    assert (ROOT_INODE, "@api") in inval.entries
    assert (api.inode, "b") in inval.entries
    assert ROOT_INODE in inval.inodes
    assert walk(tree, "@api") is None
    assert ls(tree, "") == ["deployment", "env", "project"]
    # And comes back with a new secret.
    tree.apply([store.put("@api", "c", b"3")], T1)
    assert ls(tree, "") == ["@api", "deployment", "env", "project"]
    assert ls(tree, "@api") == ["c"]


def test_env_scope_disappears_with_its_last_secret(tree: Tree, store: Store) -> None:
    (qa, _) = populate(tree, store, ("env/qa", "db", b"1"), ("env/prod", "db", b"2"))
    env = must(tree, "env", remember=True)
    qa_dir = must(tree, "env/qa", remember=True)
    inval = tree.apply([store.remove(qa)], T1)
    assert (env.inode, "qa") in inval.entries
    assert (qa_dir.inode, "db") in inval.entries
    assert (env.inode, "prod") not in inval.entries
    assert ls(tree, "env") == ["prod"]
    assert walk(tree, "env/qa") is None
    assert ls(tree, "") == ["deployment", "env", "project"]


def test_project_directories_disappear_level_by_level(tree: Tree, store: Store) -> None:
    prod, dev, blog = populate(
        tree,
        store,
        ("project/shop/prod", "db", b"1"),
        ("project/shop/dev", "db", b"2"),
        ("project/blog/prod", "db", b"3"),
    )
    project = must(tree, "project", remember=True)
    shop = must(tree, "project/shop", remember=True)
    must(tree, "project/shop/prod", remember=True)

    inval = tree.apply([store.remove(prod)], T1)
    assert (shop.inode, "prod") in inval.entries
    assert (project.inode, "shop") not in inval.entries
    assert ls(tree, "project/shop") == ["dev"]

    inval = tree.apply([store.remove(dev)], T1)
    assert (shop.inode, "dev") in inval.entries
    assert (project.inode, "shop") in inval.entries
    assert walk(tree, "project/shop") is None
    assert ls(tree, "project") == ["blog"]

    tree.apply([store.remove(blog)], T1)
    assert ls(tree, "project") == []
    assert ls(tree, "") == ["deployment", "env", "project"]


def test_a_batch_of_changes(tree: Tree, store: Store) -> None:
    a = store.put("deployment", "a", b"1")
    b = store.put("@svc", "b", b"2")
    inval = tree.apply([a, b, store.put("deployment", "a", b"11")], T1)
    assert inval.entries == []
    assert tree.read(must(tree, "deployment/a")) == b"11"
    assert ls(tree, "") == ["@svc", "deployment", "env", "project"]
    assert bool(Invalidation()) is False


# --------------------------------------------------------------------------- lookups


def test_forget_drops_a_node_when_its_lookups_reach_zero(tree: Tree, store: Store) -> None:
    populate(tree, store, ("deployment", "db", DB))
    node = must(tree, "deployment/db")
    tree.remember(node.inode)
    tree.remember(node.inode)
    count = tree.inode_count
    tree.forget(node.inode, 1)
    assert tree.get(node.inode) is node
    assert must(tree, "deployment/db").inode == node.inode
    tree.forget(node.inode, 1)
    assert tree.get(node.inode) is None
    assert tree.inode_count == count - 1

    again = must(tree, "deployment/db")
    assert again.inode != node.inode
    assert tree.get(again.inode) is again
    # The forgotten node object still reads its version (an open handle holds it).
    assert tree.read(node) == DB
    assert tree.read(again) == DB


def test_forget_in_one_batch_and_for_every_kind(tree: Tree, store: Store) -> None:
    populate(tree, store, ("project/p/e", "db", DB))
    paths = ["project", "project/p", "project/p/e", "project/p/e/db", "project/p/e/db.d"]
    paths += ["project/p/e/db.d/replicas", "project/p/e/db.d/replicas/0/host"]
    before = {p: must(tree, p) for p in paths}
    for node in before.values():
        for _ in range(3):
            tree.remember(node.inode)
    for node in before.values():
        tree.forget(node.inode, 3)
        assert tree.get(node.inode) is None
    for path, node in before.items():
        fresh = must(tree, path)
        assert fresh.inode != node.inode, path
        assert (fresh.kind, fresh.path, fresh.field) == (node.kind, node.path, node.field)


def test_forget_never_drops_the_root(tree: Tree) -> None:
    tree.remember(ROOT_INODE)
    tree.forget(ROOT_INODE, 5)
    assert tree.get(ROOT_INODE) is not None
    assert ls(tree, "") == ["deployment", "env", "project"]


def test_forget_of_an_unknown_inode_is_harmless(tree: Tree) -> None:
    count = tree.inode_count
    tree.forget(9999, 1)
    assert tree.inode_count == count


def test_old_version_node_is_dropped_on_forget(tree: Tree, store: Store) -> None:
    populate(tree, store, ("deployment", "db", b"v1"))
    old = must(tree, "deployment/db", remember=True)
    tree.apply([store.put("deployment", "db", b"v2")], T1)
    new = must(tree, "deployment/db", remember=True)
    tree.forget(old.inode, 1)
    assert tree.get(old.inode) is None
    assert tree.get(new.inode) is new
    assert must(tree, "deployment/db") is new

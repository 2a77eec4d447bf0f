"""Who may read what, without a mount: mode bits, grants, inheritance, the CLI's view of
it, and the audit records of every write. Real SQLite stores, real CLI subprocesses."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from secretfs.access import (
    EXEC,
    READ,
    WRITE,
    Caller,
    Layer,
    ReaderEntry,
    Readers,
    allowed,
    readers_of,
    resolve,
)
from secretfs.audit import AuditQueue, AuditRecord, cli_record
from secretfs.cli.access import parse_mode_or_inherit, parse_owner, parse_target
from secretfs.cli.audit import RefFilter, parse_since
from secretfs.daemon import Watcher
from secretfs.errors import ConflictError, NotFoundError, UsageError
from secretfs.refs import DEPLOYMENT, Scope, parse_ref, parse_scope
from secretfs.store import GrantRecord, ScopeMeta, SecretMeta
from secretfs.tree import ROOT_INODE, Node, Owner, Tree
from secretfs.vault import Vault
from tests.conftest import Cli


def caller(uid: int, gid: int, groups: tuple[int, ...] = ()) -> Caller:
    return Caller(uid, gid, 4242, lambda: frozenset(groups))


# -- mode bits and grants ------------------------------------------------------------------


def test_mode_bits_follow_posix_owner_then_group_then_other() -> None:
    # 0640 owned by 1000:50.
    assert allowed(0o640, 1000, 50, caller(1000, 1000), READ)
    assert allowed(0o640, 1000, 50, caller(1001, 50), READ)
    assert allowed(0o640, 1000, 50, caller(1001, 7, groups=(50,)), READ)
    assert not allowed(0o640, 1000, 50, caller(1001, 7), READ)
    # The owner class decides for the owner, even when the group could read.
    assert not allowed(0o040, 1000, 50, caller(1000, 50), READ)
    assert allowed(0o004, 1000, 50, caller(1234, 1234), READ)
    assert not allowed(0o444, 1000, 50, caller(1000, 50), WRITE)


def test_uid_0_gets_no_bypass() -> None:
    root = caller(0, 0)
    assert not allowed(0o400, 1000, 1000, root, READ)
    assert not allowed(0o000, 0, 0, root, READ)
    assert allowed(0o400, 0, 0, root, READ)
    assert allowed(0o400, 1000, 1000, root, READ, Readers(uids=frozenset({0})))


def test_grants_add_read_and_traverse_never_write() -> None:
    readers = Readers(uids=frozenset({1000}), gids=frozenset({3000}))
    assert allowed(0o400, 0, 0, caller(1000, 1000), READ, readers)
    assert allowed(0o400, 0, 0, caller(1000, 1000), READ | EXEC, readers)
    assert allowed(0o400, 0, 0, caller(2000, 3000), READ, readers)
    assert allowed(0o400, 0, 0, caller(2000, 2000, groups=(3000,)), READ, readers)
    assert not allowed(0o400, 0, 0, caller(2000, 2000, groups=(3001,)), READ, readers)
    assert not allowed(0o400, 0, 0, caller(1000, 1000), WRITE, readers)
    # An owner whose bits say no is still let in by a grant: grants only add.
    assert allowed(0o000, 1000, 0, caller(1000, 1000), READ, readers)


def test_groups_are_read_only_when_a_rule_needs_them() -> None:
    asked: list[int] = []

    def groups() -> frozenset[int]:
        asked.append(1)
        return frozenset({50})

    who = Caller(1000, 1000, 1, groups)
    assert allowed(0o400, 1000, 50, who, READ)
    assert allowed(0o004, 1, 50, who, READ)
    assert asked == []
    assert allowed(0o040, 1, 50, who, READ)
    assert asked == [1]


def test_each_of_uid_gid_mode_is_inherited_on_its_own() -> None:
    own = resolve(Layer(uid=7), Layer(gid=8, mode=0o440), Layer(1, 2, 0o400))
    assert (own.uid, own.gid, own.mode) == (7, 8, 0o440)
    assert (own.uid_from, own.gid_from, own.mode_from) == ("secret", "scope", "scope")
    own = resolve(Layer(), Layer(), Layer(None, None, 0o400))
    assert (own.uid, own.gid, own.mode) == (None, None, 0o400)
    assert own.uid_from == own.gid_from == own.mode_from == "mount"
    # A secret's own 0 is a value, not "unset".
    own = resolve(Layer(uid=0, mode=0), Layer(uid=5, mode=0o444), Layer(1, 2, 0o400))
    assert (own.uid, own.mode, own.uid_from) == (0, 0, "secret")


def test_readers_of_lists_mode_readers_then_grants() -> None:
    own = resolve(Layer(uid=1000, mode=0o444), Layer(gid=50), Layer(None, None, 0o400))
    got = readers_of(own, [("uid", 1001, "$S:db"), ("gid", 3000, "scope deployment")])
    assert got == [
        ReaderEntry("uid", 1000, "owner"),
        ReaderEntry("gid", 50, "group"),
        ReaderEntry("everyone", None, "other"),
        ReaderEntry("uid", 1001, "grant", "$S:db"),
        ReaderEntry("gid", 3000, "grant", "scope deployment"),
    ]
    assert readers_of(resolve(Layer(mode=0), Layer(), Layer(1, 1, 0o400)), []) == []


# -- the tree: scope layer, grants, visibility ---------------------------------------------


def meta(sid: int, scope: str, name: str, **kw: int | None) -> SecretMeta:
    return SecretMeta(
        secret_id=sid,
        scope=scope,
        name=name,
        version=1,
        deleted=False,
        size=3,
        kind="raw",
        created_ns=1,
        updated_ns=1,
        uid=kw.get("uid"),
        gid=kw.get("gid"),
        mode=kw.get("mode"),
        fingerprint="fp",
        seq=sid,
    )


def loader(secret_id: int, version: int) -> bytes:
    return b"abc"


@pytest.fixture
def tree() -> Tree:
    t = Tree(Owner(0, 0, 0o400), loader, 1)
    t.apply(
        [
            meta(1, "@api", "token"),
            meta(2, "@api", "own", uid=1000, mode=0o440),
            meta(3, "@web", "key"),
            meta(4, "project/shop/prod", "db"),
        ],
        1,
    )
    return t


def node(t: Tree, path: str) -> Node:
    current = t.get(ROOT_INODE)
    for part in path.split("/"):
        assert current is not None
        current = t.lookup(current, part)
    assert current is not None
    return current


def test_tree_takes_owner_from_secret_then_scope_then_mount(tree: Tree) -> None:
    assert tree.attr(node(tree, "@api/token")).uid == 0
    inval = tree.set_access([ScopeMeta("@api", 2000, 3000, 0o404, 9)], [])
    token = tree.attr(node(tree, "@api/token"))
    assert (token.uid, token.gid, token.mode & 0o777) == (2000, 3000, 0o404)
    own = tree.attr(node(tree, "@api/own"))
    assert (own.uid, own.gid, own.mode & 0o777) == (1000, 3000, 0o440)
    web = tree.attr(node(tree, "@web/key"))
    assert (web.uid, web.gid, web.mode & 0o777) == (0, 0, 0o400)
    # Nodes the kernel had for @api are stale; @web's were not touched.
    assert inval.inodes  # the @api nodes looked up before the change
    again = tree.set_access([ScopeMeta("@api", 2000, 3000, 0o404, 9)], [])
    assert not again.inodes


def test_scope_change_invalidates_every_node_of_that_scope_only() -> None:
    t = Tree(Owner(0, 0, 0o400), loader, 1)
    t.apply([meta(1, "@api", "token"), meta(2, "@web", "key")], 1)
    api, web = node(t, "@api/token"), node(t, "@web/key")
    inval = t.set_access([ScopeMeta("@api", None, None, 0o444, 2)], [])
    assert api.inode in inval.inodes
    assert web.inode not in inval.inodes


def test_grants_of_secret_and_scope_add_up(tree: Tree) -> None:
    tree.set_access(
        [],
        [
            GrantRecord("@api", "token", "uid", 1000, 1),
            GrantRecord("@api", "", "gid", 3000, 1),
        ],
    )
    token, own = node(tree, "@api/token"), node(tree, "@api/own")
    assert tree.may(token, caller(1000, 1000), READ)
    assert not tree.may(own, caller(1001, 1001), READ)
    assert tree.may(own, caller(1001, 1001, groups=(3000,)), READ)
    assert not tree.may(node(tree, "@web/key"), caller(1000, 1000), READ)
    # Dropping the grants takes the access away.
    tree.set_access([], [])
    assert not tree.may(token, caller(1000, 1000), READ)


def test_listing_shows_each_caller_only_what_it_may_read(tree: Tree) -> None:
    tree.set_access([], [GrantRecord("@api", "token", "uid", 1001, 1)])
    root = tree.get(ROOT_INODE)
    assert root is not None

    def names(path: str, who: Caller) -> list[str]:
        parent = root if path == "" else node(tree, path)
        return [n.path.rsplit("/", 1)[-1] for n in tree.listdir(parent) if tree.visible(n, who)]

    assert names("", caller(1001, 1001)) == ["deployment", "env", "project", "@api"]
    assert names("@api", caller(1001, 1001)) == ["token"]
    assert names("@api", caller(1000, 1000)) == ["own"]
    # The mount's user owns "token"; "own" is 1000's but readable by its group (0).
    assert names("@api", caller(0, 0)) == ["own", "token"]
    assert names("@api", caller(0, 7)) == ["token"]
    assert names("", caller(5000, 5000)) == ["deployment", "env", "project"]
    assert names("project", caller(5000, 5000)) == []
    assert names("project", caller(0, 0)) == ["shop"]


# -- the vault: ownership, grants, rm, and an audit record for every write ------------------


@pytest.fixture
def vault(tmp_path: Path) -> Iterator[Vault]:
    path = tmp_path / "store.db"
    Vault.init(path)
    v = Vault.open(path)
    v.set(parse_ref("db"), b"hunter2")
    v.set(parse_ref("@api/token"), b"tok")
    v.set(parse_ref("@api/cfg"), b'{"a":1}')
    yield v
    v.close()


def actions(v: Vault) -> list[tuple[str, str | None, str]]:
    return [(r.action, r.ref, r.outcome) for r in v.backend.read_audit()]


def test_every_vault_write_is_audited_in_its_transaction(vault: Vault) -> None:
    ref = parse_ref("@api/token")
    vault.set_owner(ref, {"mode": 0o440}, action="chmod")
    vault.set_owner(parse_scope("@api"), {"uid": 1000, "gid": 50}, action="chown")
    vault.grant(ref, "uid", 1001)
    vault.grant(ref, "uid", 1001)
    vault.revoke(ref, [("uid", 1001)])
    vault.remove(parse_ref("db"))
    with pytest.raises(ConflictError):
        vault.write(ref, b"again", how="create")
    with pytest.raises(NotFoundError):
        vault.grant(parse_ref("nope"), "uid", 1)
    assert actions(vault) == [
        ("set", "$S:db", "ok"),
        ("set", "$S:@api/token", "ok"),
        ("set", "$S:@api/cfg", "ok"),
        ("chmod", "$S:@api/token", "ok"),
        ("chown", "@api", "ok"),
        ("grant", "$S:@api/token", "ok"),
        ("grant", "$S:@api/token", "unchanged"),
        ("revoke", "$S:@api/token", "ok"),
        ("rm", "$S:db", "ok"),
        ("create", "$S:@api/token", "refused"),
        ("grant", "$S:nope", "refused"),
    ]
    records = vault.backend.read_audit()
    assert records[3].detail == "mode=inherit->0440"
    assert records[3].version == 1
    assert records[4].detail == "uid=inherit->1000 gid=inherit->50"
    assert records[9].detail is not None and "409" in records[9].detail
    assert all(r.source == "cli" and r.pid and r.process for r in records)
    # The refused create wrote no version.
    assert vault.meta(ref).version == 1


def test_audit_never_holds_a_value(vault: Vault) -> None:
    vault.set(parse_ref("db"), b"correct-horse-battery")
    with pytest.raises(ConflictError):
        vault.write(parse_ref("db"), b"staple-staple-staple", how="create")
    dump = "\n".join(repr(r) for r in vault.backend.read_audit())
    for value in ("hunter2", "correct-horse", "staple", "tok"):
        assert value not in dump.replace("token", "")


def test_owner_changes_and_inherit(vault: Vault) -> None:
    ref = parse_ref("@api/token")
    before, after = vault.set_owner(ref, {"uid": 1000, "mode": 0o440}, action="chown")
    assert before == {"uid": None, "gid": None, "mode": None}
    assert after == {"uid": 1000, "gid": None, "mode": 0o440}
    m = vault.meta(ref)
    assert (m.uid, m.gid, m.mode) == (1000, None, 0o440)
    vault.set_owner(ref, {"uid": None}, action="chown")
    m = vault.meta(ref)
    assert (m.uid, m.mode) == (None, 0o440)
    # A new version keeps the owner; set with --uid changes only what it names.
    vault.set(ref, b"tok2", uid=7)
    m = vault.meta(ref)
    assert (m.uid, m.gid, m.mode, m.version) == (7, None, 0o440, 2)
    scope = vault.scope_meta(parse_scope(":staging"))
    assert (scope.uid, scope.gid, scope.mode) == (None, None, None)
    vault.set_owner(parse_scope(":staging"), {"mode": 0o444}, action="chmod")
    assert vault.scope_meta(parse_scope("env/staging")).mode == 0o444
    with pytest.raises(UsageError, match="whole secret"):
        vault.set_owner(parse_ref("@api/cfg/a"), {"mode": 0o400}, action="chmod")


def test_revoke_on_a_scope_removes_its_grants_and_its_secrets_grants(vault: Vault) -> None:
    api = parse_scope("@api")
    vault.grant(api, "uid", 1000)
    vault.grant(parse_ref("@api/token"), "uid", 1000)
    vault.grant(parse_ref("@api/cfg"), "uid", 1000)
    vault.grant(parse_ref("@api/cfg"), "gid", 1000)
    vault.grant(parse_ref("db"), "uid", 1000)
    removed = vault.revoke(api, [("uid", 1000)])
    assert sorted((g.name, g.kind) for g in removed) == [
        ("", "uid"),
        ("cfg", "uid"),
        ("token", "uid"),
    ]
    left = vault.backend.list_grants()
    assert sorted((g.scope, g.name, g.kind) for g in left) == [
        ("@api", "cfg", "gid"),
        ("deployment", "db", "uid"),
    ]
    assert vault.revoke(api, [("uid", 1000)]) == []
    assert [g.kind for g in vault.revoke(api, None)] == ["gid"]
    assert actions(vault)[-1] == ("revoke", "$S:@api/cfg", "ok")


def test_grants_reaching_a_secret_are_its_own_and_its_scopes(vault: Vault) -> None:
    vault.grant(parse_scope("@api"), "gid", 50)
    vault.grant(parse_ref("@api/token"), "uid", 1000)
    vault.grant(parse_ref("@api/cfg"), "uid", 2000)
    got = {(g.name, g.kind, g.principal) for g in vault.grants(parse_ref("@api/token"))}
    assert got == {("token", "uid", 1000), ("", "gid", 50)}
    assert len(vault.grants(parse_scope("@api"))) == 3


def test_rm_is_refused_while_grants_name_the_secret(vault: Vault) -> None:
    ref = parse_ref("@api/token")
    vault.grant(ref, "uid", 1000)
    with pytest.raises(ConflictError, match=r"uid 1000 \(409\)"):
        vault.remove(ref)
    assert vault.meta(ref).version == 1
    vault.remove(ref, force=True)
    assert vault.backend.list_grants("@api") == []
    # Recreated, it starts with no grants and no owner.
    vault.set(ref, b"new")
    assert vault.grants(ref) == []


def test_grant_refuses_a_field_a_missing_secret_and_a_bad_kind(vault: Vault) -> None:
    with pytest.raises(UsageError, match="whole secret"):
        vault.grant(parse_ref("@api/cfg/a"), "uid", 1)
    with pytest.raises(NotFoundError):
        vault.grant(parse_ref("@api/missing"), "uid", 1)
    with pytest.raises(UsageError):
        vault.grant(parse_ref("db"), "user", 1)
    # A scope needs no secrets yet: grants can be set up ahead.
    assert vault.grant(parse_scope("@future"), "uid", 1)


def test_audit_table_refuses_update_and_delete(vault: Vault) -> None:
    path = vault.backend.path
    count = len(vault.backend.read_audit())
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="cannot be changed"):
            conn.execute("UPDATE audit SET outcome = 'allowed' WHERE id = 1")
        with pytest.raises(sqlite3.IntegrityError, match="cannot be deleted"):
            conn.execute("DELETE FROM audit")
    finally:
        conn.close()
    assert len(vault.backend.read_audit()) == count


def test_watcher_picks_up_scope_defaults_and_grants(vault: Vault) -> None:
    t = Tree(Owner(0, 0, 0o400), vault.read_version, 1)
    watcher = Watcher(vault, t)
    watcher.refresh()
    token = node(t, "@api/token")
    assert t.attr(token).mode & 0o777 == 0o400
    other = Vault.open(vault.backend.path)
    try:
        other.set_owner(parse_scope("@api"), {"mode": 0o440, "gid": 50}, action="chmod")
        inval = watcher.refresh()
        assert inval is not None and token.inode in inval.inodes
        assert (t.attr(token).mode & 0o777, t.attr(token).gid) == (0o440, 50)
        other.grant(parse_ref("@api/token"), "uid", 1000)
        watcher.refresh()
        assert t.may(token, caller(1000, 1000), READ)
        other.revoke(parse_ref("@api/token"), [("uid", 1000)])
        watcher.refresh()
        assert not t.may(token, caller(1000, 1000), READ)
        # A secret's own chmod invalidates its nodes, field files included.
        cfg = node(t, "@api/cfg.d/a")
        other.set_owner(parse_ref("@api/cfg"), {"mode": 0o404}, action="chmod")
        inval = watcher.refresh()
        assert inval is not None and cfg.inode in inval.inodes
        assert t.attr(cfg).mode & 0o777 == 0o404
    finally:
        other.close()
    # Audit writes alone change nothing the tree shows.
    with vault.recorded("test") as trail:
        trail.record()
    assert watcher.refresh() is None


# -- parsing of targets, owners, modes, times -----------------------------------------------


def test_target_is_a_scope_when_it_reads_as_one() -> None:
    assert parse_target("deployment") == DEPLOYMENT
    assert parse_target("@api") == Scope("service", service="api")
    assert parse_target(":staging") == parse_target("env/staging")
    assert parse_target("shop:prod") == parse_target("project/shop/prod")
    assert parse_target("db") == parse_ref("db")
    assert parse_target("$S:deployment") == parse_ref("deployment")
    assert parse_target("@api/token") == parse_ref("@api/token")
    with pytest.raises(UsageError, match="names a field"):
        parse_target("db/password")
    with pytest.raises(UsageError, match="neither a scope nor a secret"):
        parse_target("my db")


def test_owner_and_mode_arguments() -> None:
    assert parse_owner("1000") == {"uid": 1000}
    assert parse_owner("1000:50") == {"uid": 1000, "gid": 50}
    assert parse_owner(":50") == {"gid": 50}
    assert parse_owner("inherit") == {"uid": None, "gid": None}
    assert parse_owner("1000:inherit") == {"uid": 1000, "gid": None}
    assert parse_owner("root:root") == {"uid": 0, "gid": 0}
    for bad in ("1000:", "", "nosuchuser-xyz", "4294967295", "-1"):
        with pytest.raises(UsageError):
            parse_owner(bad)
    assert parse_mode_or_inherit("440") == 0o440
    assert parse_mode_or_inherit("0400") == 0o400
    assert parse_mode_or_inherit("inherit") is None
    for bad in ("8", "1000", "rw", "-1", ""):
        with pytest.raises(UsageError):
            parse_mode_or_inherit(bad)


def test_since_takes_durations_and_iso_times() -> None:
    now = 2_000_000_000 * 10**9
    assert parse_since("15m", now) == now - 900 * 10**9
    assert parse_since("2h", now) == now - 7200 * 10**9
    assert parse_since("1w", now) == now - 604800 * 10**9
    assert parse_since("2026-01-31") == 1769817600 * 10**9
    assert parse_since("2026-01-31T12:00:00Z") == (1769817600 + 43200) * 10**9
    assert parse_since("2026-01-31T13:00:00+01:00") == (1769817600 + 43200) * 10**9
    for bad in ("yesterday", "15", "-5m", "2026-13-01"):
        with pytest.raises(UsageError, match="--since"):
            parse_since(bad)


def record(ref: str | None) -> AuditRecord:
    return AuditRecord(1, "mount", "open", ref, 1, 0, 0, 1, "cat", "allowed")


def test_ref_filter_keeps_a_secret_its_fields_or_a_whole_scope() -> None:
    db = RefFilter("db")
    assert db.keeps(record("$S:db"))
    assert db.keeps(record("$S:db/password"))
    assert not db.keeps(record("$S:dbx"))
    assert not db.keeps(record("$S:@api/db"))
    deployment = RefFilter("deployment")
    assert deployment.keeps(record("$S:db"))
    assert deployment.keeps(record("deployment"))
    assert not deployment.keeps(record("$S:@api/db"))
    assert not deployment.keeps(record("$S::staging/db"))
    api = RefFilter("@api")
    assert api.keeps(record("@api"))
    assert api.keeps(record("$S:@api/token/x"))
    assert not api.keeps(record("$S:@apix/token"))
    assert not api.keeps(record(None))


def test_audit_queue_is_bounded_and_counts_what_it_dropped() -> None:
    queue = AuditQueue(limit=3)
    for i in range(5):
        queue.add(record(f"$S:s{i}"))
    assert len(queue) == 3 and queue.dropped == 2
    batch = queue.take()
    assert [r.ref for r in batch[:3]] == ["$S:s0", "$S:s1", "$S:s2"]
    assert batch[-1].action == "audit" and batch[-1].detail is not None
    assert "2 records dropped" in batch[-1].detail
    assert len(queue) == 0 and queue.dropped == 0
    # A batch that could not be written goes back in front of newer records.
    queue.add(record("$S:new"))
    queue.put_back(batch[:2])
    assert [r.ref for r in queue.take()] == ["$S:s0", "$S:s1", "$S:new"]
    assert cli_record("set", "$S:db", 3).source == "cli"


# -- the CLI -----------------------------------------------------------------------------


def test_permissions_cli_explains_readers(cli: Cli, initialized_store: Path) -> None:
    cli("secret", "set", "@api/token", "--from-stdin", "--mode", "0440", "--gid", "50", input=b"t")
    cli("secret", "chown", "@api", "1000")
    cli("grant", "@api/token", "--uid", "1001", "--gid", "3000")
    cli("grant", "@api", "--uid", "1002")
    out = json.loads(cli("permissions", "@api/token", "--json").stdout)
    assert out == {
        "ref": "$S:@api/token",
        "path": "@api/token",
        "uid": 1000,
        "uid_from": "scope",
        "gid": 50,
        "gid_from": "secret",
        "mode": "0440",
        "mode_from": "secret",
        "readers": [
            {"who": "uid", "id": 1000, "via": "owner", "on": None},
            {"who": "gid", "id": 50, "via": "group", "on": None},
            {"who": "gid", "id": 3000, "via": "grant", "on": "$S:@api/token"},
            {"who": "uid", "id": 1001, "via": "grant", "on": "$S:@api/token"},
            {"who": "uid", "id": 1002, "via": "grant", "on": "scope @api"},
        ],
    }
    text = cli("permissions", "@api/token").stdout.decode()
    assert "uid 1001" in text and "grant on $S:@api/token" in text
    assert "default of scope @api" in text
    assert "uid 0 (root) is not special" in text
    scope = json.loads(cli("permissions", "@api", "--json").stdout)
    assert scope["uid"] == 1000 and scope["uid_from"] == "scope"
    assert scope["grants"] == [{"who": "uid", "id": 1002, "form": "plain"}]
    assert [s["ref"] for s in scope["secrets"]] == ["$S:@api/token"]
    # A mount default mode can be given to see who reads what inherits it.
    cli("secret", "set", "db", "--from-stdin", input=b"x")
    plain = json.loads(cli("permissions", "db", "--json", "--mount-mode", "0444").stdout)
    assert plain["mode"] == "0444" and plain["mode_from"] == "mount"
    assert {"who": "everyone", "id": None, "via": "other", "on": None} in plain["readers"]


def test_grant_revoke_cli_messages_and_errors(cli: Cli, initialized_store: Path) -> None:
    cli("secret", "set", "@api/token", "--from-stdin", input=b"t")
    out = cli("grant", "@api/token", check=False)
    assert out.returncode == 2 and b"--uid" in out.stderr
    out = cli("grant", "@api/token/x", "--uid", "1", check=False)
    assert out.returncode == 2 and b"whole secret" in out.stderr
    out = cli("grant", "@api/nope", "--uid", "1", check=False)
    assert out.returncode == 3
    out = cli("grant", "@api/token", "--uid", "no-such-user-xyz", check=False)
    assert out.returncode == 2 and b"numeric id" in out.stderr
    assert b"granted: uid 1000" in cli("grant", "@api/token", "--uid", "1000").stderr
    assert b"already granted" in cli("grant", "@api/token", "--uid", "1000").stderr
    cli("grant", "@api", "--uid", "1000")
    out = cli("revoke", "@api/token", "--uid", "1000")
    assert b"1 grant revoked" in out.stderr
    assert b"can still read $S:@api/token through the grant on scope @api" in out.stderr
    assert b"0 grants revoked" in cli("revoke", "@api/token", "--uid", "1000").stderr
    out = cli("revoke", "@api", check=False)
    assert out.returncode == 2
    out = cli("secret", "rm", "@api/token")
    assert b"removed" in out.stderr
    cli("secret", "set", "@api/token", "--from-stdin", input=b"t")
    cli("grant", "@api/token", "--uid", "7")
    out = cli("secret", "rm", "@api/token", check=False)
    assert out.returncode == 4 and b"rm --force" in out.stderr
    cli("secret", "rm", "@api/token", "--force")


def test_chmod_chown_cli(cli: Cli, initialized_store: Path) -> None:
    cli("secret", "set", "db", "--from-stdin", input=b"x")
    assert b"mode inherit -> 0440" in cli("secret", "chmod", "db", "440").stderr
    cli("secret", "chown", "db", "1000:2000")
    listed = json.loads(cli("secret", "ls", "--json").stdout)[0]
    assert (listed["uid"], listed["gid"], listed["mode"]) == (1000, 2000, "0440")
    assert b"unchanged" in cli("secret", "chown", "db", "1000").stderr
    cli("secret", "chown", "db", "inherit")
    cli("secret", "chmod", "db", "inherit")
    listed = json.loads(cli("secret", "ls", "--json").stdout)[0]
    assert (listed["uid"], listed["gid"], listed["mode"]) == (None, None, None)
    for bad in (("chmod", "db", "999"), ("chown", "db", "x:"), ("chmod", "my db", "400")):
        out = cli("secret", *bad, check=False)
        assert out.returncode == 2, bad
        assert out.stderr.startswith(b"secretfs: error:"), out.stderr


def test_audit_cli_filters_and_needs_no_key(cli: Cli, initialized_store: Path) -> None:
    cli("secret", "set", "db", "--from-stdin", input=b"x")
    cli("secret", "set", "@api/db", "--from-stdin", input=b"y")
    cli("grant", "@api", "--gid", "50")
    Path(str(initialized_store) + ".key").rename(initialized_store.with_suffix(".moved"))
    everything = json.loads(cli("audit", "--json").stdout)
    assert [(r["action"], r["ref"]) for r in everything] == [
        ("set", "$S:db"),
        ("set", "$S:@api/db"),
        ("grant", "@api"),
    ]
    assert everything[0]["process"] and everything[0]["pid"]
    only = json.loads(cli("audit", "--json", "--ref", "deployment").stdout)
    assert [r["ref"] for r in only] == ["$S:db"]
    only = json.loads(cli("audit", "--json", "--ref", "@api").stdout)
    assert [r["ref"] for r in only] == ["$S:@api/db", "@api"]
    assert json.loads(cli("audit", "--json", "--since", "2999-01-01").stdout) == []
    assert len(json.loads(cli("audit", "--json", "--last", "1").stdout)) == 1
    text = cli("audit").stdout.decode().splitlines()
    assert len(text) == 3 and "grant" in text[2] and "@api" in text[2]
    out = cli("audit", "--since", "soon", check=False)
    assert out.returncode == 2

"""GetSecrets as pure logic, on a real store and the tree the mount builds from it (no
socket, no FUSE): what a caller gets, what is audited, and what a scan leaves kept."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from secretfs.access import Caller
from secretfs.audit import AuditQueue
from secretfs.daemon import Watcher
from secretfs.refs import parse_ref
from secretfs.resolver.messages import Envelope
from secretfs.resolver.service import ConnectError, Resolver
from secretfs.tree import Owner, Tree
from secretfs.vault import Vault

ROOT = Caller(0, 0, 1)
OTHER = Caller(1000, 1000, 1)


@pytest.fixture
def resolver(tmp_path: Path) -> Iterator[Resolver]:
    path = tmp_path / "store.db"
    Vault.init(path)
    vault = Vault.open(path)
    vault.set(parse_ref("db"), b"hunter2")
    vault.set(parse_ref("@api/token"), b"tok", mode=0o444)
    vault.set(parse_ref("@api/cfg"), b'{"user":"app"}')
    tree = Tree(Owner(0, 0), vault.read_version, time.time_ns())
    watcher = Watcher(vault, tree)
    watcher.refresh()
    yield Resolver(tree, watcher.versions, AuditQueue(), watcher.catch_up)
    vault.close()


def get(r: Resolver, caller: Caller, pattern: str) -> list[Envelope]:
    async def run() -> list[Envelope]:
        return await r.get_secrets(caller, pattern)

    return trio.run(run)


def test_a_caller_gets_what_it_may_read_and_each_is_audited(resolver: Resolver) -> None:
    assert [e.id for e in get(resolver, ROOT, "**")] == [
        "deployment/db",
        "service/api/cfg",
        "service/api/token",
    ]
    (token,) = get(resolver, OTHER, "**")  # the only one with o+r
    assert (token.id, token.value, token.version) == ("service/api/token", b"tok", "1")
    (field,) = get(resolver, ROOT, "service/api/cfg/user")
    assert field.value == b"app" and field.metadata == {"ref": "$S:@api/cfg/user"}
    with pytest.raises(ConnectError) as denied:
        get(resolver, OTHER, "deployment/db")
    assert (denied.value.code, denied.value.status) == ("permission_denied", 403)
    with pytest.raises(ConnectError) as missing:
        get(resolver, OTHER, "deployment/*")
    assert (missing.value.code, missing.value.message) == ("not_found", "secret not found")
    with pytest.raises(ConnectError) as no_field:
        get(resolver, ROOT, "deployment/db/user")  # not JSON: no fields
    assert no_field.value.code == "not_found"
    records = resolver.audit.take()
    assert [(r.source, r.ref, r.uid, r.outcome) for r in records] == [
        ("resolver", "$S:db", 0, "allowed"),
        ("resolver", "$S:@api/cfg", 0, "allowed"),
        ("resolver", "$S:@api/token", 0, "allowed"),
        ("resolver", "$S:@api/token", 1000, "allowed"),
        ("resolver", "$S:@api/cfg/user", 0, "allowed"),
        ("resolver", "$S:db", 1000, "denied"),
    ]
    assert all(r.action == "open" and r.version == 1 for r in records)


def test_a_scan_leaves_the_mounts_kept_versions_as_they_were(resolver: Resolver) -> None:
    versions = resolver._versions
    get(resolver, ROOT, "deployment/db")  # as an open: verified and kept
    kept = len(versions)
    assert kept == 1
    assert len(get(resolver, ROOT, "**")) == 3
    assert len(versions) == kept  # a `**` reads past the cache, and keeps nothing new


def test_nothing_is_served_while_the_mounts_opens_are_refused(resolver: Resolver) -> None:
    """A replaced store, or audit records that cannot be written (audit_fail=closed):
    the resolver refuses exactly when the mount's opens answer EIO."""
    why: list[str] = []
    resolver._refusal = lambda: why[0] if why else None
    assert get(resolver, ROOT, "deployment/db")[0].value == b"hunter2"
    why.append("audit records cannot be written")
    with pytest.raises(ConnectError) as refused:
        get(resolver, ROOT, "deployment/db")
    assert refused.value.code == "unavailable" and "audit records" in refused.value.message

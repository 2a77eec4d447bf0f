"""An open that reaches the mount before it has polled the store's latest write.

The kernel keeps a name's entry (its inode: one version) until the mount tells it
otherwise, up to a poll later. A program that opens the name in that window, after the
version it names was pruned, must be sent to the current version, never told ENOENT.
The FUSE handlers are called here in the order the kernel can send them: that order is
a race in a real mount (tests/mount/test_open_path.py), and fixed here. The resolver and
the credential socket have the same window between matching a secret and loading its
version (a long `**`): a prune lands there through their catch-up hook.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pyfuse3
import pytest
import trio

from secretfs import credsock
from secretfs.access import Caller
from secretfs.audit import AuditQueue
from secretfs.daemon import Watcher
from secretfs.fs import SecretFS
from secretfs.refs import parse_ref
from secretfs.resolver.service import ConnectError, Resolver
from secretfs.tree import ROOT_INODE, Owner, Tree
from secretfs.vault import Vault

CTX = SimpleNamespace(uid=0, gid=0, pid=os.getpid())
ROOT = Caller(0, 0, os.getpid())


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[Vault, Watcher, SecretFS]]:
    Vault.init(tmp_path / "store.db")
    vault = Vault.open(tmp_path / "store.db")
    vault.set(parse_ref("db"), b"first")
    tree = Tree(Owner(0, 0), vault.read_version, time.time_ns())
    watcher = Watcher(vault, tree)
    watcher.refresh()
    yield vault, watcher, SecretFS(tree, catch_up=watcher.catch_up, versions=watcher.versions)
    vault.close()


async def _lookup(ops: SecretFS, path: str) -> int:
    inode = ROOT_INODE
    for name in path.split("/"):
        inode = (await ops.lookup(inode, name.encode(), CTX)).st_ino
    return inode


async def _read(ops: SecretFS, inode: int) -> bytes:
    fh = (await ops.open(inode, os.O_RDONLY, CTX)).fh
    try:
        return await ops.read(fh, 0, 4096)
    finally:
        await ops.release(fh)


def test_an_open_of_a_version_pruned_before_the_mount_polled_is_sent_to_the_new_one(
    store: tuple[Vault, Watcher, SecretFS],
) -> None:
    vault, watcher, ops = store

    async def main() -> None:
        old = await _lookup(ops, "deployment/db")  # the kernel's entry names version 1
        other = Vault.open(vault.backend.path)
        try:
            other.set(parse_ref("db"), b"second")
            assert len(other.prune(parse_ref("db"), 1)) == 1
        finally:
            other.close()
        # Not polled yet: the entry still names version 1, whose row is gone.
        with pytest.raises(pyfuse3.FUSEError) as info:
            await ops.open(old, os.O_RDONLY, CTX)
        assert info.value.errno == errno.ESTALE  # the kernel looks the name up again
        new = await _lookup(ops, "deployment/db")
        assert new != old
        assert await _read(ops, new) == b"second"
        assert watcher.take_pending()  # the kernel is told of the change at the next poll

    trio.run(main)


def _moving_store(vault: Vault, watcher: Watcher, **owner: int) -> Callable[[], bool]:
    """A catch-up that, right after its first call (the one made before matching), has
    another writer add a version of db and prune the one before: the tree still names it."""
    calls = 0

    def catch_up() -> bool:
        nonlocal calls
        changed = watcher.catch_up()
        calls += 1
        if calls == 1:
            _replace(vault, b"second", **owner)
        return changed

    return catch_up


def _replace(vault: Vault, value: bytes, **owner: int) -> None:
    """Another writer (the mount's own connection sees no change) sets a version of db
    and prunes the one before."""
    other = Vault.open(vault.backend.path)
    try:
        other.set(parse_ref("db"), value, **owner)
        assert len(other.prune(parse_ref("db"), 1)) == 1
    finally:
        other.close()


@pytest.mark.parametrize("pattern", ["**", "deployment/db"])
def test_the_resolver_serves_the_new_version_of_one_pruned_after_matching(
    store: tuple[Vault, Watcher, SecretFS], pattern: str
) -> None:
    vault, watcher, ops = store
    audit = AuditQueue()
    resolver = Resolver(ops.tree, watcher.versions, audit, _moving_store(vault, watcher))

    async def get() -> list[tuple[str, bytes, str]]:
        return [(e.id, e.value, e.version) for e in await resolver.get_secrets(ROOT, pattern)]

    assert trio.run(get) == [("deployment/db", b"second", "2")]  # was: not_found
    assert [(r.ref, r.version, r.outcome) for r in audit.take()] == [("$S:db", 2, "allowed")]


def test_the_new_version_is_served_only_if_the_caller_may_read_it(
    store: tuple[Vault, Watcher, SecretFS],
) -> None:
    vault, watcher, ops = store
    _replace(vault, b"first", mode=0o444)  # version 2, anyone may read
    watcher.catch_up()
    other = Caller(1000, 1000, 1)
    # version 3 is the owner's only, and it lands between match and load
    catch_up = _moving_store(vault, watcher, mode=0o400)
    resolver = Resolver(ops.tree, watcher.versions, AuditQueue(), catch_up)

    async def get() -> None:
        await resolver.get_secrets(other, "**")

    meta = ops.tree.meta("deployment", "db")
    assert meta is not None and ops.tree.may_read(meta, other)
    with pytest.raises(ConnectError) as info:
        trio.run(get)
    assert info.value.code == "not_found"


def test_the_credential_socket_reads_the_new_version_of_one_pruned_after_matching(
    store: tuple[Vault, Watcher, SecretFS],
) -> None:
    vault, watcher, ops = store
    tree = ops.tree
    calls: list[int] = []
    moving = _moving_store(vault, watcher)

    def catch_up() -> bool:
        calls.append(1)
        return moving()

    lookup = credsock.tree_lookup(tree, watcher.versions, catch_up)
    assert lookup(parse_ref("db")) == (2, b"second")  # was: NotFoundError
    assert len(calls) == 2  # one catch-up before matching, one after the load failed


def test_the_credential_socket_treats_one_removed_after_matching_as_absent(
    store: tuple[Vault, Watcher, SecretFS],
) -> None:
    """Removed in the window: no such secret (the next candidate is tried), no error."""
    vault, watcher, ops = store
    first = True

    def catch_up() -> bool:
        nonlocal first
        changed = watcher.catch_up()
        if first:
            first = False
            other = Vault.open(vault.backend.path)
            try:
                other.remove(parse_ref("db"))
            finally:
                other.close()
        return changed

    lookup = credsock.tree_lookup(ops.tree, watcher.versions, catch_up)
    assert lookup(parse_ref("db")) is None  # was: NotFoundError, audited as an error


def test_the_kernels_retry_is_never_told_estale_again(
    store: tuple[Vault, Watcher, SecretFS],
) -> None:
    """The kernel retries an open that got ESTALE once, after looking the name up
    afresh; ESTALE again reaches the program. The version the retry looked up is pruned
    too before its open (a writer moving fast, the mount not polled yet): the retry is
    served, not sent back."""
    vault, _watcher, ops = store

    async def main() -> None:
        old = await _lookup(ops, "deployment/db")
        _replace(vault, b"second")
        with pytest.raises(pyfuse3.FUSEError) as info:
            await ops.open(old, os.O_RDONLY, CTX)
        assert info.value.errno == errno.ESTALE
        new = await _lookup(ops, "deployment/db")  # the retry's lookup: version 2
        _replace(vault, b"third")  # version 2 pruned before the retry's open
        fh = (await ops.open(new, os.O_RDONLY, CTX)).fh  # the retry: served
        try:
            assert await ops.read(fh, 0, 4096) == b"third"
        finally:
            await ops.release(fh)
        # The next open of the pid is no retry: a stale entry is sent back again.
        _replace(vault, b"fourth")
        with pytest.raises(pyfuse3.FUSEError) as info:
            await ops.open(new, os.O_RDONLY, CTX)
        assert info.value.errno == errno.ESTALE

    trio.run(main)


def test_a_retry_served_a_version_it_may_not_read_is_denied_not_missing(
    store: tuple[Vault, Watcher, SecretFS],
) -> None:
    """The retry's version pruned too, and the current one is no longer the caller's to
    read: that is EACCES, audited as denied, not ENOENT (the file is there)."""
    vault, watcher, ops = store
    user = SimpleNamespace(uid=1000, gid=1000, pid=os.getpid())
    audit = AuditQueue()
    ops.audit = audit
    _replace(vault, b"everyone", mode=0o444)
    watcher.catch_up()

    async def main() -> None:
        await ops.lookup(ROOT_INODE, b"deployment", user)
        old = await _lookup(ops, "deployment/db")
        _replace(vault, b"second", mode=0o444)
        with pytest.raises(pyfuse3.FUSEError) as info:
            await ops.open(old, os.O_RDONLY, user)
        assert info.value.errno == errno.ESTALE
        new = await _lookup(ops, "deployment/db")  # the retry's lookup: version 3, 0444
        _replace(vault, b"root only", mode=0o400)  # pruned before the retry's open
        with pytest.raises(pyfuse3.FUSEError) as info:
            await ops.open(new, os.O_RDONLY, user)
        assert info.value.errno == errno.EACCES

    trio.run(main)
    last = audit.take(final=True)[-1]
    assert (last.uid, last.outcome, last.detail) == (1000, "denied", "EACCES")

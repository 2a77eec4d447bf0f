"""An open that reaches the mount before it has polled the store's latest write.

The kernel keeps a name's entry (its inode: one version) until the mount tells it
otherwise, up to a poll later. A program that opens the name in that window, after the
version it names was pruned, must be sent to the current version, never told ENOENT.
The FUSE handlers are called here in the order the kernel can send them: that order is
a race in a real mount (tests/mount/test_open_path.py), and fixed here.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pyfuse3
import pytest
import trio

from secretfs.daemon import Watcher
from secretfs.fs import SecretFS
from secretfs.refs import parse_ref
from secretfs.tree import ROOT_INODE, Owner, Tree
from secretfs.vault import Vault

CTX = SimpleNamespace(uid=0, gid=0, pid=os.getpid())


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
            assert other.prune(parse_ref("db"), 1) == [1]
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

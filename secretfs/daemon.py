"""The mount's lifecycle: mount, watch the store, invalidate, unmount on every signal.

Every background task is a child of the one nursery in `serve`.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyfuse3
import trio

from secretfs.errors import SecretfsError, StoreError
from secretfs.fs import SecretFS
from secretfs.tree import Invalidation, Owner, Tree
from secretfs.vault import Vault

log = logging.getLogger(__name__)

FSNAME = "secretfs"
POLL_SECONDS = 0.2  # a change in the store reaches new opens well within 1 s


@dataclass(frozen=True, slots=True)
class MountOptions:
    allow_other: bool = False
    uid: int = -1  # -1: the mounting user
    gid: int = -1
    mode: int = 0o400
    extra: tuple[str, ...] = ()

    def fuse_options(self, store: Path) -> set[str]:
        opts = {
            f"fsname={FSNAME}:{store}",
            "subtype=secretfs",
            "ro",
            "nosuid",
            "nodev",
            "noexec",
            "noatime",
        }
        if self.allow_other:
            opts.add("allow_other")
        opts.update(self.extra)
        return opts

    def owner(self) -> Owner:
        return Owner(
            os.getuid() if self.uid < 0 else self.uid,
            os.getgid() if self.gid < 0 else self.gid,
            self.mode,
        )


def is_mounted(mountpoint: Path) -> bool:
    target = os.path.realpath(mountpoint)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as fh:
            for line in fh:
                fields = line.split()
                if len(fields) > 4 and _unescape(fields[4]) == target:
                    return True
    except OSError:
        return False
    return False


def _unescape(text: str) -> str:
    return text.encode().decode("unicode_escape") if "\\" in text else text


def unmount(mountpoint: Path, *, lazy: bool = False) -> None:
    """Unmount a FUSE mount; `lazy` detaches it even when it is dead or busy."""
    tool = "fusermount3"
    args = [tool, "-u", *(["-z"] if lazy else []), str(mountpoint)]
    try:
        proc = subprocess.run(args, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        proc = subprocess.run(
            ["umount", *(["-l"] if lazy else []), str(mountpoint)],
            capture_output=True,
            text=True,
            check=False,
        )
    if proc.returncode != 0:
        raise StoreError(f"cannot unmount {mountpoint}: {proc.stderr.strip()}")


def clear_stale_mount(mountpoint: Path) -> None:
    """A dead mount (its daemon gone) answers ENOTCONN: detach it so we can mount again."""
    try:
        # statvfs always reaches the daemon; stat may be answered from the kernel's cache.
        os.statvfs(mountpoint)
    except OSError as exc:
        if exc.errno in (errno.ENOTCONN, errno.ECONNABORTED):
            log.warning("clearing a stale mount at %s", mountpoint)
            unmount(mountpoint, lazy=True)
            return
        raise StoreError(f"mount point {mountpoint}: {exc.strerror}") from None
    if is_mounted(mountpoint):
        raise StoreError(f"{mountpoint} is already a mount point: `secretfs umount` it first")


class Watcher:
    """Brings the tree up to date with the store and tells the kernel what went stale."""

    def __init__(self, vault: Vault, tree: Tree) -> None:
        self.vault = vault
        self.tree = tree
        self.seq = 0
        self._data_version = -1

    def refresh(self) -> Invalidation | None:
        data_version = self.vault.backend.data_version()
        if data_version == self._data_version:
            return None
        self._data_version = data_version
        changes = self.vault.backend.changes_since(self.seq)
        if not changes:
            return None
        self.seq = max(c.seq for c in changes)
        return self.tree.apply(changes, time.time_ns())


async def _invalidate(inval: Invalidation) -> None:
    for parent, name in inval.entries:
        pyfuse3.invalidate_entry_async(parent, os.fsencode(name), ignore_enoent=True)
    if inval.inodes:
        # Off the loop: the kernel may wait on a request that only this loop can answer.
        await trio.to_thread.run_sync(_invalidate_inodes, inval.inodes)


def _invalidate_inodes(inodes: list[int]) -> None:
    for inode in inodes:
        try:
            pyfuse3.invalidate_inode(inode, attr_only=True)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                log.warning("invalidate inode %d: %s", inode, exc)


async def _watch(watcher: Watcher) -> None:
    while True:
        await trio.sleep(POLL_SECONDS)
        try:
            inval = watcher.refresh()
        except SecretfsError as exc:
            log.error("reading store changes: %s", exc)
            continue
        if inval is not None and (inval.entries or inval.inodes):
            await _invalidate(inval)


async def _signals() -> None:
    sigs = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
    with trio.open_signal_receiver(*sigs) as received:
        async for signum in received:
            log.info("signal %s: unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()
            return


async def _announce_ready(mountpoint: Path, ready: Callable[[], None]) -> None:
    # The stat goes through the kernel to our own loop: when it returns, the mount answers.
    await trio.to_thread.run_sync(os.stat, mountpoint)
    ready()


def serve(
    vault: Vault,
    mountpoint: Path,
    options: MountOptions,
    ready: Callable[[], None] = lambda: None,
) -> None:
    """Mount and serve until unmounted or signalled; always leaves no mount behind."""
    clear_stale_mount(mountpoint)
    tree = Tree(options.owner(), vault.read_version, time.time_ns())
    watcher = Watcher(vault, tree)
    watcher.refresh()
    ops = SecretFS(tree)
    pyfuse3.init(ops, str(mountpoint), options.fuse_options(vault.path))
    unmounted = False
    try:
        trio.run(_main, watcher, mountpoint, ready)
        unmounted = not is_mounted(mountpoint)
    finally:
        pyfuse3.close(unmount=not unmounted)


async def _main(watcher: Watcher, mountpoint: Path, ready: Callable[[], None]) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_signals)
        nursery.start_soon(_watch, watcher)
        nursery.start_soon(_announce_ready, mountpoint, ready)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()

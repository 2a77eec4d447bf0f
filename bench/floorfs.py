"""The floor: a bare pyfuse3 filesystem serving the benchmark's bytes from a dict.

Kernel caches on (long entry and attribute timeouts, `keep_cache`), `flush` left to
pyfuse3's default (ENOSYS, so the kernel stops sending it), no permission checks, no
handle table, no audit: what any Python FUSE filesystem pays at least per request.

SIGUSR1 "rotates" the first `--cold` secrets the way secretfs does: each gets a new
inode and its directory entry is invalidated, so the next open is a cold one (LOOKUP,
OPEN, READ, RELEASE). A byte on `--notify-fd` says "mounted" and then "rotated".

    python -m bench.floorfs MOUNTPOINT --count 10000 --cold 2000 --notify-fd 5
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import stat
import time
from typing import Any

import pyfuse3
import trio

from bench import dataset

TIMEOUT = 3600.0
ROOT = pyfuse3.ROOT_INODE


class FloorFS(pyfuse3.Operations):
    def __init__(self, files: dict[str, bytes]) -> None:
        super().__init__()
        self.now = time.time_ns()
        self.next_inode = ROOT + 1
        self.attrs: dict[int, pyfuse3.EntryAttributes] = {ROOT: self._attr(ROOT, None)}
        self.children: dict[int, dict[bytes, int]] = {ROOT: {}}
        self.data: dict[int, bytes] = {}
        self.where: dict[str, tuple[int, bytes]] = {}  # file path -> (parent inode, name)
        for path, value in files.items():
            parent = ROOT
            *dirs, leaf = path.split("/")
            for part in dirs:
                key = os.fsencode(part)
                child = self.children[parent].get(key)
                if child is None:
                    child = self._new(parent, key, None)
                    self.children[child] = {}
                parent = child
            self._new(parent, os.fsencode(leaf), value)
            self.where[path] = (parent, os.fsencode(leaf))

    def _attr(self, inode: int, value: bytes | None) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode
        a.st_mode = (stat.S_IFDIR | 0o555) if value is None else (stat.S_IFREG | 0o400)
        a.st_nlink = 2 if value is None else 1
        a.st_uid, a.st_gid = os.getuid(), os.getgid()
        a.st_size = 0 if value is None else len(value)
        a.st_blksize = 4096
        a.st_blocks = (a.st_size + 511) // 512
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = self.now
        a.entry_timeout = a.attr_timeout = TIMEOUT
        return a

    def _new(self, parent: int, name: bytes, value: bytes | None) -> int:
        inode = self.next_inode
        self.next_inode += 1
        self.attrs[inode] = self._attr(inode, value)
        if value is not None:
            self.data[inode] = value
        self.children[parent][name] = inode
        return inode

    def rotate(self, paths: list[str]) -> list[tuple[int, bytes]]:
        """A new inode for each path (same bytes); the entries the kernel must drop."""
        stale = []
        for path in paths:
            parent, name = self.where[path]
            old = self.children[parent][name]
            self._new(parent, name, self.data[old])
            stale.append((parent, name))
        return stale

    async def lookup(self, parent_inode: int, name: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        inode = self.children.get(parent_inode, {}).get(name)
        if inode is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self.attrs[inode]

    async def getattr(self, inode: int, ctx: Any) -> pyfuse3.EntryAttributes:
        return self.attrs[inode]

    async def opendir(self, inode: int, ctx: Any) -> int:
        return inode

    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        entries = list(self.children[fh].items())
        for index in range(start_id, len(entries)):
            name, inode = entries[index]
            if not pyfuse3.readdir_reply(token, name, self.attrs[inode], index + 1):
                break

    async def releasedir(self, fh: int) -> None:
        pass

    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return self.data[fh][off : off + size]

    async def release(self, fh: int) -> None:
        pass


async def _serve(fs: FloorFS, mountpoint: str, cold: list[str], notify: int) -> None:
    async def ready() -> None:
        await trio.to_thread.run_sync(os.stat, mountpoint)
        os.write(notify, b"m")

    async def signals() -> None:
        with trio.open_signal_receiver(signal.SIGUSR1, signal.SIGTERM, signal.SIGINT) as sigs:
            async for signum in sigs:
                if signum != signal.SIGUSR1:
                    pyfuse3.terminate()
                    return
                stale = fs.rotate(cold)
                await trio.to_thread.run_sync(_invalidate, stale)
                os.write(notify, b"r")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ready)
        nursery.start_soon(signals)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def _invalidate(stale: list[tuple[int, bytes]]) -> None:
    for parent, name in stale:
        pyfuse3.invalidate_entry(parent, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mountpoint")
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--cold", type=int, default=2_000)
    parser.add_argument("--notify-fd", type=int, required=True)
    args = parser.parse_args()
    fs = FloorFS(dataset.files(args.count))
    cold = [f"{dataset.SCOPE}/{n}" for n in dataset.cold_names(args.cold)]
    options = {"fsname=floorfs", "subtype=floorfs", "ro", "nosuid", "nodev", "noexec"}
    options.add("noatime")
    pyfuse3.init(fs, args.mountpoint, options)
    try:
        trio.run(_serve, fs, args.mountpoint, cold, args.notify_fd)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main()

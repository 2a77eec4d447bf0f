"""pyfuse3 Operations: a thin adapter that turns requests into Tree calls and errnos.

Each open decrypts into a buffer that belongs to that handle alone (the snapshot), and
the buffer is wiped on release. Every write operation answers EROFS.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Sequence
from typing import Any, NoReturn

import pyfuse3

from secretfs import crypto
from secretfs.access import EXEC, READ, Caller, allowed
from secretfs.errors import NotFoundError, SecretfsError
from secretfs.tree import Attr, Node, Tree

log = logging.getLogger(__name__)

# The kernel keeps entries and attributes this long; the daemon invalidates them on change.
CACHE_TIMEOUT = 3600.0
XATTR_PREFIX = "user.secretfs."
XATTRS = ("ref", "version", "created", "fingerprint")


def _fail(code: int) -> NoReturn:
    raise pyfuse3.FUSEError(code)


def _caller(ctx: Any) -> Caller:
    pid = ctx.pid

    def groups() -> frozenset[int]:
        try:
            return frozenset(pyfuse3.get_sup_groups(pid))
        except OSError:
            return frozenset()

    return Caller(ctx.uid, ctx.gid, pid, groups)


class SecretFS(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, tree: Tree) -> None:
        super().__init__()
        self.tree = tree
        self._handles: dict[int, bytearray] = {}
        self._dirs: dict[int, list[Node]] = {}
        self._next_fh = 1

    # -- helpers -------------------------------------------------------------------------

    def _get(self, inode: int) -> Node:
        node = self.tree.get(inode)
        if node is None:
            _fail(errno.ENOENT)
        return node

    def _entry(self, node: Node) -> pyfuse3.EntryAttributes:
        return _entry_attributes(self.tree.attr(node))

    def _check(self, node: Node, ctx: Any, want: int) -> None:
        attr = self.tree.attr(node)
        if not allowed(attr.mode, attr.uid, attr.gid, _caller(ctx), want):
            _fail(errno.EACCES)

    def _fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    # -- reading the tree ----------------------------------------------------------------

    async def lookup(self, parent_inode: int, name: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        parent = self._get(parent_inode)
        self._check(parent, ctx, EXEC)
        node = self._call(self.tree.lookup, parent, os.fsdecode(name))
        if node is None:
            _fail(errno.ENOENT)
        self.tree.remember(node.inode)
        return self._entry(node)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for inode, count in inode_list:
            self.tree.forget(inode, count)

    async def getattr(self, inode: int, ctx: Any) -> pyfuse3.EntryAttributes:
        return self._entry(self._get(inode))

    async def access(self, inode: int, mode: int, ctx: Any) -> bool:
        if mode & os.W_OK:
            _fail(errno.EROFS)
        want = (READ if mode & os.R_OK else 0) | (EXEC if mode & os.X_OK else 0)
        attr = self.tree.attr(self._get(inode))
        return allowed(attr.mode, attr.uid, attr.gid, _caller(ctx), want)

    async def opendir(self, inode: int, ctx: Any) -> int:
        node = self._get(inode)
        if not node.is_dir:
            _fail(errno.ENOTDIR)
        self._check(node, ctx, READ)
        fh = self._fh()
        self._dirs[fh] = self._call(self.tree.listdir, node)
        return fh

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        entries = self._dirs.get(fh, [])
        for index in range(start_id, len(entries)):
            node = entries[index]
            name = os.fsencode(node.path.rsplit("/", 1)[-1])
            if not pyfuse3.readdir_reply(token, name, self._entry(node), index + 1):
                break
            self.tree.remember(node.inode)

    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & (os.O_TRUNC | os.O_APPEND):
            _fail(errno.EROFS)
        node = self._get(inode)
        if node.is_dir:
            _fail(errno.EISDIR)
        self._check(node, ctx, READ)
        data = self._call(self.tree.read, node)
        fh = self._fh()
        self._handles[fh] = bytearray(data)
        # The inode is one version's, so the page cache stays right across opens.
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        buf = self._handles.get(fh)
        if buf is None:
            _fail(errno.EBADF)
        return bytes(buf[off : off + size])

    async def flush(self, fh: int) -> None:
        # Nothing to flush on a read-only file; ENOSYS makes the kernel stop asking.
        _fail(errno.ENOSYS)

    async def release(self, fh: int) -> None:
        buf = self._handles.pop(fh, None)
        if buf is not None:
            crypto.wipe(buf)

    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        node = self._get(inode)
        if node.secret is None:
            return []
        return [(XATTR_PREFIX + n).encode() for n in XATTRS]

    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        node = self._get(inode)
        key = os.fsdecode(name)
        if node.secret is None or not key.startswith(XATTR_PREFIX):
            _fail(pyfuse3.ENOATTR)
        return xattr_value(self.tree, node, key[len(XATTR_PREFIX) :])

    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        out = pyfuse3.StatvfsData()
        out.f_bsize = out.f_frsize = 4096
        out.f_files = self.tree.inode_count
        out.f_namemax = 255
        return out

    def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except NotFoundError:
            _fail(errno.ENOENT)
        except SecretfsError as exc:
            # Never the value: our errors carry none; name only the class and the file.
            log.error("%s: %s", type(exc).__name__, args[-1].path if args else "")
            _fail(exc.errno)

    # -- everything that would write -----------------------------------------------------

    async def _erofs(self, *args: Any, **kwargs: Any) -> NoReturn:
        _fail(errno.EROFS)

    setattr = mknod = mkdir = unlink = rmdir = symlink = rename = link = _erofs
    create = write = setxattr = removexattr = fsync = fsyncdir = _erofs


def xattr_value(tree: Tree, node: Node, key: str) -> bytes:
    meta = tree.current(node)
    if key == "ref":
        return str(node.ref).encode()
    if key == "version":
        return str(meta.version).encode()
    if key == "created":
        return str(meta.updated_ns).encode()
    if key == "fingerprint":
        return meta.fingerprint.encode()
    _fail(pyfuse3.ENOATTR)


def _entry_attributes(attr: Attr) -> pyfuse3.EntryAttributes:
    entry = pyfuse3.EntryAttributes()
    entry.st_ino = attr.inode
    entry.st_mode = attr.mode
    entry.st_nlink = attr.nlink
    entry.st_uid = attr.uid
    entry.st_gid = attr.gid
    entry.st_size = attr.size
    entry.st_blksize = 4096
    entry.st_blocks = (attr.size + 511) // 512
    entry.st_atime_ns = attr.mtime_ns
    entry.st_mtime_ns = attr.mtime_ns
    entry.st_ctime_ns = attr.ctime_ns
    entry.entry_timeout = CACHE_TIMEOUT
    entry.attr_timeout = CACHE_TIMEOUT
    return entry

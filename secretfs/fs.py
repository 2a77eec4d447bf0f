"""pyfuse3 Operations: a thin adapter that turns requests into Tree calls and errnos.

Each open takes a snapshot: the version's ciphertext, held by that handle alone (kept
verified in memory by secretfs/verified.py, so a warm open runs no SQL and decrypts
nothing). The first read decrypts into the plaintext pool (secretfs/plainpool.py): one
copy per secret version and field shared by every handle on it, wiped when the last
closes, its total capped (past the cap, each read decrypts for itself); with the page
cache warm the kernel sends no read at all. Every write operation answers EROFS.

Access is checked here on every lookup, opendir, open and access() from the request's
uid, gid and groups (mode bits plus grants, see access.py); every open of a secret or
field file is put in the audit queue, which the daemon writes out in batches.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

import pyfuse3

from secretfs import audit as _audit
from secretfs import crypto, sealing
from secretfs.access import EXEC, READ, Caller
from secretfs.clock import SYSTEM, Clock
from secretfs.errors import NotFoundError, SecretfsError
from secretfs.keyring import SealedValue
from secretfs.plainpool import PlainPool
from secretfs.tree import Attr, Node, Tree, ref_text
from secretfs.verified import VerifiedVersions

log = logging.getLogger(__name__)

# The kernel keeps entries and attributes this long; the daemon invalidates them on change.
CACHE_TIMEOUT = 3600.0
STALE_RETRY_SECONDS = 1.0  # an open retried after ESTALE within this is served as is
XATTR_PREFIX = "user.secretfs."


def _fail(code: int) -> NoReturn:
    raise pyfuse3.FUSEError(code)


@contextlib.contextmanager
def _errno_of(path: str) -> Iterator[None]:
    """Errors of the tree or the store, at a FUSE operation's boundary, as an errno;
    `path` names the file in the log."""
    try:
        yield
    except NotFoundError:
        _fail(errno.ENOENT)
    except SecretfsError as exc:
        # Never the value: our errors carry none; name only the class and the file.
        log.error("%s: %s", type(exc).__name__, path)
        _fail(exc.errno)
    except Exception as exc:  # noqa: BLE001 - one bad record must not stop the mount
        # Only the type: a library's message could quote the value it choked on.
        log.error("internal %s: %s", type(exc).__name__, path)
        _fail(errno.EIO)


def _caller(ctx: Any) -> Caller:
    pid = ctx.pid

    def groups() -> frozenset[int]:
        try:
            return frozenset(pyfuse3.get_sup_groups(pid))
        except OSError:
            return frozenset()

    return Caller(ctx.uid, ctx.gid, pid, groups)


class _Handle:
    """An open file: its node, its version sealed, and the plaintext once it is read —
    shared in the pool under `key` when `key` is set, else the handle's own."""

    __slots__ = ("data", "key", "node", "sealed")

    def __init__(self, node: Node, sealed: SealedValue | None, data: bytearray | None) -> None:
        self.node = node
        self.sealed = sealed
        self.data = data
        self.key: tuple[int, int, tuple[str, ...]] | None = None


class SecretFS(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self,
        tree: Tree,
        audit: _audit.AuditQueue | None = None,
        catch_up: Callable[[], bool] = lambda: False,
        versions: VerifiedVersions | None = None,
        pool: PlainPool | None = None,
    ) -> None:
        super().__init__()
        self.tree = tree
        # One plaintext per (secret, version, field) for all handles, capped in total.
        self._pool = pool if pool is not None else PlainPool()
        # Without it, each open reads and decrypts its version from the store.
        self._versions = versions
        self._names = _audit.ProcessNames()
        self._callers: dict[tuple[int, int, int], Caller] = {}
        # Before answering "no such name" or "denied", take in store changes not yet
        # polled, so a name just created or a grant just given counts at once.
        self._catch_up = catch_up
        self.audit = audit if audit is not None else _audit.AuditQueue()
        self._handles: dict[int, _Handle] = {}
        # Why every open is refused (EIO) now, if it is: set by the daemon (store not
        # served, audit records that cannot be written).
        self.refusal: Callable[[], str | None] = lambda: None
        self._dirs: dict[int, list[Node]] = {}
        self._next_fh = 1
        self._stale_pids: dict[int, float] = {}  # pid -> when its open last got ESTALE
        self.clock: Clock = SYSTEM  # the daemon's (secretfs/clock.py)

    # -- helpers -------------------------------------------------------------------------

    def _caller(self, ctx: Any) -> Caller:
        # The same caller asks again and again: build it once (its groups are read live).
        key = (ctx.uid, ctx.gid, ctx.pid)
        caller = self._callers.get(key)
        if caller is None:
            if len(self._callers) >= 4096:
                self._callers.clear()
            caller = self._callers[key] = _caller(ctx)
        return caller

    def _get(self, inode: int) -> Node:
        node = self.tree.get(inode)
        if node is None:
            _fail(errno.ENOENT)
        return node

    def _entry(self, node: Node) -> pyfuse3.EntryAttributes:
        entry = _entry_attributes(self.tree.attr(node))
        if node.kind == "status":
            entry.attr_timeout = 0  # its size changes with what it says
        elif node.kind in ("field", "fielddir"):
            # Reached only through a `.d/` lookup that checks the caller: a cached entry
            # would let the next caller past that check, so every walk asks again.
            entry.entry_timeout = entry.attr_timeout = 0
        return entry

    def _check(self, node: Node, ctx: Any, want: int) -> None:
        if not self.tree.may(node, self._caller(ctx), want):
            _fail(errno.EACCES)

    def _record(self, action: str, node: Node, ctx: Any, outcome: str, detail: str | None) -> None:
        assert node.secret is not None
        self.audit.add_mount(
            self.clock.time_ns(),
            action,
            ref_text(node.secret.scope, node.secret.name, node.field),
            node.secret.version,
            ctx.uid,
            ctx.gid,
            ctx.pid,
            self._names.get(ctx.pid),
            outcome,
            detail,
        )

    def _retrying(self, pid: int) -> bool:
        """Whether this open is the kernel's one retry of an open of the pid that just
        got ESTALE (the next open of the pid, whatever it is). A retry never gets ESTALE
        again, from any check of the open: the kernel would pass it to the program."""
        got_it_at = self._stale_pids.pop(pid, None)
        return got_it_at is not None and self.clock.monotonic() - got_it_at < STALE_RETRY_SECONDS

    def _stale(self, pid: int) -> NoReturn:
        """Answer ESTALE: the kernel looks the name up afresh and retries the open once."""
        if len(self._stale_pids) >= 4096:
            self._stale_pids.clear()
        self._stale_pids[pid] = self.clock.monotonic()
        _fail(errno.ESTALE)

    def _pruned_since_poll(self, node: Node) -> bool:
        """Whether an open whose version is gone from the store names a version the
        store has since moved past (pruned or removed before the mount polled): the
        kernel then looks the name up again (ESTALE) rather than report it missing."""
        self._catch_up()
        return self.tree.superseded(node)

    def _fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    # -- reading the tree ----------------------------------------------------------------

    async def lookup(self, parent_inode: int, name: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        parent = self._get(parent_inode)
        if not self.tree.may(parent, self._caller(ctx), EXEC):
            if parent.kind == "fielddir":
                # The way to a field file goes through here: a refused attempt is audited.
                with _errno_of(os.fsdecode(name)):
                    child = self.tree.lookup(parent, os.fsdecode(name))
                if child is not None:
                    self._record("lookup", child, ctx, _audit.DENIED, "EACCES")
            _fail(errno.EACCES)
        with _errno_of(os.fsdecode(name)):
            node = self.tree.lookup(parent, os.fsdecode(name))
        if node is None and self._catch_up():
            with _errno_of(os.fsdecode(name)):
                node = self.tree.lookup(parent, os.fsdecode(name))
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
        return self.tree.may(self._get(inode), self._caller(ctx), want)

    async def opendir(self, inode: int, ctx: Any) -> int:
        node = self._get(inode)
        if not node.is_dir:
            _fail(errno.ENOTDIR)
        self._check(node, ctx, READ)
        with _errno_of(node.path):
            entries = self.tree.listdir(node)
        if node.kind == "dir":
            # Each caller sees only what it may read (a field directory is all one secret).
            caller = self._caller(ctx)
            entries = [n for n in entries if self.tree.visible(n, caller)]
        fh = self._fh()
        self._dirs[fh] = entries
        return fh

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        entries = self._dirs.get(fh, [])
        for index in range(start_id, len(entries)):
            node = entries[index]
            name = os.fsencode(node.name)
            if not pyfuse3.readdir_reply(token, name, self._entry(node), index + 1):
                break
            self.tree.remember(node.inode)

    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        node = self._get(inode)
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & (os.O_TRUNC | os.O_APPEND):
            if node.secret is not None and not node.is_dir:
                self._record("open", node, ctx, _audit.DENIED, "EROFS")
            _fail(errno.EROFS)
        if node.is_dir:
            _fail(errno.EISDIR)
        if node.kind == "status":
            # Not a secret: not audited; direct_io, as its size changes with its content.
            fh = self._fh()
            self._handles[fh] = _Handle(node, None, bytearray(self.tree.read(node)))
            return pyfuse3.FileInfo(fh=fh, direct_io=True)
        # A second rotation between the retry's lookup and open: it is served the version
        # it looked up.
        retrying = self._retrying(ctx.pid)
        if not retrying and self.tree.superseded(node):
            # A dentry the kernel still holds names an older version: ESTALE makes its
            # open path look the name up afresh (LOOKUP_REVAL) and open the current one,
            # so files changed in one transaction never open as a mix of old and new.
            self._stale(ctx.pid)
        refused = self.refusal()
        if refused is not None:
            self._record("open", node, ctx, _audit.ERROR, f"EIO: {refused}")
            _fail(errno.EIO)
        caller = self._caller(ctx)
        if not self.tree.may(node, caller, READ) and not (
            self._catch_up() and self.tree.may(node, caller, READ)
        ):
            self._record("open", node, ctx, _audit.DENIED, "EACCES")
            _fail(errno.EACCES)
        moved = False  # served another version than the inode's (see below)
        try:
            with _errno_of(node.path):
                handle = self._snapshot(node)
        except pyfuse3.FUSEError as exc:
            current = None
            if exc.errno == errno.ENOENT and self._pruned_since_poll(node):
                if not retrying:
                    self._stale(ctx.pid)
                # The kernel's retry, whose version was pruned too between its lookup
                # and this open (a writer moving fast): it cannot be sent back again,
                # so it is served the current version, through this inode.
                current = self._current(node)
            if current is None:
                code = errno.errorcode.get(exc.errno, str(exc.errno))
                self._record("open", node, ctx, _audit.ERROR, code)
                raise
            if not self.tree.may(current, caller, READ):  # the file is there: not ENOENT
                self._record("open", current, ctx, _audit.DENIED, "EACCES")
                _fail(errno.EACCES)
            node, moved = current, True
            with _errno_of(node.path):
                handle = self._snapshot(node)
        if node.sealed is not None:
            # Sealed afresh on each open: no page cache, the bytes differ every time.
            self._record("open", node, ctx, _audit.ALLOWED, sealing.sealed_detail(node.sealed))
            fh = self._fh()
            self._handles[fh] = handle
            return pyfuse3.FileInfo(fh=fh, direct_io=True)
        # An expired secret is still served, but its opens say so in the audit log.
        expired = self.tree.expired(node, time.time_ns())
        self._record("open", node, ctx, _audit.ALLOWED, "expired" if expired else None)
        fh = self._fh()
        self._handles[fh] = handle
        if moved:
            # Not the inode's version: past the page cache and the inode's size.
            return pyfuse3.FileInfo(fh=fh, direct_io=True)
        # The inode is one version's, so the page cache stays right across opens.
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    def _current(self, node: Node) -> Node | None:
        """The node that now serves `node`'s path in the plain tree (None: none, or a
        sealed node), looked up from the root as the kernel would."""
        if node.sealed is not None or not node.path:
            return None
        found: Node | None = self._get(pyfuse3.ROOT_INODE)
        for name in node.path.split("/"):
            found = None if found is None else self.tree.lookup(found, name)
        return found if found is not None and not found.is_dir else None

    def _snapshot(self, node: Node) -> _Handle:
        """The handle of an open: this version sealed (verified), or else its content."""
        assert node.secret is not None
        if self._versions is None:
            return _Handle(node, None, bytearray(self.tree.read(node)))
        sealed, value = self._versions.get(node.secret.secret_id, node.secret.version)
        if node.sealed is not None:  # a sealed file's box is made at open
            plain = value if value is not None else sealed.open()
            return _Handle(node, None, bytearray(self.tree.content(node, plain)))
        handle = _Handle(node, sealed, None)
        if value is not None:
            # Just decrypted to verify it: keep the content, a read is likely to follow.
            data = self._share(handle, lambda: self.tree.content(node, value))
            if handle.key is None:
                crypto.wipe(data)  # past the cap: the first read decrypts again
        return handle

    def _share(self, handle: _Handle, make: Callable[[], bytes]) -> bytearray:
        """The handle's content: shared from the pool (kept on the handle), or past the
        pool's cap this read's own copy, which the caller wipes."""
        secret = handle.node.secret
        assert secret is not None
        key = (secret.secret_id, secret.version, handle.node.field)
        data, shared = self._pool.acquire(key, make)
        if shared:
            handle.data, handle.key = data, key
        return data

    def _content(self, sealed: SealedValue, node: Node) -> bytes:
        return self.tree.content(node, sealed.open())

    async def read(self, fh: int, off: int, size: int) -> bytes:
        handle = self._handles.get(fh)
        if handle is None:
            _fail(errno.EBADF)
        if handle.data is not None:
            return bytes(handle.data[off : off + size])
        assert handle.sealed is not None
        sealed = handle.sealed

        def content() -> bytes:
            with _errno_of(handle.node.path):
                return self._content(sealed, handle.node)

        data = self._share(handle, content)
        try:
            return bytes(data[off : off + size])
        finally:
            if handle.key is None:
                crypto.wipe(data)  # past the cap: this read's copy only

    async def flush(self, fh: int) -> None:
        # Nothing to flush on a read-only file; ENOSYS makes the kernel stop asking.
        _fail(errno.ENOSYS)

    async def release(self, fh: int) -> None:
        handle = self._handles.pop(fh, None)
        if handle is None:
            return
        if handle.key is not None:
            self._pool.release(handle.key)  # the last handle on it wipes it
        elif handle.data is not None:
            crypto.wipe(handle.data)

    def _check_xattr(self, node: Node, ctx: Any) -> None:
        # What they say (version, fingerprint, expiry) is about the value: readers only.
        if node.secret is not None and not self.tree.may_read(
            self.tree.current(node), self._caller(ctx)
        ):
            _fail(errno.EACCES)

    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        node = self._get(inode)
        if node.secret is None:
            return []
        self._check_xattr(node, ctx)
        return [(XATTR_PREFIX + n).encode() for n in self.tree.xattr_names(node)]

    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        node = self._get(inode)
        key = os.fsdecode(name)
        if not key.startswith("user."):
            # security.*, system.posix_acl_*, trusted.*: a namespace we do not have. Not
            # ENOATTR: `ls -l` asks for two of them per file unless told "not supported".
            _fail(errno.EOPNOTSUPP)
        if node.secret is None or not key.startswith(XATTR_PREFIX):
            _fail(pyfuse3.ENOATTR)
        self._check_xattr(node, ctx)
        value = self.tree.xattr_value(node, key[len(XATTR_PREFIX) :], time.time_ns())
        if value is None:
            _fail(pyfuse3.ENOATTR)
        return value

    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        out = pyfuse3.StatvfsData()
        out.f_bsize = out.f_frsize = 4096
        out.f_files = self.tree.inode_count
        out.f_namemax = 255
        return out

    # -- everything that would write -----------------------------------------------------

    async def _erofs(self, *args: Any, **kwargs: Any) -> NoReturn:
        _fail(errno.EROFS)

    setattr = mknod = mkdir = unlink = rmdir = symlink = rename = link = _erofs
    create = write = setxattr = removexattr = fsync = fsyncdir = _erofs


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

"""The mount's lifecycle: harden, mount, watch the store, invalidate, write the audit
log, unmount on every signal.

Every background task is a child of the one nursery in `serve`.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import logging
import os
import resource
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyfuse3
import trio

from secretfs.audit import AuditQueue, AuditRecord
from secretfs.authmeta import TAMPER, Problem
from secretfs.errors import IntegrityError, NotFoundError, SecretfsError, StoreError
from secretfs.fs import SecretFS
from secretfs.keyring import SealedValue
from secretfs.snapshots import VerifiedVersions
from secretfs.store import GrantRecord, ScopeMeta, SecretMeta
from secretfs.store.base import Backend
from secretfs.tree import Invalidation, Owner, Tree
from secretfs.vault import Vault

log = logging.getLogger(__name__)

FSNAME = "secretfs"
POLL_SECONDS = 0.2  # a change in the store reaches new opens well within 1 s
AUDIT_FLUSH_SECONDS = 0.5  # audit records wait in memory at most about this long

_PR_SET_DUMPABLE = 4
_PR_GET_DUMPABLE = 3
_MCL_CURRENT, _MCL_FUTURE, _MCL_ONFAULT = 1, 2, 4
_CAP_IPC_LOCK = 14
_hardened = False


def harden() -> None:
    """No core dumps, no ptrace by same-uid processes, and memory kept out of swap.

    Locking memory needs CAP_IPC_LOCK or an unlimited RLIMIT_MEMLOCK: without them the
    daemon warns and runs unlocked, because a locked process that outgrows a finite
    limit fails its allocations. Runs once per process.
    """
    global _hardened
    if _hardened:
        return
    _hardened = True
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        log.warning("cannot turn off dumpable: %s", os.strerror(ctypes.get_errno()))
    dumpable = libc.prctl(_PR_GET_DUMPABLE, 0, 0, 0, 0)
    locked = _lock_memory(libc)
    log.info(
        "hardened: core dumps off, dumpable=%d, memory %s",
        dumpable,
        "locked" if locked else "NOT locked",
    )


def _lock_memory(libc: ctypes.CDLL) -> bool:
    soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if not _has_capability(_CAP_IPC_LOCK) and soft != resource.RLIM_INFINITY:
        log.warning(
            "not locking memory: no CAP_IPC_LOCK and RLIMIT_MEMLOCK is %d bytes;"
            " secrets in the daemon's memory may be swapped out"
            " (give it CAP_IPC_LOCK, or LimitMEMLOCK=infinity under systemd)",
            soft,
        )
        return False
    # ONFAULT: lock pages as they are touched, not every reserved thread stack up front.
    for flags in (_MCL_CURRENT | _MCL_FUTURE | _MCL_ONFAULT, _MCL_CURRENT | _MCL_FUTURE):
        if libc.mlockall(flags) == 0:
            return True
        err = ctypes.get_errno()
        if err != errno.EINVAL:
            break
    log.warning("cannot lock memory (%s): secrets may be swapped out", os.strerror(err))
    return False


def _has_capability(bit: int) -> bool:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> bit & 1)
    except (OSError, ValueError):
        pass
    return False


@dataclass(frozen=True, slots=True)
class MountOptions:
    allow_other: bool = False
    uid: int = -1  # -1: the mounting user
    gid: int = -1
    mode: int = 0o400
    extra: tuple[str, ...] = ()

    def fuse_options(self, store: str) -> set[str]:
        opts = {
            # A comma would end the option: etcd://a:2379,b:2379/p shows as a:2379+b:2379.
            f"fsname={FSNAME}:{store.replace(',', '+')}",
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
        # The versions opens are served from, verified: what the store changes is dropped.
        self.versions = VerifiedVersions(self._load)
        self.seq = 0
        # Rows that failed verification (served to nobody, EIO) and the newest version
        # seen of each secret (an older one later is a rollback).
        self.tampered: dict[int, str] = {}
        self.high_water: dict[int, int] = {}
        self.store_problem: str | None = None  # set: every open fails (EIO)
        self.audit: AuditQueue | None = None
        self._reports: list[Problem] = []
        self.access_seq = -1
        self._data_version = -1
        self._pending = Invalidation()

    def catch_up(self) -> bool:
        """Refresh now, from a request handler; the watch task tells the kernel later."""
        seen = self._data_version
        try:
            inval = self.refresh()
        except SecretfsError:
            return False
        if inval is not None:
            self._pending.extend(inval)
        return self._data_version != seen

    def take_pending(self) -> Invalidation:
        pending, self._pending = self._pending, Invalidation()
        return pending

    def _load(self, secret_id: int, version: int) -> SealedValue:
        """The verified-versions loader: nothing from a store or row that failed."""
        if self.store_problem is not None:
            raise IntegrityError(self.store_problem)
        why = self.tampered.get(secret_id)
        if why is not None:
            raise IntegrityError(why)
        try:
            return self.vault.sealed_version(secret_id, version)
        except NotFoundError:
            meta = self.vault.backend.get_meta_by_id(secret_id)
            if meta is None or meta.version != version:
                raise  # an old version pruned since: not tampering
            why = f"secret #{secret_id}: its current version {version} is missing"
            self.report(Problem("version", f"{meta.scope}/{meta.name}", why))
            raise IntegrityError(why) from None

    def report(self, problem: Problem) -> None:
        """Log a verification failure and audit it as tampering (once the queue exists)."""
        log.error("integrity: %s", problem)
        self._reports.append(problem)
        self.report_pending()

    def report_pending(self) -> None:
        if self.audit is not None:
            for p in self._reports:
                self.audit.add_mount(
                    time.time_ns(),
                    "verify",
                    p.what,
                    None,
                    os.getuid(),
                    os.getgid(),
                    os.getpid(),
                    None,
                    TAMPER,
                    f"{p.kind}: {p.detail}"[:300],
                )
            self._reports.clear()

    def integrity(self) -> dict[str, object]:
        """For the status file: whether the store verifies, and rows served to nobody."""
        return {"integrity": self.store_problem or "ok", "tampered": len(self.tampered)}

    def verify_store(self) -> None:
        """Full verification at load: a store-wide failure stops every open (EIO)."""
        # Version rows are checked per open (below): a load stays one pass over the rows.
        for problem in self.vault.auth.verify_all(self.vault.lastseen(), versions=False):
            if problem.kind == "store":
                self.store_problem = f"the store fails verification: {problem.detail}"
            self.report(problem)
        if self.store_problem is None:
            self.vault.remember_state()

    def _verified(self, changes: list[SecretMeta]) -> list[SecretMeta]:
        """Rows that fail their tag, or go back to an older version, are served to nobody."""
        auth = self.vault.auth
        tags = auth.backend.meta_scan("mac/s/") if len(changes) > 32 else None
        out = []
        for meta in changes:
            why = None
            if not auth.secret_ok(meta, tags) and (
                not self.vault.refresh_data_keys() or not auth.secret_ok(meta, tags)
            ):  # tagged under a generation this mount may not have loaded yet
                why = "its row fails authentication (changed without the key)"
            elif meta.version < self.high_water.get(meta.secret_id, 0):
                why = (
                    f"rolled back from version {self.high_water[meta.secret_id]} to {meta.version}"
                )
            if why is None:
                self.tampered.pop(meta.secret_id, None)
                self.high_water[meta.secret_id] = meta.version
                out.append(meta)
                continue
            self.tampered[meta.secret_id] = f"secret #{meta.secret_id}: {why}"
            self.report(Problem("secret", f"{meta.scope}/{meta.name}", why))
            out.append(dataclasses.replace(meta, uid=0, gid=0, mode=0))
        return out

    def _verified_access(
        self, scopes: list[ScopeMeta], grants: list[GrantRecord]
    ) -> tuple[list[ScopeMeta], list[GrantRecord]]:
        """A failing scope row (or one deleted) reads as mode 0; a failing grant is ignored."""
        auth = self.vault.auth
        tags = auth.backend.meta_scan("mac/")
        good_scopes = []
        for sm in scopes:
            if auth.scope_ok(sm, tags):
                good_scopes.append(sm)
            else:
                self.report(Problem("scope", sm.scope, "its defaults row fails authentication"))
                good_scopes.append(ScopeMeta(sm.scope, 0, 0, 0, sm.seq))
        for scope in auth.deleted_scopes(scopes):
            self.report(Problem("scope", scope, "its defaults row was deleted"))
            good_scopes.append(ScopeMeta(scope, 0, 0, 0, 0))
        good_grants = []
        for g in grants:
            if auth.grant_ok(g, tags):
                good_grants.append(g)
            else:
                self.report(
                    Problem(
                        "grant", f"{g.scope}/{g.name}", f"{g.kind} {g.principal}: not authentic"
                    )
                )
        state = auth.keyring.read_state(auth.backend)
        if state is None or auth.access_sum(scopes, grants, tags) != state.access:
            # A row deleted or an older authentic one put back: which one is unknown, so
            # no grant counts and every scope default reads as mode 0 until it adds up.
            self.report(
                Problem("store", auth.backend.name, "scope defaults and grants do not add up")
            )
            return [ScopeMeta(sm.scope, 0, 0, 0, sm.seq) for sm in good_scopes], []
        return good_scopes, good_grants

    def refresh(self) -> Invalidation | None:
        backend = self.vault.backend
        data_version = backend.data_version()
        if data_version == self._data_version:
            return None
        self._data_version = data_version
        # A re-encryption adds data key generations: unwrap them before a read needs them.
        for gen in self.vault.refresh_data_keys():
            log.info("loaded data key generation %d", gen)
        out = Invalidation()
        access_seq = backend.access_seq()
        if access_seq != self.access_seq:
            # Scope defaults and grants are few: take them whole on any change.
            self.access_seq = access_seq
            scopes, grants = self._verified_access(backend.list_scope_meta(), backend.list_grants())
            out.extend(self.tree.set_access(scopes, grants))
        changes = backend.changes_since(self.seq)
        if changes:
            self.seq = max(c.seq for c in changes)
            self.versions.forget(c.secret_id for c in changes)
            out.extend(self.tree.apply(self._verified(changes), time.time_ns()))
        return out or None


class AuditWriter:
    """Appends the mount's audit records through a connection of its own, so a batch can
    be written from a worker thread while the FUSE loop keeps reading."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._seen = backend.data_version()

    def write(self, batch: list[AuditRecord]) -> None:
        if batch:
            with self.backend.transaction():
                self.backend.append_audit(batch)

    def others_wrote(self) -> bool:
        """Whether anyone else changed the store since last asked. On SQLite, data_version
        leaves out what this connection wrote, so the mount's own audit batches do not
        count; any other commit does, a damaging one by hand included."""
        now = self.backend.data_version()
        changed, self._seen = now != self._seen, now
        return changed

    def flush(self, batch: list[AuditRecord], ask: bool = True) -> bool:
        """Write `batch`; with `ask`, say whether others wrote to the store since asked."""
        others = ask and self.others_wrote()
        self.write(batch)
        return others

    def close(self) -> None:
        self.backend.close()


async def _flush_audit(queue: AuditQueue, writer: AuditWriter, versions: VerifiedVersions) -> None:
    while True:
        await trio.sleep(AUDIT_FLUSH_SECONDS)
        await _flush_once(queue, writer, versions)


async def _flush_once(queue: AuditQueue, writer: AuditWriter, versions: VerifiedVersions) -> None:
    batch = queue.take() if len(queue) or queue.dropped else []
    kept = len(versions) > 0
    if not batch and not kept:
        return  # nothing to write, nothing kept to verify again
    try:
        # Not cancellable: a batch is written whole even when the mount is shutting down.
        others = await trio.to_thread.run_sync(writer.flush, batch, kept)
    except (SecretfsError, sqlite3.Error) as exc:
        log.error("cannot write %d audit records yet: %s", len(batch), exc)
        queue.put_back(batch)
        return
    if others:
        # Verify again what is served: a record changed by hand must not go unnoticed.
        versions.clear()


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
        inval = watcher.take_pending()
        try:
            inval.extend(watcher.refresh() or Invalidation())
        except SecretfsError as exc:
            log.error("reading store changes: %s", exc)
        if inval:
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
    harden()
    clear_stale_mount(mountpoint)
    # Reads come from memory from here on (etcd: a copy kept current by a watch).
    vault.backend.follow()
    tree = Tree(
        options.owner(),
        vault.read_version,
        time.time_ns(),
        status=lambda: {**vault.backend.status(), **watcher.integrity()},
    )
    watcher = Watcher(vault, tree)
    watcher.verify_store()
    watcher.refresh()
    queue = AuditQueue()
    watcher.audit = queue
    watcher.report_pending()
    writer = AuditWriter(vault.backend.open_another())
    ops = SecretFS(tree, queue, watcher.catch_up, watcher.versions)
    try:
        pyfuse3.init(ops, str(mountpoint), options.fuse_options(vault.name))
        unmounted = False
        try:
            trio.run(_main, watcher, mountpoint, ready, queue, writer)
            unmounted = not is_mounted(mountpoint)
        finally:
            pyfuse3.close(unmount=not unmounted)
    finally:
        try:
            writer.write(queue.take())
        except (SecretfsError, sqlite3.Error) as exc:
            log.error("audit records lost at shutdown: %s", exc)
        writer.close()


async def _main(
    watcher: Watcher,
    mountpoint: Path,
    ready: Callable[[], None],
    queue: AuditQueue,
    writer: AuditWriter,
) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_signals)
        nursery.start_soon(_watch, watcher)
        nursery.start_soon(_flush_audit, queue, writer, watcher.versions)
        nursery.start_soon(_announce_ready, mountpoint, ready)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()

"""The mount's lifecycle: harden, mount, watch the store, invalidate, write the audit
log, unmount on every signal.

Every background task is a child of the one nursery in `serve`.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import functools
import logging
import os
import resource
import signal
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import pyfuse3
import trio

from secretfs import credsock, sealing
from secretfs.audit import OK as AUDIT_OK
from secretfs.audit import SOURCE_MOUNT, AuditQueue, AuditRecord
from secretfs.audit_retention import prune_by_max_age
from secretfs.authmeta import ACCESS_MISMATCH, TAMPER, AccessCheck, Problem
from secretfs.clock import SYSTEM, Clock
from secretfs.errors import (
    IntegrityError,
    NotFoundError,
    SecretfsError,
    StoreError,
    StoreUnavailableError,
)
from secretfs.fs import SecretFS
from secretfs.hardening import no_core_dumps
from secretfs.keyring import SealedValue
from secretfs.plainpool import DEFAULT_CAP, PlainPool
from secretfs.store import ClientKeyRecord, GrantRecord, ScopeMeta, SecretMeta
from secretfs.store.base import Backend, Following
from secretfs.store.sqlite import SqliteBackend
from secretfs.timeutil import iso_time
from secretfs.tree import Invalidation, Owner, Tree, mount_source
from secretfs.vault import Vault
from secretfs.verified import VerifiedVersions

if TYPE_CHECKING:
    from secretfs.resolver.server import ResolverConfig

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2  # a change in the store reaches new opens well within 1 s
RECHECK_SECONDS = 1.0  # a refused row is verified again this often (a key may come)
AUDIT_FLUSH_SECONDS = 0.5  # audit records wait in memory at most about this long
AUDIT_PRUNE_SECONDS = 3600.0  # the store's audit-max-age is applied this often
AUDIT_REPORT_SECONDS = 30.0  # audit records still not written are logged this often
FOLLOW_STOP_SECONDS = 0.5  # a cancelled store follower's loops get this long to return

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
    dumpable = no_core_dumps()
    locked = _lock_memory(ctypes.CDLL(None, use_errno=True))
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
    max_plain: int = DEFAULT_CAP  # bytes of plaintext held for open files (plainpool.py)
    audit_fail: str = "closed"  # when audit records cannot be written: refuse opens

    def fuse_options(self, store: str) -> set[str]:
        opts = {
            f"fsname={mount_source(store)}",
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


def mount_path(mountpoint: Path) -> str:
    """The absolute path a mount is listed under, found without touching the mount itself:
    only its parent is resolved (a dead mount would hang a stat of its root forever)."""
    absolute = os.path.abspath(mountpoint)
    parent, name = os.path.split(absolute)
    return os.path.join(os.path.realpath(parent), name) if name else absolute


def mount_device(mountpoint: Path) -> tuple[int, int] | None:
    """(major, minor) of the mount on `mountpoint` from /proc/self/mountinfo, or None."""
    target = mount_path(mountpoint)
    found = None
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as fh:
            for line in fh:
                fields = line.split()
                if len(fields) > 4 and _unescape(fields[4]) == target:
                    major, _, minor = fields[2].partition(":")
                    found = (int(major), int(minor))  # the last one listed is on top
    except (OSError, ValueError):
        return None
    return found


def device_elsewhere(device: tuple[int, int] | None, mountpoint: Path) -> bool:
    """Whether `device` is mounted somewhere other than `mountpoint` now: our connection's
    number, freed by the unmount and taken by a new mount (fusectl names it the same)."""
    if device is None:
        return False
    target, wanted = mount_path(mountpoint), f"{device[0]}:{device[1]}"
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as fh:
            for line in fh:
                fields = line.split()
                if len(fields) > 4 and fields[2] == wanted and _unescape(fields[4]) != target:
                    return True
    except OSError:
        return True  # unsure: aborting someone else's mount is the worse mistake
    return False


def mount_fs_type(mountpoint: Path) -> str | None:
    """The file system type of the top mount on `mountpoint` (after mountinfo's " - ")."""
    target, found = mount_path(mountpoint), None
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as fh:
            for line in fh:
                head, _, tail = line.partition(" - ")
                fields = head.split()
                if len(fields) > 4 and _unescape(fields[4]) == target and tail.split():
                    found = tail.split()[0]
    except OSError:
        return None
    return found


def is_mounted(mountpoint: Path) -> bool:
    return mount_device(mountpoint) is not None


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


FUSECTL = Path("/sys/fs/fuse/connections")
SHUTDOWN_GRACE_SECONDS = 2.0  # then the FUSE connection is aborted
SHUTDOWN_EXIT_SECONDS = 1.0  # and after this the process exits, whatever still hangs
_MNT_DETACH = 2


def abort_connection(device: tuple[int, int] | None) -> bool:
    """Abort a FUSE connection through fusectl (mounted here if needed, as root): every
    request waiting on this daemon fails at once, so nothing stays blocked on it."""
    if device is None:
        return False
    if not (FUSECTL / "version").exists() and os.geteuid() == 0:
        subprocess.run(
            ["mount", "-t", "fusectl", "fusectl", str(FUSECTL)], capture_output=True, check=False
        )
    # An anonymous device's connection is named by its dev_t: major 0, so the minor.
    try:
        (FUSECTL / str(os.makedev(*device)) / "abort").write_text("1")
    except OSError as exc:
        log.warning("cannot abort the FUSE connection: %s", exc.strerror)
        return False
    return True


def detach(mountpoint: Path) -> None:
    """Lazily detach a mount without waiting on its daemon (umount2 MNT_DETACH)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(os.fsencode(mountpoint), _MNT_DETACH) == 0:
        return
    try:
        unmount(mountpoint, lazy=True)  # not root: fusermount3 may still do it
    except StoreError as exc:
        log.warning("%s", exc)


class ShutdownWatchdog:
    """Bounds every way out: once armed, if the daemon has not finished shutting down in
    `grace` seconds, the FUSE connection is aborted and the mount detached; one second
    later the process exits whatever still hangs. A stopped daemon never lingers."""

    def __init__(
        self,
        mountpoint: Path,
        pending: Callable[[], int],
        grace: float = SHUTDOWN_GRACE_SECONDS,
        clock: Clock = SYSTEM,
        exit_process: Callable[[int], object] = os._exit,
    ) -> None:
        self.mountpoint = mountpoint
        self.device: tuple[int, int] | None = None
        self.grace = grace
        self._pending = pending
        self._clock = clock
        self._exit = exit_process
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def arm(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self.run, name="shutdown", daemon=True)
            self._thread.start()

    def disarm(self) -> None:
        self._done.set()

    def run(self) -> None:
        """The watch itself (`arm` runs it on a thread of its own)."""
        if self._clock.wait(self._done, self.grace):
            return
        log.error("shutdown stuck for %.0f s: aborting the FUSE connection", self.grace)
        if device_elsewhere(self.device, self.mountpoint):
            # Unmounted already, and its number given to another mount: never abort that.
            log.error("the FUSE connection's number now belongs to another mount: not aborting")
        else:
            abort_connection(self.device)
        if is_mounted(self.mountpoint):
            detach(self.mountpoint)
        if self._clock.wait(self._done, SHUTDOWN_EXIT_SECONDS):
            return
        log.error("shutdown still stuck: exiting, %d audit records not written", self._pending())
        self._exit(1)


def _file_identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def verify_store(vault: Vault) -> None:
    """What a store file put in place while mounted must pass before it is served; raises
    SecretfsError to refuse it: its data keys, and the store-wide checks (tags add up, not
    older than the state this host last verified: a restore is accepted only deliberately,
    with `secretfs doctor --accept-restore`, then a remount)."""
    vault.refresh_data_keys()
    for problem in vault.auth.verify_all(vault.lastseen(), versions=False):
        if problem.kind == "store":
            raise IntegrityError(f"the store fails verification: {problem.detail}")


class Watcher:
    """Brings the tree up to date with the store and tells the kernel what went stale."""

    def __init__(
        self, vault: Vault, tree: Tree, writer: AuditWriter | None = None, clock: Clock = SYSTEM
    ) -> None:
        self.vault = vault
        self.tree = tree
        self.writer = writer
        self.clock = clock
        # The versions opens are served from, verified: what the store changes is dropped.
        self.versions = VerifiedVersions(self._load)
        self.seq = 0
        # Rows that failed verification (served to nobody, EIO) and the newest version
        # seen of each secret (an older one later is a rollback).
        self.tampered: dict[int, str] = {}
        self._recheck_at = 0.0  # refused rows are looked at again from then on
        self._access_problems: frozenset[Problem] = frozenset()  # looked at again likewise
        self.high_water: dict[int, int] = {}
        self.store_problem: str | None = None  # set: every open fails (EIO)
        self.audit: AuditQueue | None = None
        self._reports: list[Problem] = []
        self.access_seq = -1
        self._data_version = -1
        # Every row as verify_store() read it, at this data_version: the first refresh
        # starts from them instead of reading the whole store a second time.
        self._loaded: tuple[int, list[SecretMeta]] | None = None
        self._pending = Invalidation()
        # Set once the store can no longer be served: every open then answers EIO.
        self.problem: str | None = None
        self._problem_since: str | None = None
        # A SQLite store's file, to notice a restore putting another file at its path.
        backend = vault.backend
        self._path = backend.path if isinstance(backend, SqliteBackend) else None
        self._identity = None if self._path is None else _file_identity(self._path)
        self._missing = False
        # Why the last poll could not read the store's changes, and since when (None:
        # it could): the tree stays as last read, and the status file says so.
        self._unread: tuple[str, str] | None = None

    def status(self) -> dict[str, object]:
        """The backend's status, or why this mount stopped serving."""
        if self.problem is None:
            status = self.vault.backend.status()
            if self._unread is None:
                return status
            why, since = self._unread
            return {
                **status,
                "connected": False,
                "stale_since": status.get("stale_since") or since,
                "problem": f"cannot read the store's changes: {why}",
            }
        return {
            "backend": "sqlite",
            "store": self.vault.name,
            "connected": False,
            "serving": False,
            "last_revision": self.seq,
            "stale_since": self._problem_since,
            "problem": self.problem,
        }

    def catch_up(self) -> bool:
        """Refresh now, from a request handler; the watch task tells the kernel later.
        Not while the store's changes cannot be read: the watch loop tries again each
        poll, and a request (any uid's lookup of a missing name) never repeats the read."""
        if self._unread is not None:
            return False
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

    def poll(self) -> Invalidation:
        """One turn of the watch loop: what changed since the last. A store whose changes
        cannot be read (unreachable, a damaged row) leaves the tree as last read: the
        status file says so (`connected` false, `stale_since`, `problem`) until a poll
        reads again, and the log says it once per new reason, not once per poll."""
        inval = self.take_pending()
        try:
            inval.extend(self.check_store() or Invalidation())
            inval.extend(self.refresh() or Invalidation())
        except SecretfsError as exc:
            why = str(exc)
            if self._unread is None or self._unread[0] != why:
                log.error("reading store changes: %s (serving the last state read)", why)
            since = self._unread[1] if self._unread else iso_time(time.time_ns())
            self._unread = (why, since)
        else:
            if self._unread is not None:
                log.warning("store changes are read again (unread since %s)", self._unread[1])
            self._unread = None
        return inval

    def check_store(self) -> Invalidation | None:
        """Whether the store path still names the file served; if a restore replaced it,
        serve the new file when it is the same store and passes `verify_store`, else stop
        serving (every open EIO, said in status and the log)."""
        if self._path is None:
            return None
        identity = _file_identity(self._path)
        if identity is None:
            if not self._missing:
                log.warning("store file %s is gone: still serving the one open", self._path)
            self._missing = True
            return None
        self._missing = False
        if identity == self._identity:
            return None
        self._identity = identity
        log.warning("store file %s was replaced by another file: re-opening it", self._path)
        # Closed first, the WAL emptied: SQLite must not read the old -wal into the new file.
        if self.writer is not None:
            self.writer.suspend()
        old = self.vault.backend
        assert isinstance(old, SqliteBackend)
        old.close_replaced()
        self.versions.clear()
        try:
            backend = SqliteBackend.open(self._path)
        except SecretfsError as exc:
            return self._stop(f"the store file was replaced and cannot be opened: {exc}")
        if backend.meta_get("store_id") != self.vault.store_id:
            backend.close()
            return self._stop("the store file was replaced by a different store")
        self.vault.replace_backend(backend)
        if self.writer is not None:
            self.writer.resume(backend.open_another())
        try:
            verify_store(self.vault)
            return self._reload()
        except SecretfsError as exc:
            return self._stop(f"the store file was replaced and does not verify: {exc}")

    def _stop(self, problem: str) -> Invalidation | None:
        log.error("%s: no longer serving %s (remount to serve the new store)", problem, self._path)
        self.problem = problem
        self._problem_since = iso_time(time.time_ns())
        return None

    def _reload(self) -> Invalidation:
        """Bring the tree to the re-opened store: what it no longer holds goes."""
        self.problem = None
        self.seq, self.access_seq, self._data_version = 0, -1, -1
        present = {m.secret_id for m in self.vault.backend.list_meta()}
        gone = [replace(m, deleted=True) for m in self.tree.known() if m.secret_id not in present]
        out = self.tree.apply(gone, time.time_ns())
        out.extend(self.refresh() or Invalidation())
        log.info("serving the re-opened store %s", self._path)
        return out

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
            if meta is None or meta.deleted or meta.version != version:
                raise  # pruned since, or the secret removed (rm): not tampering
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
                    p.ref or p.what,
                    None,
                    os.getuid(),
                    os.getgid(),
                    os.getpid(),
                    None,
                    TAMPER,
                    # A row named apart from its ref (a grant's principal): name it here.
                    (str(p) if p.ref else f"{p.kind}: {p.detail}")[:300],
                )
            self._reports.clear()

    def integrity(self) -> dict[str, object]:
        """For the status file: whether the store verifies, and rows served to nobody."""
        return {
            "integrity": self.store_problem or "ok",
            "tampered": len(self.tampered),
            # Generations this mount cannot open (a revoked node): their values answer EIO.
            "key_problems": [p for _, p in sorted(self.vault.keyring.damaged.items())],
        }

    def verify_store(self) -> None:
        """Full verification at load: a store-wide failure stops every open (EIO)."""
        # Version rows are checked per open (below): a load stays one pass over the rows.
        backend = self.vault.backend
        data_version = backend.data_version()
        rows = backend.changes_since(0)
        self._loaded = (data_version, rows)
        auth = self.vault.auth
        for problem in auth.verify_all(self.vault.lastseen(), versions=False, rows=rows):
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
            if not auth.secret_ok(meta, tags):
                meta, why = self._reread_secret(meta)
            if why is None and meta.version < self.high_water.get(meta.secret_id, 0):
                why = (
                    f"rolled back from version {self.high_water[meta.secret_id]} to {meta.version}"
                )
            if why is None:
                self.tampered.pop(meta.secret_id, None)
                self.high_water[meta.secret_id] = meta.version
                out.append(meta)
                continue
            reason = f"secret #{meta.secret_id}: {why}"
            if self.tampered.get(meta.secret_id) != reason:  # said once, not every recheck
                self.report(Problem("secret", f"{meta.scope}/{meta.name}", why))
            self.tampered[meta.secret_id] = reason
            out.append(dataclasses.replace(meta, uid=0, gid=0, mode=0))
        return out

    def _reread_secret(self, meta: SecretMeta) -> tuple[SecretMeta, str | None]:
        """A row that failed its tag, read again with its tag and the data keys in one
        snapshot, and why that fails (None: it verifies): the row and tag read before
        were two reads, so a write or a re-encryption (new tags, under a new generation)
        committed between them is no tamper; a row changed without the key fails here
        too."""
        backend = self.vault.backend
        with backend.snapshot():
            self.vault.refresh_data_keys()  # a tag under a generation added with it
            fresh = backend.get_meta_by_id(meta.secret_id)
            if fresh is None:
                return meta, "its row was deleted (not something secretfs does)"
            return fresh, self.vault.auth.secret_problem(fresh)

    def _access_check(
        self,
        scopes: list[ScopeMeta],
        grants: list[GrantRecord],
        client_keys: list[ClientKeyRecord],
    ) -> AccessCheck:
        auth = self.vault.auth
        tags = auth.access_tags()
        state = auth.keyring.read_state(auth.backend)
        return auth.verify_access(scopes, grants, client_keys, tags, state)

    def _verified_access(
        self,
        scopes: list[ScopeMeta],
        grants: list[GrantRecord],
        client_keys: list[ClientKeyRecord],
    ) -> tuple[list[ScopeMeta], list[GrantRecord], list[ClientKeyRecord]]:
        """A failing scope row (or one deleted) reads as mode 0; a failing grant or client
        key is ignored."""
        auth = self.vault.auth
        check = self._access_check(scopes, grants, client_keys)
        if check.problems or not check.adds_up:
            # Rows, tags and state were separate reads: judge them from one snapshot (a
            # grant or a re-encryption committed between them is no tamper).
            backend = self.vault.backend
            with backend.snapshot():
                self.vault.refresh_data_keys()
                check = self._access_check(
                    backend.list_scope_meta(), backend.list_grants(), backend.list_client_keys()
                )
        problems = list(check.problems)
        if not check.adds_up:
            problems.append(Problem("store", auth.backend.name, ACCESS_MISMATCH))
        for problem in problems:
            if problem not in self._access_problems:  # said once, not every recheck
                self.report(problem)
        self._access_problems = frozenset(problems)
        if not check.adds_up:
            # A row deleted or an older authentic one put back: which one is unknown, so
            # no grant or client key counts and every scope default reads as mode 0 until
            # it adds up.
            return [ScopeMeta(sm.scope, 0, 0, 0, sm.seq) for sm in check.scopes], [], []
        return check.scopes, check.grants, check.client_keys

    def refresh(self) -> Invalidation | None:
        if self.problem is not None:
            return None
        backend = self.vault.backend
        data_version = backend.data_version()
        refused = bool(self.tampered or self._access_problems)
        recheck = refused and self.clock.monotonic() >= self._recheck_at
        if data_version == self._data_version and not recheck:
            return None
        # What was read is marked read only once applied: a read that fails midway (a
        # damaged row, an I/O error) is read again whole by the next poll, never skipped.
        # A re-encryption adds data key generations: unwrap them before a read needs them.
        for gen in self.vault.refresh_data_keys():
            log.info("loaded data key generation %d", gen)
        out = Invalidation()
        access_seq = backend.access_seq()
        if access_seq != self.access_seq or (recheck and self._access_problems):
            # Scope defaults and grants are few: take them whole on any change.
            scopes, grants, keys = self._verified_access(
                backend.list_scope_meta(), backend.list_grants(), backend.list_client_keys()
            )
            out.extend(self.tree.set_access(scopes, grants))
            out.extend(self.tree.set_client_keys(keys))
            self.access_seq = access_seq
        loaded, self._loaded = self._loaded, None
        if loaded is not None and loaded[0] == data_version and self.seq == 0:
            changes = list(loaded[1])  # nothing committed since verify_store() read them
        else:
            changes = backend.changes_since(self.seq)
        seq = max((c.seq for c in changes), default=self.seq)
        if recheck:
            # A row refused for want of a key this mount had not loaded yet (a password
            # store's new salt, a generation sealed to this node late) is looked at again,
            # so a passing refusal does not last until the row next changes.
            self._recheck_at = self.clock.monotonic() + RECHECK_SECONDS
            seen = {c.secret_id for c in changes}
            for sid in list(self.tampered):
                meta = backend.get_meta_by_id(sid)
                if meta is not None and sid not in seen:
                    changes.append(meta)
        if changes:
            self.versions.forget(c.secret_id for c in changes)
            out.extend(self.tree.apply(self._verified(changes), time.time_ns()))
        self.seq, self._data_version = seq, data_version
        return out or None


def _mount_note(detail: str) -> AuditRecord:
    """A record of the mount's own doing (a prune), in the mount's name."""
    return AuditRecord(
        time.time_ns(),
        SOURCE_MOUNT,
        "audit",
        None,
        None,
        None,
        None,
        os.getpid(),
        None,
        AUDIT_OK,
        detail,
    )


class AuditWriter:
    """Appends the mount's audit records through a connection of its own, so a batch can
    be written from a worker thread while the FUSE loop keeps reading."""

    def __init__(self, backend: Backend, clock: Clock = SYSTEM) -> None:
        self.backend: Backend | None = backend
        self.clock = clock
        self._seen = backend.data_version()
        # A re-open (the store file replaced) must not close the connection mid-batch.
        self._lock = threading.Lock()
        self._next_prune = 0.0
        self.report_at = 0.0  # when to log again that records cannot be written

    def suspend(self) -> None:
        """Close the connection until `resume`; batches wait in the queue meanwhile."""
        with self._lock:
            if self.backend is not None:
                self.backend.close()
                self.backend = None

    def resume(self, backend: Backend) -> None:
        with self._lock:
            self.backend = backend
            self._seen = backend.data_version()

    def _backend(self) -> Backend:
        if self.backend is None:
            raise StoreError("the store is being re-opened")
        return self.backend

    def write(self, batch: list[AuditRecord]) -> None:
        if batch:
            used = sealing.last_uses(batch)  # client keys' last use, with the batch
            with self._lock:
                backend = self._backend()
                with backend.transaction():
                    backend.append_audit(batch)
                    if used:
                        backend.touch_client_keys(used)

    def others_wrote(self) -> bool:
        """Whether anyone else changed the store since last asked. On SQLite, data_version
        leaves out what this connection wrote, so the mount's own audit batches do not
        count; any other commit does, a damaging one by hand included."""
        with self._lock:
            now = self._backend().data_version()
        changed, self._seen = now != self._seen, now
        return changed

    def flush(self, batch: list[AuditRecord], ask: bool = True) -> bool:
        """Write `batch`; with `ask`, say whether others wrote to the store since asked."""
        others = ask and self.others_wrote()
        self.write(batch)
        self._prune_if_due()
        return others

    def prune_due(self) -> bool:
        return self.clock.monotonic() >= self._next_prune

    def _prune_if_due(self) -> None:
        """Apply the store's audit-max-age at start and then hourly."""
        if not self.prune_due():
            return
        self._next_prune = self.clock.monotonic() + AUDIT_PRUNE_SECONDS
        try:
            with self._lock:
                count = prune_by_max_age(self._backend(), self.clock.time_ns(), _mount_note)
        except SecretfsError as exc:
            log.error("cannot prune old audit records: %s", exc)
            return
        if count:
            log.info("pruned %d audit records older than the store's audit-max-age", count)

    def close(self) -> None:
        self.suspend()


async def _flush_audit(queue: AuditQueue, writer: AuditWriter, versions: VerifiedVersions) -> None:
    while True:
        await trio.sleep(AUDIT_FLUSH_SECONDS)
        await _flush_once(queue, writer, versions)


async def _flush_once(queue: AuditQueue, writer: AuditWriter, versions: VerifiedVersions) -> None:
    batch = queue.take() if queue.due() else []
    kept = len(versions) > 0
    if not batch and not kept and queue.failing is None and not writer.prune_due():
        return  # nothing to write, nothing kept to verify again, no prune due
    try:
        # Not cancellable: a batch is written whole even when the mount is shutting down.
        others = await trio.to_thread.run_sync(writer.flush, batch, kept)
    except SecretfsError as exc:
        queue.put_back(batch)
        now = writer.clock.monotonic()
        if queue.failing is not None and now < writer.report_at:
            return  # said already: once at the first failure, then every half minute
        queue.failing = f"{exc}"
        queue.waiting_for_store = isinstance(exc, StoreUnavailableError)
        writer.report_at = now + AUDIT_REPORT_SECONDS
        # Never silent: how many wait, and how many the bounded queue had to drop.
        log.error(
            "cannot write %d audit records (%d waiting, %d dropped so far): %s",
            len(batch),
            len(queue),
            queue.dropped_total,
            exc,
        )
        return
    if queue.failing is not None:
        log.warning("audit records are written again (%d in this batch)", len(batch))
        queue.failing = None
    if others:
        # Verify again what is served: a record changed by hand must not go unnoticed.
        versions.clear()


async def _invalidate(inval: Invalidation) -> None:
    for parent, name in inval.entries:
        # With the replaced inode its watchers get DELETE_SELF (ENOENT, ignored, when the
        # kernel holds no entry or another inode under the name).
        old = inval.replaced.get((parent, name), 0)
        pyfuse3.invalidate_entry_async(parent, os.fsencode(name), old, ignore_enoent=True)
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
        inval = watcher.poll()
        if inval:
            await _invalidate(inval)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


async def _signals(watchdog: ShutdownWatchdog) -> None:
    with trio.open_signal_receiver(*STOP_SIGNALS) as received:
        # Held back since the mount was made: one sent meanwhile is taken now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        async for signum in received:
            log.info("signal %s: unmounting", signal.Signals(signum).name)
            watchdog.arm()
            pyfuse3.terminate()
            return


async def follow_store(following: Following, clock: Clock = SYSTEM) -> None:
    """Run the store's follower loops (etcd: its watch and health check), each on a
    thread, as children of this task. Cancelled, it stops them and gives them
    FOLLOW_STOP_SECONDS to return; one still in a call to a hung member is left to end
    at that call's timeout (it touches nothing but the follower). A loop that fails
    fails this task, and with it the nursery."""
    loops = following.loops()
    ended = [threading.Event() for _ in loops]
    # A limiter of their own: loops that run as long as the mount take no room in trio's.
    limiter = trio.CapacityLimiter(max(1, len(loops)))

    def run(loop: Callable[[], None], done: threading.Event) -> None:
        try:
            loop()
        finally:
            done.set()

    try:
        async with trio.open_nursery() as nursery:
            for loop, done in zip(loops, ended, strict=True):
                nursery.start_soon(
                    functools.partial(
                        trio.to_thread.run_sync, abandon_on_cancel=True, limiter=limiter
                    ),
                    run,
                    loop,
                    done,
                )
    finally:
        following.stop()
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(_wait_all, ended, FOLLOW_STOP_SECONDS, clock)


def _wait_all(events: Sequence[threading.Event], seconds: float, clock: Clock) -> bool:
    """Wait until every event is set, `seconds` at most in all; whether they are."""
    deadline = clock.monotonic() + seconds
    return all(clock.wait(e, max(0.0, deadline - clock.monotonic())) for e in events)


async def _announce_ready(mountpoint: Path, ready: Callable[[], None]) -> None:
    # The stat goes through the kernel to our own loop: when it returns, the mount answers.
    # Abandoned on cancel: a signal before the first answer must not wait for this stat.
    await trio.to_thread.run_sync(os.stat, mountpoint, abandon_on_cancel=True)
    ready()


def serve(
    vault: Vault,
    mountpoint: Path,
    options: MountOptions,
    ready: Callable[[], None] = lambda: None,
    resolver: ResolverConfig | None = None,
    credential_socket: Path | None = None,
    clock: Clock = SYSTEM,
) -> None:
    """Mount and serve until unmounted or signalled; always leaves no mount behind.

    With `resolver`, also answer the Docker secrets-engine API on its sockets. Every
    timing decision reads `clock`."""
    harden()
    clear_stale_mount(mountpoint)
    # Reads come from memory from here on (etcd: a copy kept current by a watch, whose
    # loops run in the nursery of `_main`).
    following = vault.backend.follow(clock)
    vault.keyring.clock = clock
    writer = AuditWriter(vault.backend.open_another(), clock)
    watcher: Watcher
    queue = AuditQueue(clock=clock)
    closed = options.audit_fail == "closed"

    def refusal() -> str | None:
        """Why opens are refused (EIO) now: the store not served, or audit not written."""
        if watcher.problem is not None:
            return "store not served"
        # An unreachable cluster is no refusal while its records wait in memory (SPEC §8:
        # serve what it last knew); a store that refuses them, or a full queue, is.
        if closed and queue.failing is not None:
            if not queue.waiting_for_store or queue.dropped_total:
                return "audit records cannot be written"
        return None

    def status() -> dict[str, object]:
        # The watcher knows when a replaced store file stopped this mount serving.
        return {
            **watcher.status(),
            **watcher.integrity(),
            "serving": refusal() is None,
            "audit": queue.status(),
        }

    tree = Tree(options.owner(), vault.read_version, time.time_ns(), status=status)
    watcher = Watcher(vault, tree, writer, clock)
    watcher.audit = queue
    watcher.verify_store()
    watcher.refresh()
    watcher.report_pending()
    pool = PlainPool(options.max_plain)
    ops = SecretFS(tree, queue, watcher.catch_up, watcher.versions, pool)
    ops.refusal = refusal
    ops.clock = clock
    services: list[Callable[[], Awaitable[None]]] = []
    closers: list[Callable[[], None]] = []
    # Sockets are bound now: one that cannot be had fails the mount before it answers.
    if resolver is not None:
        from secretfs.resolver.server import resolver_task

        serve_api, close_resolver = resolver_task(resolver, tree, watcher, queue, refusal)
        services.append(serve_api)
        closers.append(close_resolver)
    if credential_socket is not None:
        lookup = credsock.tree_lookup(tree, watcher.versions, watcher.catch_up, refusal)
        sock = credsock.bind(credential_socket)
        creds = credsock.CredentialServer(sock, credential_socket, lookup, queue)
        services.append(creds.serve)
        closers.append(creds.close)
    watchdog = ShutdownWatchdog(mountpoint, lambda: len(queue), clock=clock)
    # A stop signal between mounting and the loop would kill us with the mount left dead.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        pyfuse3.init(ops, str(mountpoint), options.fuse_options(vault.name))
        # Known now, from mountinfo: a stuck shutdown aborts this connection by its number.
        watchdog.device = mount_device(mountpoint)
        unmounted = False
        try:
            trio.run(
                _main, watcher, mountpoint, ready, queue, writer, watchdog, services, following
            )
            watchdog.arm()
            # From here on nothing answers the mount: never stat it, read mountinfo.
            unmounted = not is_mounted(mountpoint)
        finally:
            watchdog.arm()
            pyfuse3.close(unmount=not unmounted)
            if is_mounted(mountpoint):
                detach(mountpoint)  # an aborted connection is left mounted: detach it
    finally:
        for close in closers:
            close()
        batch = queue.take(final=True)
        try:
            writer.write(batch)
        except SecretfsError as exc:
            log.error("%d audit records lost at shutdown: %s", len(batch), exc)
        writer.close()
        watchdog.disarm()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


async def _main(
    watcher: Watcher,
    mountpoint: Path,
    ready: Callable[[], None],
    queue: AuditQueue,
    writer: AuditWriter,
    watchdog: ShutdownWatchdog,
    services: Sequence[Callable[[], Awaitable[None]]] = (),
    following: Following | None = None,
) -> None:
    async with trio.open_nursery() as nursery:
        for service in services:  # sockets bound already: they answer from here on
            nursery.start_soon(service)
        if following is not None:
            nursery.start_soon(follow_store, following, watcher.clock)
        nursery.start_soon(_signals, watchdog)
        nursery.start_soon(_watch, watcher)
        nursery.start_soon(_flush_audit, queue, writer, watcher.versions)
        nursery.start_soon(_announce_ready, mountpoint, ready)
        await pyfuse3.main()
        watchdog.arm()  # unmounted: the tasks left must end within the bound too
        nursery.cancel_scope.cancel()

"""`secretfs doctor`: is this machine ready to mount, and is this store whole?

Each check says ok, warn (works, but act on it), fail (does not work, or is unsafe) or
skip, and for anything not ok, what to do. The store is healthy when nothing fails.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from secretfs import expiry, keyring, keys
from secretfs.checks import Check, Status, mode_check
from secretfs.errors import IntegrityError, SecretfsError
from secretfs.refs import Ref, Scope
from secretfs.store.base import ConsistencyChecks
from secretfs.store.location import StoreLocation, location_of
from secretfs.store.sqlite import SqliteBackend
from secretfs.vault import Vault

__all__ = ["Check", "Report", "Status", "run"]
FUSE_CONF = Path("/etc/fuse.conf")
SHOWN = 10  # problems named one by one before "and N more"


@dataclass(frozen=True, slots=True)
class Report:
    checks: list[Check]

    @property
    def healthy(self) -> bool:
        return not any(c.status == "fail" for c in self.checks)

    @property
    def tampered(self) -> bool:
        """An authenticated row or the store state failed (exit 6)."""
        return any(c.status == "fail" and c.name == METADATA for c in self.checks)

    def to_json(self) -> dict[str, object]:
        return {"healthy": self.healthy, "checks": [asdict(c) for c in self.checks]}


def run(
    store: StoreLocation | os.PathLike[str],
    *,
    allow_other: bool = False,
    fuse_conf: Path = FUSE_CONF,
    accept_restore: bool = False,
) -> Report:
    store = location_of(store)
    checks = [_fuse_device(), _fusermount(), _allow_other(allow_other, fuse_conf)]
    checks += _mounts(store)
    store_checks, found = store.doctor_checks()
    checks += store_checks
    if not found:
        return Report(checks)
    try:
        checks.append(_key_source(store))
    except SecretfsError as exc:  # not a store at all: say so beside what else was found
        checks.append(Check("store", "fail", str(exc), "restore the store from its backup"))
        return Report(checks)
    try:
        vault = Vault.open(store)
    except SecretfsError as exc:
        checks.append(
            Check(
                "unlock",
                "fail",
                str(exc),
                "check the key source above; a damaged store needs its backup"
                " (store and key file together)",
            )
        )
        checks += _backend_checks(store)
        return Report(checks)
    try:
        checks.append(
            Check("unlock", "ok", f"the key from {vault.kek_source.description} opens it")
        )
        checks += _integrity(vault.backend)
        try:
            checks += _metadata(vault, accept_restore)
            checks.append(_every_version_decrypts(vault))
            checks += _key_operations(vault)
            checks.append(_schedule(vault))
        except SecretfsError as exc:  # a record too damaged to read at all
            checks.append(Check("records", "fail", str(exc), "restore the store from its backup"))
    finally:
        vault.close()
    return Report(checks)


# -- the machine ------------------------------------------------------------------------


def _fuse_device() -> Check:
    dev = Path("/dev/fuse")
    try:
        st = dev.stat()
    except OSError:
        return Check(
            "/dev/fuse",
            "fail",
            "missing",
            "load the module (`modprobe fuse`); in a container pass `--device /dev/fuse`",
        )
    if not stat.S_ISCHR(st.st_mode):
        return Check(
            "/dev/fuse",
            "fail",
            "not a character device",
            "recreate it: mknod -m 666 /dev/fuse c 10 229",
        )
    if not os.access(dev, os.R_OK | os.W_OK):
        return Check(
            "/dev/fuse",
            "fail",
            f"not readable and writable by uid {os.geteuid()}",
            "chmod 666 /dev/fuse (its usual mode), or mount as root",
        )
    return Check("/dev/fuse", "ok", "character device, readable and writable")


def _fusermount() -> Check:
    found = shutil.which("fusermount3")
    if found is None:
        return Check("fusermount3", "fail", "not on PATH", "install it: apt-get install fuse3")
    st = Path(found).stat()
    if os.geteuid() != 0 and not (st.st_mode & stat.S_ISUID and st.st_uid == 0):
        return Check(
            "fusermount3",
            "fail",
            f"{found} is not setuid root, so users other than root cannot mount",
            f"chown root {found} && chmod u+s {found} (the fuse3 package does this)",
        )
    return Check("fusermount3", "ok", found)


def _allow_other(asked: bool, fuse_conf: Path) -> Check:
    if not asked:
        return Check(
            "allow_other",
            "skip",
            "not checked: pass --allow-other if you mount with -o allow_other",
        )
    if os.geteuid() == 0:
        return Check("allow_other", "ok", "root may mount with allow_other")
    try:
        lines = fuse_conf.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        lines = []
    except OSError as exc:
        return Check(
            "allow_other",
            "fail",
            f"cannot read {fuse_conf}: {exc.strerror}",
            f"chmod 644 {fuse_conf} (fusermount3 reads it as the user)",
        )
    if any(line.split("#", 1)[0].strip() == "user_allow_other" for line in lines):
        return Check("allow_other", "ok", f"user_allow_other is set in {fuse_conf}")
    return Check(
        "allow_other",
        "fail",
        f"{fuse_conf} does not enable user_allow_other, so only root may use allow_other",
        f"add a line `user_allow_other` to {fuse_conf} (as root)",
    )


def _key_source(store: StoreLocation) -> Check:
    source = keys.env_source()
    backend = store.open()
    try:
        initialized = (backend.meta_get("kek_kind") or b"").decode(errors="replace")
    finally:
        backend.close()
    if source is not None:
        note = ""
        if initialized and initialized != source.kind:
            note = f" (the store was created with a {initialized}; {source.description} wins)"
        return Check(
            "key source",
            "ok",
            f"{source.kind} from {source.description}{note}",
            None,
        )
    path = store.key_file()
    node_path = keys.node_key_file_path(path)
    if node_path.exists():
        # This node's own key comes first (docs/cluster.md, "Nodes"); `unlock` says whether
        # it is enrolled.
        check = mode_check("key source", node_path, "node key")
        if check.status == "ok":
            return Check("key source", "ok", f"node key file {check.detail}")
        return check
    if not path.exists():
        return Check(
            "key source",
            "fail",
            f"$SECRETFS_KEY and $SECRETFS_PASSWORD are unset and there is no key file {path}"
            f" nor node key file {node_path}",
            "set the variable the store was made with, or restore the key file from its"
            " backup (or point $SECRETFS_KEY_FILE at it)",
        )
    check = mode_check("key source", path, "key")
    if check.status == "ok":
        return Check("key source", "ok", f"key file {check.detail}")
    return check


# -- the store --------------------------------------------------------------------------


def _mounts(store: StoreLocation) -> list[Check]:
    """Each mount of this store on this machine: is it serving current data, or stale?"""
    from secretfs.tree import STATUS_FILE

    out = []
    for mountpoint in secretfs_mounts(str(store)):
        name = f"mount {mountpoint}"
        try:
            status = json.loads((Path(mountpoint) / STATUS_FILE).read_bytes())
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not JSON"
            out.append(
                Check(
                    name,
                    "warn",
                    f"cannot read its status: {reason}",
                    "a mount of an older secretfs, or a dead one: `secretfs umount -z` it",
                )
            )
            continue
        if status.get("serving") is False:
            failing = (status.get("audit") or {}).get("failing")
            problem = status.get("problem") or f"audit records cannot be written: {failing}"
            out.append(
                Check(
                    name,
                    "fail",
                    f"not serving {status.get('store')}: {problem}"
                    f" (since {status.get('stale_since')}); every open answers EIO",
                    f"check the store file, then remount: `secretfs umount {mountpoint}`"
                    f" and `secretfs mount {mountpoint}`",
                )
            )
            continue
        key_problems = status.get("key_problems") or []
        if key_problems:
            out.append(
                Check(
                    name,
                    "fail",
                    f"cannot open every value of {status.get('store')}: "
                    + "; ".join(map(str, key_problems))
                    + " (those values answer EIO)",
                    "enroll this node again from a member (`secretfs node enroll PUBKEY`), or"
                    " remount it with a key that opens the store",
                )
            )
            continue
        if status.get("connected", True):
            detail = f"{status.get('backend')} {status.get('store')}: current"
            if status.get("last_revision") is not None:
                detail += f" (revision {status['last_revision']})"
            out.append(Check(name, "ok", detail))
            continue
        since = status.get("stale_since") or "its start"
        fix = (
            "bring the etcd cluster back (quorum); the mount catches up by itself"
            if status.get("backend") == "etcd"
            else "the store checks above say what is wrong with it; the mount catches up"
            " by itself once it reads the store again"
        )
        out.append(
            Check(
                name,
                "warn",
                f"stale since {since}: serving the last state seen (revision"
                f" {status.get('last_revision')}) of {status.get('store')}:"
                f" {status.get('problem') or 'the backend does not answer'}",
                fix,
            )
        )
    return out


def secretfs_mounts(store: str) -> list[str]:
    """Mount points of the secretfs mounts of `store` (by their fsname) in this namespace."""
    from secretfs.tree import mount_source

    source = mount_source(store)
    out = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as fh:
            for line in fh:
                before, _, after = line.partition(" - ")
                fields = before.split()
                if after.split()[:2] == ["fuse.secretfs", source] and len(fields) > 4:
                    out.append(fields[4].encode().decode("unicode_escape"))
    except OSError:
        return []
    return out


def _backend_checks(store: StoreLocation) -> list[Check]:
    """What can be checked without the key."""
    try:
        backend = store.open()
    except SecretfsError as exc:
        return [Check("integrity", "fail", str(exc), "restore the store from its backup")]
    try:
        return _integrity(backend)
    finally:
        backend.close()


def _integrity(backend: ConsistencyChecks) -> list[Check]:
    result = backend.integrity_check()
    if isinstance(backend, SqliteBackend):
        what = "PRAGMA integrity_check"
        fix = "restore the store from its backup (`sqlite3 STORE .recover` may save the rest)"
    else:
        what = "every record parses"
        fix = "restore the store from its backup (`etcdutl snapshot restore`, docs/cluster.md)"
    out = [
        Check("integrity", "ok", f"{what}: ok")
        if result == "ok"
        else Check("integrity", "fail", f"{what}: {result[:200]}", fix)
    ]
    problems = backend.foreign_key_problems() if result == "ok" else 0
    if problems:
        out.append(
            Check(
                "references",
                "fail",
                f"{problems} row(s) point at a missing secret or data key",
                "restore the store from its backup",
            )
        )
    return out


def _every_version_decrypts(vault: Vault) -> Check:
    bad: list[str] = []
    count = 0
    for sealed in vault.backend.all_sealed():
        count += 1
        try:
            vault.read_version(sealed.secret_id, sealed.version)
        except IntegrityError:
            bad.append(f"{Ref(Scope.from_key(sealed.scope), sealed.name)} v{sealed.version}")
    if not bad:
        return Check("values", "ok", f"all {count} stored version(s) decrypt and verify")
    shown = ", ".join(bad[:SHOWN]) + (f" and {len(bad) - SHOWN} more" if len(bad) > SHOWN else "")
    return Check(
        "values",
        "fail",
        f"{len(bad)} of {count} version(s) do not decrypt (tampered or damaged): {shown}",
        "restore the store from its backup; or give each a new value (`secretfs secret"
        " rotate`) and drop the damaged versions (`secretfs secret prune`), or `secret rm` it",
    )


def _key_operations(vault: Vault) -> list[Check]:
    backend = vault.backend
    out: list[Check] = []
    holder = keyring.key_op_holder(backend)
    if holder is not None and keyring.running(holder):
        out.append(
            Check(
                "key operation", "ok", f"`{holder.get('op')}` is running (pid {holder.get('pid')})"
            )
        )
        return out
    if backend.meta_get(keyring.KEK_ROTATION) is not None:
        out.append(
            Check(
                "key rotation",
                "warn",
                "a key rotation was interrupted; the store opens with the old or the new key",
                "run `secretfs key rotate` to finish it",
            )
        )
    target = keyring.pending_reencryption(backend)
    if target is not None:
        left = backend.versions_not_under(target)
        out.append(
            Check(
                "re-encryption",
                "warn",
                f"a re-encryption to data key generation {target} is half done ({left}"
                " version(s) left under an older key); every value still reads",
                "run `secretfs key rotate --reencrypt` to finish it",
            )
        )
    elif holder is not None and backend.meta_get(keyring.KEK_ROTATION) is None:
        out.append(
            Check(
                "key operation",
                "warn",
                f"`{holder.get('op')}` (pid {holder.get('pid')}) was interrupted",
                f"run `secretfs {holder.get('op')}` again to finish it",
            )
        )
    unused = [
        gen
        for gen, _created, count in backend.data_key_info()
        if count == 0 and gen != vault.active_gen
    ]
    if unused and target is None:
        out.append(
            Check(
                "data keys",
                "warn",
                f"data key generation(s) {', '.join(map(str, unused))} seal nothing",
                "`secretfs key rotate --reencrypt` removes old generations",
            )
        )
    if vault.kek_source.kind == keys.KIND_KEY_FILE:
        key_path = Path(vault.kek_source.description)
        stray = keys.leftover_key_files(key_path)
        next_path = keys.next_key_file_path(key_path)
        if next_path.exists() and backend.meta_get(keyring.KEK_ROTATION) is None:
            stray.append(next_path)
        if stray:
            out.append(
                Check(
                    "key files",
                    "warn",
                    "left by an interrupted key rotation and not used: "
                    + ", ".join(map(str, stray)),
                    "remove them (`secretfs key rotate` also does)",
                )
            )
    if not out:
        gens = [g for g, _c, _n in backend.data_key_info()]
        out.append(
            Check(
                "keys",
                "ok",
                f"data key generation {vault.active_gen} active"
                + (f" (of {', '.join(map(str, gens))})" if len(gens) > 1 else "")
                + "; no key operation half done",
            )
        )
    # A key check record lets errors tell a wrong key from a damaged data key record.
    check = backend.meta_get("kek_check")
    if (
        check is not None
        and vault.keyring.has_kek
        and not vault.keyring.kek_matches(check)
        and backend.meta_get(keyring.KEK_NEXT_CHECK) is None
    ):
        out.append(
            Check(
                "key check",
                "warn",
                "the store's key check record does not match the key that opens it",
                "run `secretfs key rotate` to write a new one",
            )
        )
    return out


METADATA = "metadata"


def _metadata(vault: Vault, accept_restore: bool) -> list[Check]:
    """Every access row's tag, the store's digest and serial (docs/security.md)."""
    problems = vault.verify_all()
    if problems and accept_restore:
        with vault.recorded("accept-restore") as trail:
            rows = vault.auth.retag_all()
            trail.record(
                detail=f"{len(problems)} problem(s) accepted; {rows} row(s) tagged again: "
                + "; ".join(str(p) for p in problems[:5]),
            )
        state = vault.keyring.read_state(vault.backend)
        if state is not None:
            vault.lastseen().record(vault.store_id, state.serial, force=True)
        return [
            Check(
                METADATA,
                "warn",
                f"accepted the store as it is now ({len(problems)} problem(s) before):"
                + "".join(f"\n  {p}" for p in problems),
            )
        ]
    if not problems:
        vault.remember_state()
        return [Check(METADATA, "ok", "every access row and the store digest verify")]
    return [
        Check(
            METADATA,
            "fail",
            f"{len(problems)} row(s) fail verification (changed, deleted or rolled back"
            " without the key):" + "".join(f"\n  {p}" for p in problems),
            "restore the store from a backup you trust; after a deliberate restore, or once"
            " the rows shown are checked and right, `secretfs doctor --accept-restore`",
        )
    ]


def _schedule(vault: Vault) -> Check:
    now = time.time_ns()
    flagged = [m for m in vault.list_secrets() if expiry.status(m, now).flagged]
    if not flagged:
        return Check("expiry", "ok", "no secret is expired or due for rotation")
    names = ", ".join(str(Ref(Scope.from_key(m.scope), m.name)) for m in flagged[:SHOWN])
    more = f" and {len(flagged) - SHOWN} more" if len(flagged) > SHOWN else ""
    return Check(
        "expiry",
        "warn",
        f"{len(flagged)} secret(s) expired or due for rotation (still served): {names}{more}",
        "`secretfs secret ls --due` lists them; `secretfs secret rotate REF` renews one",
    )


def render(report: Report) -> str:
    lines = []
    for c in report.checks:
        label = {"ok": "ok", "warn": "warn", "fail": "FAIL", "skip": "skip"}[c.status]
        lines.append(f"{label:<5} {c.name:<16} {c.detail}")
        if c.fix and c.status in ("warn", "fail"):
            lines.append(f"{'':<5} {'':<16} fix: {c.fix}")
    failed = sum(c.status == "fail" for c in report.checks)
    warned = sum(c.status == "warn" for c in report.checks)
    if report.healthy:
        lines.append("healthy" + (f" ({warned} warning(s))" if warned else ""))
    else:
        lines.append(f"UNHEALTHY: {failed} check(s) failed")
    return "\n".join(lines)


def dumps(report: Report) -> str:
    return json.dumps(report.to_json(), indent=2)

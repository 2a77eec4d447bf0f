"""Access through a real mount: other uids (run as real processes), owner and mode shown by
stat, listings filtered per caller, every open audited, and a hardened daemon."""

from __future__ import annotations

import json
import os
import select
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.mount.conftest import Mount, _is_mounted, probe, wait_for

SECRETS = {
    "db": b"hunter2",
    "@api/token": b"tok-1000\n",
    "@api/cfg": b'{"user":"app","password":"pw"}',
    "@web/key": b"web-key",
}


@pytest.fixture
def shared(open_dir: Path, mount_factory: Callable[..., Mount]) -> Mount:
    """Mounted with allow_other where other uids can reach it; mounted by root."""
    return mount_factory("-o", "allow_other", secrets=SECRETS, parent=open_dir)


def audit_records(m: Mount, *args: str) -> list[dict[str, Any]]:
    return json.loads(m.cli("audit", "--json", *args).stdout)  # type: ignore[no-any-return]


def test_other_uids_read_what_mode_bits_or_grants_allow(shared: Mount) -> None:
    m = shared
    token = m.path / "@api/token"
    assert probe(1000, 1000, "read", token) == ("EACCES", None)
    m.cli("grant", "@api/token", "--uid", "1000")
    m.cli("grant", "@api", "--gid", "3000")
    m.cli("secret", "chmod", "@web/key", "0404")
    wait_for(lambda: probe(1000, 1000, "read", token) == ("ok", b"tok-1000\n"))
    assert probe(1001, 1001, "read", token) == ("EACCES", None)
    # A supplementary group granted on the scope reads all of it, field files included.
    assert probe(1002, 1002, "read", token, groups=(3000,)) == ("ok", b"tok-1000\n")
    password = m.path / "@api/cfg.d/password"
    assert probe(1002, 1002, "read", password, groups=(3000,)) == ("ok", b"pw")
    assert probe(1002, 1002, "read", password) == ("EACCES", None)
    assert probe(1002, 3000, "read", password) == ("ok", b"pw")
    # Mode bits for everyone: 0404.
    assert probe(1003, 1003, "read", m.path / "@web/key") == ("ok", b"web-key")
    # A revoked grant stops working for new opens within a second.
    m.cli("revoke", "@api/token", "--uid", "1000")
    wait_for(lambda: probe(1000, 1000, "read", token) == ("EACCES", None))
    assert probe(1002, 1002, "read", token, groups=(3000,)) == ("ok", b"tok-1000\n")


def test_a_warm_kernel_cache_lets_no_other_uid_past_a_d_directory(shared: Mount) -> None:
    m = shared
    m.cli("grant", "@api/cfg", "--uid", "1000")
    password = m.path / "@api/cfg.d/password"
    # Cold: nobody has looked the field up yet.
    assert probe(1001, 1001, "stat", password) == ("EACCES", None)
    wait_for(lambda: probe(1000, 1000, "read", password) == ("ok", b"pw"))
    assert probe(1000, 1000, "stat", password)[0] == "ok"
    # Warm: the reader's lookup is in the kernel's cache; the check still holds.
    assert probe(1001, 1001, "stat", password) == ("EACCES", None)
    assert probe(1001, 1001, "xattr", password) == ("EACCES", None)
    assert probe(1001, 1001, "list", m.path / "@api/cfg.d") == ("EACCES", None)
    # Extended attributes speak of the value: readers only, whole secrets too.
    assert probe(1000, 1000, "xattr", m.path / "@api/cfg")[0] == "ok"
    assert probe(1001, 1001, "xattr", m.path / "@api/cfg") == ("EACCES", None)
    assert probe(1001, 1001, "stat", m.path / "@api/cfg")[0] == "ok"  # as POSIX: see docs


def test_root_is_an_ordinary_caller(shared: Mount) -> None:
    m = shared
    db = m.path / "deployment/db"
    assert db.read_bytes() == b"hunter2"  # root mounted it: the mount's user owns db
    m.cli("secret", "chown", "db", "1000:1000")
    wait_for(lambda: os.stat(db).st_uid == 1000)
    with pytest.raises(PermissionError):
        db.read_bytes()
    assert probe(1000, 1000, "read", db) == ("ok", b"hunter2")
    m.cli("grant", "db", "--uid", "0")
    wait_for(lambda: db.exists() and _readable(db))
    assert db.read_bytes() == b"hunter2"


def _readable(path: Path) -> bool:
    try:
        path.read_bytes()
    except PermissionError:
        return False
    return True


def test_listings_show_a_caller_only_what_it_may_read(shared: Mount) -> None:
    m = shared
    m.cli("grant", "@api/token", "--uid", "1000")
    wait_for(lambda: probe(1000, 1000, "list", m.path / "@api") == ("ok", ["token"]))
    assert probe(1000, 1000, "list", m.path) == ("ok", ["@api", "deployment", "env", "project"])
    assert probe(1001, 1001, "list", m.path) == ("ok", ["deployment", "env", "project"])
    assert probe(1001, 1001, "list", m.path / "@api") == ("ok", [])
    assert probe(1001, 1001, "list", m.path / "deployment") == ("ok", [])
    # A field directory it may not read gives EACCES, not its names.
    assert probe(1001, 1001, "list", m.path / "@api/cfg.d") == ("EACCES", None)
    # A name it knows is still there: open answers EACCES, not ENOENT.
    assert probe(1001, 1001, "read", m.path / "@api/cfg") == ("EACCES", None)
    assert probe(1001, 1001, "read", m.path / "@api/nope") == ("ENOENT", None)
    # The mount's user (root here) owns everything by default and sees it all.
    assert sorted(os.listdir(m.path / "@api")) == ["cfg", "cfg.d", "token"]
    assert sorted(os.listdir(m.path)) == ["@api", "@web", "deployment", "env", "project"]
    # Readable by mode bits for everyone: listed for everyone.
    m.cli("secret", "chmod", "@web", "0444")
    wait_for(lambda: probe(1001, 1001, "list", m.path / "@web") == ("ok", ["key"]))
    assert probe(1001, 1001, "list", m.path)[1] == ["@web", "deployment", "env", "project"]


def test_stat_shows_owner_and_mode_from_secret_scope_and_mount(
    mount_factory: Callable[..., Mount],
) -> None:
    m = mount_factory("--uid", "4000", "--gid", "4001", "--mode", "0440", secrets=SECRETS)
    m.cli(
        "secret",
        "set",
        "@api/token",
        "--from-stdin",
        "--uid",
        "1000",
        "--mode",
        "0400",
        input=b"t2",
    )

    def owner(rel: str) -> tuple[int, int, int]:
        st = os.stat(m.path / rel)
        return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)

    wait_for(lambda: owner("@api/token") == (1000, 4001, 0o400))
    assert owner("deployment/db") == (4000, 4001, 0o440)
    assert owner("@api/cfg") == (4000, 4001, 0o440)
    m.cli("secret", "chown", "@api", "2000:2001")
    m.cli("secret", "chmod", "@api", "0404")
    # Scope defaults reach every secret of the scope that does not set its own, and its
    # field files; a field directory is traversable where it is readable.
    wait_for(lambda: owner("@api/cfg") == (2000, 2001, 0o404))
    assert owner("@api/token") == (1000, 2001, 0o400)
    assert owner("@api/cfg.d/password") == (2000, 2001, 0o404)
    assert owner("@api/cfg.d") == (2000, 2001, 0o505)
    assert stat.S_ISDIR(os.stat(m.path / "@api/cfg.d").st_mode)
    assert owner("@web/key") == (4000, 4001, 0o440)
    out = subprocess.run(
        ["stat", "-c", "%u %g %a", str(m.path / "@api/token")], capture_output=True, text=True
    )
    assert out.stdout.strip() == "1000 2001 400"
    # Back to inherited, seen within a second.
    m.cli("secret", "chown", "@api/token", "inherit")
    m.cli("secret", "chmod", "@api/token", "inherit")
    wait_for(lambda: owner("@api/token") == (2000, 2001, 0o404))


def test_every_open_is_audited_with_who_and_outcome(shared: Mount) -> None:
    m = shared
    m.cli("grant", "@api/token", "--uid", "1000")
    token = m.path / "@api/token"
    wait_for(lambda: probe(1000, 1000, "read", token)[0] == "ok")
    allowed_pid = probe.last_pid  # type: ignore[attr-defined]
    assert probe(1001, 1001, "read", token) == ("EACCES", None)
    denied_pid = probe.last_pid  # type: ignore[attr-defined]
    assert probe(1001, 1001, "read", m.path / "@api/cfg.d/password") == ("EACCES", None)
    assert (m.path / "@api/cfg.d/user").read_bytes() == b"app"
    # A record that does not decrypt: EIO for that file, audited as an error.
    conn = sqlite3.connect(m.store)
    with conn:
        conn.execute(
            "UPDATE versions SET ciphertext = zeroblob(64) WHERE secret_id ="
            " (SELECT id FROM secrets WHERE scope = '@web' AND name = 'key')"
        )
    conn.close()
    with pytest.raises(OSError):
        (m.path / "@web/key").read_bytes()

    def opens() -> list[dict[str, Any]]:
        return [r for r in audit_records(m) if r["source"] == "mount"]

    wait_for(lambda: len(opens()) >= 5, timeout=3)
    records = opens()
    by = {(r["ref"], r["uid"], r["outcome"]): r for r in records}
    allowed = by[("$S:@api/token", 1000, "allowed")]
    assert allowed["action"] == "open"
    assert allowed["version"] == 1 and allowed["gid"] == 1000
    assert allowed["pid"] == allowed_pid and allowed["process"] == "python3"
    denied = by[("$S:@api/token", 1001, "denied")]
    assert denied["pid"] == denied_pid and denied["detail"] == "EACCES"
    lookup = by[("$S:@api/cfg/password", 1001, "denied")]
    assert lookup["action"] == "lookup"
    own_name = Path("/proc/self/comm").read_text().strip()
    assert by[("$S:@api/cfg/user", 0, "allowed")]["process"] == own_name
    broken = by[("$S:@web/key", 0, "error")]
    assert broken["detail"] == "EIO"
    assert all(r["time_ns"] > 0 for r in records)
    text = m.cli("audit").stdout + m.cli("audit", "--json").stdout
    for value in (b"tok-1000", b"hunter2", b'"pw"', b"web-key"):
        assert value not in text


def test_audit_log_survives_restart_and_cannot_be_edited(
    mount_factory: Callable[..., Mount],
) -> None:
    m = mount_factory(secrets={"db": b"x"})
    assert (m.path / "deployment/db").read_bytes() == b"x"
    # Unmounted right after the open: the daemon writes what it holds before it exits.
    m.cli("umount", str(m.path))
    wait_for(lambda: not m.daemon_pids(), timeout=5)
    opens = [r for r in audit_records(m) if r["action"] == "open"]
    assert [(r["ref"], r["outcome"]) for r in opens] == [("$S:db", "allowed")]
    m.cli_process("mount", str(m.path))
    assert (m.path / "deployment/db").read_bytes() == b"x"
    m.cli("umount", str(m.path))
    wait_for(lambda: not m.daemon_pids(), timeout=5)
    before = audit_records(m)
    assert [r["action"] for r in before].count("open") == 2
    conn = sqlite3.connect(m.store, isolation_level=None)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="cannot be changed"):
            conn.execute("UPDATE audit SET uid = 1234")
        with pytest.raises(sqlite3.IntegrityError, match="cannot be deleted"):
            conn.execute("DELETE FROM audit WHERE action = 'open'")
    finally:
        conn.close()
    assert audit_records(m) == before
    # No CLI command changes the log: `audit` only reads, and its options say so.
    help_text = m.cli("audit", "--help").stdout.decode()
    assert "--delete" not in help_text and "--prune" not in help_text


def test_audit_follow_prints_new_records(mounted: Mount) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "secretfs", "audit", "--follow", "--json", "--ref", "db"],
        env=mounted.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        first = json.loads(_line(proc.stdout))
        assert (first["action"], first["ref"]) == ("set", "$S:db")
        (mounted.path / "env/staging/token").read_bytes()  # another ref: filtered out
        (mounted.path / "deployment/db").read_bytes()
        record = json.loads(_line(proc.stdout))
        assert (record["action"], record["ref"], record["outcome"]) == ("open", "$S:db", "allowed")
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0


def _line(stream: Any, timeout: float = 5.0) -> bytes:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([stream], [], [], 0.1)
        if ready:
            line: bytes = stream.readline()
            assert line, "audit --follow ended"
            return line
    raise AssertionError(f"no audit line within {timeout} s")


def test_daemon_is_hardened(mount_factory: Callable[..., Mount], tmp_path: Path) -> None:
    log = tmp_path / "daemon.log"
    m = mount_factory("--log-file", str(log), secrets={"db": b"x"})
    (pid,) = m.daemon_pids()
    limits = Path(f"/proc/{pid}/limits").read_text()
    core = next(line for line in limits.splitlines() if line.startswith("Max core file size"))
    assert core.split()[4:6] == ["0", "0"]
    status = Path(f"/proc/{pid}/status").read_text()
    locked_kb = int(next(ln for ln in status.splitlines() if ln.startswith("VmLck:")).split()[1])
    assert locked_kb > 0
    # The daemon reads PR_GET_DUMPABLE back after setting it.
    assert "hardened: core dumps off, dumpable=0, memory locked" in log.read_text()


def test_without_cap_ipc_lock_the_daemon_warns_and_serves(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    mnt, log = tmp_path / "m", tmp_path / "daemon.log"
    mnt.mkdir()
    run = [sys.executable, "-m", "secretfs"]
    subprocess.run([*run, "init"], env=cli_env, check=True, capture_output=True)
    subprocess.run([*run, "secret", "set", "db", "x"], env=cli_env, check=True, capture_output=True)
    limited = ["prlimit", "--memlock=65536:65536", "setpriv", "--bounding-set=-ipc_lock"]
    subprocess.run(
        [*limited, *run, "mount", str(mnt), "--log-file", str(log)],
        env=cli_env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    try:
        assert (mnt / "deployment/db").read_bytes() == b"x"
        text = log.read_text()
        assert "WARNING not locking memory: no CAP_IPC_LOCK and RLIMIT_MEMLOCK is 65536" in text
        assert "dumpable=0, memory NOT locked" in text
    finally:
        subprocess.run([*run, "umount", str(mnt)], env=cli_env, check=False)
        if _is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)


def test_default_permissions_is_refused(tmp_path: Path, cli_env: dict[str, str]) -> None:
    mnt = tmp_path / "m"
    mnt.mkdir()
    out = subprocess.run(
        [sys.executable, "-m", "secretfs", "mount", str(mnt), "-o", "default_permissions"],
        env=cli_env,
        capture_output=True,
    )
    assert out.returncode == 2
    assert b"ignore grants" in out.stderr
    assert not _is_mounted(mnt)

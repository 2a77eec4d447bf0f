"""The mount as a user meets it: ls, cat, stat, getfattr, and the CLI while mounted."""

from __future__ import annotations

import errno
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.mount.conftest import SAMPLE, Mount, _is_mounted, wait_for


def sh(*args: str) -> str:
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout


def test_tree_has_every_scope_and_field_directory(mounted_readonly: Mount) -> None:
    m = mounted_readonly.path
    listing = sh("ls", "-R", str(m))
    assert sorted(os.listdir(m)) == ["@api", "deployment", "env", "project"]
    assert os.listdir(m / "deployment") == ["db"]
    assert sorted(os.listdir(m / "@api")) == ["config", "config.d"]
    assert os.listdir(m / "env") == ["staging"]
    assert os.listdir(m / "env/staging") == ["token"]
    assert os.listdir(m / "project/shop/prod") == ["stripe"]
    # Keys that cannot be file names ("" and "a/b") are left out.
    assert sorted(os.listdir(m / "@api/config.d")) == sorted(
        ["user", "password", "port", "ratio", "tls", "none", "replicas"]
    )
    assert sorted(os.listdir(m / "@api/config.d/replicas")) == ["0", "1"]
    assert os.listdir(m / "@api/config.d/replicas/1") == ["host"]
    assert "config.d" in listing


def test_cat_gives_exact_bytes(mounted_readonly: Mount) -> None:
    m = mounted_readonly.path
    assert sh("cat", str(m / "deployment/db")) == "hunter2"
    assert (m / "env/staging/token").read_bytes() == b"staging-token\n"
    assert (m / "project/shop/prod/stripe").read_bytes() == bytes(range(256))
    assert (m / "@api/config").read_bytes() == SAMPLE["@api/config"]


def test_json_fields_are_files(mounted_readonly: Mount) -> None:
    d = mounted_readonly.path / "@api/config.d"
    assert (d / "password").read_bytes() == b"pw"
    assert (d / "port").read_bytes() == b"5432"
    assert (d / "ratio").read_bytes() == b"2.50"
    assert (d / "tls").read_bytes() == b"true"
    assert (d / "none").read_bytes() == b""
    assert (d / "replicas/0").read_bytes() == b"a"
    assert (d / "replicas/1/host").read_bytes() == b"h1"
    assert os.stat(d / "ratio").st_size == 4
    assert stat.S_ISDIR(os.stat(d / "replicas").st_mode)


def test_stat_shows_size_mode_owner_and_version_time(mounted_readonly: Mount) -> None:
    st = os.stat(mounted_readonly.path / "project/shop/prod/stripe")
    assert st.st_size == 256
    assert stat.S_IMODE(st.st_mode) == 0o400
    assert stat.S_ISREG(st.st_mode)
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())
    history = mounted_readonly.cli("secret", "ls", "shop:prod", "--json").stdout
    assert b'"version": 1' in history
    # mtime is when the version was written: within this test's lifetime.
    assert abs(st.st_mtime - time.time()) < 60
    out = sh("stat", "-c", "%s %a %F", str(mounted_readonly.path / "deployment/db"))
    assert out.strip() == "7 400 regular file"


def test_xattrs(mounted_readonly: Mount) -> None:
    m = mounted_readonly.path
    out = sh("getfattr", "-d", "--absolute-names", str(m / "@api/config.d/password"))
    assert 'user.secretfs.ref="$S:@api/config/password"' in out
    assert 'user.secretfs.version="1"' in out
    assert "user.secretfs.created=" in out
    fp = os.getxattr(m / "deployment/db", "user.secretfs.fingerprint")
    assert len(fp) >= 32
    import hashlib

    assert fp.decode() not in (hashlib.sha256(b"hunter2").hexdigest(), "")
    assert fp.decode() not in hashlib.sha256(b"hunter2").hexdigest()
    with pytest.raises(OSError) as exc:
        os.getxattr(m / "deployment/db", "user.other")
    assert exc.value.errno == errno.ENODATA


@pytest.mark.parametrize(
    "action",
    [
        lambda m: open(m / "deployment/db", "wb"),
        lambda m: open(m / "deployment/db", "ab"),
        lambda m: open(m / "deployment/new", "wb"),
        lambda m: os.mkdir(m / "deployment/dir"),
        lambda m: os.unlink(m / "deployment/db"),
        lambda m: os.rename(m / "deployment/db", m / "deployment/db2"),
        lambda m: os.chmod(m / "deployment/db", 0o644),
        lambda m: os.truncate(m / "deployment/db", 0),
        lambda m: os.symlink("x", m / "deployment/link"),
        lambda m: os.setxattr(m / "deployment/db", "user.x", b"1"),
        lambda m: os.rmdir(m / "env/staging"),
    ],
)
def test_every_write_is_erofs(mounted_readonly: Mount, action: Callable[[Path], object]) -> None:
    with pytest.raises(OSError) as exc:
        action(mounted_readonly.path)
    assert exc.value.errno == errno.EROFS
    assert (mounted_readonly.path / "deployment/db").read_bytes() == b"hunter2"


def test_set_while_mounted_is_seen_within_a_second_and_handles_keep_snapshot(
    mounted: Mount,
) -> None:
    path = mounted.path / "deployment/db"
    before = os.stat(path)
    with open(path, "rb") as old_handle:
        assert old_handle.read(3) == b"hun"
        mounted.cli("secret", "set", "db", "--from-stdin", input=b"rotated-value")
        wait_for(lambda: path.read_bytes() == b"rotated-value")
        # The handle opened before the set still reads its own version, never a mix.
        assert old_handle.read() == b"ter2"
        old_handle.seek(0)
        assert old_handle.read() == b"hunter2"
    after = os.stat(path)
    assert after.st_size == len(b"rotated-value")
    assert after.st_mtime_ns >= before.st_mtime_ns
    assert os.getxattr(path, "user.secretfs.version") == b"2"


def test_json_fields_follow_a_set(mounted: Mount) -> None:
    d = mounted.path / "@api/config.d"
    assert (d / "password").read_bytes() == b"pw"
    mounted.cli("secret", "set", "@api/config", "--from-stdin", input=b'{"password":"new","x":1}')
    wait_for(lambda: (d / "password").read_bytes() == b"new")
    assert sorted(os.listdir(d)) == ["password", "x"]
    mounted.cli("secret", "set", "@api/config", "--from-stdin", input=b"not json")
    wait_for(lambda: not d.exists())
    assert os.listdir(mounted.path / "@api") == ["config"]


def test_rm_and_new_scopes_while_mounted(mounted: Mount) -> None:
    m = mounted.path
    mounted.cli("secret", "set", "@worker/key", "--from-stdin", input=b"k")
    mounted.cli("secret", "set", "other:dev/key", "--from-stdin", input=b"o")
    wait_for(lambda: (m / "@worker/key").exists() and (m / "project/other/dev/key").exists())
    assert (m / "@worker/key").read_bytes() == b"k"
    assert "@worker" in os.listdir(m)
    mounted.cli("secret", "rm", "@worker/key")
    wait_for(lambda: not (m / "@worker").exists())
    with pytest.raises(FileNotFoundError):
        open(m / "@worker/key", "rb")
    assert "@worker" not in os.listdir(m)
    mounted.cli("secret", "rm", "db")
    wait_for(lambda: not (m / "deployment/db").exists())
    assert os.listdir(m / "deployment") == []


def test_tampered_record_is_eio_for_that_file_only(mounted: Mount) -> None:
    conn = sqlite3.connect(mounted.store)
    with conn:
        row = conn.execute(
            "SELECT v.secret_id, v.version, v.ciphertext FROM versions v JOIN secrets s"
            " ON s.id = v.secret_id WHERE s.name = 'token'"
        ).fetchone()
        blob = bytearray(row[2])
        blob[-1] ^= 0x01
        conn.execute(
            "UPDATE versions SET ciphertext = ? WHERE secret_id = ? AND version = ?",
            (bytes(blob), row[0], row[1]),
        )
    conn.close()
    with pytest.raises(OSError) as exc:
        (mounted.path / "env/staging/token").read_bytes()
    assert exc.value.errno == errno.EIO
    assert (mounted.path / "deployment/db").read_bytes() == b"hunter2"
    assert mounted.daemon_pids()


def test_mount_shows_in_mount_table_with_safe_options(mounted_readonly: Mount) -> None:
    line = next(ln for ln in sh("mount").splitlines() if f" {mounted_readonly.path} " in ln)
    assert line.startswith("secretfs:")
    assert "type fuse.secretfs" in line
    for opt in ("ro", "nosuid", "nodev", "noexec"):
        assert opt in line.split("(")[1]


def test_umount_command_and_daemon_exit(mounted: Mount) -> None:
    mounted.cli("umount", str(mounted.path))
    assert not _is_mounted(mounted.path)
    wait_for(lambda: not mounted.daemon_pids(), timeout=5)
    out = mounted.cli("umount", str(mounted.path), check=False)
    assert out.returncode != 0
    assert b"not mounted" in out.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_unmount_cleanly(mount_factory: Callable[..., Mount], sig: signal.Signals) -> None:
    m = mount_factory(secrets={"db": b"x"})
    (pid,) = m.daemon_pids()
    os.kill(pid, sig)
    wait_for(lambda: not _is_mounted(m.path), timeout=5)
    wait_for(lambda: not m.daemon_pids(), timeout=5)
    assert os.listdir(m.path) == []


def test_foreground_mount_serves_until_signalled(tmp_path: Path, cli_env: dict[str, str]) -> None:
    mnt = tmp_path / "fg"
    mnt.mkdir()
    run = [sys.executable, "-m", "secretfs"]
    subprocess.run([*run, "init"], env=cli_env, check=True, capture_output=True)
    subprocess.run([*run, "secret", "set", "db", "x"], env=cli_env, check=True, capture_output=True)
    proc = subprocess.Popen(
        [*run, "mount", str(mnt), "--foreground"], env=cli_env, stderr=subprocess.PIPE
    )
    try:
        wait_for(lambda: (mnt / "deployment/db").exists(), timeout=10)
        assert (mnt / "deployment/db").read_bytes() == b"x"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        assert not _is_mounted(mnt)
    finally:
        if proc.poll() is None:
            proc.kill()
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)


def test_stale_mount_is_cleared_on_start(mount_factory: Callable[..., Mount]) -> None:
    m = mount_factory(secrets={"db": b"first"})
    (pid,) = m.daemon_pids()
    os.kill(pid, signal.SIGKILL)
    # pgrep stops seeing the daemon while it is still exiting, before its
    # /dev/fuse is closed: a request sent then ends ECONNABORTED when the close
    # aborts the connection. Once closed, every request answers ENOTCONN.
    wait_for(lambda: _listdir_errno(m.path) == errno.ENOTCONN, timeout=5)
    assert not m.daemon_pids()
    m.cli_process("mount", str(m.path))
    assert (m.path / "deployment/db").read_bytes() == b"first"


def _listdir_errno(path: Path) -> int | None:
    try:
        os.listdir(path)
    except OSError as exc:
        return exc.errno
    return None


def test_second_mount_on_a_live_mount_is_refused(mounted_readonly: Mount) -> None:
    out = mounted_readonly.cli_process("mount", str(mounted_readonly.path), check=False)
    assert out.returncode != 0
    assert b"already a mount point" in out.stderr
    assert (mounted_readonly.path / "deployment/db").read_bytes() == b"hunter2"


def test_mount_with_wrong_key_fails_before_mounting(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    mnt = tmp_path / "m"
    mnt.mkdir()
    run = [sys.executable, "-m", "secretfs"]
    subprocess.run([*run, "init"], env=cli_env, check=True, capture_output=True)
    env = dict(cli_env, SECRETFS_KEY="00" * 32)
    out = subprocess.run([*run, "mount", str(mnt)], env=env, capture_output=True)
    assert out.returncode != 0
    assert b"SECRETFS_KEY" in out.stderr
    assert b"does not unlock" in out.stderr
    assert not _is_mounted(mnt)


def test_mount_returns_only_when_the_mount_answers(mount_factory: Callable[..., Mount]) -> None:
    m = mount_factory(secrets={"db": b"ready"})
    # No polling: the mount command has returned, so the tree must answer now.
    assert (m.path / "deployment/db").read_bytes() == b"ready"


def test_a_new_secret_opens_as_soon_as_the_cli_returns(mounted: Mount) -> None:
    # No waiting: a lookup miss makes the daemon take in store changes before answering.
    mounted.cli("secret", "create", "fresh", "--from-stdin", input=b"just made")
    assert (mounted.path / "deployment/fresh").read_bytes() == b"just made"
    mounted.cli("secret", "create", "@brand-new/key", "--from-stdin", input=b"k")
    assert (mounted.path / "@brand-new/key").read_bytes() == b"k"


def test_a_restored_secret_comes_back_in_the_mount(mounted: Mount) -> None:
    path = mounted.path / "deployment/db"
    mounted.cli("secret", "rm", "db")
    wait_for(lambda: not path.exists(), timeout=5)
    mounted.cli("secret", "restore", "db")
    wait_for(path.exists, timeout=5)
    assert path.read_bytes() == b"hunter2"

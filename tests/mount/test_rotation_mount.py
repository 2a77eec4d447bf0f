"""Rotation, expiry and key management while a real mount serves reads (issue 4)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from secretfs.refs import parse_ref
from tests import lifecycle_helpers as helpers
from tests.mount.conftest import Mount, wait_for


def secret_paths(values: dict[str, bytes], root: Path) -> dict[Path, bytes]:
    return {root / parse_ref(name).path: value for name, value in values.items()}


class Reader:
    """Reads every file again and again through the mount, noting any failed read."""

    def __init__(self, files: dict[Path, bytes]) -> None:
        self.files = files
        self.failures: list[str] = []
        self.passes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for path, value in self.files.items():
                try:
                    got = path.read_bytes()
                except OSError as exc:
                    self.failures.append(f"{path.name}: {exc}")
                    continue
                if got != value:
                    self.failures.append(f"{path.name}: wrong bytes ({len(got)})")
            self.passes += 1

    def wait_passes(self, n: int) -> None:
        target = self.passes + n
        wait_for(lambda: self.passes >= target, timeout=30)

    @contextmanager
    def running(self) -> Iterator[Reader]:
        self._thread.start()
        try:
            self.wait_passes(1)
            yield self
        finally:
            self._stop.set()
            self._thread.join()


def stopped_cli(env: dict[str, str], point: str, *args: str) -> subprocess.Popen[bytes]:
    """Start the CLI and wait until it stops itself at `point` (SECRETFS_TEST_STOP)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "secretfs", *args],
        env={**env, "SECRETFS_TEST_STOP": point},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    _, status = os.waitpid(proc.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), f"the CLI did not stop at {point}"
    return proc


def resume(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGCONT)
    _out, errs = proc.communicate(timeout=120)
    assert proc.returncode == 0, errs.decode()


def key_status(m: Mount) -> dict[str, object]:
    return json.loads(m.cli("key", "status", "--json").stdout)  # type: ignore[no-any-return]


# --- secret rotation --------------------------------------------------------------------


def test_rotate_reaches_new_opens_with_new_attrs_and_no_stale_page_cache(mounted: Mount) -> None:
    path = mounted.path / "deployment/db"
    before = os.stat(path)
    assert os.getxattr(path, "user.secretfs.version") == b"1"
    with open(path, "rb") as old_handle:
        assert old_handle.read() == b"hunter2"  # the page cache holds version 1 now
        assert path.read_bytes() == b"hunter2"
        # Same length, so nothing but the content tells the versions apart.
        out = mounted.cli("secret", "rotate", "db", "--from-stdin", input=b"HUNTER2")
        assert out.stdout == b"rotated $S:db: version 1 -> 2\n"
        # A poller that only stats sees the change, without opening the file.
        wait_for(lambda: os.stat(path).st_mtime_ns != before.st_mtime_ns)
        assert path.read_bytes() == b"HUNTER2"
        old_handle.seek(0)
        assert old_handle.read() == b"hunter2"  # the handle keeps its snapshot
    after = os.stat(path)
    assert after.st_mtime_ns > before.st_mtime_ns and after.st_ctime_ns > before.st_ctime_ns
    assert after.st_ino != before.st_ino and after.st_size == before.st_size
    assert os.getxattr(path, "user.secretfs.version") == b"2"

    mounted.cli("secret", "rollback", "db", "--to", "1")
    wait_for(lambda: path.read_bytes() == b"hunter2")
    assert os.getxattr(path, "user.secretfs.version") == b"3"
    # A JSON secret's field files follow a rotation of the whole value.
    field = mounted.path / "@api/config.d/password"
    assert field.read_bytes() == b"pw"
    mounted.cli("secret", "rotate", "@api/config", "--from-stdin", input=b'{"password":"pX"}')
    wait_for(lambda: field.read_bytes() == b"pX")


def test_expiry_shows_in_xattrs_and_audit_and_the_secret_is_still_served(mounted: Mount) -> None:
    path = mounted.path / "deployment/db"
    other = mounted.path / "env/staging/token"
    assert os.getxattr(path, "user.secretfs.expired") == b"false"
    with pytest.raises(OSError) as exc:
        os.getxattr(path, "user.secretfs.expires")
    assert exc.value.errno == errno.ENODATA
    mounted.cli("secret", "expiry", "db", "--expires-at", "2001-01-01", "--rotate-every", "30d")
    wait_for(lambda: os.getxattr(path, "user.secretfs.expired") == b"true")
    assert os.getxattr(path, "user.secretfs.expires") == b"2001-01-01T00:00:00Z"
    assert os.getxattr(path, "user.secretfs.rotation-due").startswith(b"20")
    names = os.listxattr(path)
    assert {"user.secretfs.expires", "user.secretfs.rotation-due"} <= set(names)
    assert "user.secretfs.expires" not in os.listxattr(other)
    assert path.read_bytes() == b"hunter2"  # expired, still served
    assert other.read_bytes() == b"staging-token\n"

    def opens() -> list[dict[str, object]]:
        records = json.loads(mounted.cli("audit", "--json").stdout)
        return [r for r in records if r["action"] == "open" and r["source"] == "mount"]

    # The daemon writes audit records in batches, about twice a second.
    wait_for(lambda: any(r["ref"] == "$S::staging/token" for r in opens()), timeout=5)
    details = {r["ref"]: r["detail"] for r in opens()}
    assert details["$S:db"] == "expired" and details["$S::staging/token"] is None


# --- key management under load ----------------------------------------------------------


def many_secrets(n: int) -> dict[str, bytes]:
    return {f"k{i:03d}": f"secret-{i}-".encode() * (1 + i % 5) for i in range(n)}


def test_key_rotation_and_reencryption_with_no_failed_read(
    mount_factory: Callable[..., Mount], store_path: Path
) -> None:
    values = many_secrets(120)
    with helpers.clean_env():
        from secretfs.vault import Vault

        Vault.init(store_path)
        helpers.write(store_path, values)
    m = mount_factory()
    reader = Reader(secret_paths(values, m.path))
    with reader.running():
        m.cli("key", "rotate")  # new KEK: the daemon keeps its data keys
        reader.wait_passes(1)
        # Stopped half-way through a re-encryption: versions under generations 1 and 2.
        proc = stopped_cli(
            m.env, "reencrypt:batch:4", "key", "rotate", "--reencrypt", "--batch-size", "10"
        )
        info = key_status(m)
        assert info["reencryption"]["to_generation"] == 2  # type: ignore[index]
        assert 0 < info["reencryption"]["versions_left"] < len(values)  # type: ignore[index]
        reader.wait_passes(2)
        resume(proc)
        reader.wait_passes(1)
        # Again: the daemon still holds the first KEK, so it reads the rotated key file.
        m.cli("key", "rotate", "--reencrypt", "--batch-size", "25")
        reader.wait_passes(2)
    assert reader.failures == []
    assert [g["generation"] for g in key_status(m)["data_keys"]] == [3]  # type: ignore[attr-defined]
    m.cli("secret", "set", "late", "--from-stdin", input=b"sealed under generation 3")
    wait_for(lambda: (m.path / "deployment/late").exists())
    assert (m.path / "deployment/late").read_bytes() == b"sealed under generation 3"
    assert m.daemon_pids()


def test_password_store_mount_across_new_salt_and_passwd(
    mount_factory: Callable[..., Mount],
    store_path: Path,
    cli_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    values = many_secrets(40)
    helpers.password_store(store_path, "first password", values)
    cli_env["SECRETFS_PASSWORD"] = "first password"
    monkeypatch.setenv("SECRETFS_PASSWORD", "first password")  # mount_factory opens it too
    m = mount_factory()
    files = secret_paths(values, m.path)
    reader = Reader(files)
    with reader.running():
        # A new salt and a new data key: the daemon derives the KEK again from its
        # $SECRETFS_PASSWORD and the new salt, and unwraps generation 2 with it.
        m.cli("key", "rotate", "--reencrypt", "--batch-size", "7")
        reader.wait_passes(2)
        m.cli("key", "passwd", input=b"second password\n")
        reader.wait_passes(2)
    assert reader.failures == []

    # The documented limit: the daemon cannot learn a new password, so values sealed
    # under a data key made after `key passwd` give EIO there, and nothing else breaks.
    # (Their rows are tagged under that key too: unverifiable, so served to nobody, and
    # an open may answer EACCES before it reaches the value: fail closed either way.)
    new_env = {**m.env, "SECRETFS_PASSWORD": "second password"}
    subprocess.run(
        [sys.executable, "-m", "secretfs", "key", "rotate", "--reencrypt"],
        env=new_env,
        check=True,
        capture_output=True,
    )
    one = next(iter(files))
    with pytest.raises(OSError) as exc:
        wait_for(lambda: not one.read_bytes(), timeout=5)
    assert exc.value.errno in (errno.EIO, errno.EACCES)
    # Rows it cannot verify are listed to nobody; the status file says why.
    status = json.loads((m.path / ".secretfs-status").read_bytes())
    assert status["key_problems"] or status["tampered"]
    assert m.daemon_pids()
    # Mounted again with the new password, everything reads.
    m.cli("umount", str(m.path))
    wait_for(lambda: not m.daemon_pids(), timeout=5)
    cli_env["SECRETFS_PASSWORD"] = "second password"
    monkeypatch.setenv("SECRETFS_PASSWORD", "second password")
    again = mount_factory(name="mnt2")
    for path, value in secret_paths(values, again.path).items():
        assert path.read_bytes() == value


# --- damage -----------------------------------------------------------------------------


def test_damage_gives_eio_or_a_clear_error_and_never_kills_the_daemon(
    mounted: Mount, mount_factory: Callable[..., Mount]
) -> None:
    path = mounted.path / "deployment/db"
    assert path.read_bytes() == b"hunter2"
    with helpers.raw_db(mounted.store) as db:
        sid, blob = db.execute(
            "SELECT v.secret_id, v.ciphertext FROM versions v JOIN secrets s"
            " ON s.id = v.secret_id WHERE s.name = 'db'"
        ).fetchone()
        db.execute(
            "UPDATE versions SET ciphertext = ? WHERE secret_id = ?", (helpers.flip(blob), sid)
        )

    # Damaged after the mount verified it: the mount verifies again within a second.
    def eio() -> bool:
        try:
            path.read_bytes()
        except OSError as exc:
            assert exc.errno == errno.EIO
            return True
        return False

    wait_for(eio)
    assert (mounted.path / "env/staging/token").read_bytes() == b"staging-token\n"
    got = mounted.cli("secret", "get", "db", check=False)
    assert got.returncode == 6 and b"authentication failed" in got.stderr
    assert b"hunter2" not in got.stderr + got.stdout
    doctor = mounted.cli("doctor", check=False)
    assert doctor.returncode == 1
    assert b"1 of 4 version(s) do not decrypt (tampered or damaged): $S:db v1" in doctor.stdout

    # A damaged wrapped data key: the daemon holds the key already and keeps serving;
    # the CLI and a new mount name the damage.
    with helpers.raw_db(mounted.store) as db:
        (wrapped,) = db.execute("SELECT wrapped FROM data_keys WHERE gen = 1").fetchone()
        db.execute("UPDATE data_keys SET wrapped = ? WHERE gen = 1", (helpers.flip(wrapped),))
    assert (mounted.path / "env/staging/token").read_bytes() == b"staging-token\n"
    listed = mounted.cli("secret", "ls", check=False)
    assert listed.returncode == 6
    assert b"the wrapped data key of generation 1 is damaged" in listed.stderr
    second = mounted.path.parent / "mnt-b"
    second.mkdir()
    refused = mounted.cli_process("mount", str(second), check=False)
    assert refused.returncode != 0 and b"generation 1 is damaged" in refused.stderr
    report = json.loads(mounted.cli("doctor", "--json", check=False).stdout)
    unlock = next(c for c in report["checks"] if c["name"] == "unlock")
    assert unlock["status"] == "fail" and "generation 1 is damaged" in unlock["detail"]
    assert mounted.daemon_pids()


def test_a_damaged_kdf_salt_is_named(
    mount_factory: Callable[..., Mount],
    store_path: Path,
    cli_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    helpers.password_store(store_path, "a password here", {"db": b"v"})
    cli_env["SECRETFS_PASSWORD"] = "a password here"
    monkeypatch.setenv("SECRETFS_PASSWORD", "a password here")
    m = mount_factory()
    with helpers.raw_db(store_path) as db:
        (salt,) = db.execute("SELECT v FROM meta WHERE k = 'kdf_salt'").fetchone()
        db.execute("UPDATE meta SET v = ? WHERE k = 'kdf_salt'", (helpers.flip(salt, 0),))
    assert (m.path / "deployment/db").read_bytes() == b"v"  # the daemon derived its key before
    got = m.cli("secret", "get", "db", check=False)
    assert got.returncode == 5
    assert b"KDF salt" in got.stderr and b"$SECRETFS_PASSWORD" in got.stderr
    assert m.daemon_pids()

"""A store file replaced while mounted (a restore: `cp backup tmp && mv tmp store.db`) is
noticed within a second: the same store is served from the new file, another store or
an unreadable file stops the mount serving, said in status, the log and doctor."""

from __future__ import annotations

import errno
import json
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from secretfs.tree import STATUS_FILE
from tests.conftest import cli_environment, run_cli
from tests.mount.conftest import Mount, wait_for


def _backup(store: Path, to: Path) -> None:
    src, dst = sqlite3.connect(store), sqlite3.connect(to)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


def _restore(backup: Path, store: Path) -> None:
    tmp = store.with_name("restore.tmp")
    shutil.copyfile(backup, tmp)
    tmp.rename(store)


def _status(m: Mount) -> dict[str, object]:
    return json.loads((m.path / STATUS_FILE).read_bytes())  # type: ignore[no-any-return]


def _errno_of_open(path: Path) -> int:
    try:
        path.read_bytes()
    except OSError as exc:
        return exc.errno or 0
    return 0


def test_a_copy_put_in_place_is_served_and_an_emergency_rm_reaches_the_mount(
    mount_factory: Callable[..., Mount], tmp_path: Path
) -> None:
    """The same store at its newest state, put in place by rename (a restore of the
    latest backup, a copy made by a backup tool): served from the new file at once."""
    log = tmp_path / "daemon.log"
    m = mount_factory("--log-file", str(log), secrets={"a": b"one", "b": b"two"})
    top = m.path / "deployment"
    assert (top / "a").read_bytes() == b"one"
    copy = tmp_path / "copy.db"
    _backup(m.store, copy)
    _restore(copy, m.store)
    wait_for(lambda: "serving the re-opened store" in log.read_text(), timeout=1.0)
    assert (top / "a").read_bytes() == b"one"
    assert _status(m)["connected"] is True and _status(m)["serving"] is True
    # An emergency rm after the swap reaches the mount (it used to go to the old file).
    m.cli("secret", "rm", "b")
    wait_for(lambda: _errno_of_open(top / "b") == errno.ENOENT, timeout=1.0)
    assert (top / "a").read_bytes() == b"one"


def test_a_restore_of_an_older_copy_stops_serving_until_accepted(
    mount_factory: Callable[..., Mount], tmp_path: Path
) -> None:
    """An older copy is a rollback (issue 10.3a): noticed within a second, refused (EIO,
    status, log) until `doctor --accept-restore`; a remount then serves the backup."""
    log = tmp_path / "daemon.log"
    m = mount_factory("--log-file", str(log), secrets={"a": b"one", "b": b"two"})
    backup = tmp_path / "backup.db"
    _backup(m.store, backup)
    m.seed({"a": b"one-v2", "c": b"three"})
    top = m.path / "deployment"
    wait_for(lambda: (top / "c").exists())
    assert (top / "a").read_bytes() == b"one-v2"
    _restore(backup, m.store)
    wait_for(lambda: _status(m)["serving"] is False, timeout=1.0)
    assert "re-opening it" in log.read_text() and "no longer serving" in log.read_text()
    assert _errno_of_open(top / "a") == errno.EIO
    assert "verification" in str(_status(m)["problem"])
    assert m.cli("doctor", check=False).returncode != 0
    # Accepted deliberately, then remounted: the backup is what is served.
    # (Its exit still says the mount is not serving: that is what the remount fixes.)
    accepted = m.cli("doctor", "--accept-restore", check=False).stdout
    assert b"accepted the store as it is now" in accepted
    m.cli("umount", str(m.path))
    wait_for(lambda: not m.daemon_pids(), timeout=5.0)
    m.cli_process("mount", str(m.path))
    assert (top / "a").read_bytes() == b"one"
    assert _errno_of_open(top / "c") == errno.ENOENT


@pytest.mark.parametrize("replacement", ["other-store", "not-a-store"])
def test_another_file_at_the_store_path_stops_serving_with_eio(
    mount_factory: Callable[..., Mount], tmp_path: Path, replacement: str
) -> None:
    log = tmp_path / "daemon.log"
    m = mount_factory("--log-file", str(log), secrets={"a": b"one"})
    secret = m.path / "deployment/a"
    assert secret.read_bytes() == b"one"
    other = tmp_path / "other" / "store.db"
    if replacement == "other-store":
        run_cli("init", env=cli_environment(other))
    else:
        other.parent.mkdir()
        other.write_bytes(b"not a database" * 100)
    _restore(other, m.store)
    wait_for(lambda: _errno_of_open(secret) == errno.EIO, timeout=1.0)
    status = _status(m)
    assert status["connected"] is False and status["serving"] is False
    assert "replaced" in str(status["problem"])
    assert "no longer serving" in log.read_text()
    doctor = m.cli("doctor", check=False)
    assert doctor.returncode != 0
    assert f"not serving {m.store}" in doctor.stdout.decode()

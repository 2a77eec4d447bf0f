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


def test_a_restore_of_the_same_store_is_served_within_a_second(
    mount_factory: Callable[..., Mount], tmp_path: Path
) -> None:
    log = tmp_path / "daemon.log"
    m = mount_factory("--log-file", str(log), secrets={"a": b"one", "b": b"two"})
    backup = tmp_path / "backup.db"
    _backup(m.store, backup)
    m.seed({"a": b"one-v2", "c": b"three"})
    top = m.path / "deployment"
    wait_for(lambda: (top / "c").exists())
    assert (top / "a").read_bytes() == b"one-v2"
    _restore(backup, m.store)
    # The backup has no c and the older a: the mount follows the file now at the path.
    wait_for(lambda: not (top / "c").exists(), timeout=1.0)
    assert "re-opening it" in log.read_text()
    assert (top / "a").read_bytes() == b"one"
    assert _status(m)["connected"] is True
    # An emergency rm after the restore reaches the mount.
    m.cli("secret", "rm", "b")
    wait_for(lambda: _errno_of_open(top / "b") == errno.ENOENT, timeout=1.0)
    assert (top / "a").read_bytes() == b"one"


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

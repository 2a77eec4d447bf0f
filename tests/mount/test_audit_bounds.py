"""The audit log stays bounded and honest under attack (issue 10.6c): a uid hammering
what it may not open adds a record per window, not per attempt; old records can be
pruned (and each prune is recorded); and when records cannot be written the mount
refuses new opens rather than serving them unaudited, losing nothing silently."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from secretfs.daemon import is_mounted
from secretfs.refs import parse_ref
from secretfs.tree import STATUS_FILE
from secretfs.vault import Vault
from tests.conftest import cli_environment, run_cli
from tests.mount.conftest import Mount, daemon_pids, wait_for

HAMMER = r"""
import sys
for _ in range(int(sys.argv[2])):
    try:
        open(sys.argv[1], "rb").close()
    except PermissionError:
        pass
"""


def _records(env: dict[str, str], *args: str) -> list[dict[str, Any]]:
    return json.loads(run_cli("audit", "--json", *args, env=env).stdout)  # type: ignore[no-any-return]


def test_hammered_denials_are_one_record_plus_a_count(
    mount_factory: Callable[..., Mount], open_dir: Path
) -> None:
    m = mount_factory("-o", "allow_other", secrets={"db": b"x"}, parent=open_dir)
    target = m.path / "deployment/db"
    subprocess.run(
        ["/usr/bin/python3", "-c", HAMMER, str(target), "3000"],
        user=1001,
        group=1001,
        cwd="/",
        check=True,
        timeout=60,
    )
    # The first denial is written at once; the other 2999 only as a count, at unmount.
    wait_for(lambda: any(r["uid"] == 1001 for r in _records(m.env)), timeout=5)
    mine = [r for r in _records(m.env) if r["uid"] == 1001]
    assert [r["detail"] for r in mine] == ["EACCES"]
    run_cli("umount", str(m.path), env=m.env)
    wait_for(lambda: not m.daemon_pids(), timeout=5)
    mine = [r for r in _records(m.env) if r["uid"] == 1001]
    assert len(mine) == 2
    assert mine[1]["detail"].startswith("EACCES; repeated 2999 times from ")


def test_prune_removes_old_records_and_records_itself(
    mount_factory: Callable[..., Mount], tmp_path: Path
) -> None:
    m = mount_factory("--log-file", str(tmp_path / "daemon.log"), secrets={"db": b"x"})
    (m.path / "deployment/db").read_bytes()
    wait_for(lambda: any(r["action"] == "open" for r in _records(m.env)), timeout=2)
    total = len(_records(m.env))
    dry = m.cli("audit", "prune", "--before", "2200-01-01", "--dry-run")
    assert dry.stdout.startswith(f"{total} audit records before 2200-01-01".encode())
    assert len(_records(m.env)) == total
    assert m.cli("audit", "prune", "--before", "2200-01-01").stdout.startswith(b"removed ")
    (note,) = [r for r in _records(m.env) if r["source"] == "cli"]
    assert note["action"] == "audit" and note["detail"].startswith("pruned ")
    # Outside secretfs the log is as append-only as before.
    import sqlite3

    conn = sqlite3.connect(m.store, isolation_level=None)
    with pytest.raises(sqlite3.IntegrityError, match="cannot be deleted"):
        conn.execute("DELETE FROM audit")
    conn.close()
    # A configured max age is applied by every mount, at its start and then hourly.
    m.cli("config", "set", "audit-max-age", "1s")
    time.sleep(1.1)
    run_cli("umount", str(m.path), env=m.env)
    wait_for(lambda: not m.daemon_pids(), timeout=5)
    m.cli("mount", str(m.path))
    wait_for(
        lambda: any(
            r["source"] == "mount" and (r["detail"] or "").startswith("pruned")
            for r in _records(m.env)
        ),
        timeout=3,
    )


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs, to fill up."""
    disk = tmp_path / "small"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], check=True)
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "wb") as fh, contextlib.suppress(OSError):
        while True:
            fh.write(b"\0" * 65536)
            fh.flush()
    return filler


def _open_errno(path: Path) -> int:
    try:
        path.read_bytes()
    except OSError as exc:
        return exc.errno or 0
    return 0


@pytest.mark.parametrize("policy", ["closed", "open"])
def test_a_full_disk_refuses_opens_and_loses_no_record(
    small_disk: Path, tmp_path: Path, policy: str
) -> None:
    store = small_disk / "store.db"
    env = cli_environment(store)
    run_cli("init", env=env)
    vault = Vault.open(store)
    try:
        vault.set(parse_ref("db"), b"x")
    finally:
        vault.close()
    mnt, log = tmp_path / "mnt", tmp_path / "daemon.log"
    mnt.mkdir()
    opts = [] if policy == "closed" else ["-o", "audit_fail=open"]
    run_cli("mount", str(mnt), "--log-file", str(log), *opts, env=env)
    secret = mnt / "deployment/db"
    try:
        assert secret.read_bytes() == b"x"
        filler = _fill(small_disk)
        want = errno.EIO if policy == "closed" else 0
        wait_for(lambda: _open_errno(secret) == want and _audit_failing(mnt), timeout=5)
        status = json.loads((mnt / STATUS_FILE).read_bytes())
        assert status["audit"]["pending"] >= 1
        assert status["serving"] is (policy == "open")
        assert "cannot write" in log.read_text()
        filler.unlink()
        wait_for(lambda: _open_errno(secret) == 0 and not _audit_failing(mnt), timeout=5)
        assert "written again" in log.read_text()
        opens = [r for r in _records(env) if r["action"] == "open"]
        outcomes = {r["outcome"] for r in opens}
        assert len(opens) >= 3
        assert outcomes == ({"allowed", "error"} if policy == "closed" else {"allowed"})
    finally:
        run_cli("umount", str(mnt), env=env, check=False)
        if is_mounted(mnt):
            subprocess.run(["umount", "-l", str(mnt)], check=False)
        deadline = time.monotonic() + 5
        while daemon_pids(mnt) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in daemon_pids(mnt):
            os.kill(pid, 9)


def _audit_failing(mnt: Path) -> bool:
    status = json.loads((mnt / STATUS_FILE).read_bytes())
    return status["audit"]["failing"] is not None

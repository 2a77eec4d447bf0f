"""The basic mount checks of test_mount.py, on a store in the session's etcd cluster."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from secretfs.refs import parse_ref
from secretfs.store import location
from secretfs.vault import Vault
from tests.conftest import cli_environment, run_cli, run_cli_process
from tests.etcd_cluster import EtcdCluster
from tests.mount.conftest import SAMPLE, _is_mounted, daemon_pids, wait_for


class EtcdMount:
    def __init__(self, path: Path, url: str, env: dict[str, str]) -> None:
        self.path, self.url, self.env = path, url, env

    def cli(self, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return run_cli(*args, env=self.env, input=input)


@pytest.fixture
def etcd_mounted(
    etcd_cluster: EtcdCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[EtcdMount]:
    url = etcd_cluster.url(f"m{uuid.uuid4().hex[:12]}")
    env = cli_environment(tmp_path / "unused.db")
    env["SECRETFS_STORE"] = url
    env["SECRETFS_KEY_FILE"] = str(tmp_path / "store.key")
    run_cli("init", env=env)
    monkeypatch.setenv("SECRETFS_KEY_FILE", env["SECRETFS_KEY_FILE"])
    vault = Vault.open(location.parse(url))
    try:
        for ref, value in SAMPLE.items():
            vault.set(parse_ref(ref), value)
    finally:
        vault.close()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    run_cli_process("mount", str(mnt), "--log-file", str(tmp_path / "mount.log"), env=env)
    try:
        yield EtcdMount(mnt, url, env)
    finally:
        if _is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
        deadline = time.monotonic() + 5
        while daemon_pids(mnt) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not daemon_pids(mnt), "the daemon did not exit after unmount"


def test_an_etcd_mount_serves_the_tree_and_follows_the_cli(etcd_mounted: EtcdMount) -> None:
    m = etcd_mounted.path
    status = json.loads((m / ".secretfs-status").read_bytes())
    assert status["backend"] == "etcd" and status["store"] == etcd_mounted.url
    # Tree, exact bytes, JSON fields.
    assert sorted(os.listdir(m)) == ["@api", "deployment", "env", "project"]
    assert os.listdir(m / "deployment") == ["db"]
    assert sorted(os.listdir(m / "@api")) == ["config", "config.d"]
    assert os.listdir(m / "project/shop/prod") == ["stripe"]
    assert (m / "deployment/db").read_bytes() == b"hunter2"
    assert (m / "env/staging/token").read_bytes() == b"staging-token\n"
    assert (m / "project/shop/prod/stripe").read_bytes() == bytes(range(256))
    assert (m / "@api/config.d/password").read_bytes() == b"pw"
    assert (m / "@api/config.d/replicas/1/host").read_bytes() == b"h1"
    st = os.stat(m / "deployment/db")
    assert (st.st_size, stat.S_IMODE(st.st_mode)) == (7, 0o400)
    # Extended attributes.
    assert os.getxattr(m / "@api/config.d/password", "user.secretfs.ref") == (
        b"$S:@api/config/password"
    )
    assert os.getxattr(m / "deployment/db", "user.secretfs.version") == b"1"
    with pytest.raises(OSError) as exc:
        os.getxattr(m / "deployment/db", "user.other")
    assert exc.value.errno == errno.ENODATA
    with pytest.raises(OSError) as exc:
        open(m / "deployment/db", "wb")
    assert exc.value.errno == errno.EROFS

    # A set while mounted is seen within a second; an open handle keeps its snapshot.
    path = m / "deployment/db"
    with open(path, "rb") as old_handle:
        assert old_handle.read(3) == b"hun"
        etcd_mounted.cli("secret", "set", "db", "--from-stdin", input=b"rotated-value")
        wait_for(lambda: path.read_bytes() == b"rotated-value")
        assert old_handle.read() == b"ter2"
    assert os.getxattr(path, "user.secretfs.version") == b"2"
    assert os.stat(path).st_size == len(b"rotated-value")

    # A mode change, a new scope and rm, each seen within a second.
    etcd_mounted.cli("secret", "chmod", "db", "0440")
    wait_for(lambda: stat.S_IMODE(os.stat(path).st_mode) == 0o440)
    etcd_mounted.cli("secret", "set", "@worker/key", "--from-stdin", input=b"k")
    wait_for(lambda: (m / "@worker/key").exists())
    assert (m / "@worker/key").read_bytes() == b"k"
    etcd_mounted.cli("secret", "rm", "@worker/key")
    wait_for(lambda: not (m / "@worker").exists())
    with pytest.raises(FileNotFoundError):
        open(m / "@worker/key", "rb")
    etcd_mounted.cli("secret", "rm", "db")
    wait_for(lambda: not path.exists())
    assert os.listdir(m / "deployment") == []
    etcd_mounted.cli("umount", str(m))
    assert not _is_mounted(m)


def test_an_etcd_mount_applies_the_audit_max_age(etcd_mounted: EtcdMount) -> None:
    """audit-max-age on etcd as on SQLite: a mount prunes the expired records at its start
    (then hourly) and records that it did."""
    m = etcd_mounted
    (m.path / "deployment/db").read_bytes()

    def records() -> list[dict[str, object]]:
        return list(json.loads(m.cli("audit", "--json").stdout))

    wait_for(lambda: any(r["action"] == "open" for r in records()), timeout=3)
    m.cli("config", "set", "audit-max-age", "1s")
    time.sleep(1.1)
    m.cli("umount", str(m.path))
    wait_for(lambda: not daemon_pids(m.path), timeout=5)
    run_cli_process("mount", str(m.path), env=m.env)
    wait_for(
        lambda: any(
            r["source"] == "mount" and str(r["detail"] or "").startswith("pruned")
            for r in records()
        ),
        timeout=5,
    )
    assert not any(r["action"] == "open" for r in records()), "the expired open was kept"

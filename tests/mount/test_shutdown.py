"""A stopped daemon stops: every signal, in every state, ends the process within 5 s and
leaves no mount behind (issue 14.4). The daemon must never stat its own mount once its
loop has stopped: nothing would answer."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from secretfs.daemon import abort_connection, detach, mount_device
from tests.mount.conftest import Mount, _is_mounted, wait_for


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@contextmanager
def _never_left_hanging(m: Mount, pid: int) -> Iterator[None]:
    """If the daemon hangs (the bug), free the test: abort its connection, kill it."""
    device = mount_device(m.path)
    try:
        yield
    finally:
        if _alive(pid):
            abort_connection(device)
            os.kill(pid, signal.SIGKILL)
        if _is_mounted(m.path):
            detach(m.path)


def _serving(m: Mount) -> int | None:
    return None


def _file_open(m: Mount) -> int | None:
    # Kept open through the signal: the mount is busy when the daemon goes.
    return os.open(m.path / "deployment/db", os.O_RDONLY)


def _root_invalidated(m: Mount) -> int | None:
    # A new secret makes the daemon invalidate the root's attributes; nobody stats the root
    # again, so the next lstat of it must be answered by the daemon itself.
    m.seed({"fresh": b"y"})
    time.sleep(0.6)
    return None


@pytest.mark.parametrize("state", [_serving, _file_open, _root_invalidated])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_every_signal_in_every_state_exits_within_5s_and_unmounts(
    mount_factory: Callable[..., Mount], sig: signal.Signals, state: Callable[[Mount], int | None]
) -> None:
    m = mount_factory(secrets={"db": b"x"})
    (pid,) = m.daemon_pids()
    fd = None
    try:
        with _never_left_hanging(m, pid):
            fd = state(m)
            os.kill(pid, sig)
            wait_for(lambda: not _alive(pid), timeout=5)
            assert not _is_mounted(m.path), "the mount was left behind"
    finally:
        if fd is not None:
            with contextlib.suppress(OSError):  # ENOTCONN: its daemon is gone
                os.close(fd)


def test_mount_device_reads_mountinfo(mounted: Mount, tmp_path: Path) -> None:
    dev = os.stat(mounted.path).st_dev
    assert mount_device(mounted.path) == (os.major(dev), os.minor(dev))
    assert mount_device(tmp_path / "not-a-mount") is None


@pytest.mark.parametrize("stop", ["sigterm", "umount"])
def test_a_store_locked_by_another_writer_cannot_hold_the_shutdown(
    mount_factory: Callable[..., Mount], tmp_path: Path, stop: str
) -> None:
    log = tmp_path / "daemon.log"
    m = mount_factory("--log-file", str(log), secrets={"db": b"x"})
    (pid,) = m.daemon_pids()
    # Another writer holds the store's write lock: the daemon's audit writes wait on it.
    lock = sqlite3.connect(m.store, isolation_level=None, timeout=0)
    lock.execute("BEGIN IMMEDIATE")
    try:
        with _never_left_hanging(m, pid):
            assert (m.path / "deployment/db").read_bytes() == b"x"  # a record to write
            time.sleep(0.6)  # its flush is now waiting for the lock
            if stop == "sigterm":
                os.kill(pid, signal.SIGTERM)
            else:
                m.cli("umount", str(m.path))
            wait_for(lambda: not _alive(pid), timeout=5)
            assert not _is_mounted(m.path)
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert "audit records not written" in log.read_text()

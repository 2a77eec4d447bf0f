"""The daemon's timing decisions on a fake clock (secretfs/clock.py): each interval is
checked at its edge, without sleeping."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from secretfs.daemon import RECHECK_SECONDS, ShutdownWatchdog, Watcher
from secretfs.keyring import KEY_RETRY_SECONDS
from secretfs.refs import parse_ref
from secretfs.tree import Owner, Tree
from secretfs.vault import Vault
from tests.conftest import Cli
from tests.fakeclock import FakeClock


def test_a_stuck_shutdown_is_aborted_after_the_grace_and_exits_one_second_later(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    exits: list[int] = []
    dog = ShutdownWatchdog(
        tmp_path / "never-mounted", lambda: 3, grace=2.0, clock=clock, exit_process=exits.append
    )
    start = clock.now
    dog.run()  # nothing disarms it: the shutdown hangs
    assert clock.waits == [2.0, 1.0] and clock.now == start + 3.0
    assert exits == [1]
    assert "aborting the FUSE connection" in caplog.text
    assert "exiting, 3 audit records not written" in caplog.text


def test_a_shutdown_that_finishes_in_time_is_left_alone(tmp_path: Path) -> None:
    clock = FakeClock()
    exits: list[int] = []
    dog = ShutdownWatchdog(tmp_path, lambda: 0, clock=clock, exit_process=exits.append)
    start = clock.now
    dog.disarm()
    dog.run()
    assert exits == [] and clock.now == start


@pytest.fixture
def vault(store_path: Path) -> Iterator[Vault]:
    Vault.init(store_path)
    v = Vault.open(store_path)
    v.set(parse_ref("db"), b"value")
    try:
        yield v
    finally:
        v.close()


def test_a_refused_row_is_verified_again_every_recheck_interval(vault: Vault) -> None:
    clock = FakeClock()
    watcher = Watcher(vault, Tree(Owner(0, 0, 0o400), vault.read_version, 1), clock=clock)
    watcher.refresh()
    (sid,) = [m.secret_id for m in vault.backend.list_meta()]
    # Refused for want of a key not loaded then (the key is here now): looked at again.
    watcher.tampered[sid] = "a key was missing"
    watcher.refresh()
    assert sid not in watcher.tampered
    # The next look is an interval later, not at every poll.
    watcher.tampered[sid] = "a key was missing"
    clock.advance(RECHECK_SECONDS - 0.01)
    assert watcher.refresh() is None and sid in watcher.tampered
    clock.advance(0.01)
    watcher.refresh()
    assert sid not in watcher.tampered


def test_a_key_that_cannot_be_had_is_tried_again_after_the_retry_interval(
    cli: Cli, store_path: Path
) -> None:
    """A mount holding the old KEK sees a generation wrapped under a new one: it reads the
    key file again at once, and while that fails, every KEY_RETRY_SECONDS, not at each
    poll."""
    cli("init")
    cli("secret", "set", "db", "--from-stdin", input=b"one")
    mount = Vault.open(store_path)
    try:
        clock = FakeClock()
        mount.keyring.clock = clock
        key_file = mount.backend.key_file()
        old_key = key_file.read_bytes()
        cli("key", "rotate", "--reencrypt")  # a new KEK, and generation 2 under it
        new_key = key_file.read_bytes()
        key_file.write_bytes(old_key)  # the new key not in place yet
        assert mount.refresh_data_keys() == []
        key_file.write_bytes(new_key)
        clock.advance(KEY_RETRY_SECONDS - 0.01)
        assert mount.refresh_data_keys() == []  # not read again before the interval
        clock.advance(0.01)
        assert mount.refresh_data_keys() == [2]
        assert mount.get_value(parse_ref("db")) == b"one"
    finally:
        mount.close()

"""The etcd follower is owned (issue 13.5): its loops are children of a trio nursery,
cancelled by scope, and its timing decisions are tested on a fake clock."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from secretfs.daemon import FOLLOW_STOP_SECONDS, follow_store
from secretfs.refs import parse_ref
from secretfs.store import location
from secretfs.store.etcd.follower import WATCH_SILENT_SECONDS, Follower
from secretfs.vault import Vault
from tests.etcd_cluster import EtcdCluster
from tests.fakeclock import FakeClock


@pytest.fixture
def store(
    etcd_cluster: EtcdCluster, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[tuple[Vault, Vault]]:
    """A writer and a reader of a new store on the session's cluster."""
    monkeypatch.setenv("SECRETFS_KEY_FILE", str(tmp_path / "k"))
    loc = location.parse(etcd_cluster.url(f"t{uuid.uuid4().hex[:12]}"))
    Vault.init(loc)
    writer, reader = Vault.open(loc), Vault.open(loc)
    try:
        writer.set(parse_ref("db"), b"one")
        yield writer, reader
    finally:
        reader.close()
        writer.close()


def _follower(reader: Vault, clock: FakeClock | None = None) -> Follower:
    follower = reader.backend.follow() if clock is None else reader.backend.follow(clock)
    assert isinstance(follower, Follower)
    return follower


def test_the_follower_runs_in_a_nursery_and_ends_with_it(
    store: tuple[Vault, Vault], caplog: pytest.LogCaptureFixture
) -> None:
    writer, reader = store
    follower = _follower(reader)
    assert follower.running == 0  # following starts nothing: its owner runs the loops

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow_store, follower)
            await trio.to_thread.run_sync(writer.set, parse_ref("db"), b"two")
            with trio.fail_after(3):
                while reader.get_value(parse_ref("db")) != b"two":
                    await trio.sleep(0.01)
            assert follower.running == 2
            nursery.cancel_scope.cancel()
        assert follower.running == 0  # nothing outlives the nursery

    trio.run(main)
    assert "unreachable" not in caplog.text  # stopping is not news of the cluster


def test_a_follower_cancelled_while_the_cluster_hangs_is_left_within_the_bound(
    own_etcd_cluster: EtcdCluster, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Every member hung (SIGSTOP): the watch waits for headers that never come (3 s),
    which stop() cannot break. Cancelling waits FOLLOW_STOP_SECONDS for it, no more; it
    ends at that call's timeout, on its own."""
    cluster = own_etcd_cluster
    monkeypatch.setenv("SECRETFS_KEY_FILE", str(tmp_path / "k"))
    monkeypatch.setenv("SECRETFS_ETCD_TIMEOUT", "1")
    loc = location.parse(cluster.url("hung"))
    Vault.init(loc)
    reader = Vault.open(loc)
    follower = _follower(reader)
    took, left = 0.0, 0

    async def main() -> None:
        nonlocal took, left
        for i in range(3):
            cluster.pause(i)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow_store, follower)
            # The health check gives up first (its 1 s); the watch still waits (3 s).
            with trio.fail_after(5):
                while follower.status()["problem"] is None:
                    await trio.sleep(0.02)
            started = time.monotonic()
            nursery.cancel_scope.cancel()
        took = time.monotonic() - started
        left = follower.running

    try:
        trio.run(main)
        # The bound plus a loaded machine's scheduling; not the 3 s a silent watch waits.
        assert FOLLOW_STOP_SECONDS - 0.05 < took < FOLLOW_STOP_SECONDS + 1.0, took
        assert left == 1  # the watch, in its call: not waited for past the bound
        deadline = time.monotonic() + 5
        while follower.running:
            assert time.monotonic() < deadline, "a follower loop outlived its call's timeout"
            time.sleep(0.05)
    finally:
        for i in range(3):
            cluster.resume(i)
        reader.close()


# -- timing decisions, on a fake clock (no loop runs: the test is the health check) ----


def test_a_watch_silent_while_the_cluster_moves_on_switches_members(
    store: tuple[Vault, Vault], caplog: pytest.LogCaptureFixture
) -> None:
    _, reader = store
    clock = FakeClock()
    follower = _follower(reader, clock)
    revision = int(follower.status()["last_revision"])
    follower.cluster_answered(revision)  # current: nothing to do
    clock.advance(WATCH_SILENT_SECONDS)
    follower.cluster_answered(revision + 1)  # behind, but silent only this long
    assert follower.status()["problem"] is None
    clock.advance(0.01)
    follower.cluster_answered(revision + 1)
    problem = str(follower.status()["problem"])
    assert "sent nothing for 0.3s" in problem and "switching members" in problem
    assert follower.status()["connected"] is False
    assert "switching members" in caplog.text


def test_a_watch_that_hears_but_stays_behind_is_restarted_on_the_second_check(
    store: tuple[Vault, Vault], caplog: pytest.LogCaptureFixture
) -> None:
    _, reader = store
    clock = FakeClock()
    follower = _follower(reader, clock)
    revision = int(follower.status()["last_revision"])
    clock.advance(0.1)
    follower.cluster_answered(revision + 1)
    follower.cluster_answered(revision)  # caught up: the count starts again
    follower.cluster_answered(revision + 1)
    assert "fell behind" not in caplog.text
    clock.advance(0.1)
    follower.cluster_answered(revision + 1)
    assert "fell behind: restarting it" in caplog.text
    assert follower.status()["problem"] is None  # restarted, not stale


def test_an_idle_watch_is_stale_only_when_the_cluster_moved_on(
    store: tuple[Vault, Vault],
) -> None:
    _, reader = store
    follower = _follower(reader, FakeClock())
    revision = int(follower.status()["last_revision"])
    follower.watch_idle("sent nothing for 3s")  # a quiet store: nothing was missed
    assert follower.status()["problem"] is None
    follower.cluster_answered(revision + 1)
    follower.watch_idle("sent nothing for 3s")
    assert follower.status()["problem"] == "sent nothing for 3s"


@pytest.mark.parametrize(
    ("raw", "why"),
    [(b"{not json", "not valid JSON"), (b'{"id": 1}', None), (b'{"id": "x", "seq": 1}', None)],
)
def test_a_damaged_row_loads_and_is_refused_when_read(
    store: tuple[Vault, Vault], raw: bytes, why: str | None
) -> None:
    """Rows are parsed as they load, on the loading threads: a row that does not parse
    must not stop the load there (nor be skipped silently). Reading the rows to serve
    them refuses the store, naming the damaged row, as before rows were parsed early."""
    from secretfs.errors import SecretfsError
    from secretfs.store.etcd.txn import Put, Txn

    writer, reader = store
    writer.set(parse_ref("api"), b"two")
    backend = writer.backend
    row = backend._row_key(parse_ref("api").scope.key, "api")  # type: ignore[attr-defined]
    assert backend._gw.txn(Txn([Put(row, raw)]), write=True).succeeded  # type: ignore[attr-defined]
    follower = _follower(reader)
    good = reader.backend._row_key(parse_ref("db").scope.key, "db")  # type: ignore[attr-defined]
    assert good in follower.parsed and row not in follower.parsed
    with pytest.raises(SecretfsError) as refused:
        reader.backend.changes_since(0)
    assert "api" in str(refused.value) and (why is None or why in str(refused.value))
    assert raw.decode() not in str(refused.value)  # never a record's content

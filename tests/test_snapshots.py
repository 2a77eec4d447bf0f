"""What the mount keeps to serve opens without SQL (issue 6), on real stores and processes:
verified versions (secretfs/verified.py), process names (audit.ProcessNames), and how
the daemon notices that someone else wrote to the store (daemon.AuditWriter)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from secretfs import audit
from secretfs.daemon import AuditWriter
from secretfs.errors import IntegrityError, NotFoundError
from secretfs.refs import parse_ref
from secretfs.store.sqlite import SqliteBackend
from secretfs.vault import SealedValue, Vault
from secretfs.verified import VerifiedVersions
from tests.fakeclock import FakeClock


@pytest.fixture
def vault(store_path: Path) -> Iterator[Vault]:
    Vault.init(store_path)
    v = Vault.open(store_path)
    for name, value in (("a", b"alpha"), ("b", b"bravo" * 100), ("c", b'{"k":"v"}')):
        v.set(parse_ref(name), value)
    yield v
    v.close()


def ids(vault: Vault, name: str) -> tuple[int, int]:
    meta = vault.meta(parse_ref(name))
    return meta.secret_id, meta.version


class Counting:
    """The vault's own loader, counting how often the store is asked."""

    def __init__(self, vault: Vault) -> None:
        self.vault = vault
        self.calls = 0

    def __call__(self, secret_id: int, version: int) -> SealedValue:
        self.calls += 1
        return self.vault.sealed_version(secret_id, version)


def test_a_version_is_read_and_verified_once_then_served_sealed(vault: Vault) -> None:
    load = Counting(vault)
    versions = VerifiedVersions(load)
    sealed, value = versions.get(*ids(vault, "a"))
    assert value == b"alpha" and load.calls == 1
    again, value = versions.get(*ids(vault, "a"))
    # No query, no decryption: the same ciphertext, opened only when a read needs it.
    assert again is sealed and value is None and load.calls == 1
    assert again.open() == b"alpha"
    # An opaque handle: no raw data key or plaintext attribute to copy out.
    assert not any(hasattr(again, a) for a in ("key", "data_key", "value", "blob", "aad"))
    assert "alpha" not in repr(again)


def test_a_new_version_is_a_new_entry_and_forget_drops_a_secrets_versions(vault: Vault) -> None:
    load = Counting(vault)
    versions = VerifiedVersions(load)
    versions.get(*ids(vault, "a"))
    versions.get(*ids(vault, "b"))
    vault.set(parse_ref("a"), b"alpha-2")
    _, value = versions.get(*ids(vault, "a"))
    assert value == b"alpha-2" and len(versions) == 3
    versions.forget([ids(vault, "a")[0]])
    assert len(versions) == 1
    _, value = versions.get(*ids(vault, "b"))
    assert value is None  # b was kept
    versions.clear()
    assert len(versions) == 0 and versions.bytes == 0


def test_the_budget_drops_the_least_recently_used(vault: Vault) -> None:
    a, b, c = (ids(vault, n) for n in "abc")
    one = VerifiedVersions(vault.sealed_version).get(*b)[0].cost
    versions = VerifiedVersions(vault.sealed_version, budget=one + 2 * 300)
    versions.get(*a)
    versions.get(*b)
    versions.get(*a)  # a is used again: b is now the oldest
    versions.get(*c)
    assert versions.bytes <= versions.budget
    assert versions.get(*a)[1] is None  # still kept
    assert versions.get(*b)[1] == b"bravo" * 100  # dropped, read again


def test_what_does_not_verify_is_not_kept_and_is_tried_again(
    vault: Vault, store_path: Path
) -> None:
    sid, ver = ids(vault, "a")
    conn = sqlite3.connect(store_path, isolation_level=None)
    (blob,) = conn.execute(
        "SELECT ciphertext FROM versions WHERE secret_id = ? AND version = ?", (sid, ver)
    ).fetchone()
    damaged = bytearray(blob)
    damaged[-1] ^= 1
    conn.execute(
        "UPDATE versions SET ciphertext = ? WHERE secret_id = ? AND version = ?",
        (bytes(damaged), sid, ver),
    )
    versions = VerifiedVersions(vault.sealed_version)
    for _ in range(2):
        with pytest.raises(IntegrityError):
            versions.get(sid, ver)
    assert len(versions) == 0
    conn.execute(
        "UPDATE versions SET ciphertext = ? WHERE secret_id = ? AND version = ?",
        (blob, sid, ver),
    )
    conn.close()
    assert versions.get(sid, ver)[1] == b"alpha"
    with pytest.raises(NotFoundError):
        versions.get(sid, ver + 5)


def test_the_audit_writer_tells_others_writes_from_its_own(vault: Vault, store_path: Path) -> None:
    writer = AuditWriter(SqliteBackend.open(store_path))
    try:
        assert not writer.others_wrote()
        record = audit.AuditRecord(
            1, audit.SOURCE_MOUNT, "open", "$S:a", 1, 0, 0, 1, "t", "allowed"
        )
        for _ in range(3):
            assert writer.flush([record]) is False  # its own batches do not count
        vault.set(parse_ref("b"), b"changed")
        assert writer.others_wrote()
        assert not writer.others_wrote()
        # A change by hand, with no secretfs at all, counts too.
        with sqlite3.connect(store_path) as conn:
            conn.execute("UPDATE versions SET size = size + 1")
        assert writer.flush([record]) is True
    finally:
        writer.close()


def comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def wait_for_comm(pid: int, name: str) -> None:
    deadline = time.monotonic() + 5
    while comm(pid) != name and time.monotonic() < deadline:
        time.sleep(0.005)
    assert comm(pid) == name


def test_process_names_are_remembered_for_a_moment_and_then_read_again() -> None:
    clock = FakeClock()
    names = audit.ProcessNames(ttl=0.1, clock=clock)
    # A shell that exec()s another program once told to: same pid, new name.
    proc = subprocess.Popen(
        ["sh", "-c", "read line; exec sleep 30"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL
    )
    try:
        wait_for_comm(proc.pid, "sh")
        assert names.get(proc.pid) == "sh"
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        wait_for_comm(proc.pid, "sleep")
        clock.now += 0.05
        assert names.get(proc.pid) == "sh"  # remembered: within the moment
        clock.now += 0.06
        assert names.get(proc.pid) == "sleep"  # the moment is over: read again
    finally:
        proc.kill()
        proc.wait()
    clock.now += 1
    assert names.get(proc.pid) is None  # gone
    assert names.get(os.getpid()) == comm(os.getpid())


def test_process_names_stay_bounded() -> None:
    clock = FakeClock()
    names = audit.ProcessNames(ttl=10, clock=clock, limit=8)
    for pid in range(1, 100):
        names.get(1_000_000 + pid)  # no such processes: None, remembered
    assert len(names._names) <= 8


def test_mount_events_wait_as_tuples_and_come_out_as_records() -> None:
    queue = audit.AuditQueue(limit=3)
    queue.add_mount(5, "open", "$S:a", 2, 1000, 1001, 42, "cat", audit.ALLOWED, None)
    queue.add(audit.cli_record("set", "$S:b", 3))
    queue.add_mount(6, "open", "$S:a/f", 2, 1000, 1001, 43, None, audit.DENIED, "EACCES")
    queue.add_mount(7, "open", "$S:a", 2, 0, 0, 44, "x", audit.ALLOWED, None)  # over the limit
    batch = queue.take()
    assert [type(r) for r in batch] == [audit.AuditRecord] * 4
    first, cli, denied, dropped = batch
    assert first == audit.AuditRecord(
        5, audit.SOURCE_MOUNT, "open", "$S:a", 2, 1000, 1001, 42, "cat", audit.ALLOWED, None
    )
    assert cli.source == audit.SOURCE_CLI and denied.detail == "EACCES" and denied.pid == 43
    assert dropped.action == "audit" and "1 records dropped" in (dropped.detail or "")
    queue.put_back(batch[:2])
    assert [r.time_ns for r in queue.take()] == [5, cli.time_ns]

"""A mount's checks of row tags against writes committed mid-refresh (no false tamper).

The Watcher reads a changed row, then its tag: two reads, not one snapshot. A write or a
re-encryption (`key rotate --reencrypt` re-tags every row under a new data key
generation) committed between them showed the mount an older row beside a newer tag;
the row was refused as tampered (mode 0: EACCES for its readers, a tamper record in the
audit) although nobody forged anything. Each test commits the real write from another
connection at exactly that point; a row forged without the key must still be refused.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from secretfs.access import NOBODY
from secretfs.daemon import Watcher
from secretfs.keyring import KEY_RETRY_SECONDS
from secretfs.refs import parse_ref
from secretfs.store import SecretMeta
from secretfs.tree import Owner, Tree
from secretfs.vault import Vault
from tests.conftest import Cli
from tests.fakeclock import FakeClock

REF = "@svc/j01"


@pytest.fixture
def stores(store_path: Path) -> Iterator[tuple[Vault, Vault, Watcher]]:
    """A writer's vault, and a mount's vault (its own connection) with its Watcher."""
    Vault.init(store_path)
    writer = Vault.open(store_path)
    writer.set(parse_ref(REF), b'{"v": 1}')
    mounted = Vault.open(store_path)
    watcher = Watcher(mounted, Tree(Owner(0, 0), mounted.read_version, time.time_ns()))
    try:
        yield writer, mounted, watcher
    finally:
        mounted.close()
        writer.close()


def _after_first(
    monkeypatch: pytest.MonkeyPatch, backend: Any, method: str, then: Callable[[], object]
) -> None:
    """Run `then` (a commit by another connection) right after the mount's next `method`."""
    read = getattr(backend, method)
    done = []

    def read_then_commit(*args: Any) -> Any:
        out = read(*args)
        if not done:
            done.append(then())
        return out

    monkeypatch.setattr(backend, method, read_then_commit)


def _meta(watcher: Watcher) -> SecretMeta:
    return next(m for m in watcher.tree.known() if m.name == "j01")


def _served(watcher: Watcher) -> int:
    return _meta(watcher).mode


def test_a_write_between_the_row_read_and_its_tag_read_is_not_tamper(
    stores: tuple[Vault, Vault, Watcher], monkeypatch: pytest.MonkeyPatch
) -> None:
    writer, mounted, watcher = stores
    watcher.verify_store()
    watcher.refresh()  # served from the rows verify_store() read: no second read
    assert _meta(watcher).version == 1
    writer.set(parse_ref(REF), b'{"v": 2}')
    _after_first(
        monkeypatch,
        mounted.backend,
        "changes_since",
        lambda: writer.set(parse_ref(REF), b'{"v": 3}'),
    )
    watcher.refresh()
    assert watcher.tampered == {}
    assert watcher._reports == []  # no tamper logged or audited
    assert _served(watcher) != 0
    assert _meta(watcher).version == 3  # the newer row, not the one read before


def test_a_reencryption_between_the_access_rows_and_their_tags_is_not_a_mismatch(
    stores: tuple[Vault, Vault, Watcher], monkeypatch: pytest.MonkeyPatch, cli: Cli
) -> None:
    _writer, mounted, watcher = stores
    cli("grant", "--uid", "1000", "@svc")  # an access row whose tag the rekey moves
    watcher.verify_store()
    _after_first(
        monkeypatch,
        mounted.backend,
        "meta_scan",
        lambda: cli("key", "rotate", "--reencrypt"),
    )
    watcher.refresh()
    assert watcher._reports == []
    assert watcher.tree.readers(_meta(watcher)) != NOBODY  # the grant counts: rows add up


def test_a_row_forged_without_the_key_is_still_refused(
    stores: tuple[Vault, Vault, Watcher], store_path: Path
) -> None:
    _writer, _mounted, watcher = stores
    watcher.verify_store()
    watcher.refresh()
    with sqlite3.connect(store_path) as db:
        db.execute("UPDATE secrets SET mode = 438 WHERE name = 'j01'")
    watcher.refresh()
    assert [
        why.endswith("fails authentication (changed without the key)")
        for why in watcher.tampered.values()
    ] == [True]
    assert _served(watcher) == 0


def test_a_tag_under_a_generation_not_loadable_yet_is_refused_until_it_loads(
    store_path: Path, cli: Cli
) -> None:
    Vault.init(store_path)
    writer = Vault.open(store_path)
    writer.set(parse_ref(REF), b'{"v": 1}')
    writer.close()
    cli("secret", "chmod", "@svc", "0444")  # a scope default row: tagged as well
    mounted = Vault.open(store_path)
    clock = FakeClock()
    mounted.keyring.clock = clock
    watcher = Watcher(mounted, Tree(Owner(0, 0), mounted.read_version, 1), clock=clock)
    try:
        watcher.verify_store()
        watcher.refresh()
        cli("key", "rotate")  # a new key-encryption key: the mount holds the old one
        cli("key", "rotate", "--reencrypt")  # every tag moves to generation 2, wrapped anew
        cli("grant", "--uid", "1000", "@svc")  # the access rows are read again, too
        key_file = mounted.backend.key_file()
        hidden = key_file.with_name("elsewhere")
        key_file.rename(hidden)  # the new key cannot be had for now
        try:
            watcher.refresh()
        finally:
            hidden.rename(key_file)
        # Fail closed, and say why: not "changed without the key".
        assert [
            "cannot be verified: its tag is under data key generation 2" in why
            for why in watcher.tampered.values()
        ] == [True]
        # The access rows too: the scope's defaults and the grant, each named for what it is.
        access = sorted((p.kind, p.detail) for p in watcher._access_problems if p.kind != "store")
        assert [kind for kind, _ in access] == ["grant", "scope"]
        for _, why in access:
            assert "cannot be verified: its tag is under data key generation 2" in why, why
        assert watcher.tree.ownership(_meta(watcher))[2] == 0
        clock.advance(KEY_RETRY_SECONDS)  # the key is tried again, the rows looked at again
        watcher.refresh()
        assert watcher.tampered == {}
        assert watcher.tree.ownership(_meta(watcher))[2] == 0o444  # the scope row too
        assert watcher.tree.readers(_meta(watcher)) != NOBODY  # and the grant
    finally:
        mounted.close()


def test_the_first_refresh_serves_what_verify_store_read_unless_the_store_moved_on(
    stores: tuple[Vault, Vault, Watcher], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mount's start reads every row once (verify_store); the first refresh starts from
    those rows, but a commit in between is never lost: the store moved, so it reads."""
    writer, mounted, watcher = stores
    reads: list[int] = []
    read = mounted.backend.changes_since

    def counted(seq: int) -> list[SecretMeta]:
        reads.append(seq)
        return read(seq)

    monkeypatch.setattr(mounted.backend, "changes_since", counted)
    watcher.verify_store()
    watcher.refresh()
    assert reads == [0] and _meta(watcher).version == 1  # one pass over the rows
    fresh = Watcher(mounted, Tree(Owner(0, 0), mounted.read_version, time.time_ns()))
    fresh.verify_store()
    writer.set(parse_ref(REF), b'{"v": 2}')  # committed between the check and the tree
    fresh.refresh()
    assert reads == [0, 0, 0]  # the store moved on: the tree's rows are read again
    assert _meta(fresh).version == 2

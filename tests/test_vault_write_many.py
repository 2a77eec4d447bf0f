"""Vault.write_many: many secrets in one transaction, sealed like every other write."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from secretfs.errors import ConflictError, IntegrityError, TooLargeError, UsageError
from secretfs.refs import parse_ref, parse_scope
from secretfs.vault import Vault


@pytest.fixture
def vault(store_path: Path) -> Iterator[Vault]:
    Vault.init(store_path, max_value_bytes=64)
    v = Vault.open(store_path)
    yield v
    v.close()


def test_writes_all_and_reads_back(vault: Vault) -> None:
    items = [(parse_ref(f":e/S{i}"), f"value {i}".encode()) for i in range(50)]
    outcomes = vault.write_many(items)
    assert [o.action for o in outcomes] == ["created"] * 50
    for ref, value in items:
        assert vault.get_value(ref) == value
    assert len(vault.list_secrets(parse_scope(":e").key)) == 50
    # Sealed as any other write, bound to its name: a ciphertext moved to another
    # secret's row does not open.
    first, second = (vault.meta(ref).secret_id for ref, _ in items[:2])
    with sqlite3.connect(vault.backend.path) as db:
        db.execute(
            "UPDATE versions SET ciphertext ="
            " (SELECT ciphertext FROM versions WHERE secret_id = ?) WHERE secret_id = ?",
            (second, first),
        )
    with pytest.raises(IntegrityError):
        vault.get_value(items[0][0])


def test_a_conflict_rolls_back_everything_written_before_it(vault: Vault) -> None:
    vault.set(parse_ref("b"), b"old")
    items = [(parse_ref("a"), b"1"), (parse_ref("b"), b"2"), (parse_ref("c"), b"3")]
    with pytest.raises(ConflictError) as err:
        vault.write_many(items)
    assert "$S:b" in str(err.value) and "nothing was written" in str(err.value)
    assert [m.name for m in vault.list_secrets()] == ["b"]
    assert vault.get_value(parse_ref("b")) == b"old"
    assert vault.backend.integrity_check() == "ok"


def test_partial_keeps_the_rest_and_reports_conflicts(vault: Vault) -> None:
    vault.set(parse_ref("b"), b"old")
    items = [(parse_ref("a"), b"1"), (parse_ref("b"), b"2")]
    outcomes = vault.write_many(items, partial=True)
    assert [(str(o.ref), o.action) for o in outcomes] == [("$S:a", "created"), ("$S:b", "conflict")]
    assert vault.get_value(parse_ref("b")) == b"old"


def test_overwrite_adds_versions_only_for_changed_values(vault: Vault) -> None:
    vault.set(parse_ref("a"), b"same")
    vault.set(parse_ref("b"), b"old")
    vault.remove(parse_ref("b"))
    vault.set(parse_ref("c"), b"old")
    items = [(parse_ref("a"), b"same"), (parse_ref("b"), b"back"), (parse_ref("c"), b"new")]
    outcomes = vault.write_many(items, existing="overwrite")
    assert [(o.action, o.version) for o in outcomes] == [
        ("unchanged", 1),
        ("created", 2),  # a removed name comes back with the next version number
        ("updated", 2),
    ]
    assert vault.get_value(parse_ref("c")) == b"new"
    assert vault.get_value(parse_ref("c"), 1) == b"old"


def test_skip_leaves_existing_alone(vault: Vault) -> None:
    vault.set(parse_ref("a"), b"keep")
    outcomes = vault.write_many([(parse_ref("a"), b"x"), (parse_ref("n"), b"y")], existing="skip")
    assert [o.action for o in outcomes] == ["skipped", "created"]
    assert vault.get_value(parse_ref("a")) == b"keep"


def test_bad_items_are_refused_before_anything_is_written(vault: Vault) -> None:
    with pytest.raises(TooLargeError):
        vault.write_many([(parse_ref("a"), b"1"), (parse_ref("big"), b"x" * 65)])
    with pytest.raises(UsageError):
        vault.write_many([(parse_ref("a"), b"1"), (parse_ref("j/field"), b"2")])
    assert vault.list_secrets() == []

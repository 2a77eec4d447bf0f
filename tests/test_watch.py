"""Following the store's changes: the Follower and `secretfs watch` (docs/watching.md)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from secretfs.errors import RefError
from secretfs.follow import Follower, Selection
from secretfs.refs import parse_ref
from secretfs.store.sqlite import SqliteLocation
from secretfs.vault import Vault


@pytest.fixture
def vault(store_path: Path) -> Iterator[Vault]:
    Vault.init(store_path)
    v = Vault.open(store_path)
    try:
        yield v
    finally:
        v.close()


def follower(store_path: Path, *targets: str) -> Follower:
    # A connection of its own, as `secretfs watch` has: it sees the vault's commits.
    return Follower(SqliteLocation(store_path).open(readonly=True), Selection.parse(targets))


def test_a_follower_reports_versions_creations_and_removals_of_what_it_follows(
    vault: Vault, store_path: Path
) -> None:
    vault.set(parse_ref("db"), b"one")
    vault.set(parse_ref("@api/token"), b"t")
    f = follower(store_path, "db", "@api")
    assert f.poll(1) == []  # what was there before is not a change
    vault.set(parse_ref("db"), b"two")
    vault.set(parse_ref("@api/new"), b"n")
    vault.set(parse_ref("other"), b"not followed")
    got = [(str(c.ref), c.event, c.old_version, c.new_version) for c in f.poll(1)]
    assert got == [("$S:db", "updated", 1, 2), ("$S:@api/new", "created", None, 1)]
    vault.set_owner(parse_ref("db"), {"mode": 0o440}, action="chmod")  # not a change
    vault.remove(parse_ref("@api/token"))
    (removed,) = f.poll(5)
    assert (str(removed.ref), removed.event, removed.old_version, removed.new_version) == (
        "$S:@api/token",
        "removed",
        1,
        None,
    )
    assert removed.time_ns == 5
    assert f.poll(6) == []


def test_an_identical_value_is_a_new_version_marked_same_value(
    vault: Vault, store_path: Path
) -> None:
    vault.set(parse_ref("db"), b"same")
    f = follower(store_path, "$S:db/field")  # a field follows its whole secret
    vault.set(parse_ref("db"), b"same")
    (change,) = f.poll(1)
    assert (change.old_version, change.new_version, change.same_value) == (1, 2, True)
    vault.set(parse_ref("db"), b"other")
    (change,) = f.poll(1)
    assert change.same_value is False


def test_a_selection_is_a_scope_or_a_reference() -> None:
    sel = Selection.parse(["@api", ":staging", "env/prod", "db", "$S:deployment"])
    assert sel.scopes == {"@api", "env/staging", "env/prod"}
    assert sel.secrets == {("deployment", "db"), ("deployment", "deployment")}
    assert Selection.parse([]).everything
    with pytest.raises(RefError, match="neither a scope nor a reference"):
        Selection.parse(["bad name!"])


def test_watch_prints_a_json_line_per_change_and_exits_0_on_sigterm(
    cli_env: dict[str, str], vault: Vault
) -> None:
    vault.set(parse_ref("db"), b"one")
    proc = subprocess.Popen(
        [sys.executable, "-m", "secretfs", "watch", "--json", "db"],
        env=cli_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None and proc.stdout is not None
        assert b"watching db" in proc.stderr.readline()  # its starting point is taken
        vault.set(parse_ref("db"), b"two")
        first = json.loads(proc.stdout.readline())
        vault.remove(parse_ref("db"))
        second = json.loads(proc.stdout.readline())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        proc.kill()
        proc.wait()
    assert {k: first[k] for k in ("ref", "event", "old_version", "new_version")} == {
        "ref": "$S:db",
        "event": "updated",
        "old_version": 1,
        "new_version": 2,
    }
    assert first["same_value"] is False and first["time"].endswith("Z")
    assert (second["event"], second["old_version"], second["new_version"]) == ("removed", 2, None)
    assert proc.stdout.read() == b""


def test_watch_refuses_a_store_that_does_not_exist(cli_env: dict[str, str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "secretfs", "watch"],
        env=cli_env,
        capture_output=True,
        timeout=30,
    )
    assert proc.returncode == 7, proc.stderr

"""Rotation, rollback, bounded versions and expiry, through the real CLI (issue 4, items 1, 3)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from secretfs import expiry
from secretfs.errors import UsageError
from secretfs.refs import parse_ref
from secretfs.vault import Vault
from tests.conftest import Cli


def j(proc: object) -> object:
    return json.loads(proc.stdout)  # type: ignore[attr-defined]


def err(proc: object) -> str:
    return proc.stderr.decode()  # type: ignore[attr-defined,no-any-return]


def history(cli: Cli, ref: str) -> list[int]:
    return [r["version"] for r in j(cli("secret", "history", ref, "--json"))]  # type: ignore[index,union-attr]


def audit_lines(cli: Cli) -> list[dict[str, object]]:
    return j(cli("audit", "--json"))  # type: ignore[return-value]


def seed(store: Path, versions: dict[str, list[bytes]]) -> None:
    """Write versions in-process (setup, not what a test is about)."""
    vault = Vault.open(store)
    try:
        for name, values in versions.items():
            for value in values:
                vault.set(parse_ref(name), value)
    finally:
        vault.close()


# --- rotate -----------------------------------------------------------------------------


def test_rotate_prints_the_version_before_and_after(cli: Cli, initialized_store: Path) -> None:
    cli("secret", "create", "db", "--from-stdin", input=b"one")
    out = cli("secret", "rotate", "db", "--from-stdin", input=b"two")
    assert out.stdout == b"rotated $S:db: version 1 -> 2\n"
    data = j(cli("secret", "rotate", "db", "--generate", "20", "--json"))
    assert data == {
        "ref": "$S:db",
        "action": "rotated",
        "previous_version": 2,
        "new_version": 3,
        "value_of_version": None,
        "size": 20,
        "pruned": [],
        "expires": None,
        "rotation_due": None,
    }
    assert len(cli("secret", "get", "db").stdout) == 20
    assert cli("secret", "get", "db", "--version", "2").stdout == b"two"


def test_rotate_refuses_a_missing_secret_and_a_missing_value(
    cli: Cli, initialized_store: Path
) -> None:
    missing = cli("secret", "rotate", "nope", "--generate", check=False)
    assert missing.returncode == 3 and "not found" in err(missing)
    cli("secret", "create", "db", "--from-stdin", input=b"one")
    no_value = cli("secret", "rotate", "db", check=False)
    assert no_value.returncode == 2 and "--generate" in err(no_value)
    assert history(cli, "db") == [1]
    # The refusal is in the audit log, the value nowhere.
    refused = [r for r in audit_lines(cli) if r["outcome"] == "refused"]
    assert [(r["action"], r["ref"]) for r in refused] == [("rotate", "$S:nope")]


# --- rollback ---------------------------------------------------------------------------


def test_rollback_makes_an_old_value_current_as_a_new_version(
    cli: Cli, initialized_store: Path
) -> None:
    seed(initialized_store, {"db": [b"v1", b"v2", b"v3"]})
    out = cli("secret", "rollback", "db", "--to", "1")
    assert out.stdout == b"rolled back $S:db: version 3 -> 4 (the value of version 1)\n"
    assert cli("secret", "get", "db").stdout == b"v1"
    assert history(cli, "db") == [1, 2, 3, 4]
    assert cli("secret", "get", "db", "--version", "3").stdout == b"v3"
    record = [r for r in audit_lines(cli) if r["action"] == "rollback"]
    assert record and record[-1]["version"] == 4
    assert record[-1]["detail"] == "to the value of version 1"

    same = cli("secret", "rollback", "db", "--to", "4", check=False)
    assert same.returncode == 2 and "already the current one" in err(same)
    gone = cli("secret", "rollback", "db", "--to", "9", check=False)
    assert gone.returncode == 3 and "no version 9 (kept: versions 1-4)" in err(gone)


# --- bounded versions -------------------------------------------------------------------


def test_writes_over_the_bound_prune_the_oldest_and_say_so(cli: Cli, store_path: Path) -> None:
    cli("init", "--max-versions", "3")
    seed(store_path, {"db": [b"v1", b"v2"]})
    assert "pruned" not in err(cli("secret", "set", "db", "--from-stdin", input=b"v3"))
    out = cli("secret", "set", "db", "--from-stdin", input=b"v4")
    assert "pruned version 1 of $S:db: the store keeps 3 versions per secret" in err(out)
    rotated = j(cli("secret", "rotate", "db", "--from-stdin", "--json", input=b"v5"))
    assert rotated["pruned"] == [2]  # type: ignore[index]
    assert history(cli, "db") == [3, 4, 5]
    gone = cli("secret", "get", "db", "--version", "1", check=False)
    assert gone.returncode == 3
    prunes = [r for r in audit_lines(cli) if r["action"] == "prune"]
    assert [(r["ref"], r["detail"]) for r in prunes] == [
        ("$S:db", "removed version 1 (the store keeps 3)"),
        ("$S:db", "removed version 2 (the store keeps 3)"),
    ]
    # Pruned ciphertext is gone from the database file too (secure_delete).
    assert cli("secret", "get", "db", "--version", "3").stdout == b"v3"


def test_max_versions_changes_later_and_prune_is_explicit(
    cli: Cli, initialized_store: Path
) -> None:
    assert j(cli("config", "show", "--json")) == {
        "max-versions": 10,
        "max-value-size": 1024 * 1024,
        "audit-max-age": "0",
        "rm-retention": "604800s",
    }
    seed(initialized_store, {"a": [b"a%d" % i for i in range(1, 7)], "b": [b"b1", b"b2"]})
    out = cli("config", "set", "max-versions", "4")
    assert out.stdout == b"max-versions is now 4\n"
    assert "1 secret(s) keep more versions than that" in err(out)
    assert history(cli, "a") == [1, 2, 3, 4, 5, 6]  # nothing removed by the setting alone

    usage = cli("secret", "prune", check=False)
    assert usage.returncode == 2 and "REF" in err(usage)
    pruned = cli("secret", "prune", "a", "--keep", "2")
    assert pruned.stdout == b"pruned $S:a: 4 version(s) (1, 2, 3, 4)\n"
    assert history(cli, "a") == [5, 6]
    seed(initialized_store, {"a": [b"a7", b"a8"]})
    assert history(cli, "a") == [5, 6, 7, 8]
    all_out = j(cli("secret", "prune", "--all", "--keep", "1", "--json"))
    assert all_out == [{"ref": "$S:a", "pruned": [5, 6, 7]}, {"ref": "$S:b", "pruned": [1]}]
    assert history(cli, "a") == [8] and history(cli, "b") == [2]
    assert cli("secret", "prune", "--all").stderr == b"nothing to prune\n"
    bad = cli("config", "set", "max-versions", "0", check=False)
    assert bad.returncode == 2


# --- expiry -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2030-01-31", "2030-01-31T00:00:00+00:00"),
        ("2030-01-31T12:30:00Z", "2030-01-31T12:30:00+00:00"),
        ("2030-01-31T12:30:00+02:00", "2030-01-31T10:30:00+00:00"),
        ("2030-01-31T12:30", "2030-01-31T12:30:00+00:00"),
    ],
)
def test_expires_at_parses_iso_8601(text: str, expected: str) -> None:
    ns = expiry.parse_when(text, 0)
    assert datetime.fromtimestamp(ns / 1e9, UTC).isoformat() == expected


def test_relative_times_and_durations() -> None:
    now = 1_000 * expiry.NS
    assert expiry.parse_when("+30d", now) == now + 30 * 86400 * expiry.NS
    assert expiry.parse_when("+1d12h", now) == now + 36 * 3600 * expiry.NS
    assert expiry.parse_duration("90d") == 90 * 86400
    assert expiry.parse_duration("2W") == 14 * 86400
    assert expiry.format_duration(90 * 86400) == "90d"
    assert expiry.format_duration(14 * 86400) == "2w"
    assert expiry.format_duration(93600) == "1d2h"
    for bad in ("0d", "-3d", "3", "3 days", "d", "", "1y"):
        with pytest.raises(UsageError):
            expiry.parse_duration(bad)
    for bad in ("tomorrow", "2030-13-01", "+", "+0d"):
        with pytest.raises(UsageError):
            expiry.parse_when(bad, now)


def test_expired_secrets_are_listed_flagged_and_still_served(
    cli: Cli, initialized_store: Path
) -> None:
    cli("secret", "create", "old", "--from-stdin", "--expires-at", "2001-02-03", input=b"o")
    cli("secret", "create", "fresh", "--from-stdin", "--expires-at", "+30d", input=b"f")
    cli("secret", "create", "plain", "--from-stdin", input=b"p")
    records = {r["ref"]: r for r in j(cli("secret", "ls", "--json"))}  # type: ignore[union-attr]
    assert records["$S:old"]["expires"] == "2001-02-03T00:00:00Z"
    assert records["$S:old"]["expired"] is True
    assert records["$S:fresh"]["expired"] is False and records["$S:fresh"]["expires"]
    assert records["$S:plain"]["expires"] is None and records["$S:plain"]["expired"] is False

    text = cli("secret", "ls").stdout.decode()
    assert "EXPIRED 2001-02-03T00:00:00Z" in text and "expires 20" in text
    due = j(cli("secret", "ls", "--due", "--json"))
    assert [r["ref"] for r in due] == ["$S:old"]  # type: ignore[union-attr]
    soon = j(cli("secret", "ls", "--due", "--within", "31d", "--json"))
    assert [r["ref"] for r in soon] == ["$S:fresh", "$S:old"]  # type: ignore[union-attr]

    got = cli("secret", "get", "old")
    assert got.stdout == b"o" and "warning: $S:old expired at 2001-02-03T00:00:00Z" in err(got)
    assert "warning" not in err(cli("secret", "get", "fresh"))


def test_a_new_version_clears_the_expiry_and_keeps_the_rotation_period(
    cli: Cli, initialized_store: Path
) -> None:
    cli(
        "secret", "create", "tok", "--from-stdin", "--expires-at", "2001-01-01",
        "--rotate-every", "1d", input=b"t1",
    )  # fmt: skip
    out = cli("secret", "rotate", "tok", "--from-stdin", "--json", input=b"t2")
    assert "the previous value of $S:tok had an expiry (2001-01-01T00:00:00Z)" in err(out)
    data = j(out)
    assert data["expires"] is None  # type: ignore[index]
    written = j(cli("secret", "ls", "--json"))[0]  # type: ignore[index]
    due = datetime.fromisoformat(written["rotation_due"].replace("Z", "+00:00"))
    updated = datetime.fromisoformat(written["updated"].replace("Z", "+00:00"))
    assert (due - updated).total_seconds() == pytest.approx(86400, abs=1)
    assert written["rotate_every"] == "1d" and written["due"] is False
    # Due within two days, not now.
    assert j(cli("secret", "ls", "--due", "--json")) == []
    assert len(j(cli("secret", "ls", "--due", "--within", "2d", "--json"))) == 1  # type: ignore[arg-type]

    # `secret expiry` changes the schedule without a new version.
    shown = cli("secret", "expiry", "tok", "--expires-at", "+2h", "--rotate-every", "none")
    assert b"rotate every: -" in shown.stdout and b"expires: 20" in shown.stdout
    state = j(cli("secret", "expiry", "tok", "--json"))
    assert state["version"] == 2 and state["rotate_every"] is None  # type: ignore[index]
    assert state["expires"] is not None and state["expired"] is False  # type: ignore[index]
    cli("secret", "expiry", "tok", "--expires-at", "none")
    assert j(cli("secret", "expiry", "tok", "--json"))["expires"] is None  # type: ignore[index]
    assert history(cli, "tok") == [1, 2]
    actions = [r["action"] for r in audit_lines(cli) if r["ref"] == "$S:tok"]
    assert actions == ["create", "rotate", "expiry", "expiry"]


def test_bad_schedule_values_are_refused_before_any_write(
    cli: Cli, initialized_store: Path
) -> None:
    bad = cli("secret", "create", "x", "--generate", "--expires-at", "soon", check=False)
    assert bad.returncode == 2 and "ISO 8601" in err(bad)
    bad = cli("secret", "create", "x", "--generate", "--rotate-every", "0d", check=False)
    assert bad.returncode == 2 and "more than 0" in err(bad)
    assert cli("secret", "ls", "--json").stdout.strip() == b"[]"
    within = cli("secret", "ls", "--within", "3d", check=False)
    assert within.returncode == 2

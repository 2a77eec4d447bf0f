"""`secret rm` keeps a removed secret for the store's rm-retention; `secret restore`
brings it back as it was; `rm --purge` keeps nothing."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from tests.conftest import Cli


def kept_rows(store: Path) -> int:
    with sqlite3.connect(store) as conn:
        return int(conn.execute("SELECT count(*) FROM meta WHERE k LIKE 'trash%'").fetchone()[0])


def test_rm_then_restore_brings_back_versions_owner_and_grants(
    cli: Cli, initialized_store: Path
) -> None:
    cli("secret", "set", "db", "--from-stdin", "--mode", "0440", input=b"v1")
    cli("secret", "set", "db", "--from-stdin", "--rotate-every", "30d", input=b"v2")
    cli("grant", "db", "--uid", "1000")
    removed = json.loads(cli("secret", "rm", "db", "--force", "--json").stdout)
    assert removed["action"] == "removed" and removed["recoverable_until"]
    assert cli("secret", "get", "db", check=False).returncode == 3
    assert cli("secret", "ls", "--json").stdout.strip() == b"[]"
    listed = json.loads(cli("secret", "restore", "--list", "--json").stdout)
    assert [(r["ref"], r["version"]) for r in listed] == [("$S:db", 2)]

    restored = json.loads(cli("secret", "restore", "db", "--json").stdout)
    assert restored["version"] == 2 and restored["mode"] == "0440"
    assert restored["rotate_every"] == "30d"
    assert cli("secret", "get", "db").stdout == b"v2"
    assert cli("secret", "get", "db", "--version", "1").stdout == b"v1"
    grants = json.loads(cli("permissions", "db", "--json").stdout)
    assert any(r.get("id") == 1000 for r in grants["readers"])
    assert kept_rows(initialized_store) == 0  # nothing left behind once restored
    # The numbering goes on: version 3 is new, never a reused number.
    assert json.loads(cli("secret", "set", "db", "--generate", "--json").stdout)["new_version"] == 3
    audit = cli("audit", "--json").stdout.decode()
    assert '"restore"' in audit


def test_purge_keeps_nothing(cli: Cli, initialized_store: Path) -> None:
    cli("secret", "set", "db", "--from-stdin", input=b"v1")
    cli("secret", "rm", "db")  # kept
    cli("secret", "set", "db", "--from-stdin", input=b"v2")
    purged = json.loads(cli("secret", "rm", "db", "--purge", "--json").stdout)
    assert purged["action"] == "purged" and purged["recoverable_until"] is None
    assert kept_rows(initialized_store) == 0  # the older removal went too
    gone = cli("secret", "restore", "db", check=False)
    assert gone.returncode == 3 and "--purge" in gone.stderr.decode()


def test_retention_is_configurable(cli: Cli, initialized_store: Path) -> None:
    cli("config", "set", "rm-retention", "0")
    assert json.loads(cli("config", "show", "--json").stdout)["rm-retention"] == "0"
    cli("secret", "set", "db", "--generate")
    out = cli("secret", "rm", "db")
    assert "nothing kept" in out.stderr.decode() and kept_rows(initialized_store) == 0
    cli("config", "set", "rm-retention", "1s")
    cli("secret", "set", "tmp", "--generate")
    cli("secret", "rm", "tmp")
    assert kept_rows(initialized_store) > 0
    time.sleep(1.1)  # past the retention: gone at the next rm or restore
    assert cli("secret", "restore", "tmp", check=False).returncode == 3
    assert kept_rows(initialized_store) == 0


def test_restore_refuses_a_name_written_again(cli: Cli, initialized_store: Path) -> None:
    cli("secret", "set", "db", "--from-stdin", input=b"old")
    cli("secret", "rm", "db")
    cli("secret", "set", "db", "--from-stdin", input=b"new")
    again = cli("secret", "restore", "db", check=False)
    assert again.returncode == 4 and "written again" in again.stderr.decode()
    assert cli("secret", "get", "db").stdout == b"new"
    assert cli("secret", "restore", "nope", check=False).returncode == 3
    assert cli("secret", "restore", check=False).returncode == 2


def test_restore_after_the_data_key_was_retired_is_refused_clearly(
    cli: Cli, initialized_store: Path
) -> None:
    cli("secret", "set", "db", "--generate")
    cli("secret", "rm", "db")
    cli("key", "rotate", "--reencrypt")  # retires generation 1: nothing live uses it
    refused = cli("secret", "restore", "db", check=False)
    assert refused.returncode == 4 and "retired its data key" in refused.stderr.decode()


def test_a_kept_copy_changed_in_the_store_is_not_restored(
    cli: Cli, initialized_store: Path
) -> None:
    cli("secret", "set", "db", "--from-stdin", "--mode", "0400", input=b"v1")
    cli("secret", "rm", "db")
    with sqlite3.connect(initialized_store) as conn:
        ((key, raw),) = conn.execute(
            "SELECT k, v FROM meta WHERE k LIKE 'trash/%' AND k NOT LIKE 'trash/%/%'"
        ).fetchall()
        tagged = json.loads(raw)
        record = json.loads(tagged["record"])
        record["owner"] = [None, None, 0o444]  # everyone may read, says the store
        tagged["record"] = json.dumps(record, sort_keys=True)
        conn.execute("UPDATE meta SET v = ? WHERE k = ?", (json.dumps(tagged).encode(), key))
    refused = cli("secret", "restore", "db", check=False)
    assert refused.returncode == 6 and "failed authentication" in refused.stderr.decode()
    assert cli("secret", "get", "db", check=False).returncode == 3

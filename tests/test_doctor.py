"""`secretfs doctor` (issue 5, item 6): each problem found, named, with what to do."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import pytest

from secretfs import doctor
from secretfs.daemon import Watcher
from secretfs.tree import Owner, Tree
from secretfs.vault import Vault
from tests import lifecycle_helpers as helpers
from tests.conftest import Cli


def by_name(report: doctor.Report) -> dict[str, doctor.Check]:
    return {c.name: c for c in report.checks}


@pytest.fixture
def store(initialized_store: Path) -> Path:
    helpers.write(initialized_store, {"db": b"v1", "@api/token": b"t"})
    helpers.write(initialized_store, {"db": b"v2"})
    return initialized_store


def test_a_healthy_store(cli: Cli, store: Path) -> None:
    proc = cli("doctor")
    text = proc.stdout.decode()
    assert proc.returncode == 0 and text.splitlines()[-1].startswith("healthy")
    for line in (
        "ok    /dev/fuse",
        "ok    fusermount3",
        "skip  allow_other",
        f"ok    store            {store} mode 0600",
        f"ok    key source       key file {store}.key mode 0600",
        "ok    integrity        PRAGMA integrity_check: ok",
        "ok    values           all 3 stored version(s) decrypt and verify",
        "ok    keys             data key generation 1 active; no key operation half done",
    ):
        assert line in text
    report = json.loads(cli("doctor", "--json").stdout)
    assert report["healthy"] is True
    # Other mounts on this machine (other tests') get checks of their own: not this store's.
    mine = [c for c in report["checks"] if not c["name"].startswith("mount ")]
    assert {c["status"] for c in mine} <= {"ok", "skip"}


def test_modes_that_let_others_read_fail_with_the_fix(cli: Cli, store: Path) -> None:
    key = Path(f"{store}.key")
    key.chmod(0o640)
    store.chmod(0o644)
    proc = cli("doctor", check=False)
    text = proc.stdout.decode()
    # Unlock fails too: a key file others may read is refused, as ssh refuses one.
    assert proc.returncode == 1 and "UNHEALTHY: 3 check(s) failed" in text
    assert f"FAIL  key source       {key} is mode 0640: others may read the key" in text
    assert f"fix: chmod 600 {key}" in text
    assert f"FAIL  store            {store} is mode 0644" in text


def test_wrong_key_and_missing_store(
    cli: Cli, cli_env: dict[str, str], store: Path, tmp_path: Path
) -> None:
    wrong = cli("doctor", "--json", env={**cli_env, "SECRETFS_KEY": "ab" * 32}, check=False)
    checks = {c["name"]: c for c in json.loads(wrong.stdout)["checks"]}
    assert wrong.returncode == 1
    assert checks["key source"]["detail"].startswith("key from $SECRETFS_KEY")
    assert checks["unlock"]["status"] == "fail"
    assert "$SECRETFS_KEY does not unlock" in checks["unlock"]["detail"]
    assert checks["integrity"]["status"] == "ok"  # checked without the key

    missing = cli("doctor", "--store", str(tmp_path / "nope.db"), check=False)
    assert missing.returncode == 1
    assert b"no store at" in missing.stdout and b"secretfs init" in missing.stdout


def test_a_damaged_value_is_named(store: Path) -> None:
    with helpers.raw_db(store) as db:
        sid, version, blob = db.execute(
            "SELECT v.secret_id, v.version, v.ciphertext FROM versions v JOIN secrets s"
            " ON s.id = v.secret_id WHERE s.name = 'token'"
        ).fetchone()
        db.execute(
            "UPDATE versions SET ciphertext = ? WHERE secret_id = ? AND version = ?",
            (helpers.flip(blob), sid, version),
        )
    report = doctor.run(store)
    values = by_name(report)["values"]
    assert not report.healthy and values.status == "fail"
    assert (
        "1 of 3 version(s) do not decrypt" in values.detail and "$S:@api/token v1" in values.detail
    )
    assert values.fix and "backup" in values.fix


def test_a_half_done_reencryption_is_a_warning(store: Path) -> None:
    from secretfs import keyrotation
    from secretfs.vault import Vault

    vault = Vault.open(store)
    try:
        keyrotation.start_reencryption(vault, keyrotation.Outcome())
    finally:
        vault.close()
    report = doctor.run(store)
    check = by_name(report)["re-encryption"]
    assert report.healthy and check.status == "warn"
    assert "3 version(s) left" in check.detail
    assert check.fix == "run `secretfs key rotate --reencrypt` to finish it"


def test_expired_secrets_and_stray_key_files_are_warnings(store: Path) -> None:
    from secretfs.refs import parse_ref
    from secretfs.vault import Vault

    vault = Vault.open(store)
    try:
        vault.set_schedule(parse_ref("db"), expires_ns=1)
    finally:
        vault.close()
    stray = Path(f"{store}.key.next")
    stray.write_text("00" * 32)
    report = by_name(doctor.run(store))
    assert report["expiry"].status == "warn" and "$S:db" in report["expiry"].detail
    assert report["key files"].status == "warn" and str(stray) in report["key files"].detail


def test_allow_other_for_a_user_needs_user_allow_other() -> None:
    with tempfile.TemporaryDirectory() as where:
        os.chmod(where, 0o755)
        conf = Path(where) / "fuse.conf"
        conf.write_text("# user_allow_other\nmount_max = 1000\n")
        conf.chmod(0o644)

        def as_a_user() -> doctor.Check:
            os.seteuid(65534)  # for the check only: it looks at the effective uid
            try:
                return doctor._allow_other(True, conf)
            finally:
                os.seteuid(0)

        missing = as_a_user()
        assert missing.status == "fail", missing
        assert missing.fix == f"add a line `user_allow_other` to {conf} (as root)"
        conf.write_text("user_allow_other  # for containers\n")
        assert as_a_user().status == "ok"
        conf.chmod(0o600)
        unreadable = as_a_user()
        assert unreadable.status == "fail" and "cannot read" in unreadable.detail
        assert doctor._allow_other(True, conf).detail == "root may mount with allow_other"
        assert doctor._allow_other(False, conf).status == "skip"


def _store_mistyped(store: Path, table: str, column: str, value: object, where: str) -> None:
    """Put a value of the wrong type in a STRICT table, as someone who can write the file
    (not through SQLite's checks) can."""
    with helpers.raw_db(store) as db:
        (sql,) = db.execute("SELECT sql FROM sqlite_schema WHERE name = ?", (table,)).fetchone()
        db.execute("PRAGMA writable_schema = ON")
        loose = sql.replace(") STRICT", ")")
        db.execute("UPDATE sqlite_schema SET sql = ? WHERE name = ?", (loose, table))
    with helpers.raw_db(store) as db:
        db.execute(f"UPDATE {table} SET {column} = ? WHERE {where}", (value,))
        db.execute("PRAGMA writable_schema = ON")
        db.execute("UPDATE sqlite_schema SET sql = ? WHERE name = ?", (sql, table))


@pytest.mark.parametrize(
    ("table", "column", "value", "where", "command"),
    [
        ("secrets", "version", "two", "name = 'token'", ("secret", "ls")),
        ("versions", "ciphertext", "text", "version = 1", ("secret", "get", "@api/token")),
        ("scopes", "uid", "root", "scope = '@api'", ("permissions", "@api")),
    ],
)
def test_a_row_of_the_wrong_type_is_a_damaged_record_named(
    cli: Cli,
    store: Path,
    table: str,
    column: str,
    value: object,
    where: str,
    command: tuple[str, ...],
) -> None:
    cli("secret", "chown", "@api", "0")
    _store_mistyped(store, table, column, value, where)

    refused = cli(*command, check=False)
    err = refused.stderr.decode()
    assert refused.returncode == 6, err
    assert f"of table {table} is damaged (fields are missing or of the wrong type)" in err
    assert "`secretfs doctor` checks every record" in err and "Traceback" not in err
    assert value not in err  # a record's content is never shown

    proc = cli("doctor", "--json", check=False)
    failed = {c["name"]: c for c in json.loads(proc.stdout)["checks"] if c["status"] == "fail"}
    assert proc.returncode == 1 and "Traceback" not in proc.stderr.decode()
    assert f"non-{'BLOB' if column == 'ciphertext' else 'INTEGER'} value" in str(failed)


def test_a_mount_that_meets_a_damaged_row_says_it_is_stale_until_it_reads_again(
    store: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watch loop's poll: the tree stays as last read (the store cannot be read
    whole), the status file says why and since when, and the log says it once."""
    vault = Vault.open(store)
    watcher = Watcher(vault, Tree(Owner(0, 0), vault.read_version, time.time_ns()))
    try:
        watcher.verify_store()
        watcher.refresh()
        assert watcher.status()["connected"] is True
        helpers.write(store, {"new": b"n"})
        _store_mistyped(store, "secrets", "version", "two", "name = 'token'")
        for _ in range(3):
            watcher.poll()
        status = watcher.status()
        assert status["connected"] is False and status["stale_since"]
        assert "cannot read the store's changes: row " in str(status["problem"])
        assert "of table secrets is damaged" in str(status["problem"])
        assert "new" not in {m.name for m in watcher.tree.known()}  # the last state read
        logged = [r for r in caplog.records if "reading store changes" in r.getMessage()]
        assert len(logged) == 1  # once per reason, not once per poll
        # Requests (another uid looking up missing names, endlessly) do not read it again.
        reads = []
        changes_since = vault.backend.changes_since
        monkeypatch.setattr(
            vault.backend, "changes_since", lambda seq: reads.append(seq) or changes_since(seq)
        )
        assert not any(watcher.catch_up() for _ in range(100)) and reads == []
        monkeypatch.setattr(vault.backend, "changes_since", changes_since)

        _store_mistyped(store, "secrets", "version", 1, "name = 'token'")  # repaired
        watcher.poll()
        status = watcher.status()
        assert status["connected"] is True and status.get("problem") is None
        assert "new" in {m.name for m in watcher.tree.known()}
    finally:
        vault.close()

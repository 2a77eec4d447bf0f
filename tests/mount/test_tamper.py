"""Attacks on the store through a real mount and other real uids (issue 10, items 2-4):
fingerprints that say nothing across secrets, access rows changed with sqlite3 by someone
without the key, and rollbacks of a secret's version."""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.mount.conftest import Mount, probe, wait_for


@pytest.fixture
def shared(open_dir: Path, mount_factory: Callable[..., Mount]) -> Mount:
    """allow_other, reachable by other uids; @pub readable by all, @svc by its owner."""
    secrets = {"@svc/hidden": b"same-value", "@pub/visible": b"same-value", "@svc/db": b"pw"}
    m = mount_factory("-o", "allow_other", secrets=secrets, parent=open_dir)
    m.cli("secret", "chmod", "@pub", "0444")
    m.cli("secret", "chmod", "@svc", "0400")
    wait_for(lambda: probe(1000, 1000, "read", m.path / "@pub/visible")[0] == "ok")
    return m


def test_a_fingerprint_is_no_equality_oracle_across_secrets(shared: Mount) -> None:
    m = shared
    visible, hidden = m.path / "@pub/visible", m.path / "@svc/hidden"
    assert probe(1000, 1000, "read", hidden) == ("EACCES", None)
    status, fp_visible = probe(1000, 1000, "fingerprint", visible)
    assert status == "ok" and len(fp_visible) == 32
    # Warm the kernel's caches as an authorised reader would, then try as uid 1000.
    assert hidden.read_bytes() == b"same-value"
    status, fp_hidden = probe(1000, 1000, "fingerprint", hidden)
    assert status != "ok" or fp_hidden != fp_visible
    # The same value in two secrets: two fingerprints, even for who may read both.
    fp_root = os.getxattr(hidden, "user.secretfs.fingerprint").decode()
    assert fp_root != fp_visible
    # A new value of the same secret still changes its fingerprint.
    m.cli("secret", "set", "@pub/visible", "--from-stdin", input=b"other")
    wait_for(lambda: probe(1000, 1000, "fingerprint", visible)[1] not in (fp_visible, None))


def sql(m: Mount, *statements: str) -> None:
    """Edit the store as someone who can write the file but has no key (sqlite3)."""
    conn = sqlite3.connect(m.store, isolation_level=None)
    try:
        conn.execute("PRAGMA foreign_keys = OFF")
        conn.execute("BEGIN IMMEDIATE")
        for statement in statements:
            conn.execute(statement)
        # Bump the counters the daemon follows, as an attacker who wants it seen would.
        (seq,) = conn.execute("SELECT v FROM meta WHERE k = 'seq'").fetchone()
        bumped = str(int(seq) + 1).encode()
        for key in ("seq", "access_seq"):
            conn.execute(
                "INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = ?",
                (key, bumped, bumped),
            )
        conn.execute("COMMIT")
    finally:
        conn.close()


def bump_secret(name: str) -> str:
    return f"UPDATE secrets SET seq = (SELECT max(seq) FROM secrets) + 1 WHERE name = '{name}'"


def tamper_records(m: Mount) -> list[dict[str, Any]]:
    records = json.loads(m.cli("audit", "--json").stdout)
    return [r for r in records if r["outcome"] == "tamper"]


def test_an_inserted_grant_row_gives_nothing(shared: Mount) -> None:
    m = shared
    hidden = m.path / "@svc/hidden"
    sql(
        m,
        "INSERT INTO grants (scope, name, kind, principal, created_ns, seq)"
        " VALUES ('@svc', 'hidden', 'uid', 1000, 1, 1)",
    )
    # The mount saw the change (a later legitimate grant shows it is current) ...
    m.cli("grant", "@svc/db", "--uid", "1000")
    wait_for(lambda: probe(1000, 1000, "read", m.path / "@svc/db") == ("ok", b"pw"), timeout=3)
    # ... and still refuses the forged one, and says so.
    assert probe(1000, 1000, "read", hidden) == ("EACCES", None)
    wait_for(lambda: any("@svc/hidden" in (r["ref"] or "") for r in tamper_records(m)), 3)
    doctor = m.cli("doctor", check=False)
    assert doctor.returncode == 6
    assert b"grant uid 1000 on @svc/hidden" in doctor.stdout
    listing = m.cli("permissions", "@svc/hidden", check=False)
    assert listing.returncode == 6 and b"grant" in listing.stderr


def test_a_changed_mode_or_uid_column_gives_nothing(shared: Mount) -> None:
    m = shared
    hidden = m.path / "@svc/hidden"
    sql(m, "UPDATE secrets SET mode = 292, uid = 1000 WHERE name = 'hidden'", bump_secret("hidden"))
    m.cli("secret", "set", "@svc/db", "--from-stdin", input=b"pw2")  # the mount is current
    wait_for(lambda: (m.path / "@svc/db").read_bytes() == b"pw2", timeout=3)
    assert probe(1000, 1000, "read", hidden)[0] in ("EACCES", "EIO")
    assert probe(1001, 1001, "read", hidden)[0] in ("EACCES", "EIO")
    with pytest.raises(OSError):  # not even its owner reads a row that fails
        hidden.read_bytes()
    out = m.cli("secret", "get", "@svc/hidden", check=False)
    assert out.returncode == 6 and b"@svc/hidden" in out.stderr and b"same-value" not in out.stdout
    doctor = m.cli("doctor", check=False)
    assert doctor.returncode == 6 and b"@svc/hidden" in doctor.stdout
    ls = m.cli("secret", "ls", check=False)
    assert ls.returncode == 6


def test_a_deleted_scope_row_does_not_widen_access(shared: Mount) -> None:
    m = shared
    secret = m.path / "@svc/db"
    m.cli("secret", "chmod", "@svc", "0400")
    # Deleting @svc's 0400 defaults would leave the mount's default (readable by more).
    m.cli("secret", "chown", "@svc", "0:0")
    m.cli("secret", "chmod", "@pub/visible", "0440")
    sql(m, "DELETE FROM scopes WHERE scope = '@svc'")
    wait_for(lambda: any(r["ref"] == "@svc" for r in tamper_records(m)), timeout=3)
    assert probe(1000, 1000, "read", secret)[0] in ("EACCES", "EIO")
    assert os.stat(secret).st_mode & 0o777 == 0
    doctor = m.cli("doctor", check=False)
    assert doctor.returncode == 6 and b"scope @svc" in doctor.stdout


def test_a_rolled_back_version_is_refused(shared: Mount) -> None:
    m = shared
    db = m.path / "@svc/db"
    m.cli("secret", "set", "@svc/db", "--from-stdin", input=b"pw2")
    wait_for(lambda: db.read_bytes() == b"pw2", timeout=3)
    # Point the secret back to version 1 (its tag cannot follow without the key).
    sql(m, "UPDATE secrets SET version = 1 WHERE name = 'db'", bump_secret("db"))
    m.cli("secret", "set", "@pub/visible", "--from-stdin", input=b"next")
    wait_for(lambda: probe(1000, 1000, "read", m.path / "@pub/visible") == ("ok", b"next"), 3)
    with pytest.raises(OSError):
        db.read_bytes()
    assert m.cli("doctor", check=False).returncode == 6
    assert m.cli("secret", "get", "@svc/db", check=False).returncode == 6


def test_a_replayed_older_authentic_row_is_refused(shared: Mount) -> None:
    m = shared
    db = m.path / "@svc/db"
    conn = sqlite3.connect(m.store)
    (sid,) = conn.execute("SELECT id FROM secrets WHERE name = 'db'").fetchone()
    (old_tag,) = conn.execute("SELECT v FROM meta WHERE k = ?", (f"mac/s/{sid}",)).fetchone()
    conn.close()
    m.cli("secret", "set", "@svc/db", "--from-stdin", input=b"pw2")
    wait_for(lambda: db.read_bytes() == b"pw2", timeout=3)
    # The old row AND its old (authentic) tag: each verifies alone, not with the rest.
    sql(
        m,
        "UPDATE secrets SET version = 1 WHERE name = 'db'",
        bump_secret("db"),
        f"UPDATE meta SET v = x'{bytes(old_tag).hex()}' WHERE k = 'mac/s/{sid}'",
    )
    m.cli("secret", "set", "@pub/visible", "--from-stdin", input=b"next")
    wait_for(lambda: probe(1000, 1000, "read", m.path / "@pub/visible") == ("ok", b"next"), 3)
    with pytest.raises(OSError):  # the mount saw version 2: an older one is a rollback
        db.read_bytes()
    doctor = m.cli("doctor", check=False)
    assert doctor.returncode == 6 and b"digest" in doctor.stdout


def test_a_deleted_newest_version_row_is_eio_and_audited(shared: Mount) -> None:
    m = shared
    db = m.path / "@svc/db"
    m.cli("secret", "set", "@svc/db", "--from-stdin", input=b"pw2")
    wait_for(lambda: db.read_bytes() == b"pw2", timeout=3)
    sql(
        m,
        "DELETE FROM versions WHERE version = 2 AND secret_id ="
        " (SELECT id FROM secrets WHERE name = 'db')",
    )
    m.cli("secret", "set", "@pub/visible", "--from-stdin", input=b"next")  # other writers
    wait_for(lambda: probe(1000, 1000, "read", m.path / "@pub/visible") == ("ok", b"next"), 3)

    def eio() -> bool:
        try:
            db.read_bytes()
        except OSError as exc:
            return exc.errno == errno.EIO
        return False

    wait_for(eio, timeout=3)
    wait_for(lambda: any("@svc/db" in (r["ref"] or "") for r in tamper_records(m)), 3)
    assert m.cli("doctor", check=False).returncode == 6


def test_a_store_restored_from_an_older_copy_is_not_served(
    open_dir: Path, mount_factory: Callable[..., Mount], tmp_path: Path
) -> None:
    m = mount_factory(secrets={"db": b"v1"}, parent=open_dir)
    m.cli("umount", str(m.path))
    # The daemon's last audit batch and checkpoint go to the file it has open: let it
    # finish before the file is overwritten (else its WAL lands in the restored copy).
    wait_for(lambda: not m.daemon_pids(), timeout=5)
    backup = tmp_path / "backup.db"
    shutil.copy(m.store, backup)
    m.cli("secret", "set", "db", "--from-stdin", input=b"v2")  # this host saw serial N+1
    shutil.copy(backup, m.store)
    for leftover in ("-wal", "-shm"):
        Path(f"{m.store}{leftover}").unlink(missing_ok=True)
    m.cli("mount", str(m.path))
    with pytest.raises(OSError) as info:
        (m.path / "deployment/db").read_bytes()
    assert info.value.errno == errno.EIO
    status = json.loads((m.path / ".secretfs-status").read_bytes())
    assert "older than this host last saw" in status["integrity"]
    m.cli("umount", str(m.path))
    assert m.cli("doctor", "--accept-restore").returncode == 0
    m.cli("mount", str(m.path))
    assert (m.path / "deployment/db").read_bytes() == b"v1"


def test_a_replayed_revoked_grant_gives_nothing(shared: Mount) -> None:
    m = shared
    hidden = m.path / "@svc/hidden"
    m.cli("grant", "@svc/hidden", "--uid", "1000")
    wait_for(lambda: probe(1000, 1000, "read", hidden) == ("ok", b"same-value"), timeout=3)
    conn = sqlite3.connect(m.store)
    grant = conn.execute(
        "SELECT scope, name, kind, principal, created_ns, seq FROM grants"
    ).fetchone()
    tags = conn.execute("SELECT k, v FROM meta WHERE k LIKE 'mac/g/%'").fetchall()
    conn.close()
    m.cli("revoke", "@svc/hidden", "--uid", "1000")
    wait_for(lambda: probe(1000, 1000, "read", hidden) == ("EACCES", None), timeout=3)
    # Put the old row back with its old, authentic tag: each verifies, the set does not.
    sql(
        m,
        "INSERT INTO grants (scope, name, kind, principal, created_ns, seq) VALUES"
        f" ('{grant[0]}', '{grant[1]}', '{grant[2]}', {grant[3]}, {grant[4]}, {grant[5]})",
        *(f"INSERT INTO meta (k, v) VALUES ('{k}', x'{bytes(v).hex()}')" for k, v in tags),
    )
    wait_for(
        lambda: any(r["detail"] and "do not add up" in r["detail"] for r in tamper_records(m)), 3
    )
    assert probe(1000, 1000, "read", hidden)[0] in ("EACCES", "EIO")
    doctor = m.cli("doctor", check=False)
    assert doctor.returncode == 6 and b"replayed" in doctor.stdout


def test_a_client_key_added_without_the_key_is_never_sealed_to(shared: Mount) -> None:
    """A relay with a sealed-only grant that can also write the store file adds its own
    client key (or un-revokes one): nothing is ever sealed to it (mount, CLI, doctor)."""
    import base64

    from nacl.public import PrivateKey

    m = shared
    m.cli("grant", "@svc/hidden", "--uid", "1000", "--sealed-only")
    legit = PrivateKey.generate()
    legit_id = (
        m.cli("client-key", "add", base64.b64encode(bytes(legit.public_key)).decode())
        .stdout.decode()
        .strip()
    )
    sealed = m.path / ".sealed" / legit_id / "@svc/hidden"
    wait_for(lambda: probe(1000, 1000, "read", sealed)[0] == "ok")
    own = PrivateKey.generate()
    forged_id = "ck_" + "ab" * 16
    sql(
        m,
        "INSERT INTO client_keys (key_id, public_key, label, owner_uid, created_ns, seq)"
        f" VALUES ('{forged_id}', X'{bytes(own.public_key).hex()}', 'relay', 1000, 1, 1)",
    )
    m.cli("grant", "@svc/db", "--uid", "1001")  # the mount is current after this
    wait_for(lambda: probe(1001, 1001, "read", m.path / "@svc/db")[0] == "ok", timeout=3)
    assert probe(1000, 1000, "read", m.path / ".sealed" / forged_id / "@svc/hidden")[0] in (
        "ENOENT",
        "EACCES",
    )
    wait_for(lambda: any(forged_id in (r["ref"] or "") for r in tamper_records(m)), 3)
    # The CLI refuses to seal to it and lists it as failing; doctor names it.
    got = m.cli("secret", "get", "@svc/hidden", "--sealed-to", forged_id, check=False)
    assert got.returncode != 0 and b"same-value" not in got.stdout
    listing = m.cli("client-key", "ls", check=False)
    assert listing.returncode == 6 and forged_id.encode() in listing.stderr
    doctor = m.cli("doctor", check=False)
    assert doctor.returncode == 6 and forged_id.encode() in doctor.stdout

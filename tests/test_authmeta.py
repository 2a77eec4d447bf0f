"""Authenticated access metadata and rollback marks (secretfs/authmeta.py), on real
SQLite files edited with sqlite3 and a real etcd cluster edited through its gateway."""

from __future__ import annotations

import base64
import json
import shutil
import sqlite3
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from secretfs.refs import parse_ref, parse_scope
from secretfs.vault import Vault
from tests.conftest import Cli
from tests.etcd_cluster import EtcdCluster
from tests.stores import Store, new_store

# (table, key column, authenticated columns): every column that decides who reads.
AUTHENTICATED = {
    "secrets": ("id", ("scope", "name", "version", "deleted", "uid", "gid", "mode")),
    "scopes": ("scope", ("scope", "uid", "gid", "mode")),
    "grants": ("id", ("scope", "name", "kind", "principal", "created_ns")),
    "meta": ("k", ("v",)),
}


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with secrets, owners, scope defaults and grants (built once)."""
    import os

    base = tmp_path_factory.mktemp("seeded")
    path = base / "store.db"
    os.environ.pop("SECRETFS_KEY", None)
    Vault.init(path)
    vault = Vault.open(path)
    try:
        vault.set(parse_ref("@api/token"), b"t1", uid=1000, gid=1000, mode=0o440)
        vault.set(parse_ref("@api/token"), b"t2")
        vault.set(parse_ref("db"), b"pw")
        vault.set_owner(
            parse_scope("@api"), {"uid": 1001, "gid": 1001, "mode": 0o400}, action="chown"
        )
        vault.grant(parse_ref("db"), "uid", 1002)
        vault.grant(parse_scope("@api"), "gid", 3000)
        assert vault.verify_all() == []
    finally:
        vault.close()
    return path


def _copy(seeded: Path, dest: Path) -> Path:
    for src in seeded.parent.iterdir():
        if src.name.startswith("store.db") and not src.name.endswith(("-wal", "-shm")):
            shutil.copy(src, dest / src.name)
    return dest / "store.db"


def _change_one_byte(value: object, index: int, delta: int) -> object:
    """`value` with one byte of its stored form changed."""
    if isinstance(value, int):
        raw = bytearray(value.to_bytes(8, "big", signed=True))
        raw[index % 8] ^= delta
        return int.from_bytes(raw, "big", signed=True)
    raw = bytearray(value.encode() if isinstance(value, str) else bytes(value))  # type: ignore[arg-type]
    assume(raw)
    raw[index % len(raw)] ^= delta
    if isinstance(value, str):
        try:
            return raw.decode()
        except UnicodeDecodeError:
            assume(False)
    return bytes(raw)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    table=st.sampled_from(sorted(AUTHENTICATED)),
    row=st.integers(0, 50),
    column=st.integers(0, 10),
    index=st.integers(0, 200),
    delta=st.integers(1, 255),
)
def test_any_single_byte_change_to_an_authenticated_row_is_detected(
    seeded: Path,
    tmp_path_factory: pytest.TempPathFactory,
    table: str,
    row: int,
    column: int,
    index: int,
    delta: int,
) -> None:
    path = _copy(seeded, tmp_path_factory.mktemp("flip"))
    key, columns = AUTHENTICATED[table]
    col = columns[column % len(columns)]
    conn = sqlite3.connect(path)
    where = " WHERE k LIKE 'mac/%' OR k = 'auth_state'" if table == "meta" else ""
    rows = conn.execute(f"SELECT {key}, {col} FROM {table}{where} ORDER BY {key}").fetchall()
    assume(rows)
    ident, value = rows[row % len(rows)]
    assume(value is not None)
    changed = _change_one_byte(value, index, delta)
    try:
        with conn:
            conn.execute(f"UPDATE {table} SET {col} = ? WHERE {key} = ?", (changed, ident))
    except sqlite3.IntegrityError:
        assume(False)  # the schema itself refuses it (a CHECK or UNIQUE constraint)
    finally:
        conn.close()
    vault = Vault.open(path, readonly=True)
    try:
        assert vault.verify_all(), f"{table}.{col} of {ident}: {value!r} -> {changed!r}"
    finally:
        vault.backend.close()


def test_deleting_any_row_is_detected(seeded: Path, tmp_path: Path) -> None:
    for table, key in (("grants", "id"), ("scopes", "scope"), ("secrets", "id")):
        (tmp_path / table).mkdir()
        path = _copy(seeded, tmp_path / table)
        conn = sqlite3.connect(path)
        with conn:
            conn.execute("PRAGMA foreign_keys = OFF")
            conn.execute(f"DELETE FROM {table} WHERE {key} = (SELECT max({key}) FROM {table})")
        conn.close()
        vault = Vault.open(path, readonly=True)
        try:
            assert vault.verify_all(), table
        finally:
            vault.backend.close()


def test_the_mount_and_doctor_judge_access_rows_alike(seeded: Path, tmp_path: Path) -> None:
    """One check (`verify_access`) for both: a forged grant is left out, a deleted scope
    row is served as mode 0, and the sum no longer adds up."""
    path = _copy(seeded, tmp_path)
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(
            "INSERT INTO grants (scope, name, kind, principal, created_ns, seq)"
            " VALUES ('deployment', 'db', 'uid', 4000, 1, 1)"
        )
        conn.execute("DELETE FROM scopes WHERE scope = '@api'")
    conn.close()
    vault = Vault.open(path, readonly=True)
    try:
        b, auth = vault.backend, vault.auth
        check = auth.verify_access(
            b.list_scope_meta(),
            b.list_grants(),
            b.list_client_keys(),
            b.meta_scan("mac/"),
            auth.keyring.read_state(b),
        )
        assert sorted(g.principal for g in check.grants) == [1002, 3000]
        assert [(s.scope, s.mode) for s in check.scopes] == [("@api", 0)]
        assert not check.adds_up
        forged = next(p for p in check.problems if p.kind == "grant")
        assert forged.ref == "deployment/db" and "uid 4000" in str(forged)
        doctor = vault.verify_all(versions=False)
        assert set(check.problems) < set(doctor)
        assert any("do not add up" in p.detail for p in doctor)
    finally:
        b.close()


def test_deleting_the_newest_version_row_is_detected(cli: Cli, initialized_store: Path) -> None:
    cli("secret", "set", "db", "--from-stdin", input=b"v1")
    cli("secret", "set", "db", "--from-stdin", input=b"v2")
    conn = sqlite3.connect(initialized_store)
    with conn:
        conn.execute("DELETE FROM versions WHERE version = 2")
    conn.close()
    doctor = cli("doctor", check=False)
    assert doctor.returncode == 6 and b"current version 2 is missing" in doctor.stdout


def test_an_old_store_is_authenticated_once_and_audited(cli: Cli, initialized_store: Path) -> None:
    cli("secret", "set", "a", "--from-stdin", input=b"same")
    cli("secret", "set", "b", "--from-stdin", input=b"same")
    cli("grant", "a", "--uid", "1000")
    seen = initialized_store.with_name(".store.db.seen")
    assert seen.exists() and seen.stat().st_mode & 0o777 == 0o600

    def strip() -> None:  # what a store written before this change holds
        conn = sqlite3.connect(initialized_store)
        with conn:
            conn.execute(
                "DELETE FROM meta WHERE k LIKE 'mac/%' OR k IN ('auth_state', 'fingerprint_scheme')"
            )
            conn.execute("UPDATE versions SET fingerprint = 'old'")
        conn.close()

    # On a host that saw it authenticated, missing tags are tampering, not an old store.
    strip()
    assert cli("secret", "ls", check=False).returncode == 6
    assert cli("doctor", check=False).returncode == 6
    # A store this host never saw (no record beside the key file): authenticated once.
    strip()
    seen.unlink()
    listing = json.loads(cli("secret", "ls", "--json").stdout)
    prints = {m["ref"]: m["fingerprint"] for m in listing}
    assert prints["$S:a"] != prints["$S:b"] and "old" not in prints.values()
    audit = json.loads(cli("audit", "--json").stdout)
    assert [r["action"] for r in audit].count("auth-migrate") == 1
    assert cli("doctor").returncode == 0


def test_a_whole_store_restore_is_reported_and_can_be_accepted(
    cli: Cli, initialized_store: Path, tmp_path: Path
) -> None:
    cli("secret", "set", "db", "--from-stdin", input=b"v1")
    backup = tmp_path / "backup.db"
    shutil.copy(initialized_store, backup)
    cli("secret", "set", "db", "--from-stdin", input=b"v2")
    cli("secret", "get", "db")  # this host has seen the newer state
    shutil.copy(backup, initialized_store)
    for leftover in ("-wal", "-shm"):
        Path(f"{initialized_store}{leftover}").unlink(missing_ok=True)
    out = cli("secret", "get", "db", check=False)
    assert out.returncode == 6 and b"older than this host last saw" in out.stderr
    doctor = cli("doctor", check=False)
    assert doctor.returncode == 6 and b"--accept-restore" in doctor.stdout
    assert cli("doctor", "--accept-restore").returncode == 0
    assert cli("secret", "get", "db").stdout == b"v1"
    audit = json.loads(cli("audit", "--json").stdout)
    assert any(r["action"] == "accept-restore" for r in audit)


def test_a_forged_grant_on_etcd_is_detected(etcd_cluster: EtcdCluster, tmp_path: Path) -> None:
    store: Store = new_store("etcd", tmp_path, etcd_cluster)
    assert store.cluster is not None
    store.cli("secret", "set", "db", "--from-stdin", input=b"v1")
    store.cli("grant", "db", "--uid", "1000")
    assert store.cli("permissions", "db").returncode == 0
    prefix = store.url.rsplit("/", 1)[1]
    key, raw = next((k, v) for k, v in store.cluster.dump(prefix) if b"/d/g/" in k)
    record = json.loads(raw)
    record["principal"] = 1001
    forged = key.replace(b"\x001000", b"\x001001")
    httpx.post(
        f"http://{store.cluster.endpoints[0]}/v3/kv/put",
        json={
            "key": base64.b64encode(forged).decode(),
            "value": base64.b64encode(json.dumps(record).encode()).decode(),
        },
        timeout=5,
    ).raise_for_status()
    out = store.cli("permissions", "db", check=False)
    assert out.returncode == 6 and b"grant uid 1001" in out.stderr
    doctor = store.cli("doctor", check=False)
    assert doctor.returncode == 6 and b"grant uid 1001 on deployment/db" in doctor.stdout


def test_a_row_verified_once_is_checked_again_when_its_tag_or_row_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """secret_ok remembers a row that verified (a mount's load checks each twice), but
    only that very row with that very tag: another tag, or a changed row, is checked."""
    import dataclasses

    from secretfs.authmeta import secret_tag_key

    monkeypatch.delenv("SECRETFS_KEY", raising=False)
    path = tmp_path / "store.db"
    Vault.init(path)
    vault = Vault.open(path)
    try:
        vault.set(parse_ref("a"), b"1")
        vault.set(parse_ref("b"), b"2")
        auth, backend = vault.auth, vault.backend
        a = backend.get_meta(parse_ref("a").scope.key, "a")
        b = backend.get_meta(parse_ref("b").scope.key, "b")
        assert a is not None and b is not None
        tags = backend.meta_scan("mac/s/")
        assert auth.secret_ok(a, tags) and auth.secret_ok(a, tags)
        swapped = dict(tags, **{secret_tag_key(a.secret_id): tags[secret_tag_key(b.secret_id)]})
        assert not auth.secret_ok(a, swapped)
        assert not auth.secret_ok(dataclasses.replace(a, mode=0o777), tags)
        assert not auth.secret_ok(a, {})
        assert auth.secret_ok(a, tags)
    finally:
        vault.close()

"""The store through the Vault API, on real SQLite files: keys, versions, tamper, no plaintext."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import secrets
import sqlite3
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from secretfs import crypto, keys
from secretfs.errors import (
    ConflictError,
    IntegrityError,
    KeySourceError,
    NotFoundError,
    StoreError,
    TooLargeError,
    UsageError,
)
from secretfs.refs import Ref, parse_ref
from secretfs.vault import DEFAULT_MAX_VALUE_BYTES, Vault, WriteMode
from tests.lifecycle_helpers import raw_db

MIB = 1024 * 1024


def R(text: str) -> Ref:
    return parse_ref(text)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def key_path(store: Path) -> Path:
    return store.with_name(store.name + ".key")


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file in the store's directory with its exact bytes."""
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def flip_byte(blob: bytes, index: int = -1) -> bytes:
    data = bytearray(blob)
    data[index] ^= 0x01
    return bytes(data)


def secret_id(store: Path, scope: str, name: str) -> int:
    with raw_db(store) as db:
        row = db.execute("SELECT id FROM secrets WHERE scope = ? AND name = ?", (scope, name))
        return int(row.fetchone()[0])


@dataclass(frozen=True)
class _CheapKdf(crypto.KdfParams):
    """Real Argon2id, small cost: for tests that derive a KEK from a password many times."""

    time_cost: int = 1
    memory_kib: int = 64
    parallelism: int = 1


@pytest.fixture
def cheap_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(crypto, "KdfParams", _CheapKdf)


@pytest.fixture
def vault(store_path: Path) -> Iterator[Vault]:
    """A key-file store, opened."""
    Vault.init(store_path)
    v = Vault.open(store_path)
    try:
        yield v
    finally:
        v.close()


# --- init: files and modes ----------------------------------------------------------


def test_init_writes_key_file_and_store_0600(store_path: Path) -> None:
    source = Vault.init(store_path)
    assert source.kind == keys.KIND_KEY_FILE
    assert source.description == str(key_path(store_path))
    assert mode_of(store_path) == 0o600
    assert mode_of(key_path(store_path)) == 0o600
    assert len(crypto.parse_key_text(key_path(store_path).read_text())) == 32
    # No temporary files left behind.
    assert sorted(p.name for p in store_path.parent.iterdir()) == ["store.db", "store.db.key"]


def test_modes_are_0600_even_under_umask_0_and_wal_shm_too(tmp_path: Path) -> None:
    store = tmp_path / "new-dir" / "store.db"
    old = os.umask(0)
    try:
        Vault.init(store)
        v = Vault.open(store)
        try:
            v.set(R("db"), b"value")
            wal, shm = Path(f"{store}-wal"), Path(f"{store}-shm")
            assert wal.exists() and shm.exists(), "a write with the store open leaves a WAL"
            for path in (store, key_path(store), wal, shm):
                assert mode_of(path) == 0o600, path
        finally:
            v.close()
    finally:
        os.umask(old)
    assert mode_of(store.parent) == 0o700


def test_init_refuses_an_existing_store(store_path: Path) -> None:
    Vault.init(store_path)
    before = snapshot(store_path.parent)
    with pytest.raises(StoreError, match="already exists"):
        Vault.init(store_path)
    assert snapshot(store_path.parent) == before


def test_init_refuses_an_existing_password_store_without_leaving_a_key_file(
    store_path: Path, monkeypatch: pytest.MonkeyPatch, cheap_kdf: None
) -> None:
    monkeypatch.setenv("SECRETFS_PASSWORD", "pw")
    Vault.init(store_path)
    monkeypatch.delenv("SECRETFS_PASSWORD")
    before = snapshot(store_path.parent)
    with pytest.raises(StoreError, match="already exists"):
        Vault.init(store_path)
    assert snapshot(store_path.parent) == before
    assert not key_path(store_path).exists()


def test_init_refuses_an_orphan_key_file(store_path: Path) -> None:
    orphan = key_path(store_path)
    orphan.write_text("00" * 32 + "\n")
    with pytest.raises(KeySourceError, match="key file") as info:
        Vault.init(store_path)
    assert str(orphan) in str(info.value)
    assert orphan.read_text() == "00" * 32 + "\n"
    assert not store_path.exists()


def test_init_uses_key_file_env_path(
    store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "keys" / "my.key"
    monkeypatch.setenv("SECRETFS_KEY_FILE", str(elsewhere))
    Vault.init(store_path)
    assert mode_of(elsewhere) == 0o600
    assert not key_path(store_path).exists()
    Vault.open(store_path).close()


# --- KEK from the environment -------------------------------------------------------


def test_kek_from_secretfs_key_hex_then_base64(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = os.urandom(32)
    monkeypatch.setenv("SECRETFS_KEY", key.hex())
    source = Vault.init(store_path)
    assert source.kind == keys.KIND_KEY
    assert not key_path(store_path).exists(), "no key file when the key comes from the env"
    with contextlib.closing(Vault.open(store_path)) as v:
        v.set(R("db"), b"hunter2")
    for text in (
        key.hex().upper(),
        base64.b64encode(key).decode(),
        base64.urlsafe_b64encode(key).decode().rstrip("="),
    ):
        monkeypatch.setenv("SECRETFS_KEY", text)
        with contextlib.closing(Vault.open(store_path)) as v:
            assert v.kek_source.kind == keys.KIND_KEY
            assert v.get_value(R("db")) == b"hunter2"


def test_malformed_secretfs_key_is_a_key_error_naming_the_variable(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Vault.init(store_path)
    bad = "not-a-key-" + "z" * 30
    monkeypatch.setenv("SECRETFS_KEY", bad)
    with pytest.raises(KeySourceError) as info:
        Vault.open(store_path)
    assert "SECRETFS_KEY" in str(info.value)
    assert bad not in str(info.value)


def test_kek_from_password_real_default_params(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECRETFS_PASSWORD", "correct horse battery staple")
    source = Vault.init(store_path)
    assert source.kind == keys.KIND_PASSWORD
    assert not key_path(store_path).exists()
    with contextlib.closing(Vault.open(store_path)) as v:
        assert v.kek_source.kind == keys.KIND_PASSWORD
        salt = v.backend.meta_get("kdf_salt")
        params = v.backend.meta_get("kdf_params")
        v.set(R("db"), b"pw-protected")
    assert salt is not None and len(salt) == crypto.SALT_BYTES
    assert params is not None
    assert crypto.KdfParams.from_json(params.decode()) == crypto.KdfParams()
    assert json.loads(params) == {"alg": "argon2id", "v": 19, "t": 3, "m": 65536, "p": 4}


def test_password_params_and_salt_come_from_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    monkeypatch.setenv("SECRETFS_PASSWORD", "same password")
    with monkeypatch.context() as m:
        m.setattr(crypto, "KdfParams", _CheapKdf)
        Vault.init(a)
        Vault.init(b)
    # Opened with the real defaults class: the stored (cheap) parameters are what is used.
    with contextlib.closing(Vault.open(a)) as va, contextlib.closing(Vault.open(b)) as vb:
        assert json.loads(va.backend.meta_get("kdf_params") or b"")["m"] == 64
        assert va.backend.meta_get("kdf_salt") != vb.backend.meta_get("kdf_salt")
        va.set(R("db"), b"x")


def test_secretfs_key_takes_precedence_over_password(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = os.urandom(32)
    monkeypatch.setenv("SECRETFS_KEY", key.hex())
    monkeypatch.setenv("SECRETFS_PASSWORD", "ignored")
    assert Vault.init(store_path).kind == keys.KIND_KEY
    with contextlib.closing(Vault.open(store_path)) as v:
        assert v.backend.meta_get("kdf_salt") is None


# --- wrong or missing keys ----------------------------------------------------------


def test_missing_key_file_is_a_clear_error_and_no_new_key(store_path: Path) -> None:
    Vault.init(store_path)
    key_file = key_path(store_path)
    key_file.rename(store_path.parent / "elsewhere.key")
    before = snapshot(store_path.parent)
    with pytest.raises(KeySourceError) as info:
        Vault.open(store_path)
    message = str(info.value)
    assert str(key_file) in message
    assert "SECRETFS_KEY" in message and "SECRETFS_PASSWORD" in message
    assert not key_file.exists(), "a store must never be given a fresh key"
    assert snapshot(store_path.parent) == before


def test_wrong_secretfs_key_names_the_source_and_changes_nothing(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Vault.init(store_path)
    with contextlib.closing(Vault.open(store_path)) as v:
        v.set(R("db"), b"value")
    before = snapshot(store_path.parent)
    wrong = os.urandom(32).hex()
    monkeypatch.setenv("SECRETFS_KEY", wrong)
    with pytest.raises(KeySourceError) as info:
        Vault.open(store_path)
    message = str(info.value)
    assert "$SECRETFS_KEY" in message and str(store_path) in message
    assert wrong not in message
    assert snapshot(store_path.parent) == before
    monkeypatch.delenv("SECRETFS_KEY")
    with contextlib.closing(Vault.open(store_path)) as v:
        assert v.get_value(R("db")) == b"value"


def test_wrong_key_file_names_the_key_file(store_path: Path) -> None:
    Vault.init(store_path)
    key_file = key_path(store_path)
    key_file.unlink()
    keys.write_key_file(key_file, os.urandom(32))
    before = snapshot(store_path.parent)
    with pytest.raises(KeySourceError, match="does not unlock") as info:
        Vault.open(store_path)
    assert str(key_file) in str(info.value)
    assert snapshot(store_path.parent) == before


def test_wrong_password_names_the_source(
    store_path: Path, monkeypatch: pytest.MonkeyPatch, cheap_kdf: None
) -> None:
    monkeypatch.setenv("SECRETFS_PASSWORD", "right")
    Vault.init(store_path)
    before = snapshot(store_path.parent)
    monkeypatch.setenv("SECRETFS_PASSWORD", "wrong-password-text")
    with pytest.raises(KeySourceError) as info:
        Vault.open(store_path)
    assert "$SECRETFS_PASSWORD" in str(info.value)
    assert "wrong-password-text" not in str(info.value)
    assert snapshot(store_path.parent) == before
    assert not key_path(store_path).exists()


def test_missing_password_on_a_password_store_is_a_key_error(
    store_path: Path, monkeypatch: pytest.MonkeyPatch, cheap_kdf: None
) -> None:
    monkeypatch.setenv("SECRETFS_PASSWORD", "right")
    Vault.init(store_path)
    monkeypatch.delenv("SECRETFS_PASSWORD")
    with pytest.raises(KeySourceError, match="SECRETFS_PASSWORD"):
        Vault.open(store_path)
    assert not key_path(store_path).exists()


def test_password_on_a_key_file_store_is_a_clear_error(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Vault.init(store_path)
    monkeypatch.setenv("SECRETFS_PASSWORD", "pw")
    with pytest.raises(KeySourceError) as info:
        Vault.open(store_path)
    assert "SECRETFS_PASSWORD" in str(info.value)
    assert "not initialized with a password" in str(info.value)


def test_open_without_a_store_says_to_run_init(store_path: Path) -> None:
    with pytest.raises(StoreError, match="secretfs init"):
        Vault.open(store_path)
    assert not store_path.exists()


def test_open_a_file_that_is_not_a_store(store_path: Path) -> None:
    store_path.write_bytes(b"definitely not sqlite" * 100)
    with pytest.raises(StoreError):
        Vault.open(store_path)


# --- versions -----------------------------------------------------------------------


def test_create_set_rotate_number_versions(vault: Vault) -> None:
    first = vault.write(R("db"), b"one", how="create")
    assert (first.previous_version, first.meta.version, first.meta.size) == (0, 1, 3)
    second = vault.set(R("db"), b"two!")
    assert (second.previous_version, second.meta.version, second.meta.size) == (1, 2, 4)
    third = vault.write(R("db"), b"three", how="rotate")
    assert (third.previous_version, third.meta.version) == (2, 3)
    assert vault.get_value(R("db")) == b"three"
    assert vault.meta(R("db")).version == 3
    fresh = vault.set(R("other"), b"x")
    assert (fresh.previous_version, fresh.meta.version) == (0, 1)


def test_create_of_an_existing_name_is_a_conflict(vault: Vault) -> None:
    vault.write(R("db"), b"one", how="create")
    with pytest.raises(ConflictError, match="already exists") as info:
        vault.write(R("db"), b"two", how="create")
    assert info.value.exit_code == 4
    assert vault.get_value(R("db")) == b"one"
    assert vault.meta(R("db")).version == 1


def test_rotate_needs_an_existing_secret(vault: Vault) -> None:
    with pytest.raises(NotFoundError):
        vault.write(R("nope"), b"x", how="rotate")
    assert vault.list_secrets() == []


def test_each_write_mode_records_one_audit_entry_or_one_refusal(vault: Vault) -> None:
    before = len(vault.backend.read_audit())
    vault.write(R("db"), b"one", how=WriteMode.CREATE)
    vault.write(R("db"), b"two", how=WriteMode.UPDATE)
    vault.write(R("db"), b"three")  # UPSERT
    with pytest.raises(ConflictError):
        vault.write(R("db"), b"four", how=WriteMode.CREATE)
    with pytest.raises(NotFoundError):
        vault.write(R("nope"), b"x", how=WriteMode.UPDATE)
    with pytest.raises(TooLargeError):
        vault.write(R("big"), b"x" * (vault.max_value_bytes + 1))
    got = [(r.action, r.ref, r.version, r.outcome) for r in vault.backend.read_audit()[before:]]
    assert got == [
        ("create", "$S:db", 1, "ok"),
        ("rotate", "$S:db", 2, "ok"),
        ("set", "$S:db", 3, "ok"),
        ("create", "$S:db", None, "refused"),
        ("rotate", "$S:nope", None, "refused"),
        ("set", "$S:big", None, "refused"),
    ]
    assert vault.meta(R("db")).version == 3
    # A value checked once is written as it is, by write_many too.
    checked = vault.check_writable(R("other"), b"y")
    assert [o.action for o in vault.write_many([checked])] == ["created"]


def test_a_field_reference_cannot_be_written(vault: Vault) -> None:
    with pytest.raises(UsageError, match="whole secret"):
        vault.set(R("db/password"), b"x")


def test_history_and_get_value_by_version(vault: Vault) -> None:
    values = [b"v1", b'{"a": 1}', b"v3", b"v3"]
    for value in values:
        vault.set(R("@api/token"), value)
    history = vault.history(R("@api/token"))
    assert [h.version for h in history] == [1, 2, 3, 4]
    assert [h.size for h in history] == [len(v) for v in values]
    assert [h.kind for h in history] == ["raw", "json", "raw", "raw"]
    assert {h.key_gen for h in history} == {1}
    assert history[2].fingerprint == history[3].fingerprint != history[0].fingerprint
    for n, value in enumerate(values, start=1):
        assert vault.get_value(R("@api/token"), version=n) == value
    with pytest.raises(NotFoundError, match="no version 9"):
        vault.get_value(R("@api/token"), version=9)
    with pytest.raises(NotFoundError):
        vault.history(R("@api/none"))


def test_rm_keeps_a_tombstone_and_numbering_continues(vault: Vault, store_path: Path) -> None:
    vault.write(R("db"), b"one", how="create")
    vault.set(R("db"), b"two")
    removed = vault.remove(R("db"))
    assert removed.version == 2
    for read in (
        lambda: vault.meta(R("db")),
        lambda: vault.get_value(R("db")),
        lambda: vault.history(R("db")),
        lambda: vault.remove(R("db")),
    ):
        with pytest.raises(NotFoundError):
            read()
    assert vault.list_secrets() == []

    again = vault.write(R("db"), b"three", how="create")
    assert again.previous_version == 0
    assert again.meta.version == 3, "versions 1 and 2 must never be reused"
    assert [h.version for h in vault.history(R("db"))] == [3]
    with pytest.raises(NotFoundError):
        vault.get_value(R("db"), version=1)
    assert vault.get_value(R("db")) == b"three"
    with raw_db(store_path) as db:
        rows = db.execute(
            "SELECT v.version FROM versions v JOIN secrets s ON s.id = v.secret_id"
            " WHERE s.scope = 'deployment' AND s.name = 'db'"
        ).fetchall()
    assert rows == [(3,)], "removed versions' ciphertexts are gone"


def test_rm_of_a_missing_secret_is_not_found(vault: Vault) -> None:
    with pytest.raises(NotFoundError, match="not found"):
        vault.remove(R(":staging/nope"))


# --- values -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        bytes(range(256)),
        b"",
        b"ends in a newline\n",
        b"\r\n\x00\n",
        "ünïcødé ✓".encode(),
        b"  {not json",
        b'{"a": {"b": [1, 2.50, null]}}',
    ],
    ids=["all-bytes", "empty", "newline", "crlf-nul", "utf8", "almost-json", "json"],
)
def test_values_round_trip_exactly(vault: Vault, value: bytes) -> None:
    vault.set(R("db"), value)
    assert vault.get_value(R("db")) == value
    assert vault.meta(R("db")).size == len(value)


def test_one_mib_exactly_is_accepted_and_one_more_byte_is_not(vault: Vault) -> None:
    assert vault.max_value_bytes == DEFAULT_MAX_VALUE_BYTES == MIB
    big = os.urandom(MIB)
    vault.set(R("big"), big)
    assert vault.get_value(R("big")) == big
    with pytest.raises(TooLargeError) as info:
        vault.set(R("big"), big + b"x")
    assert str(MIB) in str(info.value)
    assert info.value.exit_code == 2
    assert vault.meta(R("big")).version == 1


def test_the_limit_is_configurable_at_init(store_path: Path) -> None:
    Vault.init(store_path, max_value_bytes=10)
    with contextlib.closing(Vault.open(store_path)) as v:
        v.set(R("db"), b"0123456789")
        with pytest.raises(TooLargeError, match="10 bytes"):
            v.set(R("db"), b"0123456789a")


def test_value_kind(vault: Vault) -> None:
    for ref, value, kind in [
        ("a", b'{"x": 1}', "json"),
        ("b", b"  [1, 2]\n", "json"),
        ("c", b'"string"', "raw"),
        ("d", b"42", "raw"),
        ("e", b"{broken", "raw"),
    ]:
        assert vault.set(R(ref), value).meta.kind == kind, ref


def test_same_name_in_different_scopes_is_independent(vault: Vault) -> None:
    refs = ["db", "@api/db", ":staging/db", "shop:staging/db", "shop:prod/db", "@web/db"]
    for i, ref in enumerate(refs):
        vault.set(R(ref), f"value-{i}".encode())
    vault.set(R("@api/db"), b"api-v2")
    for i, ref in enumerate(refs):
        expected = b"api-v2" if ref == "@api/db" else f"value-{i}".encode()
        assert vault.get_value(R(ref)) == expected
        assert vault.meta(R(ref)).version == (2 if ref == "@api/db" else 1)
    vault.remove(R(":staging/db"))
    assert vault.get_value(R("shop:staging/db")) == b"value-3"
    assert {(m.scope, m.name) for m in vault.list_secrets()} == {
        ("deployment", "db"),
        ("@api", "db"),
        ("project/shop/staging", "db"),
        ("project/shop/prod", "db"),
        ("@web", "db"),
    }
    assert [m.name for m in vault.list_secrets("@api")] == ["db"]


# --- no plaintext on disk -----------------------------------------------------------


def assert_not_on_disk(directory: Path, *needles: bytes) -> list[str]:
    names = []
    for path in sorted(directory.iterdir()):
        if path.is_file():
            names.append(path.name)
            data = path.read_bytes()
            for needle in needles:
                assert needle not in data, f"{needle!r} found in {path.name}"
    return names


def test_no_plaintext_in_the_db_wal_shm_or_key_file(store_path: Path) -> None:
    marker = b"MARKER-" + secrets.token_hex(16).encode()
    field_marker = b"FIELD-" + secrets.token_hex(16).encode()
    key_marker = "KEY" + secrets.token_hex(8)
    json_value = json.dumps(
        {key_marker: field_marker.decode(), "nested": {"m": marker.decode()}}
    ).encode()
    plain_hashes = [
        hashlib.sha256(marker).digest(),
        hashlib.sha256(marker).hexdigest().encode(),
        hashlib.sha256(marker).hexdigest()[:32].encode(),
    ]
    needles = (marker, field_marker, key_marker.encode(), base64.b64encode(marker), *plain_hashes)

    Vault.init(store_path)
    v = Vault.open(store_path)
    try:
        v.write(R("db"), marker, how="create")
        v.set(R("@api/config"), json_value)
        v.set(R(":staging/db"), marker + b"\n")
        v.set(R("db"), b"replaced")  # the old version is kept, still sealed
        with contextlib.closing(Vault.open(store_path)) as reader:
            assert reader.get_value(R("@api/config")) == json_value
        names = assert_not_on_disk(store_path.parent, *needles)
        assert {"store.db", "store.db-wal", "store.db-shm", "store.db.key"} <= set(names)
        v.remove(R(":staging/db"))
        assert_not_on_disk(store_path.parent, *needles)
    finally:
        v.close()
    assert_not_on_disk(store_path.parent, *needles)
    with contextlib.closing(Vault.open(store_path)) as v2:
        assert v2.get_value(R("db"), version=1) == marker


# --- tamper -------------------------------------------------------------------------


def _tamper_store(store: Path) -> None:
    with contextlib.closing(Vault.open(store)) as v:
        v.set(R("a"), b"value-a")
        v.set(R("b"), b"value-b")
        v.set(R("b"), b"value-b2")
        v.set(R("@api/a"), b"api-a")


def _assert_integrity_error(store: Path, ref: str, version: int | None = None) -> str:
    with contextlib.closing(Vault.open(store)) as v:
        with pytest.raises(IntegrityError) as info:
            v.get_value(R(ref), version)
        message = str(info.value)
        assert "value-" not in message and "api-a" not in message
        assert info.value.exit_code == 6
        return message


def test_a_flipped_ciphertext_byte_fails_only_that_secret(store_path: Path) -> None:
    Vault.init(store_path)
    _tamper_store(store_path)
    sid = secret_id(store_path, "deployment", "a")
    with raw_db(store_path) as db:
        (blob,) = db.execute(
            "SELECT ciphertext FROM versions WHERE secret_id = ? AND version = 1", (sid,)
        ).fetchone()
        for index in (-1, 1, 30):  # the tag, the nonce, the body
            db.execute(
                "UPDATE versions SET ciphertext = ? WHERE secret_id = ? AND version = 1",
                (flip_byte(blob, index), sid),
            )
            message = _assert_integrity_error(store_path, "a")
            assert "tampered" in message
            assert "value-a" not in message
        db.execute(
            "UPDATE versions SET ciphertext = ? WHERE secret_id = ? AND version = 1",
            (blob[:10], sid),
        )
        _assert_integrity_error(store_path, "a")
    with contextlib.closing(Vault.open(store_path)) as v:
        assert v.get_value(R("b")) == b"value-b2"
        assert v.get_value(R("@api/a")) == b"api-a"
        assert v.meta(R("a")).size == len(b"value-a"), "metadata still readable"


def test_swapped_ciphertexts_fail(store_path: Path) -> None:
    Vault.init(store_path)
    _tamper_store(store_path)
    a = secret_id(store_path, "deployment", "a")
    b = secret_id(store_path, "deployment", "b")
    with raw_db(store_path) as db:

        def blob(sid: int, version: int) -> bytes:
            row = db.execute(
                "SELECT ciphertext FROM versions WHERE secret_id = ? AND version = ?",
                (sid, version),
            ).fetchone()
            return bytes(row[0])

        def put(sid: int, version: int, data: bytes) -> None:
            db.execute(
                "UPDATE versions SET ciphertext = ? WHERE secret_id = ? AND version = ?",
                (data, sid, version),
            )

        a1, b1 = blob(a, 1), blob(b, 1)
        put(a, 1, b1)  # another secret's row, same version
        put(b, 1, a1)
        put(b, 2, b1)  # an older version replayed as the current one
    _assert_integrity_error(store_path, "a")
    _assert_integrity_error(store_path, "b", version=1)
    _assert_integrity_error(store_path, "b")


def test_a_row_moved_to_another_name_or_scope_fails(store_path: Path) -> None:
    Vault.init(store_path)
    _tamper_store(store_path)
    with raw_db(store_path) as db:
        db.execute("UPDATE secrets SET name = 'moved' WHERE scope = 'deployment' AND name = 'a'")
        db.execute("UPDATE secrets SET scope = 'env/x' WHERE scope = '@api' AND name = 'a'")
    _assert_integrity_error(store_path, "moved")
    _assert_integrity_error(store_path, ":x/a")
    with contextlib.closing(Vault.open(store_path)) as v:
        assert v.get_value(R("b")) == b"value-b2"


def test_a_ciphertext_from_another_store_with_the_same_key_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECRETFS_KEY", os.urandom(32).hex())
    one, two = tmp_path / "one.db", tmp_path / "two.db"
    for store in (one, two):
        Vault.init(store)
        with contextlib.closing(Vault.open(store)) as v:
            v.set(R("db"), store.name.encode())
    with raw_db(one) as db:
        (blob,) = db.execute("SELECT ciphertext FROM versions").fetchone()
    with raw_db(two) as db:
        db.execute("UPDATE versions SET ciphertext = ?", (blob,))
    _assert_integrity_error(two, "db")


def test_a_flipped_wrapped_data_key_fails_on_open(store_path: Path) -> None:
    Vault.init(store_path)
    _tamper_store(store_path)
    with raw_db(store_path) as db:
        (wrapped,) = db.execute("SELECT wrapped FROM data_keys WHERE gen = 1").fetchone()
        db.execute("UPDATE data_keys SET wrapped = ? WHERE gen = 1", (flip_byte(wrapped, 5),))
    # The store's key check proves the key right, so the data key record is named as damaged.
    with pytest.raises(IntegrityError) as info:
        Vault.open(store_path)
    assert "data key of generation 1 is damaged" in str(info.value)
    assert str(key_path(store_path)) in str(info.value)


def test_a_flipped_kdf_salt_fails_naming_the_password(
    store_path: Path, monkeypatch: pytest.MonkeyPatch, cheap_kdf: None
) -> None:
    monkeypatch.setenv("SECRETFS_PASSWORD", "pw")
    Vault.init(store_path)
    _tamper_store(store_path)
    with raw_db(store_path) as db:
        (salt,) = db.execute("SELECT v FROM meta WHERE k = 'kdf_salt'").fetchone()
        db.execute("UPDATE meta SET v = ? WHERE k = 'kdf_salt'", (flip_byte(salt, 0),))
    with pytest.raises(KeySourceError, match=r"\$SECRETFS_PASSWORD"):
        Vault.open(store_path)


def test_mangled_kdf_params_are_a_clear_error(
    store_path: Path, monkeypatch: pytest.MonkeyPatch, cheap_kdf: None
) -> None:
    monkeypatch.setenv("SECRETFS_PASSWORD", "pw")
    Vault.init(store_path)
    with raw_db(store_path) as db:
        db.execute("UPDATE meta SET v = ? WHERE k = 'kdf_params'", (b'{"alg":"md5"}',))
    with pytest.raises((IntegrityError, KeySourceError), match="KDF"):
        Vault.open(store_path)


# --- one transaction per write ------------------------------------------------------


def test_a_failed_create_leaves_the_store_unchanged(vault: Vault, store_path: Path) -> None:
    vault.write(R("db"), b"one", how="create")
    seq = vault.backend.current_seq()
    before = snapshot(store_path.parent)["store.db"]
    with pytest.raises(ConflictError):
        vault.write(R("db"), b"two", how="create")
    with pytest.raises(NotFoundError):
        vault.write(R("missing"), b"x", how="rotate")
    with pytest.raises(TooLargeError):
        vault.set(R("db"), b"x" * (MIB + 1))
    assert vault.backend.current_seq() == seq
    assert vault.backend.changes_since(seq) == []
    assert snapshot(store_path.parent)["store.db"] == before


def test_a_write_that_fails_midway_is_rolled_back(vault: Vault, store_path: Path) -> None:
    vault.set(R("db"), b"one")
    seq = vault.backend.current_seq()
    with raw_db(store_path) as db:
        db.execute(
            "CREATE TRIGGER fail_versions BEFORE INSERT ON versions"
            " BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
        )
    # After the seq bump (and, for a new name, the secrets row): all of it must go.
    with pytest.raises((sqlite3.Error, StoreError)):
        vault.set(R("new"), b"x")
    with pytest.raises((sqlite3.Error, StoreError)):
        vault.set(R("db"), b"two")
    assert vault.backend.current_seq() == seq
    assert vault.backend.changes_since(seq) == []
    assert vault.backend.get_meta("deployment", "new") is None
    assert vault.meta(R("db")).version == 1
    with raw_db(store_path) as db:
        db.execute("DROP TRIGGER fail_versions")
    assert vault.set(R("db"), b"two").meta.version == 2
    assert vault.backend.current_seq() == seq + 1


def test_every_write_bumps_seq_once_and_shows_in_changes_since(vault: Vault) -> None:
    seq0 = vault.backend.current_seq()
    vault.set(R("a"), b"1")
    vault.set(R("b"), b"2")
    vault.set(R("a"), b"3")
    vault.remove(R("b"))
    assert vault.backend.current_seq() == seq0 + 4
    changes = vault.backend.changes_since(seq0 + 2)
    assert [(m.name, m.deleted, m.version) for m in changes] == [("a", False, 2), ("b", True, 1)]


def test_a_store_locked_by_another_writer_is_a_store_error(vault: Vault, store_path: Path) -> None:
    vault.set(R("db"), b"one")
    vault.backend._conn.execute("PRAGMA busy_timeout = 50")  # not the default 10 s wait
    with raw_db(store_path) as db:
        db.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreError, match="cannot write"):
            vault.set(R("db"), b"two")
        db.execute("ROLLBACK")
    assert vault.set(R("db"), b"two").meta.version == 2

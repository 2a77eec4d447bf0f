"""`secretfs key status | rotate | passwd`: real stores, real CLI runs (issue 4, item 4)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from secretfs import crypto
from secretfs.refs import parse_ref
from secretfs.vault import Vault
from tests import lifecycle_helpers as helpers
from tests.conftest import Cli
from tests.lifecycle_helpers import raw_db

FAST_KDF = {"t": 1, "m": 64, "p": 1}


def err(proc: subprocess.CompletedProcess[bytes]) -> str:
    return proc.stderr.decode()


def ciphertexts(store: Path) -> dict[tuple[int, int], tuple[int, bytes, str]]:
    with raw_db(store) as db:
        rows = db.execute(
            "SELECT secret_id, version, key_gen, ciphertext, fingerprint FROM versions"
        ).fetchall()
    return {(s, v): (g, bytes(c), f) for s, v, g, c, f in rows}


def wrapped_keys(store: Path) -> dict[int, bytes]:
    with raw_db(store) as db:
        return {g: bytes(w) for g, w in db.execute("SELECT gen, wrapped FROM data_keys")}


def key_file(store: Path) -> Path:
    return store.with_name(store.name + ".key")


def fill(store: Path, n: int = 5) -> dict[str, bytes]:
    """n secrets (s0 with two versions), written in-process: setup, not under test."""
    values = {f"s{i}": f"value-{i}".encode() for i in range(n)}
    vault = Vault.open(store)
    try:
        for name, value in values.items():
            vault.set(parse_ref(name), value)
        vault.set(parse_ref("s0"), b"value-0-v2")
    finally:
        vault.close()
    values["s0"] = b"value-0-v2"
    return values


def read_all(store: Path, values: dict[str, bytes]) -> None:
    vault = Vault.open(store)
    try:
        for name, value in values.items():
            assert vault.get_value(parse_ref(name)) == value
    finally:
        vault.close()


def status(cli: Cli, env: dict[str, str] | None = None) -> dict[str, object]:
    return json.loads(cli("key", "status", "--json", env=env).stdout)  # type: ignore[no-any-return]


def with_env(env: dict[str, str], **extra: str) -> dict[str, str]:
    return {**env, **extra}


# --- status -----------------------------------------------------------------------------


def test_key_status_of_a_key_file_store(cli: Cli, initialized_store: Path) -> None:
    fill(initialized_store, 2)
    info = status(cli)
    assert info["kek"] == {
        "source": "key-file",
        "from": str(key_file(initialized_store)),
        "store_initialized_with": "key-file",
        "file_mode": "0600",
    }
    assert info["unlocks"] is True
    assert info["reencryption"] is None and info["kek_rotation"] is None
    [gen] = info["data_keys"]  # type: ignore[misc]
    assert gen["generation"] == 1 and gen["active"] is True and gen["versions"] == 3
    assert "XChaCha20-Poly1305" in info["algorithms"]["values"]  # type: ignore[index]
    text = cli("key", "status").stdout.decode()
    assert "key source:  key-file" in text and "generation 1" in text and "unlocks:     yes" in text


def test_key_status_says_when_the_key_is_wrong(
    cli: Cli, cli_env: dict[str, str], initialized_store: Path
) -> None:
    wrong = with_env(cli_env, SECRETFS_KEY="11" * 32)
    proc = cli("key", "status", env=wrong, check=False)
    assert proc.returncode == 5
    assert "unlocks:     NO" in proc.stdout.decode()
    assert "$SECRETFS_KEY does not unlock" in err(proc) and "wrong key" in err(proc)


# --- KEK rotation -----------------------------------------------------------------------


def test_key_rotate_replaces_the_key_file_and_rewraps_only(
    cli: Cli, cli_env: dict[str, str], initialized_store: Path
) -> None:
    values = fill(initialized_store)
    old_key = key_file(initialized_store).read_text().strip()
    before, wrapped_before = ciphertexts(initialized_store), wrapped_keys(initialized_store)
    # A service user who could read the key file can read the new one.
    os.chown(key_file(initialized_store), 4321, 4321)
    out = cli("key", "rotate")
    assert f"new key-encryption key in {key_file(initialized_store)}" in out.stdout.decode()
    new_key = key_file(initialized_store).read_text().strip()
    assert new_key != old_key and len(crypto.parse_key_text(new_key)) == 32
    st = key_file(initialized_store).stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and (st.st_uid, st.st_gid) == (4321, 4321)
    # O(1) in the number of secrets: not one value was touched, only the data key's wrap.
    assert ciphertexts(initialized_store) == before
    assert wrapped_keys(initialized_store).keys() == wrapped_before.keys()
    assert wrapped_keys(initialized_store)[1] != wrapped_before[1]
    read_all(initialized_store, values)
    stale = cli("secret", "get", "s1", env=with_env(cli_env, SECRETFS_KEY=old_key), check=False)
    assert stale.returncode == 5 and "does not unlock" in err(stale)
    # No temporary or .next file is left beside the key.
    assert sorted(p.name for p in initialized_store.parent.iterdir() if "key" in p.name) == [
        "store.db.key"
    ]
    actions = [r["action"] for r in json.loads(cli("audit", "--json").stdout)]
    assert actions.count("key-rotate") == 2  # prepared, then done


def test_key_rotate_of_an_env_key_store_takes_the_new_key(
    cli: Cli, cli_env: dict[str, str], store_path: Path
) -> None:
    old, new = "aa" * 32, "bb" * 32
    env = with_env(cli_env, SECRETFS_KEY=old)
    cli("init", env=env)
    cli("secret", "set", "db", "--from-stdin", input=b"pw", env=env)
    refused = cli("key", "rotate", env=env, check=False)
    assert refused.returncode == 2 and "--new-key-from" in err(refused)
    argv = cli("key", "rotate", "--new-key-from", new, env=env, check=False)
    assert argv.returncode == 2 and "never the secret itself" in err(argv)
    out = cli("key", "rotate", "--new-key-from", "env://NEXT_KEY", env={**env, "NEXT_KEY": new})
    assert "set $SECRETFS_KEY to it" in out.stdout.decode()
    assert cli("secret", "get", "db", env=env, check=False).returncode == 5
    assert cli("secret", "get", "db", env=with_env(cli_env, SECRETFS_KEY=new)).stdout == b"pw"
    # From stdin, too.
    cli("key", "rotate", "--new-key-from", "-", input=old.encode() + b"\n",
        env=with_env(cli_env, SECRETFS_KEY=new))  # fmt: skip
    assert cli("secret", "get", "db", env=env).stdout == b"pw"


def password_store(store: Path, cli_env: dict[str, str], password: str) -> dict[str, str]:
    helpers.password_store(store, password, {"db": b"x"})
    return with_env(cli_env, SECRETFS_PASSWORD=password)


def kdf_salt(store: Path) -> bytes:
    with raw_db(store) as db:
        return bytes(db.execute("SELECT v FROM meta WHERE k = 'kdf_salt'").fetchone()[0])


def test_key_rotate_of_a_password_store_is_a_new_salt(
    cli: Cli, cli_env: dict[str, str], store_path: Path
) -> None:
    env = password_store(store_path, cli_env, "correct horse battery")
    salt, wrapped = kdf_salt(store_path), wrapped_keys(store_path)
    out = cli("key", "rotate", env=env)
    assert "new salt" in out.stdout.decode()
    assert kdf_salt(store_path) != salt and wrapped_keys(store_path) != wrapped
    assert cli("secret", "get", "db", env=env).stdout == b"x"


def test_key_passwd_changes_the_password_and_salt(
    cli: Cli, cli_env: dict[str, str], store_path: Path
) -> None:
    env = password_store(store_path, cli_env, "old password 123")
    salt = kdf_salt(store_path)
    # Never from argv: there is no such argument.
    assert cli("key", "passwd", "new password 456", env=env, check=False).returncode == 2
    empty = cli("key", "passwd", input=b"\n", env=env, check=False)
    assert empty.returncode == 2 and "empty" in err(empty)
    out = cli("key", "passwd", input=b"new password 456\n", env=env)
    assert "password changed" in out.stdout.decode()
    assert kdf_salt(store_path) != salt
    assert cli("secret", "get", "db", env=env, check=False).returncode == 5
    new_env = with_env(cli_env, SECRETFS_PASSWORD="new password 456")
    assert cli("secret", "get", "db", env=new_env).stdout == b"x"
    short = cli(
        "key", "passwd", "--new-password-from", "env://NEWPW",
        env={**new_env, "NEWPW": "short"},
    )  # fmt: skip
    assert "shorter than 12" in err(short)
    assert (
        cli("secret", "get", "db", env=with_env(cli_env, SECRETFS_PASSWORD="short")).stdout == b"x"
    )


def test_key_passwd_refuses_a_key_file_store(cli: Cli, initialized_store: Path) -> None:
    proc = cli("key", "passwd", input=b"whatever-long-enough\n", check=False)
    assert proc.returncode == 2 and "not a password" in err(proc)


# --- re-encryption ----------------------------------------------------------------------


def test_reencrypt_seals_every_value_under_a_new_data_key(
    cli: Cli, initialized_store: Path
) -> None:
    values = fill(initialized_store, 7)
    before = ciphertexts(initialized_store)
    fingerprints = {
        m["ref"]: m["fingerprint"] for m in json.loads(cli("secret", "ls", "--json").stdout)
    }
    out = cli("key", "rotate", "--reencrypt", "--batch-size", "3")
    text = out.stdout.decode()
    assert "new data key generation 2" in text
    assert "every value is sealed under data key generation 2; removed generation(s) 1" in text
    assert err(out).count("re-encrypted") == 3  # 8 versions, 3 per batch
    after = ciphertexts(initialized_store)
    assert after.keys() == before.keys()
    for version, (gen, blob, fp) in after.items():
        assert gen == 2 and blob != before[version][1] and fp != before[version][2]
    assert list(wrapped_keys(initialized_store)) == [2]
    read_all(initialized_store, values)
    assert [
        v["key_generation"] for v in json.loads(cli("secret", "history", "s0", "--json").stdout)
    ] == [2, 2]
    # Fingerprints are keyed by the data key and the secret: re-keyed with the data
    # key, and never equal across secrets (no equality oracle).
    cli("secret", "set", "copy", "--from-stdin", input=values["s1"])
    now = {m["ref"]: m["fingerprint"] for m in json.loads(cli("secret", "ls", "--json").stdout)}
    assert now["$S:s1"] != fingerprints["$S:s1"]
    assert now["$S:copy"] != now["$S:s1"]
    info = status(cli)
    assert [g["generation"] for g in info["data_keys"]] == [2]  # type: ignore[attr-defined]
    report = json.loads(cli("doctor", "--json").stdout)
    warned = [
        c for c in report["checks"] if c["status"] == "warn" and not c["name"].startswith("mount ")
    ]  # other mounts on this machine have checks of their own
    assert report["healthy"] and not warned


def test_a_damaged_version_stops_the_reencryption_and_keeps_its_old_key(
    cli: Cli, initialized_store: Path
) -> None:
    values = fill(initialized_store, 4)
    with raw_db(initialized_store) as db:
        sid, blob = db.execute(
            "SELECT v.secret_id, v.ciphertext FROM versions v JOIN secrets s ON s.id = v.secret_id"
            " WHERE s.name = 's2'"
        ).fetchone()
        flipped = bytearray(blob)
        flipped[-3] ^= 0x40
        db.execute("UPDATE versions SET ciphertext = ? WHERE secret_id = ?", (bytes(flipped), sid))
    proc = cli("key", "rotate", "--reencrypt", check=False)
    assert proc.returncode == 6
    assert "1 version(s) do not decrypt and stay under their old data key: $S:s2 v1" in err(proc)
    info = status(cli)
    assert info["reencryption"] == {"to_generation": 2, "versions_left": 1}
    assert [g["generation"] for g in info["data_keys"]] == [1, 2]  # type: ignore[attr-defined]
    for name in ("s0", "s1", "s3"):
        assert cli("secret", "get", name).stdout == values[name]
    doctor = cli("doctor", "--json", check=False)
    report = json.loads(doctor.stdout)
    assert doctor.returncode == 1 and not report["healthy"]
    failed = {c["name"]: c for c in report["checks"] if c["status"] == "fail"}
    assert "$S:s2 v1" in failed["values"]["detail"]
    # Give it a new value and drop the damaged version: the re-encryption then finishes.
    cli("secret", "rotate", "s2", "--from-stdin", input=b"fresh")
    cli("secret", "prune", "s2", "--keep", "1")
    done = cli("key", "rotate", "--reencrypt")
    assert "resuming the re-encryption to generation 2" in done.stdout.decode()
    assert [g["generation"] for g in status(cli)["data_keys"]] == [2]  # type: ignore[attr-defined]
    assert cli("doctor").returncode == 0


def test_only_one_key_operation_at_a_time(
    cli: Cli, cli_env: dict[str, str], initialized_store: Path
) -> None:
    values = fill(initialized_store, 6)
    stopped = subprocess.Popen(
        [sys.executable, "-m", "secretfs", "key", "rotate", "--reencrypt", "--batch-size", "2"],
        env=with_env(cli_env, SECRETFS_TEST_STOP="reencrypt:batch:1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _, status_ = os.waitpid(stopped.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status_), "the CLI did not stop at the crash point"
        busy = cli("key", "rotate", check=False)
        assert busy.returncode == 4
        assert f"another key operation (`key rotate --reencrypt`, pid {stopped.pid})" in err(busy)
        read_all(
            initialized_store, values
        )  # mid-way: some versions under generation 1, some under 2
    finally:
        stopped.send_signal(signal.SIGKILL)
        stopped.wait()
    resumed = cli("key", "rotate", "--reencrypt")
    text = resumed.stdout.decode()
    assert "an earlier `key rotate --reencrypt`" in text and "was interrupted" in text
    assert "resuming the re-encryption to generation 2" in text
    read_all(initialized_store, values)
    assert [g["generation"] for g in status(cli)["data_keys"]] == [2]  # type: ignore[attr-defined]


def test_writes_during_a_reencryption_use_the_new_generation(
    cli: Cli, initialized_store: Path
) -> None:
    values = fill(initialized_store, 3)
    vault = Vault.open(initialized_store)  # opened before the re-encryption starts
    try:
        cli("key", "rotate", "--reencrypt")
        vault.set(parse_ref("late"), b"written by an old process")
    finally:
        vault.close()
    gens = {g for g, _blob, _fp in ciphertexts(initialized_store).values()}
    assert gens == {2}
    read_all(initialized_store, {**values, "late": b"written by an old process"})


@pytest.mark.parametrize("kind", ["key-file", "password"])
def test_kek_rotation_then_reencryption_in_one_command(
    cli: Cli, cli_env: dict[str, str], store_path: Path, kind: str
) -> None:
    if kind == "key-file":
        env = cli_env
        cli("init")
        cli("secret", "set", "db", "--from-stdin", input=b"v")
    else:
        env = password_store(store_path, cli_env, "pw-" * 5)
        cli("secret", "set", "db", "--from-stdin", input=b"v", env=env)
    wrapped = wrapped_keys(store_path)
    out = cli("key", "rotate", "--reencrypt", env=env).stdout.decode()
    assert "generation 2" in out
    assert list(wrapped_keys(store_path)) == [2] and wrapped_keys(store_path)[2] != wrapped[1]
    assert cli("secret", "get", "db", env=env).stdout == b"v"


def test_a_symlinked_key_file_stays_a_symlink_and_an_unwritable_one_changes_nothing(
    cli: Cli, cli_env: dict[str, str], tmp_path: Path
) -> None:
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    env = with_env(cli_env, SECRETFS_KEY_FILE=str(tmp_path / "store.key"))
    cli("init", env=env)
    real = keys_dir / "store.key"
    (tmp_path / "store.key").rename(real)
    (tmp_path / "store.key").symlink_to(real)
    cli("secret", "set", "db", "--from-stdin", input=b"v", env=env)
    old = real.read_text()
    cli("key", "rotate", env=env)
    assert (tmp_path / "store.key").is_symlink() and real.read_text() != old
    assert cli("secret", "get", "db", env=env).stdout == b"v"

    # A key file on a read-only volume: a clear error, and nothing changed.
    before, wrapped = real.read_text(), wrapped_keys(tmp_path / "store.db")
    subprocess.run(["mount", "--bind", "-o", "ro", str(keys_dir), str(keys_dir)], check=True)
    try:
        proc = cli("key", "rotate", env=env, check=False)
    finally:
        subprocess.run(["umount", str(keys_dir)], check=True)
    assert proc.returncode == 5
    assert f"cannot write a new key file beside {real}" in err(proc)
    assert "nothing was changed" in err(proc)
    assert real.read_text() == before and wrapped_keys(tmp_path / "store.db") == wrapped
    assert cli("secret", "get", "db", env=env).stdout == b"v"

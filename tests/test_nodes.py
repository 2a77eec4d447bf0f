"""Per-node keys (issue 14.3a): enroll, read with a node key, revoke, tampered records."""

from __future__ import annotations

import json
import sqlite3
import stat
from pathlib import Path

import pytest

from secretfs import crypto
from tests.conftest import Cli

pytestmark = pytest.mark.timeout(30)


def node_env(cli_env: dict[str, str], tmp_path: Path, name: str, *, kek: bool) -> dict[str, str]:
    """The environment of node `name`: its own node key file; `kek`: the store key file
    beside the store, else a key file path that does not exist (a node without the KEK)."""
    home = tmp_path / name
    home.mkdir(exist_ok=True)
    env = {**cli_env, "SECRETFS_NODE_KEY_FILE": str(home / "node.key")}
    if not kek:
        env["SECRETFS_KEY_FILE"] = str(home / "store.key")
    return env


def enroll(cli: Cli, member: dict[str, str], new: dict[str, str]) -> str:
    """The new node makes its key pair; the member enrolls its public key: its id."""
    asked = json.loads(cli("node", "enroll", "--json", env=new).stdout)
    assert asked["enrolled"] is False
    cli("node", "enroll", asked["public_key"], "--label", "two", env=member)
    return str(asked["node_id"])


def test_enroll_read_revoke(
    cli: Cli, initialized_store: Path, cli_env: dict[str, str], tmp_path: Path
) -> None:
    one = node_env(cli_env, tmp_path, "one", kek=True)
    two = node_env(cli_env, tmp_path, "two", kek=False)
    cli("secret", "set", "db", "--from-stdin", input=b"before", env=one)

    # A node that cannot open the store says which sources it tried.
    proc = cli("secret", "get", "db", env=two, check=False)
    assert proc.returncode == 5
    assert b"no node key file at" in proc.stderr and b"SECRETFS_PASSWORD" in proc.stderr

    cli("node", "enroll", "--label", "one", env=one)  # holds the KEK: enrolls itself
    node_two = enroll(cli, one, two)
    key_file = Path(two["SECRETFS_NODE_KEY_FILE"])
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert cli("secret", "get", "db", env=two).stdout == b"before"
    info = json.loads(cli("key", "status", "--json", env=two).stdout)
    assert info["opened_with"] == f"node key {key_file} ({node_two})"
    assert info["nodes"] == {"enrolled": 2, "revoked": 0}
    doctor = cli("doctor", env=two, check=False).stdout
    assert b"node key file" in doctor and b"FAIL  key source" not in doctor
    nodes = json.loads(cli("node", "ls", "--json", env=two).stdout)
    assert {n["label"] for n in nodes} == {"one", "two"}
    assert all(n["authentic"] and n["generations"] == [1] for n in nodes)
    assert [n["this_node"] for n in nodes if n["node_id"] == node_two] == [True]

    # A new data key from the node without the KEK: sealed to the enrolled nodes only
    # (the KEK wrap stays empty), so the node that also holds the key file keeps opening.
    cli("key", "rotate", "--reencrypt", env=two)
    assert cli("secret", "get", "db", env=one).stdout == b"before"
    proc = cli("secret", "get", "db", check=False)  # the KEK alone: told why, not "damaged"
    assert proc.returncode == 5 and b"sealed to the enrolled nodes only" in proc.stderr

    out = cli("node", "revoke", node_two, env=one).stdout
    assert b"revoked" in out and b"generation 3" in out
    cli("secret", "set", "db", "--from-stdin", input=b"after", env=one)
    proc = cli("secret", "get", "db", env=two, check=False)
    assert proc.returncode == 5
    assert f"({node_two}) was revoked".encode() in proc.stderr
    assert b"after" not in proc.stdout + proc.stderr
    assert cli("secret", "get", "db", env=one).stdout == b"after"
    assert cli("secret", "get", "db").stdout == b"after"  # the KEK host
    doctor = cli("doctor", env=two, check=False)
    assert doctor.returncode != 0 and b"was revoked" in doctor.stdout
    nodes = {n["node_id"]: n for n in json.loads(cli("node", "ls", "--json", env=one).stdout)}
    assert nodes[node_two]["revoked_at"] and nodes[node_two]["generations"] == []
    assert all(n["authentic"] for n in nodes.values())
    # A revoked node key is never enrolled again.
    proc = cli("node", "enroll", env=two, check=False)
    assert proc.returncode == 5 and b"never enrolled again" in proc.stderr


def test_a_node_record_written_without_the_key_is_sealed_to_nobody(
    cli: Cli, initialized_store: Path, cli_env: dict[str, str], tmp_path: Path
) -> None:
    one = node_env(cli_env, tmp_path, "one", kek=True)
    cli("node", "enroll", env=one)
    # Someone with write access to the store adds their own node, copying a real record.
    intruder = crypto.box_public_key(crypto.box_private_key())
    with sqlite3.connect(initialized_store) as db:
        ((raw,),) = db.execute("SELECT v FROM meta WHERE k LIKE 'node/%'").fetchall()
        record = json.loads(raw)
        record["public_key"] = intruder.hex()
        db.execute(
            "INSERT INTO meta (k, v) VALUES ('node/nd_0000000000000000', ?)",
            (json.dumps(record).encode(),),
        )
    cli("key", "rotate", "--reencrypt", env=one)
    with sqlite3.connect(initialized_store) as db:
        wraps = [k for (k,) in db.execute("SELECT k FROM meta WHERE k LIKE 'nodewrap/%'")]
    assert wraps and not any(k.endswith("nd_0000000000000000") for k in wraps)
    nodes = {n["node_id"]: n for n in json.loads(cli("node", "ls", "--json", env=one).stdout)}
    assert nodes["nd_0000000000000000"]["authentic"] is False


def test_a_wrap_moved_or_changed_does_not_open(
    cli: Cli, initialized_store: Path, cli_env: dict[str, str], tmp_path: Path
) -> None:
    one = node_env(cli_env, tmp_path, "one", kek=True)
    two = node_env(cli_env, tmp_path, "two", kek=False)
    cli("secret", "set", "db", "--from-stdin", input=b"v", env=one)
    cli("node", "enroll", env=one)
    node_two = enroll(cli, one, two)
    slot = f"nodewrap/1/{node_two}"
    with sqlite3.connect(initialized_store) as db:
        (own,) = db.execute("SELECT v FROM meta WHERE k = ?", (slot,)).fetchone()
        (other,) = db.execute(
            "SELECT v FROM meta WHERE k LIKE 'nodewrap/1/%' AND k != ?", (slot,)
        ).fetchone()
        db.execute("UPDATE meta SET v = ? WHERE k = ?", (other, slot))
    proc = cli("secret", "get", "db", env=two, check=False)
    assert proc.returncode == 5 and b"damaged or not authentic" in proc.stderr
    # Its own box with a changed tag: the binding to store, generation and node fails.
    with sqlite3.connect(initialized_store) as db:
        db.execute("UPDATE meta SET v = ? WHERE k = ?", (bytes([own[0] ^ 1]) + own[1:], slot))
    proc = cli("secret", "get", "db", env=two, check=False)
    assert proc.returncode == 5 and b"damaged or not authentic" in proc.stderr
    with sqlite3.connect(initialized_store) as db:
        db.execute("UPDATE meta SET v = ? WHERE k = ?", (own, slot))
    assert cli("secret", "get", "db", env=two).stdout == b"v"


def test_a_node_key_others_can_read_is_refused(
    cli: Cli, initialized_store: Path, cli_env: dict[str, str], tmp_path: Path
) -> None:
    two = node_env(cli_env, tmp_path, "two", kek=False)
    cli("node", "enroll", env=two)
    key_file = Path(two["SECRETFS_NODE_KEY_FILE"])
    key_file.chmod(0o644)
    proc = cli("secret", "ls", env=two, check=False)
    assert proc.returncode == 5
    assert f"node key file {key_file} is mode 0644".encode() in proc.stderr

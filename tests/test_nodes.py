"""Per-node keys (issue 14.3a): enroll, read with a node key, revoke, tampered records."""

from __future__ import annotations

import json
import secrets
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
    """The new node makes its key pair; the member enrolls its public key; the node pins
    the store key the member printed: its id."""
    asked = json.loads(cli("node", "enroll", "--json", env=new).stdout)
    assert asked["enrolled"] is False
    done = json.loads(
        cli("node", "enroll", asked["public_key"], "--label", "two", "--json", env=member).stdout
    )
    pinned = json.loads(
        cli("node", "enroll", "--store-key", done["store_key"], "--json", env=new).stdout
    )
    assert pinned["enrolled"] is True
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
    # Random, so no path in a message (pytest's temp dir is named after the test) holds it.
    after = f"after-{secrets.token_hex(16)}".encode()
    cli("secret", "set", "db", "--from-stdin", input=after, env=one)
    proc = cli("secret", "get", "db", env=two, check=False)
    assert proc.returncode == 5
    assert f"({node_two}) was revoked".encode() in proc.stderr
    assert after not in proc.stdout + proc.stderr
    assert cli("secret", "get", "db", env=one).stdout == after
    assert cli("secret", "get", "db").stdout == after  # the KEK host
    doctor = cli("doctor", env=two, check=False)
    assert doctor.returncode != 0 and b"was revoked" in doctor.stdout
    nodes = {n["node_id"]: n for n in json.loads(cli("node", "ls", "--json", env=one).stdout)}
    assert nodes[node_two]["revoked_at"] and nodes[node_two]["generations"] == []
    assert all(n["authentic"] for n in nodes.values())
    # A revoked node key is never enrolled again.
    proc = cli("node", "enroll", env=two, check=False)
    assert proc.returncode == 5 and b"never enrolled again" in proc.stderr
    # The revoked record is under the store digest: deleting it (to enroll the key
    # again) does not go unnoticed.
    with sqlite3.connect(initialized_store) as db:
        db.execute("DELETE FROM meta WHERE k = ?", (f"node/{node_two}",))
    doctor = cli("doctor", env=one, check=False)
    assert doctor.returncode != 0 and b"do not add up" in doctor.stdout


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
    # Node records are under the store digest: doctor names the forged one.
    doctor = cli("doctor", env=one, check=False)
    assert doctor.returncode != 0
    assert b"node nd_0000000000000000: the node record fails authentication" in doctor.stdout


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
        at = len(b"box2:")
        changed = own[:at] + bytes([own[at] ^ 1]) + own[at + 1 :]
        db.execute("UPDATE meta SET v = ? WHERE k = ?", (changed, slot))
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


def _forge_data_key(store: Path | str, node_id: str, public: bytes, how: str) -> None:
    """The attack of issue 14.3a, as someone who can write the store but holds no key: a
    data key of their own sealed to the node, made the active one, and a value sealed
    under it with every row tagged and the store state signed off with that key."""
    import dataclasses
    import time

    from secretfs import keyring, keys
    from secretfs.authmeta import Authenticator
    from secretfs.refs import parse_ref
    from secretfs.store import location
    from secretfs.vault import Vault

    backend = location.parse(str(store)).open()
    try:
        store_id = backend.meta_get("store_id")
        assert store_id is not None
        gen = max(backend.data_keys()) + 1
        mine = crypto.random_key()
        row = crypto.row_data("node_wrap", store_id, gen, node_id, public)
        tag = crypto.mac(crypto.mac_key(mine), row)
        if how == "anonymous sealed box":  # what a member wrote before: anyone can make one
            wrap = tag + crypto.box_seal(public, mine)
        else:  # the new form, from a store key of the attacker's own
            wrap = b"box2:" + tag + crypto.box_auth_seal(crypto.box_private_key(), public, mine)
        with backend.transaction():
            backend.put_data_key(gen, b"", time.time_ns())
            backend.meta_set(keyring.node_wrap_key(gen, node_id), wrap)
            backend.meta_set("active_gen", str(gen).encode())
        forged = keyring.Keyring(store_id, {gen: mine}, gen, keys.KekSource("key", "forger"))
        Vault(backend, forged).set(parse_ref("db"), b"forged-value")
        with backend.transaction():
            Authenticator(backend, forged).retag_all()
            state = forged.read_state(backend)
            assert state is not None
            forged.write_state(backend, dataclasses.replace(state, serial=10**9))
    finally:
        backend.close()


@pytest.mark.parametrize("how", ["anonymous sealed box", "box from another key"])
def test_a_data_key_sealed_by_a_store_writer_without_a_key_is_refused(
    cli: Cli, initialized_store: Path, cli_env: dict[str, str], tmp_path: Path, how: str
) -> None:
    """A node opens only data keys boxed from the store key it pinned: one a store writer
    sealed to it is refused and named, nothing sealed under it is served, and the node
    seals nothing new under it."""
    from secretfs import keys

    one = node_env(cli_env, tmp_path, "one", kek=True)
    two = node_env(cli_env, tmp_path, "two", kek=False)
    cli("secret", "set", "db", "--from-stdin", input=b"real", env=one)
    cli("node", "enroll", env=one)
    node_two = enroll(cli, one, two)
    assert cli("secret", "get", "db", env=two).stdout == b"real"
    public = crypto.box_public_key(keys.read_node_key(Path(two["SECRETFS_NODE_KEY_FILE"])))

    _forge_data_key(initialized_store, node_two, public, how)
    proc = cli("secret", "get", "db", env=two, check=False)
    assert b"forged-value" not in proc.stdout + proc.stderr
    assert proc.returncode == 5, proc.stderr
    why = b"anonymous sealed box" if how.startswith("anonymous") else b"not authentic"
    assert why in proc.stderr and f"sealed to {node_two}".encode() in proc.stderr
    proc = cli("secret", "set", "new", "--from-stdin", input=b"x", env=two, check=False)
    assert proc.returncode == 5 and why in proc.stderr
    status = json.loads(cli("key", "status", "--json", env=two, check=False).stdout)
    assert status["unlocks"] is False


def _as_before(store: Path) -> None:
    """Put the store's nodes in their form from before node wraps were authenticated:
    anonymous sealed boxes, each record tagged inside itself and outside the digest, no
    store key. Done with the KEK (the key file beside the store), as that code did."""
    import dataclasses

    from secretfs import keyring, keys
    from secretfs.authmeta import node_tag_key
    from secretfs.store import location

    backend = location.parse(str(store)).open()
    try:
        store_id = backend.meta_get("store_id")
        assert store_id is not None
        kek = keys.read_key_file(backend.key_file())
        data = {
            gen: crypto.unwrap_key(kek, wrapped, crypto.data_key_aad(store_id, gen))
            for gen, wrapped in backend.data_keys().items()
        }
        active = int(backend.meta_get("active_gen") or b"0")
        kr = keyring.Keyring(store_id, data, active, keys.KekSource("key-file", "t"), kek)
        nodes = {n.node_id: n for n in keyring.list_nodes(backend)}
        with backend.transaction():
            state = kr.read_state(backend)
            assert state is not None
            digest = state.digest
            for node in nodes.values():
                digest -= keyring.tag_value(backend.meta_get(node_tag_key(node.node_id)))
                backend.meta_delete(node_tag_key(node.node_id))
                old = dataclasses.replace(node, tag=kr.tag(keyring.node_row(store_id, node)))
                backend.meta_set(keyring.NODE_PREFIX + node.node_id, old.to_json())
            for key in backend.meta_scan(keyring.NODE_WRAP_PREFIX):
                gen_text, node_id = key[len(keyring.NODE_WRAP_PREFIX) :].split("/")
                gen, public = int(gen_text), nodes[node_id].public_key
                row = crypto.row_data("node_wrap", store_id, gen, node_id, public)
                tag = crypto.mac(crypto.mac_key(data[gen]), row)
                backend.meta_set(key, tag + crypto.box_seal(public, data[gen]))
            for key in backend.meta_scan(keyring.STORE_KEY_PREFIX):
                backend.meta_delete(key)
            kr.write_state(backend, dataclasses.replace(state, digest=digest % keyring.DIGEST_MOD))
    finally:
        backend.close()


def test_nodes_enrolled_before_are_moved_over_by_the_next_key_holder(
    cli: Cli, initialized_store: Path, cli_env: dict[str, str], tmp_path: Path
) -> None:
    """A store whose nodes got anonymous sealed boxes: its nodes refuse them; the next
    command on a host with the KEK boxes them from a new store key (audited) and puts the
    node records under the digest; a node opens again once it pinned that key."""
    one = node_env(cli_env, tmp_path, "one", kek=True)
    two = node_env(cli_env, tmp_path, "two", kek=False)
    cli("secret", "set", "db", "--from-stdin", input=b"real", env=one)
    cli("node", "enroll", env=one)
    node_two = enroll(cli, one, two)
    _as_before(initialized_store)
    pins = Path(two["SECRETFS_NODE_KEY_FILE"] + ".pins")
    pins.unlink()  # a node enrolled before pinned nothing

    proc = cli("secret", "get", "db", env=two, check=False)
    assert proc.returncode == 5 and b"has not pinned" in proc.stderr, proc.stderr
    cli("secret", "ls")  # the KEK host, no node key: any command moves the store over
    with sqlite3.connect(initialized_store) as db:
        wraps = [v for (v,) in db.execute("SELECT v FROM meta WHERE k LIKE 'nodewrap/%'")]
    assert len(wraps) == 2 and all(w.startswith(b"box2:") for w in wraps)
    audit = json.loads(cli("audit", "--json").stdout)
    assert {r["ref"] for r in audit if r["action"] == "node-reseal"} >= {node_two}
    nodes = json.loads(cli("node", "ls", "--json").stdout)
    assert all(n["authentic"] for n in nodes)
    doctor = cli("doctor", check=False).stdout
    assert b"fails authentication" not in doctor and b"do not add up" not in doctor, doctor

    store_key = json.loads(cli("key", "status", "--json").stdout)["store_key"]
    proc = cli("node", "enroll", "--store-key", store_key, "--json", env=two)
    assert json.loads(proc.stdout)["enrolled"] is True
    assert cli("secret", "get", "db", env=two).stdout == b"real"


def test_a_pin_others_can_change_or_a_second_pin_is_refused(
    cli: Cli, initialized_store: Path, cli_env: dict[str, str], tmp_path: Path
) -> None:
    one = node_env(cli_env, tmp_path, "one", kek=True)
    two = node_env(cli_env, tmp_path, "two", kek=False)
    cli("secret", "set", "db", "--from-stdin", input=b"v", env=one)
    enroll(cli, one, two)
    pins = Path(two["SECRETFS_NODE_KEY_FILE"] + ".pins")
    assert stat.S_IMODE(pins.stat().st_mode) == 0o600
    other = crypto.format_key_text(crypto.box_public_key(crypto.box_private_key()))
    proc = cli("node", "enroll", "--store-key", other, env=two, check=False)
    assert proc.returncode == 5 and b"pins another key for this store" in proc.stderr
    pins.chmod(0o644)
    proc = cli("secret", "get", "db", env=two, check=False)
    assert (
        proc.returncode == 5 and f"pinned store keys {pins} are mode 0644".encode() in proc.stderr
    )
    pins.chmod(0o600)
    assert cli("secret", "get", "db", env=two).stdout == b"v"


def test_a_deleted_store_key_makes_nodes_refuse_not_trust_a_new_one(
    cli: Cli, initialized_store: Path, cli_env: dict[str, str], tmp_path: Path
) -> None:
    """The store key's records deleted by a store writer: the next key change makes a new
    store key (audited, logged); nodes refuse boxes from it until they pin it."""
    one = node_env(cli_env, tmp_path, "one", kek=True)
    two = node_env(cli_env, tmp_path, "two", kek=False)
    cli("secret", "set", "db", "--from-stdin", input=b"v", env=one)
    enroll(cli, one, two)
    with sqlite3.connect(initialized_store) as db:
        db.execute("DELETE FROM meta WHERE k LIKE 'store_key/%'")
    cli("key", "rotate", "--reencrypt")  # the KEK host, no node key of its own
    audit = json.loads(cli("audit", "--json").stdout)
    (made,) = [r["detail"] for r in audit if r["action"] == "store-key"][-1:]
    assert "the one before is gone" in made
    proc = cli("secret", "get", "db", env=two, check=False)
    assert proc.returncode == 5 and b"not authentic" in proc.stderr
    assert proc.stdout == b""

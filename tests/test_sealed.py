"""Sealed reads from the CLI, opened by real clients: PyNaCl and libsodium's C API."""

from __future__ import annotations

import base64
import json
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, SealedBox

from secretfs import sealing
from secretfs.errors import NotFoundError, UsageError
from secretfs.store import ClientKeyRecord
from secretfs.store.location import parse as parse_location
from secretfs.vault import Vault
from tests.conftest import Cli
from tests.stores import Store

# crypto_box_seal_open from Debian's libsodium-dev: an implementation that is not PyNaCl.
OPEN_C = r"""
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    unsigned char pk[32], sk[32], box[65536], out[65536];
    FILE *f = fopen(argv[1], "rb");
    if (sodium_init() < 0 || !f || fread(pk, 1, 32, f) != 32 || fread(sk, 1, 32, f) != 32)
        return 2;
    fclose(f);
    size_t n = fread(box, 1, sizeof box, stdin);
    if (n < crypto_box_SEALBYTES) return 3;
    if (crypto_box_seal_open(out, box, n, pk, sk) != 0) {
        fputs("cannot open\n", stderr);
        return 1;
    }
    fwrite(out, 1, n - crypto_box_SEALBYTES, stdout);
    return 0;
}
"""


@pytest.fixture(scope="session")
def sodium_open(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The C opener, compiled once; missing gcc or libsodium-dev is a failure, not a skip."""
    gcc = shutil.which("gcc")
    assert gcc, "gcc is needed (scripts/setup.sh installs it)"
    d = tmp_path_factory.mktemp("sodium")
    (d / "open.c").write_text(OPEN_C)
    subprocess.run(
        [gcc, "-O1", "-o", str(d / "open"), str(d / "open.c"), "-lsodium"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return d / "open"


def c_open(
    opener: Path, key: PrivateKey, box: bytes, tmp_path: Path
) -> subprocess.CompletedProcess[bytes]:
    keyfile = tmp_path / "client.key"
    keyfile.write_bytes(bytes(key.public_key) + bytes(key))
    keyfile.chmod(0o600)
    return subprocess.run([str(opener), str(keyfile)], input=box, capture_output=True, timeout=10)


def pub_b64(key: PrivateKey) -> str:
    return base64.b64encode(bytes(key.public_key)).decode()


@pytest.fixture
def keyed(cli: Cli, initialized_store: Path) -> tuple[PrivateKey, str]:
    """A store with @api/token and one registered client key: (private key, key id)."""
    cli("secret", "set", "@api/token", "--from-stdin", input=b"s3cret-value")
    key = PrivateKey.generate()
    out = cli("client-key", "add", pub_b64(key), "--label", "laptop", "--owner", "1000")
    key_id = out.stdout.decode().strip()
    assert sealing.is_key_id(key_id)
    return key, key_id


def test_sealed_get_opens_with_pynacl_and_libsodium(
    cli: Cli, keyed: tuple[PrivateKey, str], sodium_open: Path, tmp_path: Path
) -> None:
    key, key_id = keyed
    doc = json.loads(cli("secret", "get", "@api/token", "--sealed-to", key_id).stdout)
    assert doc["name"] == "$S:@api/token" and doc["version"] == 1 and doc["key_id"] == key_id
    box = base64.b64decode(doc["ciphertext_b64"], validate=True)
    assert len(box) == len(b"s3cret-value") + 48
    assert SealedBox(key).decrypt(box) == b"s3cret-value"
    raw = cli("secret", "get", "@api/token", "--sealed-to", key_id, "--raw").stdout
    assert raw != box  # each seal uses a fresh ephemeral key
    opened = c_open(sodium_open, key, raw, tmp_path)
    assert opened.returncode == 0, opened.stderr
    assert opened.stdout == b"s3cret-value"
    # Sealing to the public key itself names the same registered key.
    by_pub = json.loads(cli("secret", "get", "@api/token", "--sealed-to", pub_b64(key)).stdout)
    assert by_pub["key_id"] == key_id


def test_flipped_byte_fails_to_open(
    cli: Cli, keyed: tuple[PrivateKey, str], sodium_open: Path, tmp_path: Path
) -> None:
    key, key_id = keyed
    box = bytearray(cli("secret", "get", "@api/token", "--sealed-to", key_id, "--raw").stdout)
    for where in (0, 40, len(box) - 1):  # ephemeral key, tag, message
        bad = bytearray(box)
        bad[where] ^= 0x01
        with pytest.raises(CryptoError):
            SealedBox(key).decrypt(bytes(bad))
        assert c_open(sodium_open, key, bytes(bad), tmp_path).returncode == 1


def test_revoked_and_unknown_keys_are_refused(
    cli: Cli, keyed: tuple[PrivateKey, str], store_path: Path
) -> None:
    key, key_id = keyed
    cli("client-key", "rm", key_id)
    for spec in (key_id, pub_b64(key)):
        proc = cli("secret", "get", "@api/token", "--sealed-to", spec, check=False)
        assert proc.returncode == 5 and proc.stdout == b""
        assert b"revoked" in proc.stderr
    unknown = cli("secret", "get", "@api/token", "--sealed-to", "ck_" + "0" * 32, check=False)
    assert unknown.returncode == 3 and b"no client key" in unknown.stderr
    again = cli("client-key", "rm", key_id, check=False)
    assert again.returncode == 4
    # Soft: the record stays (with its revocation time) for the audit trail.
    listed = json.loads(cli("client-key", "ls", "--all", "--json").stdout)
    assert [k["key_id"] for k in listed] == [key_id] and listed[0]["revoked_at"]
    assert json.loads(cli("client-key", "ls", "--json").stdout) == []
    audit = cli("audit", "--json").stdout.decode()
    assert "client-key-rm" in audit


def test_client_key_add_inputs_and_ls(cli: Cli, initialized_store: Path, tmp_path: Path) -> None:
    a, b = PrivateKey.generate(), PrivateKey.generate()
    f = tmp_path / "b.pub"
    f.write_text(pub_b64(b) + "\n")
    one = json.loads(
        cli("client-key", "add", "--from-stdin", "--json", input=pub_b64(a).encode()).stdout
    )
    two = json.loads(cli("client-key", "add", "--from-file", str(f), "--json").stdout)
    assert one["fingerprint"] == sealing.fingerprint(bytes(a.public_key))
    assert one["fingerprint"].startswith("sha256:") and len(one["fingerprint"]) == 7 + 16
    assert two["public_key"] == pub_b64(b) and two["last_used_at"] is None
    dup = cli("client-key", "add", pub_b64(a), check=False)
    assert dup.returncode == 4 and one["key_id"].encode() in dup.stderr
    for bad in ("AAAA", "not base64!", base64.b64encode(bytes(32)).decode()):
        proc = cli("client-key", "add", bad, check=False)
        assert proc.returncode == 2, proc.stderr
    # last_used_at: set by a sealed read.
    cli("secret", "set", "db", "--from-stdin", input=b"v")
    cli("secret", "get", "db", "--sealed-to", two["key_id"])
    listed = {k["key_id"]: k for k in json.loads(cli("client-key", "ls", "--json").stdout)}
    assert listed[two["key_id"]]["last_used_at"] and listed[one["key_id"]]["last_used_at"] is None


def test_bound_form_carries_ref_and_version(cli: Cli, keyed: tuple[PrivateKey, str]) -> None:
    key, key_id = keyed
    cli("secret", "set", "@api/token", "--from-stdin", input=b"second")
    doc = json.loads(
        cli(
            "secret", "get", "@api/token", "--sealed-to", key_id, "--bound", "--version", "1"
        ).stdout
    )
    message = SealedBox(key).decrypt(base64.b64decode(doc["ciphertext_b64"]))
    assert sealing.parse_bound(message) == ("$S:@api/token", 1, b"s3cret-value")
    # The documented layout, byte by byte.
    tag = b"secretfs.sealed.v1"
    ref = b"$S:@api/token"
    assert message == (
        len(tag).to_bytes(2, "big")
        + tag
        + len(ref).to_bytes(2, "big")
        + ref
        + (1).to_bytes(8, "big")
        + (12).to_bytes(4, "big")
        + b"s3cret-value"
    )


def test_sealed_only_grant_is_stored_and_migrated(
    cli: Cli, initialized_store: Path, store_path: Path
) -> None:
    cli("secret", "set", "@api/token", "--from-stdin", input=b"x")
    cli("grant", "@api/token", "--uid", "1000", "--sealed-only")
    with sqlite3.connect(store_path) as db:
        rows = db.execute("SELECT kind, principal, form FROM grants").fetchall()
    assert rows == [("uid", 1000, "sealed")]
    # A sealed-only grantee is not a reader of the value.
    perms = json.loads(cli("permissions", "@api/token", "--json").stdout)
    assert [r for r in perms["readers"] if r["id"] == 1000] == [
        {"who": "uid", "id": 1000, "via": "sealed-grant", "on": "$S:@api/token"}
    ]
    assert "sealed form only" in cli("permissions", "@api/token").stdout.decode()
    # One grant per uid: a full grant over a sealed-only one is refused, not "already".
    proc = cli("grant", "@api/token", "--uid", "1000", check=False)
    assert proc.returncode == 4 and b"sealed grant here already" in proc.stderr


def test_older_store_gets_the_sealing_schema(
    cli: Cli, initialized_store: Path, store_path: Path
) -> None:
    cli("secret", "set", "@api/token", "--from-stdin", input=b"x")
    cli("grant", "@api/token", "--uid", "7")
    with sqlite3.connect(store_path) as db:  # a store from before sealed reads
        db.execute("DROP TABLE client_keys")
        db.execute("ALTER TABLE grants DROP COLUMN form")
    listed = cli("permissions", "@api/token", "--json").stdout
    assert b"7" in listed
    key = PrivateKey.generate()
    cli("client-key", "add", pub_b64(key))
    with sqlite3.connect(store_path) as db:
        assert db.execute("SELECT form FROM grants").fetchall() == [("plain",)]


def test_client_keys_and_sealed_grants_on_every_backend(
    each_store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every backend keeps client keys and grant forms as SQLite does."""
    store = each_store
    monkeypatch.setenv("SECRETFS_KEY_FILE", store.env["SECRETFS_KEY_FILE"])
    key = PrivateKey.generate()
    store.cli("secret", "set", "@api/token", "--from-stdin", input=b"t0k3n")
    key_id = store.cli("client-key", "add", pub_b64(key)).stdout.decode().strip()
    box = store.cli("secret", "get", "@api/token", "--sealed-to", key_id, "--raw").stdout
    assert SealedBox(key).decrypt(box) == b"t0k3n"
    store.cli("grant", "@api/token", "--uid", "1234", "--sealed-only")
    vault = Vault.open(parse_location(store.url))
    try:
        grants = vault.backend.list_grants()
        (listed,) = vault.backend.list_client_keys()
    finally:
        vault.close()
    assert [(g.principal, g.form) for g in grants] == [(1234, "sealed")]
    assert listed.key_id == key_id and listed.last_used_ns is not None
    store.cli("client-key", "rm", key_id)
    proc = store.cli("secret", "get", "@api/token", "--sealed-to", key_id, check=False)
    assert proc.returncode == 5


def test_resolver_request_convention() -> None:
    """The pure part the resolver calls: headers -> key and form -> a box PyNaCl opens."""
    key = PrivateKey.generate()
    live = ClientKeyRecord(sealing.new_key_id(), bytes(key.public_key), "", None, 1)
    gone = ClientKeyRecord(
        sealing.new_key_id(), bytes(PrivateKey.generate().public_key), "", None, 1, 2
    )
    keys = [live, gone]
    assert sealing.sealed_request({"Content-Type": "application/json"}, keys) is None
    found = sealing.sealed_request(
        {"secretfs-sealed-to": live.key_id, "Secretfs-Sealed-Bound": "1"}, keys
    )
    assert found == (live, True)
    box = sealing.seal_envelope_value(b"v", live, bound=True, ref="$S:db", version=2)
    assert sealing.parse_bound(SealedBox(key).decrypt(box)) == ("$S:db", 2, b"v")
    assert sealing.envelope_metadata(live, True)["secretfs.sealed-to"] == live.key_id
    with pytest.raises(sealing.ClientKeyRevokedError):
        sealing.sealed_request({"Secretfs-Sealed-To": gone.key_id}, keys)
    with pytest.raises(sealing.ClientKeyRevokedError):
        sealing.seal_envelope_value(b"v", gone, bound=False, ref="$S:db", version=1)
    with pytest.raises(NotFoundError):
        sealing.sealed_request({"Secretfs-Sealed-To": sealing.new_key_id()}, keys)
    with pytest.raises(UsageError):
        sealing.sealed_request(
            {"Secretfs-Sealed-To": live.key_id, "Secretfs-Sealed-Bound": "yes"}, keys
        )
    # A bound message is exact: a byte more or a wrong tag is not one.
    message = sealing.bound_message("$S:db", 1, b"v")
    for bad in (message + b"x", message[:-1], b"\x00\x01x" + message[3:]):
        with pytest.raises(UsageError):
            sealing.parse_bound(bad)


def test_sealed_tree_logic() -> None:
    """The pure tree: access forms, the key's directory going away, and forget of the
    sealed nodes never dropping the root's own entries."""
    from secretfs.access import READ, Caller
    from secretfs.store import GrantRecord, SecretMeta
    from secretfs.tree import ROOT_INODE, Owner, Tree

    key = PrivateKey.generate()
    meta = SecretMeta(1, "@api", "token", 1, False, 3, "raw", 1, 1, 0, 0, 0o400, "fp", 1)
    tree = Tree(Owner(0, 0), lambda sid, ver: b"tok", 1)
    tree.apply([meta], 1)
    record = ClientKeyRecord(sealing.new_key_id(), bytes(key.public_key), "", None, 1)
    tree.set_client_keys([record])
    tree.set_access([], [GrantRecord("@api", "token", "uid", 1000, 1, "sealed")])
    root = tree.get(ROOT_INODE)
    assert root is not None
    sealed_root = tree.lookup(root, ".sealed")
    assert sealed_root is not None and sealed_root.name == ".sealed"
    key_dir = tree.lookup(sealed_root, record.key_id)
    assert key_dir is not None and key_dir.name == record.key_id
    api = tree.lookup(key_dir, "@api")
    assert api is not None
    sealed_file = tree.lookup(api, "token")
    plain_dir = tree.lookup(root, "@api")
    assert sealed_file is not None and plain_dir is not None
    plain_file = tree.lookup(plain_dir, "token")
    assert plain_file is not None
    relay = Caller(1000, 1000, 1)
    assert tree.may(sealed_file, relay, READ) and not tree.may(plain_file, relay, READ)
    assert not tree.may(sealed_file, Caller(1001, 1001, 1), READ)
    assert tree.attr(sealed_file).size == 3 + 48
    assert SealedBox(key).decrypt(tree.read(sealed_file)) == b"tok"
    # forget() of the sealed directories leaves the plain tree's inodes alone.
    for node in (sealed_file, api, key_dir, sealed_root):
        tree.forget(node.inode, 1)
    assert tree.lookup(root, "@api") == plain_dir
    # Revoked: gone from lookups, and a node looked up before no longer reads.
    sealed_root = tree.lookup(root, ".sealed")
    assert sealed_root is not None
    sealed_file = tree.lookup(tree.lookup(tree.lookup(sealed_root, record.key_id), "@api"), "token")  # type: ignore[arg-type]
    assert sealed_file is not None
    tree.set_client_keys([ClientKeyRecord(record.key_id, record.public_key, "", None, 1, 2)])
    assert tree.lookup(root, ".sealed") is None
    with pytest.raises(NotFoundError):
        tree.read(sealed_file)

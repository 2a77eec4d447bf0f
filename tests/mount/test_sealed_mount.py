"""The mount's sealed tree: `.sealed/<key id>/…`, opened by real clients, with the same
access rules as the plain files plus sealed-only grants (docs/sealed.md)."""

from __future__ import annotations

import base64
import errno
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from nacl.public import PrivateKey, SealedBox

from tests.mount.conftest import Mount, probe, wait_for
from tests.mount.test_etcd_mount import EtcdMount, etcd_mounted  # noqa: F401 - fixture
from tests.mount.test_permissions import shared  # noqa: F401 - a fixture
from tests.test_sealed import c_open, sodium_open  # noqa: F401 - fixture, F811 below


def register(m: Mount) -> tuple[PrivateKey, str]:
    key = PrivateKey.generate()
    public = base64.b64encode(bytes(key.public_key)).decode()
    return key, m.cli("client-key", "add", public).stdout.decode().strip()


def test_sealed_files_open_with_pynacl_and_libsodium(
    mount_factory: Callable[..., Mount],
    sodium_open: Path,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    m = mount_factory(secrets={"db": b"hunter2", "@api/cfg": b'{"user":"app"}'})
    assert not (m.path / ".sealed").exists()  # no client key: no sealed tree
    key, key_id = register(m)
    sealed_db = m.path / ".sealed" / key_id / "deployment/db"
    wait_for(sealed_db.exists)
    assert os.listdir(m.path / ".sealed") == [key_id]
    assert ".sealed" not in os.listdir(m.path)  # found by name, never listed
    assert sorted(os.listdir(m.path / ".sealed" / key_id / "@api")) == ["cfg"]  # no fields
    assert os.stat(sealed_db).st_size == len(b"hunter2") + 48
    one, two = sealed_db.read_bytes(), sealed_db.read_bytes()
    assert one != two and len(one) == len(two) == 7 + 48  # sealed afresh on each open
    assert SealedBox(key).decrypt(one) == b"hunter2"
    opened = c_open(sodium_open, key, two, tmp_path)
    assert opened.returncode == 0 and opened.stdout == b"hunter2"
    bad = bytearray(two)
    bad[-1] ^= 1
    assert c_open(sodium_open, key, bytes(bad), tmp_path).returncode == 1

    # Each sealed open is audited, and the key's last use follows with the batch.
    def last_used() -> str | None:
        keys = json.loads(m.cli("client-key", "ls", "--json").stdout)
        return keys[0]["last_used_at"]  # type: ignore[no-any-return]

    wait_for(lambda: last_used() is not None, timeout=3)
    opens = json.loads(m.cli("audit", "--json", "--ref", "db").stdout)
    assert [r["detail"] for r in opens if r["action"] == "open"][-2:] == [f"sealed to {key_id}"] * 2
    # Revoked: its directory goes away, and what was looked up before no longer opens.
    handle_path = sealed_db
    m.cli("client-key", "rm", key_id)
    wait_for(lambda: not (m.path / ".sealed" / key_id).exists())
    with pytest.raises(OSError) as caught:
        handle_path.read_bytes()
    assert caught.value.errno == errno.ENOENT


def test_sealed_only_grantee_reads_sealed_never_plain(shared: Mount) -> None:  # noqa: F811
    m = shared
    key, key_id = register(m)
    m.cli("grant", "@api/token", "--uid", "1000", "--sealed-only")
    sealed = m.path / ".sealed" / key_id / "@api/token"
    wait_for(lambda: probe(1000, 1000, "read", sealed)[0] == "ok")
    status, box = probe(1000, 1000, "read", sealed)
    assert SealedBox(key).decrypt(box) == b"tok-1000\n"
    assert probe(1000, 1000, "read", m.path / "@api/token") == ("EACCES", None)
    assert probe(1001, 1001, "read", sealed) == ("EACCES", None)
    # The listing shows the relay the sealed secret, and nothing of the plain tree.
    assert probe(1000, 1000, "list", sealed.parent) == ("ok", ["token"])
    assert probe(1000, 1000, "list", m.path / "@api") == ("ok", [])
    # A plain grant reads both.
    m.cli("grant", "@web/key", "--uid", "1001")
    wait_for(lambda: probe(1001, 1001, "read", m.path / "@web/key")[0] == "ok")
    status, box = probe(1001, 1001, "read", m.path / ".sealed" / key_id / "@web/key")
    assert status == "ok" and SealedBox(key).decrypt(box) == b"web-key"


def test_sealed_bench_runs() -> None:
    """bench/sealed.py end to end at a tiny size: only that it runs (figures mean nothing)."""
    from bench.sealed import measure

    out = measure(count=20, ops=200, rounds=1)
    assert out["sealed_vs_plain"] > 0 and out["sealed_ops_per_s"] > 0


def test_sealed_files_on_an_etcd_mount(etcd_mounted: EtcdMount) -> None:  # noqa: F811
    """The etcd backend feeds the sealed tree too: a key appears, is used, is revoked."""
    m = etcd_mounted
    key = PrivateKey.generate()
    key_id = m.cli("client-key", "add", base64.b64encode(bytes(key.public_key)).decode())
    sealed_db = m.path / ".sealed" / key_id.stdout.decode().strip() / "deployment/db"
    wait_for(sealed_db.exists, timeout=3)
    assert SealedBox(key).decrypt(sealed_db.read_bytes()) == b"hunter2"

    def last_used() -> str | None:
        return json.loads(m.cli("client-key", "ls", "--json").stdout)[0]["last_used_at"]  # type: ignore[no-any-return]

    wait_for(lambda: last_used() is not None, timeout=3)
    m.cli("client-key", "rm", key_id.stdout.decode().strip())
    wait_for(lambda: not sealed_db.parent.parent.exists(), timeout=3)

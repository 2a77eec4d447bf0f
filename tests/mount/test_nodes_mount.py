"""Two nodes, each with its own node key, mounting one store (issue 14.3a/b): a key change
on one reaches the other's running mount without EIO; a revoked node's mount says it
cannot open what is written after."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from secretfs.refs import parse_ref
from secretfs.store import location
from secretfs.vault import Vault
from tests.conftest import run_cli, run_cli_process
from tests.mount.conftest import Mount, wait_for
from tests.mount.test_rotation_mount import Reader, many_secrets, secret_paths
from tests.test_nodes import _forge_data_key, node_env

pytestmark = pytest.mark.timeout(90)


@contextmanager
def node_mount(path: Path, env: dict[str, str]) -> Iterator[Mount]:
    """A mount with this node's environment, unmounted (and its daemon gone) afterwards."""
    path.mkdir()
    m = Mount(path, Path(env["SECRETFS_STORE"]), env)
    m.cli_process("mount", str(path))
    try:
        yield m
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(path)], check=False, timeout=10)
        deadline = time.monotonic() + 5
        while m.daemon_pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not m.daemon_pids(), "the daemon did not exit after unmount"


def status(m: Mount) -> dict[str, object]:
    data: dict[str, object] = json.loads((m.path / ".secretfs-status").read_bytes())
    return data


@pytest.fixture(params=["sqlite", "etcd"])
def store_env(
    request: pytest.FixtureRequest, cli_env: dict[str, str], tmp_path: Path
) -> dict[str, str]:
    """The CLI environment of a new store: a SQLite file, or a prefix on the test cluster."""
    if request.param == "sqlite":
        return cli_env
    cluster = request.getfixturevalue("etcd_cluster")
    env = {**cli_env, "SECRETFS_STORE": cluster.url(f"n{uuid.uuid4().hex[:12]}")}
    env["SECRETFS_KEY_FILE"] = str(tmp_path / "store.key")
    return env


def test_reencrypt_on_one_node_and_revoke_the_other(
    store_env: dict[str, str],
    tmp_path: Path,
    mount_factory: Callable[..., Mount],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    del mount_factory  # only its /dev/fuse check
    values = many_secrets(24)
    run_cli("init", env=store_env)
    one = node_env(store_env, tmp_path, "one", kek=True)
    two = node_env(store_env, tmp_path, "two", kek=False)
    run_cli("node", "enroll", env=one)
    asked = json.loads(run_cli("node", "enroll", "--json", env=two).stdout)
    done = json.loads(run_cli("node", "enroll", asked["public_key"], "--json", env=one).stdout)
    run_cli("node", "enroll", "--store-key", done["store_key"], env=two)
    for name in ("SECRETFS_KEY_FILE", "SECRETFS_NODE_KEY_FILE"):
        if name in one:
            monkeypatch.setenv(name, one[name])
    vault = Vault.open(location.parse(one["SECRETFS_STORE"]))
    try:
        for ref, value in values.items():
            vault.set(parse_ref(ref), value)
    finally:
        vault.close()
    with node_mount(tmp_path / "m1", one) as m1, node_mount(tmp_path / "m2", two) as m2:
        reader = Reader(secret_paths(values, m2.path))
        with reader.running():
            # A new data key made on node one: node two's mount learns it before any
            # value sealed under it appears, so not one read fails.
            run_cli_process("key", "rotate", "--reencrypt", "--batch-size", "7", env=one)
            reader.wait_passes(2)
        assert reader.failures == []
        assert status(m2)["key_problems"] == []

        run_cli("node", "revoke", asked["node_id"], env=one)
        run_cli("secret", "set", "late", "--from-stdin", input=b"after-revoke", env=one)
        late = "deployment/late"
        wait_for(lambda: (m1.path / late).exists(), timeout=5)
        assert (m1.path / late).read_bytes() == b"after-revoke"
        wait_for(lambda: (m2.path / late).exists(), timeout=5)
        with pytest.raises(OSError):
            (m2.path / late).read_bytes()
        problems = status(m2)["key_problems"]
        assert isinstance(problems, list) and problems
        assert f"{asked['node_id']} was revoked" in problems[0]
        assert status(m1)["key_problems"] == []
        # doctor (on node one) names node two's mount as unable to open values.
        doctor = run_cli("doctor", env=one, check=False)
        assert str(m2.path).encode() in doctor.stdout
        assert b"cannot open every value" in doctor.stdout


def test_a_mount_refuses_a_data_key_a_store_writer_sealed_to_it(
    store_env: dict[str, str],
    tmp_path: Path,
    mount_factory: Callable[..., Mount],
) -> None:
    """Issue 14.3a's attack on a running mount: a data key that someone without a key
    sealed to the node, and a value under it, are refused; status names why, the value
    is never served."""
    from secretfs import crypto, keys

    del mount_factory  # only its /dev/fuse check
    run_cli("init", env=store_env)
    one = node_env(store_env, tmp_path, "one", kek=True)
    two = node_env(store_env, tmp_path, "two", kek=False)
    run_cli("node", "enroll", env=one)
    asked = json.loads(run_cli("node", "enroll", "--json", env=two).stdout)
    done = json.loads(run_cli("node", "enroll", asked["public_key"], "--json", env=one).stdout)
    run_cli("node", "enroll", "--store-key", done["store_key"], env=two)
    run_cli("secret", "set", "db", "--from-stdin", input=b"real", env=one)
    public = crypto.box_public_key(keys.read_node_key(Path(two["SECRETFS_NODE_KEY_FILE"])))
    with node_mount(tmp_path / "m2", two) as m2:
        db = m2.path / "deployment/db"
        assert db.read_bytes() == b"real"
        _forge_data_key(two["SECRETFS_STORE"], asked["node_id"], public, "anonymous sealed box")

        def refused() -> bool:
            problems = status(m2)["key_problems"]
            assert isinstance(problems, list)
            return any("anonymous sealed box" in p for p in problems)

        wait_for(refused, timeout=5)
        try:
            served = db.read_bytes()
        except OSError:
            served = b""
        assert served != b"forged-value"

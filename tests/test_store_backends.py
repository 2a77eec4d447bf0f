"""The same store and CLI behaviour on both backends: SQLite and an etcd v3 cluster."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from secretfs.errors import UsageError
from secretfs.refs import parse_ref
from secretfs.store import location
from secretfs.store.location import EtcdLocation
from secretfs.vault import Vault
from tests.conftest import cli_environment, run_cli
from tests.etcd_cluster import EtcdCluster

MARKER = b"plaintext-marker-c0ffee"


class Store:
    def __init__(self, kind: str, url: str, env: dict[str, str], cluster: EtcdCluster | None):
        self.kind, self.url, self.env, self.cluster = kind, url, env, cluster

    def cli(
        self,
        *args: str,
        input: bytes | None = None,
        check: bool = True,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        return run_cli(*args, env=env or self.env, input=input, check=check)

    def raw_bytes(self) -> list[bytes]:
        """Everything the backend holds, as stored."""
        if self.cluster is not None:
            return [k + b"\n" + v for k, v in self.cluster.dump(self.url.rsplit("/", 1)[1])]
        path = Path(self.url)
        return [p.read_bytes() for p in path.parent.glob(path.name + "*")]


def _new_store(tmp_path: Path, cluster: EtcdCluster | None) -> Store:
    if cluster is None:
        url = str(tmp_path / "store.db")
    else:
        url = cluster.url(f"t{uuid.uuid4().hex[:12]}")
    env = cli_environment(Path("/nonexistent"))
    env["SECRETFS_STORE"] = url
    env["SECRETFS_KEY_FILE"] = str(tmp_path / "store.key")
    s = Store("sqlite" if cluster is None else "etcd", url, env, cluster)
    s.cli("init")
    return s


@pytest.fixture(params=["sqlite", "etcd"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """An initialized store on each backend in turn."""
    cluster = request.getfixturevalue("etcd_cluster") if request.param == "etcd" else None
    return _new_store(tmp_path, cluster)


@pytest.fixture
def etcd_store(etcd_cluster: EtcdCluster, tmp_path: Path) -> Store:
    return _new_store(tmp_path, etcd_cluster)


def test_secret_lifecycle(store: Store) -> None:
    assert (
        "created $S:db version 1"
        in store.cli("secret", "create", "db", "--from-stdin", input=b"hunter2").stderr.decode()
    )
    proc = store.cli("secret", "create", "db", "--from-stdin", input=b"x", check=False)
    assert proc.returncode == 4 and "already exists (409)" in proc.stderr.decode()
    store.cli("secret", "set", "db", "--from-stdin", input=b"hunter3!")
    store.cli("secret", "set", "@api/config", "--from-stdin", input=b'{"user":"u","pw":"p"}')
    assert store.cli("secret", "get", "db").stdout == b"hunter3!"
    assert store.cli("secret", "get", "db", "--version", "1").stdout == b"hunter2"
    assert store.cli("secret", "get", "@api/config/pw").stdout == b"p"
    listing = json.loads(store.cli("secret", "ls", "--json").stdout)
    assert {(e["ref"], e["version"]) for e in listing} == {("$S:db", 2), ("$S:@api/config", 1)}
    history = json.loads(store.cli("secret", "history", "db", "--json").stdout)
    assert [h["version"] for h in history] == [1, 2]
    store.cli("secret", "rm", "db")
    proc = store.cli("secret", "get", "db", check=False)
    assert proc.returncode == 3 and "not found" in proc.stderr.decode()
    proc = store.cli("secret", "create", "db", "--from-stdin", input=b"again")
    assert "version 3" in proc.stderr.decode(), "a re-created secret continues the numbering"
    audit = store.cli("audit", "--json").stdout
    actions = [r["action"] for r in json.loads(audit)]
    assert actions[:4] == ["create", "create", "set", "set"] and "rm" in actions
    assert b"hunter" not in audit


def test_grants_and_scope_owner(store: Store) -> None:
    store.cli("secret", "set", "@api/token", "--from-stdin", input=b"t0k3n")
    store.cli("grant", "@api/token", "--uid", "1234")
    shown = store.cli("permissions", "@api/token").stdout.decode()
    assert "1234" in shown
    store.cli("revoke", "@api/token", "--uid", "1234")
    assert "1234" not in store.cli("permissions", "@api/token").stdout.decode()
    proc = store.cli("secret", "rm", "@api/token")
    assert proc.returncode == 0


def test_wrong_key_is_exit_5(store: Store) -> None:
    store.cli("secret", "set", "db", "--from-stdin", input=b"hunter2")
    env = dict(store.env, SECRETFS_KEY="ab" * 32)
    proc = store.cli("secret", "get", "db", env=env, check=False)
    assert proc.returncode == 5
    assert "$SECRETFS_KEY does not unlock" in proc.stderr.decode()
    assert proc.stdout == b""


def test_the_backend_holds_no_plaintext(store: Store) -> None:
    store.cli("secret", "set", "db", "--from-stdin", input=MARKER)
    store.cli("secret", "rotate", "db", "--from-stdin", input=MARKER + b"-2")
    store.cli("secret", "set", "@api/c", "--from-stdin", input=b'{"k":"' + MARKER + b'"}')
    held = store.raw_bytes()
    assert held and len(b"".join(held)) > 500
    for blob in held:
        assert MARKER not in blob
        assert base64.b64encode(MARKER)[:16] not in blob


def test_concurrent_rotations_all_become_versions(store: Store) -> None:
    """Writers at the same moment: each rotation is a version, none is lost."""
    store.cli("secret", "set", "db", "--from-stdin", input=b"start")
    writers = 4
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "secretfs", "secret", "rotate", "db", "--from-stdin"],
            env=store.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(writers)
    ]
    for i, proc in enumerate(procs):
        assert proc.stdin is not None
        proc.stdin.write(f"value-{i}".encode())
        proc.stdin.close()
    for proc in procs:
        assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
    history = json.loads(store.cli("secret", "history", "db", "--json").stdout)
    assert [h["version"] for h in history] == list(range(1, writers + 2))
    values = {store.cli("secret", "get", "db", "--version", str(v)).stdout for v in range(2, 6)}
    assert values == {f"value-{i}".encode() for i in range(writers)}


def test_a_write_that_meets_another_is_retried(etcd_store: Store) -> None:
    """One admin's rotation is held just before its commit while another rotates: the
    first meets the conflict, starts again, and both rotations are versions. (On SQLite
    the second writer would wait on the database lock instead: nothing to meet.)"""
    store = etcd_store
    store.cli("secret", "set", "db", "--from-stdin", input=b"start")
    env = dict(store.env, SECRETFS_TEST_STOP="before-commit")
    first = subprocess.Popen(
        [sys.executable, "-m", "secretfs", "secret", "rotate", "db", "--from-stdin"],
        env=env,
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert first.stdin is not None
        first.stdin.write(b"from-first")
        first.stdin.close()
        deadline = time.monotonic() + 30
        while _state(first.pid) != "T":
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.02)
        store.cli("secret", "rotate", "db", "--from-stdin", input=b"from-second")
        os.kill(first.pid, signal.SIGCONT)
        assert first.wait(timeout=30) == 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert store.cli("secret", "get", "db", "--version", "2").stdout == b"from-second"
    assert store.cli("secret", "get", "db", "--version", "3").stdout == b"from-first"
    assert store.cli("secret", "get", "db").stdout == b"from-first"


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0]


# -- store URLs and an unreachable cluster -------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("store.db", Path("store.db")),
        ("/var/lib/s.db", Path("/var/lib/s.db")),
        ("sqlite:///var/lib/s.db", Path("/var/lib/s.db")),
        ("etcd://a:2379,b:2380/prod", EtcdLocation(("a:2379", "b:2380"), "prod")),
        ("etcd://a/", EtcdLocation(("a:2379",), "secretfs")),
        ("etcd://a+b:1/p", EtcdLocation(("a:2379", "b:1"), "p")),
        ("etcd://[::1]:2379/x/y", EtcdLocation(("[::1]:2379",), "x/y")),
        ("etcd+https://a:2379/p", EtcdLocation(("a:2379",), "p", tls=True)),
    ],
)
def test_store_urls(text: str, expected: object) -> None:
    assert location.parse(text) == expected


@pytest.mark.parametrize(
    "text", ["etcd:///p", "etcd://a b/p", "etcd://a:2379/p q", "redis://x/y", "sqlite://"]
)
def test_bad_store_urls(text: str) -> None:
    with pytest.raises(UsageError):
        location.parse(text)


def test_bad_store_url_on_the_cli(tmp_path: Path) -> None:
    env = cli_environment(tmp_path / "s.db")
    proc = run_cli("secret", "ls", "--store", "redis://h/p", env=env, check=False)
    assert proc.returncode == 2 and "unknown store URL" in proc.stderr.decode()


def test_unreachable_cluster_fails_fast_naming_the_endpoints(tmp_path: Path) -> None:
    from tests.etcd_cluster import _free_ports

    ports = _free_ports(2)
    url = f"etcd://127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}/p"
    env = cli_environment(tmp_path / "s.db")
    for args in (("init",), ("secret", "ls"), ("secret", "set", "x", "--from-stdin")):
        proc = run_cli(*args, "--store", url, env=env, input=b"v", check=False)
        assert proc.returncode == 7, args
        message = proc.stderr.decode()
        assert f"127.0.0.1:{ports[0]}: cannot connect" in message
        assert f"127.0.0.1:{ports[1]}: cannot connect" in message
        assert "Traceback" not in message


def test_init_refuses_an_existing_etcd_store(etcd_cluster: EtcdCluster, tmp_path: Path) -> None:
    env = cli_environment(tmp_path / "s.db")
    env["SECRETFS_KEY_FILE"] = str(tmp_path / "k")
    url = etcd_cluster.url(f"t{uuid.uuid4().hex[:12]}")
    run_cli("init", "--store", url, env=env)
    env["SECRETFS_KEY_FILE"] = str(tmp_path / "k2")
    proc = run_cli("init", "--store", url, env=env, check=False)
    assert proc.returncode == 7 and "already exists" in proc.stderr.decode()
    assert not (tmp_path / "k2").exists()


def test_a_follower_resyncs_after_compaction(
    etcd_cluster: EtcdCluster, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A watch that resumes from a compacted revision reloads everything."""
    import httpx

    url = etcd_cluster.url(f"t{uuid.uuid4().hex[:12]}")
    monkeypatch.setenv("SECRETFS_KEY_FILE", str(tmp_path / "k"))
    loc = location.parse(url)
    Vault.init(loc)
    writer = Vault.open(loc)
    reader = Vault.open(loc)
    try:
        writer.set(parse_ref("db"), b"one")
        reader.backend.follow()
        seen = reader.backend.data_version()
        writer.set(parse_ref("db"), b"two")
        deadline = time.monotonic() + 1
        while reader.backend.data_version() == seen:
            assert time.monotonic() < deadline, "the change did not arrive within 1 s"
            time.sleep(0.01)
        assert reader.get_value(parse_ref("db")) == b"two"
        # Pretend the watch was broken since the start, and compact what it missed.
        backend = reader.backend
        follow = backend._follow  # type: ignore[attr-defined]
        follow.revision = 1
        writer.set(parse_ref("db"), b"three")
        head = httpx.post(
            f"http://{etcd_cluster.endpoints[0]}/v3/kv/range",
            json={"key": base64.b64encode(b"/").decode()},
            timeout=5,
        ).json()["header"]["revision"]
        httpx.post(
            f"http://{etcd_cluster.endpoints[0]}/v3/kv/compaction",
            json={"revision": head, "physical": True},
            timeout=5,
        ).raise_for_status()
        backend._watch_gw.stop_watch()  # type: ignore[attr-defined]
        deadline = time.monotonic() + 3
        while reader.get_value(parse_ref("db")) != b"three":
            assert time.monotonic() < deadline, "no resync after compaction"
            time.sleep(0.02)
        assert backend.status()["connected"] in (True, False)
    finally:
        reader.close()
        writer.close()

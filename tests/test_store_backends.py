"""What one backend does and the others do not (etcd's conflicts, limits, follower and
damaged records), and store URLs. What every backend does alike is the contract suite,
tests/test_store_contract.py."""

from __future__ import annotations

import base64
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from secretfs.errors import StoreError, UsageError
from secretfs.refs import parse_ref
from secretfs.store import location
from secretfs.store.etcd import EtcdLocation
from secretfs.store.etcd.follower import Follower
from secretfs.store.memory import MemoryLocation
from secretfs.store.sqlite import SqliteLocation
from secretfs.vault import Vault
from tests.conftest import cli_environment, run_cli, run_cli_process
from tests.etcd_cluster import EtcdCluster, followed
from tests.stores import Store


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
        ("store.db", SqliteLocation(Path("store.db"))),
        ("/var/lib/s.db", SqliteLocation(Path("/var/lib/s.db"))),
        ("sqlite:///var/lib/s.db", SqliteLocation(Path("/var/lib/s.db"))),
        ("etcd://a:2379,b:2380/prod", EtcdLocation(("a:2379", "b:2380"), "prod")),
        ("etcd://a/", EtcdLocation(("a:2379",), "secretfs")),
        ("etcd://a+b:1/p", EtcdLocation(("a:2379", "b:1"), "p")),
        ("etcd://[::1]:2379/x/y", EtcdLocation(("[::1]:2379",), "x/y")),
        ("etcd+https://a:2379/p", EtcdLocation(("a:2379",), "p", tls=True)),
        ("memory://t1", MemoryLocation("t1")),
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
    assert proc.returncode == 4 and "already exists" in proc.stderr.decode()
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
        with followed(reader.backend) as follower:
            assert isinstance(follower, Follower)
            seen = reader.backend.data_version()
            writer.set(parse_ref("db"), b"two")
            deadline = time.monotonic() + 1
            while reader.backend.data_version() == seen:
                assert time.monotonic() < deadline, "the change did not arrive within 1 s"
                time.sleep(0.01)
            assert reader.get_value(parse_ref("db")) == b"two"
            # Pretend the watch was broken since the start, and compact what it missed.
            backend = reader.backend
            follower._follow.revision = 1
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
            follower._watch_gw.stop_watch()
            deadline = time.monotonic() + 3
            while reader.get_value(parse_ref("db")) != b"three":
                assert time.monotonic() < deadline, "no resync after compaction"
                time.sleep(0.02)
            assert backend.status()["connected"] in (True, False)
    finally:
        reader.close()
        writer.close()


# -- etcd's records, batches and audit keys ----------------------------------------------


def _err(proc: subprocess.CompletedProcess[bytes]) -> str:
    return proc.stderr.decode()


def test_doctor_finds_a_damaged_etcd_record(etcd_store: Store) -> None:
    """On etcd the integrity and values checks look at the records themselves."""
    import httpx

    store = etcd_store
    assert store.cluster is not None
    store.cli("secret", "set", "db", "--from-stdin", input=b"v1")
    store.cli("secret", "set", "ok", "--from-stdin", input=b"fine")
    prefix = store.url.rsplit("/", 1)[1]
    records = dict(store.cluster.dump(prefix))
    versions = sorted(k for k in records if b"/d/v/" in k)
    gateway = f"http://{store.cluster.endpoints[0]}/v3/kv/put"

    def put(key: bytes, value: bytes) -> None:
        httpx.post(
            gateway,
            json={"key": base64.b64encode(key).decode(), "value": base64.b64encode(value).decode()},
            timeout=5,
        ).raise_for_status()

    row = json.loads(records[versions[0]])
    blob = bytearray(base64.b64decode(row["ciphertext"]))
    blob[-3] ^= 0x40
    row["ciphertext"] = base64.b64encode(bytes(blob)).decode()
    put(versions[0], json.dumps(row).encode())
    proc = store.cli("doctor", "--json", check=False)
    failed = {c["name"]: c for c in json.loads(proc.stdout)["checks"] if c["status"] == "fail"}
    assert proc.returncode == 1 and "$S:db v1" in failed["values"]["detail"]
    assert store.cli("secret", "get", "db", check=False).returncode == 6
    assert store.cli("secret", "get", "ok").stdout == b"fine"

    put(versions[1], b"{not json")
    proc = store.cli("doctor", "--json", check=False)
    failed = {c["name"]: c for c in json.loads(proc.stdout)["checks"] if c["status"] == "fail"}
    assert proc.returncode == 1
    assert failed["integrity"]["detail"].startswith("every record parses: record /")
    assert "not valid JSON" in failed["integrity"]["detail"]
    assert "Traceback" not in proc.stderr.decode()
    assert "is damaged (not valid JSON)" in failed["records"]["detail"]
    broken = store.cli("secret", "get", "ok", check=False)
    assert broken.returncode == 6 and "is damaged (not valid JSON)" in _err(broken)
    assert "Traceback" not in _err(broken)

    # A scope's owner/mode record, damaged in shape rather than syntax.
    store.cli("secret", "chmod", "@api", "0440")
    (scope_key,) = [k for k, _ in store.cluster.dump(prefix) if b"/d/sc/" in k]
    put(scope_key, b'{"scope": "@api"}')
    listed = store.cli("permissions", "@api", check=False)
    assert listed.returncode == 6 and "is damaged (fields are missing" in _err(listed)
    assert "Traceback" not in _err(listed)


def _dotenv(n: int, tag: str) -> bytes:
    return b"".join(f"K{i:05d}={tag}-{i}\n".encode() for i in range(n))


def _versions(store: Store) -> dict[bytes, int]:
    """How many version records each secret id has in etcd."""
    assert store.cluster is not None
    counts: dict[bytes, int] = {}
    for key, _ in store.cluster.dump(store.url.rsplit("/", 1)[1]):
        if b"/d/v/" in key:
            sid = key.split(b"/d/v/")[1].split(b"/")[0]
            counts[sid] = counts.get(sid, 0) + 1
    return counts


def test_a_large_import_fits_etcds_default_limits(etcd_store: Store, tmp_path: Path) -> None:
    """1,000 secrets under the default --max-txn-ops (128): batches, each whole; the
    audit log gets one key per batch, not one per secret."""
    source = tmp_path / "big.env"
    source.write_bytes(_dotenv(1000, "v1"))
    proc = etcd_store.cli("import", "--file", str(source))
    assert "1000 created" in proc.stderr.decode()
    counts = _versions(etcd_store)
    assert len(counts) == 1000 and set(counts.values()) == {1}
    assert etcd_store.cli("secret", "get", "K00999").stdout == b"v1-999"
    assert etcd_store.cluster is not None
    audit_keys = [
        k for k, _ in etcd_store.cluster.dump(etcd_store.url.rsplit("/", 1)[1]) if b"/a/" in k
    ]
    assert len(audit_keys) < 60, len(audit_keys)
    # A conflict anywhere in the set refuses before any batch commits.
    source.write_bytes(_dotenv(1000, "v1") + b"NEW=1\n")
    proc = etcd_store.cli("import", "--file", str(source), check=False)
    assert proc.returncode == 4 and "1000 secret(s) exist already" in proc.stderr.decode()
    assert etcd_store.cli("secret", "get", "NEW", check=False).returncode == 3
    # Re-running with --overwrite is idempotent: equal values stay as they are.
    proc = etcd_store.cli("import", "--overwrite", "--file", str(source))
    assert "1 created, 0 updated, 1000 unchanged" in proc.stderr.decode()


@pytest.mark.parametrize("point", ["etcd-txn-answer-lost", "etcd-txn-unsent"])
def test_a_batch_of_unknown_outcome_is_read_back_never_doubled(
    etcd_store: Store, tmp_path: Path, point: str
) -> None:
    """The second batch's outcome is unknown (applied with its answer lost, or never
    sent): read back, it is counted once (or sent once more), never twice."""
    source = tmp_path / "some.env"
    source.write_bytes(_dotenv(100, "v1"))
    env = dict(etcd_store.env, SECRETFS_TEST_FAULT=f"{point}:2")
    proc = etcd_store.cli("import", "--file", str(source), env=env)
    assert "100 created" in proc.stderr.decode()
    counts = _versions(etcd_store)
    assert len(counts) == 100 and set(counts.values()) == {1}
    history = etcd_store.cli("secret", "history", "K00040").stdout.decode()
    assert history.count("\n") == 2, history  # a header and one version


def test_a_write_right_after_our_own_commit_still_sees_another_writers(
    etcd_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transaction soon after our own commit starts from it without reading d/lock;
    another writer in between makes its commit fail the compare, and it is retried on
    what that writer left: versions are never numbered twice, no write is lost."""
    monkeypatch.setenv("SECRETFS_KEY_FILE", etcd_store.env["SECRETFS_KEY_FILE"])
    where = location.parse(etcd_store.url)
    ours, theirs = Vault.open(where), Vault.open(where)
    ref = parse_ref("db")
    try:
        assert ours.set(ref, b"one").meta.version == 1
        assert theirs.set(ref, b"two").meta.version == 2
        assert ours.set(ref, b"three").meta.version == 3  # within 1 s of its first
        ours.write_many([(parse_ref("a"), b"1"), (parse_ref("b"), b"2")])
        theirs.set(parse_ref("c"), b"3")
        ours.write_many([(parse_ref("d"), b"4")])  # its guessed next id was taken
        metas = [ours.backend.get_meta(parse_ref(n).scope.key, n) for n in "abcd"]
        assert len({m.secret_id for m in metas if m is not None}) == 4
    finally:
        ours.close()
        theirs.close()
    history = etcd_store.cli("secret", "history", "db").stdout.decode()
    assert history.count("\n") == 4, history  # a header and three versions
    assert etcd_store.cli("secret", "get", "d").stdout == b"4"


def test_a_mount_loads_in_pages_over_grpc_and_json_alike(
    etcd_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mount's load reads every d/ key at one revision in many small pages (here),
    the same over gRPC as through the JSON gateway."""
    from secretfs.store.etcd import gateway

    for i in range(12):
        etcd_store.cli("secret", "set", f"k{i}", "--from-stdin", input=f"v{i}".encode())
    assert etcd_store.cluster is not None
    prefix = etcd_store.url.rsplit("/", 1)[1].encode()
    stored = {k: v for k, v in etcd_store.cluster.dump(prefix.decode()) if b"/d/" in k}
    monkeypatch.setattr(gateway, "LOAD_FIRST_PAGE", 2)
    monkeypatch.setattr(gateway, "LOAD_PAGE_BYTES", 1)  # every page as small as the first
    monkeypatch.setattr(gateway, "LOAD_MAX_PAGE", 2)
    where = location.parse(etcd_store.url)
    assert isinstance(where, EtcdLocation)
    from secretfs.store.etcd.follower import Follower

    follower = Follower(where, 2.0)
    try:
        assert follower._follow.kv == stored and len(stored) > 40
    finally:
        follower.close()
    gw = gateway.Gateway(where)
    try:
        gw._grpc = False  # as after an endpoint that answered HTTP/1.1
        kv, _ = gw.load(
            [(where.key_prefix, gateway.prefix_end(where.key_prefix))],
            deadline=time.monotonic() + 30,
        )
        assert {k: v for k, v in kv.items() if b"/d/" in k} == stored
    finally:
        gw.close()


def test_audit_batches_are_merged_keeping_their_ids(etcd_store: Store) -> None:
    """Many small audit keys become one; every record keeps its id, so a reader that
    follows the log (`after_id`) sees nothing twice and nothing lost."""
    from secretfs.audit import cli_record
    from secretfs.store.etcd import EtcdBackend

    where = location.parse(etcd_store.url)
    assert isinstance(where, EtcdLocation)
    backend = EtcdBackend.open(where)
    try:
        for i in range(40):
            with backend.transaction():
                backend.append_audit([cli_record("get", f"$S:k{i}", 1, "ok", None)] * 2)
        before = backend.read_audit()
        prefix = etcd_store.url.rsplit("/", 1)[1]
        assert etcd_store.cluster is not None
        keys = [k for k, _ in etcd_store.cluster.dump(prefix) if b"/a/" in k]
        assert len(keys) >= 40
        assert backend.compact_audit(time.time_ns()) == len(keys) - 1
        after = backend.read_audit()
        assert [(r.id, r.ref, r.time_ns) for r in after] == [
            (r.id, r.ref, r.time_ns) for r in before
        ]
        assert len([k for k, _ in etcd_store.cluster.dump(prefix) if b"/a/" in k]) == 1
        assert backend.compact_audit(time.time_ns()) == 0
        last = after[-1].id
        assert backend.read_audit(after_id=last) == []
        with backend.transaction():
            backend.append_audit([cli_record("get", "$S:new", 1, "ok", None)])
        assert [r.ref for r in backend.read_audit(after_id=last)] == ["$S:new"]
    finally:
        backend.close()


def test_etcd_audit_prune_splits_into_transactions_within_the_limit(
    etcd_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More expired keys than one Txn may touch: the prune takes several, all commit;
    the batches left are merged into one key."""
    from dataclasses import replace

    from secretfs.audit import cli_record
    from secretfs.store.etcd import EtcdBackend

    monkeypatch.setenv("SECRETFS_ETCD_MAX_TXN_OPS", "16")
    where = location.parse(etcd_store.url)
    assert isinstance(where, EtcdLocation)
    backend = EtcdBackend.open(where)
    old = time.time_ns() - 86400 * 10**9
    try:
        for i in range(40):
            with backend.transaction():
                backend.append_audit([replace(cli_record("get", f"$S:k{i}"), time_ns=old)])
        with backend.transaction():
            backend.append_audit([cli_record("get", "$S:new")])
        with backend.transaction():
            backend.append_audit([cli_record("get", "$S:newer")])
        assert backend.prune_audit(old + 1, dry_run=True) == 40
        # What is left is merged on the same pass (here: every batch counts as old).
        monkeypatch.setattr("secretfs.store.etcd.records.AUDIT_COMPACT_AGE_NS", 0)
        assert backend.prune_audit(old + 1) == 40
        assert [r.ref for r in backend.read_audit()] == ["$S:new", "$S:newer"]
        prefix = etcd_store.url.rsplit("/", 1)[1]
        assert etcd_store.cluster is not None
        assert len([k for k, _ in etcd_store.cluster.dump(prefix) if b"/a/" in k]) == 1
    finally:
        backend.close()


# -- SQLite's own --------------------------------------------------------------------------


def test_sqlite_errors_are_store_errors(tmp_path: Path) -> None:
    """What SQLite refuses comes out of the backend as StoreError (exit 7), never as
    sqlite3.Error: the vault, the daemon and the CLI know one hierarchy."""
    from tests.stores import new_backend

    new_backend("sqlite", tmp_path, None).close()
    backend = SqliteLocation(tmp_path / "store.db").open(readonly=True)
    try:
        readonly = r"^store: attempt to write a readonly database"
        with pytest.raises(StoreError, match=readonly), backend.transaction():
            backend.meta_set("k", b"v")
        with pytest.raises(StoreError, match=r"^store: "), backend.transaction():
            backend.add_secret("deployment", "db", 1, 1)
        assert backend.meta_get("k") is None
    finally:
        backend.close()


def test_a_sqlite_failure_on_the_cli_is_exit_7_naming_the_store(tmp_path: Path) -> None:
    """The CLI's message and exit code for what SQLite refuses are what they were when
    the CLI caught sqlite3.Error itself: `store: <SQLite's words>`, exit 7."""
    store = tmp_path / "store.db"
    env = cli_environment(store)
    env["SECRETFS_KEY_FILE"] = str(tmp_path / "store.key")
    run_cli("init", env=env)
    with sqlite3.connect(store) as conn:  # someone with write access to the file
        conn.execute("DROP TABLE scopes")
    proc = run_cli("secret", "ls", env=env, check=False)
    assert proc.returncode == 7
    assert proc.stderr == b"secretfs: error: store: no such table: main.scopes\n"


# -- memory's own --------------------------------------------------------------------------


def test_the_secretfs_command_refuses_a_memory_store(tmp_path: Path) -> None:
    """`secretfs init --store memory://x` (a typo, or a try from a shell) must not make a
    store gone at exit, nor a key file on disk it asks to have backed up: the command
    refuses memory:// (exit 2) and writes nothing. In one process (the API) it works."""
    name = f"typo{uuid.uuid4().hex[:8]}"
    env = cli_environment(tmp_path / "unused.db")
    env["SECRETFS_STORE"] = f"memory://{name}"
    env["HOME"] = env["XDG_CONFIG_HOME"] = str(tmp_path)
    proc = run_cli_process("init", env=env, check=False)
    assert proc.returncode == 2, proc.stderr
    assert b"memory:// store lives in one process" in proc.stderr
    assert proc.stdout == b""
    assert not list(tmp_path.rglob("*.key"))
    assert not Path(f"/etc/secretfs/memory/{name}.key").exists()
    assert run_cli("init", env=dict(env, SECRETFS_KEY_FILE=str(tmp_path / "k"))).returncode == 0


def test_an_import_reads_once_for_all_its_batches_and_never_past_another_writer(
    etcd_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An import in many batches reads what they all need up front (the rows and tags
    of a new store as whole ranges), then each batch is one Txn: what it read, with its
    own commit laid over, holds until another writer changes d/lock. When one does,
    between two batches, the next batch must not build on what it had read (its commit
    fails the compare and is retried on fresh reads): nothing is lost or doubled."""
    from secretfs.store.etcd.gateway import Gateway

    monkeypatch.setenv("SECRETFS_KEY_FILE", etcd_store.env["SECRETFS_KEY_FILE"])
    where = location.parse(etcd_store.url)
    ours, theirs = Vault.open(where), Vault.open(where)
    calls = {"read": 0, "write": 0, "load": 0}
    interrupt_at = 0  # the commit after which the other writer writes (0: none)
    real_txn, real_load = Gateway.txn, Gateway.load

    def txn(self: Gateway, request: Any, *, write: bool = False) -> Any:
        answer = real_txn(self, request, write=write)
        if self is ours.backend._gw:  # type: ignore[attr-defined]
            calls["write" if write else "read"] += 1
            if write and calls["write"] == interrupt_at:
                theirs.set(parse_ref("between"), b"theirs")
        return answer

    def load(self: Gateway, *args: Any, **kwargs: Any) -> Any:
        calls["load"] += self is ours.backend._gw  # type: ignore[attr-defined]
        return real_load(self, *args, **kwargs)

    monkeypatch.setattr(Gateway, "txn", txn)
    monkeypatch.setattr(Gateway, "load", load)
    batches = -(-300 // ours.backend.write_batch([2] * 300))
    try:
        first = [(parse_ref(f"a{i:04d}"), f"a{i}".encode()) for i in range(300)]
        assert [o.action for o in ours.write_many(first)] == ["created"] * 300
        # Up front: the meta keys, then rows and tags whole, then the new ids' (absent)
        # versions. Then nothing but one commit per batch.
        assert calls == {"read": 2, "load": 2, "write": batches}, calls

        calls.update(read=0, write=0, load=0)
        interrupt_at = 3
        second = [(parse_ref(f"b{i:04d}"), f"b{i}".encode()) for i in range(300)]
        assert [o.action for o in ours.write_many(second)] == ["created"] * 300
        # One more commit: the batch that met the other writer, sent again.
        assert calls["write"] == batches + 1, calls
        scope = parse_ref("between").scope.key
        names = [f"{p}{i:04d}" for p in "ab" for i in range(300)]
        metas = [ours.backend.get_meta(scope, name) for name in names]
        ids = {m.secret_id for m in metas if m is not None and m.version == 1}
        assert len(ids) == 600
        between = ours.backend.get_meta(scope, "between")
        assert between is not None and between.secret_id not in ids
    finally:
        ours.close()
        theirs.close()
    counts = _versions(etcd_store)
    assert len(counts) == 601 and set(counts.values()) == {1}
    assert etcd_store.cli("secret", "get", "between").stdout == b"theirs"
    assert etcd_store.cli("secret", "get", "b0299").stdout == b"b299"
    assert etcd_store.cli("doctor", check=False).returncode == 0


def test_a_txn_is_the_same_over_grpc_and_the_json_gateway(etcd_store: Store) -> None:
    """Every Txn goes over gRPC; where a member speaks only the gateway's JSON, the
    same request gives the same answer, compares and etcd's refusals alike."""
    from secretfs.store.etcd.gateway import Gateway
    from secretfs.store.etcd.txn import Delete, Put, Range, Txn

    where = location.parse(etcd_store.url)
    assert isinstance(where, EtcdLocation)
    base = where.key_prefix + b"t/"
    answers = []
    for grpc in (True, False):
        gw = Gateway(where)
        try:
            gw._grpc = grpc
            mine = base + (b"grpc/" if grpc else b"json/")
            first = gw.txn(Txn([Put(mine + b"a", b"\0one"), Put(mine + b"b", b"two")]), write=True)
            assert first.succeeded and first.ranges == [[], []]
            read = gw.txn(
                Txn([Range(mine + b"a"), Range(mine, mine + b"\xff"), Range(mine + b"zz")])
            )
            assert [[(kv.key, kv.value) for kv in r] for r in read.ranges] == [
                [(mine + b"a", b"\0one")],
                [(mine + b"a", b"\0one"), (mine + b"b", b"two")],
                [],
            ]
            rev = read.ranges[0][0].mod_revision
            assert rev == first.revision and read.revision >= rev
            # A compare that no longer holds: nothing applied. One that holds: applied.
            stale = gw.txn(Txn([Delete(mine + b"a")], [(mine + b"a", rev - 1)]), write=True)
            assert not stale.succeeded
            absent = gw.txn(Txn([Put(mine + b"c", b"3")], [(mine + b"c", 0)]), write=True)
            assert absent.succeeded
            done = gw.txn(Txn([Delete(mine + b"a")], [(mine + b"a", rev)]), write=True)
            assert done.succeeded
            assert gw.txn(Txn([Range(mine + b"a")])).ranges == [[]]
            with pytest.raises(StoreError, match=r"too many operations.*--max-txn-ops"):
                gw.txn(Txn([Put(mine + b"%d" % i, b"") for i in range(129)]), write=True)
            assert gw.grpc is grpc
            answers.append([(kv.key[len(mine) :], kv.value) for kv in gw.txn(
                Txn([Range(mine, mine + b"\xff")])).ranges[0]])  # fmt: skip
        finally:
            gw.close()
    assert answers[0] == answers[1] == [(b"b", b"two"), (b"c", b"3")]


def test_the_read_cache_knows_exactly_the_ranges_it_read() -> None:
    """Ranges read whole merge where they touch or overlap; a key or a range is known
    only when one of them covers all of it (against a plain sort-and-merge, and a
    linear search, of random ranges over a small key space)."""
    import random

    from secretfs.store.etcd.records import _ReadCache

    rng = random.Random(7)
    points = [bytes([c]) for c in b"abcdefghij"] + [b"c\0", b"e\0\0"]
    for _ in range(300):
        cache = _ReadCache(lock=1)
        added = []
        for _ in range(rng.randrange(1, 7)):
            lo, hi = sorted(rng.sample(points, 2))
            cache.add_range(lo, hi)
            added.append((lo, hi))
        merged: list[tuple[bytes, bytes]] = []
        for lo, hi in sorted(added):
            if merged and lo <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
            else:
                merged.append((lo, hi))
        assert cache.ranges == merged
        for lo in points:
            assert cache.knows(lo) == any(a <= lo and lo + b"\0" <= b for a, b in merged)
            for hi in points:
                if lo < hi:
                    assert cache.knows(lo, hi) == any(a <= lo and hi <= b for a, b in merged)
        cache.put(b"z", b"1")
        assert cache.knows(b"z") and not cache.knows(b"z\0")

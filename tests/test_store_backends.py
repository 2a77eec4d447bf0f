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
from secretfs.store.etcd import EtcdLocation
from secretfs.store.sqlite import SqliteLocation
from secretfs.vault import Vault
from tests.conftest import cli_environment, run_cli, run_cli_process
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
        ("store.db", SqliteLocation(Path("store.db"))),
        ("/var/lib/s.db", SqliteLocation(Path("/var/lib/s.db"))),
        ("sqlite:///var/lib/s.db", SqliteLocation(Path("/var/lib/s.db"))),
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
        follower = backend._follower  # type: ignore[attr-defined]
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


# -- every CLI operation on both backends ---------------------------------------------


def _err(proc: subprocess.CompletedProcess[bytes]) -> str:
    return proc.stderr.decode()


def _history(store: Store, ref: str) -> list[int]:
    return [h["version"] for h in json.loads(store.cli("secret", "history", ref, "--json").stdout)]


def test_rotate_rollback_prune(store: Store) -> None:
    store.cli("secret", "create", "db", "--from-stdin", input=b"v1")
    store.cli("secret", "rotate", "db", "--from-stdin", input=b"v2")
    generated = json.loads(store.cli("secret", "rotate", "db", "--generate", "--json").stdout)
    assert (generated["previous_version"], generated["new_version"]) == (2, 3)
    out = store.cli("secret", "rollback", "db", "--to", "1")
    assert out.stdout == b"rolled back $S:db: version 3 -> 4 (the value of version 1)\n"
    assert store.cli("secret", "get", "db").stdout == b"v1"
    same = store.cli("secret", "rollback", "db", "--to", "4", check=False)
    assert same.returncode == 2 and "already the current one" in _err(same)
    pruned = store.cli("secret", "prune", "db", "--keep", "2")
    assert pruned.stdout == b"pruned $S:db: 2 version(s) (1, 2)\n"
    assert _history(store, "db") == [3, 4]
    store.cli("secret", "set", "other", "--from-stdin", input=b"o1")
    store.cli("secret", "set", "other", "--from-stdin", input=b"o2")
    all_out = json.loads(store.cli("secret", "prune", "--all", "--keep", "1", "--json").stdout)
    assert all_out == [{"ref": "$S:db", "pruned": [3]}, {"ref": "$S:other", "pruned": [1]}]
    # The store-wide bound prunes on write.
    store.cli("config", "set", "max-versions", "2")
    for value in (b"o3", b"o4"):
        store.cli("secret", "set", "other", "--from-stdin", input=value)
    assert _history(store, "other") == [3, 4]
    actions = [r["action"] for r in json.loads(store.cli("audit", "--json").stdout)]
    assert {"rotate", "rollback", "prune"} <= set(actions)


def test_expiry_and_due(store: Store) -> None:
    store.cli("secret", "create", "old", "--from-stdin", "--expires-at", "2001-02-03", input=b"o")
    store.cli("secret", "create", "fresh", "--from-stdin", "--expires-at", "+30d", input=b"f")
    store.cli(
        "secret", "create", "tok", "--from-stdin", "--rotate-every", "1d", input=b"t"
    )  # fmt: skip
    records = {r["ref"]: r for r in json.loads(store.cli("secret", "ls", "--json").stdout)}
    assert records["$S:old"]["expired"] is True
    assert records["$S:fresh"]["expired"] is False and records["$S:fresh"]["expires"]
    assert records["$S:tok"]["rotate_every"] == "1d"
    due = json.loads(store.cli("secret", "ls", "--due", "--json").stdout)
    assert [r["ref"] for r in due] == ["$S:old"]
    soon = json.loads(store.cli("secret", "ls", "--due", "--within", "31d", "--json").stdout)
    assert [r["ref"] for r in soon] == ["$S:fresh", "$S:old", "$S:tok"]
    got = store.cli("secret", "get", "old")
    assert got.stdout == b"o" and "warning: $S:old expired" in _err(got)
    store.cli("secret", "expiry", "old", "--expires-at", "none")
    assert json.loads(store.cli("secret", "ls", "--due", "--json").stdout) == []
    state = json.loads(store.cli("secret", "expiry", "old", "--json").stdout)
    assert state["expires"] is None and state["version"] == 1


def test_key_status_rotate_and_reencrypt(store: Store) -> None:
    values = {f"s{i}": f"value-{i}".encode() for i in range(5)}
    lines = b"".join(b"%s=%s\n" % (name.encode(), value) for name, value in values.items())
    store.cli("import", "--format", "dotenv", input=lines)
    status = json.loads(store.cli("key", "status", "--json").stdout)
    assert [g["generation"] for g in status["data_keys"]] == [1]
    key_file = Path(store.env["SECRETFS_KEY_FILE"])
    old_key = key_file.read_bytes()
    out = store.cli("key", "rotate")
    assert out.returncode == 0 and key_file.read_bytes() != old_key
    old_env = dict(store.env, SECRETFS_KEY=old_key.decode().strip())
    wrong = store.cli("secret", "get", "s0", env=old_env, check=False)
    assert wrong.returncode == 5 and "$SECRETFS_KEY does not unlock" in _err(wrong)
    before = store.raw_bytes()
    out = store.cli("key", "rotate", "--reencrypt", "--batch-size", "2")
    assert "every value is sealed under data key generation 2" in out.stdout.decode()
    status = json.loads(store.cli("key", "status", "--json").stdout)
    assert [g["generation"] for g in status["data_keys"]] == [2]
    assert store.raw_bytes() != before
    from secretfs import formats

    out = store.cli("export", "--format", "json").stdout
    assert {e.name: e.value for e in formats.parse("json", out).entries} == values
    history = json.loads(store.cli("secret", "history", "s0", "--json").stdout)
    assert [h["key_generation"] for h in history] == [2]


def test_key_passwd(store: Store, tmp_path: Path) -> None:
    env = dict(store.env, SECRETFS_PASSWORD="old password 123")
    del env["SECRETFS_KEY_FILE"]
    if store.cluster is None:
        env["SECRETFS_STORE"] = str(tmp_path / "pw.db")
    else:
        env["SECRETFS_STORE"] = store.cluster.url(f"t{uuid.uuid4().hex[:12]}")
    store.cli("init", env=env)
    store.cli("secret", "set", "db", "--from-stdin", input=b"x", env=env)
    out = store.cli("key", "passwd", input=b"new password 456\n", env=env)
    assert "password changed" in out.stdout.decode()
    assert store.cli("secret", "get", "db", env=env, check=False).returncode == 5
    new_env = dict(env, SECRETFS_PASSWORD="new password 456")
    assert store.cli("secret", "get", "db", env=new_env).stdout == b"x"
    rotated = store.cli("key", "rotate", env=new_env)
    assert "new salt" in rotated.stdout.decode()
    assert store.cli("secret", "get", "db", env=new_env).stdout == b"x"


def test_import_export_every_format(store: Store, tmp_path: Path) -> None:
    from secretfs import formats

    values = {"A": b"one", "B": b"two\nlines", "C": b'it\'s "q" $HOME'}
    for fmt in ("dotenv", "json", "k8s"):
        source = tmp_path / f"in.{fmt}"
        source.write_bytes(formats.render(fmt, values))  # type: ignore[arg-type]
        store.cli("import", f":{fmt}", "--format", fmt, "--file", str(source))
        target = tmp_path / f"out.{fmt}"
        store.cli("export", f":{fmt}", "--format", fmt, "--file", str(target))
        parsed = formats.parse(fmt, target.read_bytes())  # type: ignore[arg-type]
        assert {e.name: e.value for e in parsed.entries} == values
    again = store.cli("import", ":json", "--file", str(tmp_path / "in.dotenv"), check=False)
    assert again.returncode != 0 and store.cli("secret", "get", ":json/A").stdout == b"one"
    changed = tmp_path / "changed.yaml"
    changed.write_bytes(formats.render("k8s", dict(values, B=b"new")))
    store.cli("import", ":json", "--format", "k8s", "--file", str(changed), "--overwrite")
    assert store.cli("secret", "get", ":json/B").stdout == b"new"
    listing = json.loads(store.cli("secret", "ls", "--json").stdout)
    assert len(listing) == 9 and {r["version"] for r in listing} == {1, 2}


def test_chmod_chown_permissions(store: Store) -> None:
    store.cli("secret", "set", "@api/token", "--from-stdin", input=b"t")
    store.cli("secret", "chmod", "@api/token", "0440")
    store.cli("secret", "chown", "@api", "1000:50")
    shown = json.loads(store.cli("permissions", "@api/token", "--json").stdout)
    text = json.dumps(shown)
    assert "1000" in text and "50" in text and "440" in text
    store.cli("secret", "chmod", "@api/token", "inherit")
    assert "440" not in json.dumps(
        json.loads(store.cli("permissions", "@api/token", "--json").stdout)
    )
    bad = store.cli("secret", "chmod", "@api/token", "0999", check=False)
    assert bad.returncode == 2


def test_run_and_inject(store: Store, tmp_path: Path) -> None:
    store.cli("secret", "set", "db", "--from-stdin", input=b"hunter2")
    store.cli("secret", "set", "@api/config", "--from-stdin", input=b'{"pw":"p9"}')
    env = dict(store.env, DB="$S:db", PW="$S:@api/config/pw")
    proc = run_cli_process(
        "run", "--", sys.executable, "-c",
        "import os,sys; sys.stdout.write(os.environ['DB'] + '|' + os.environ['PW'])",
        env=env,
    )  # fmt: skip
    assert proc.stdout == b"hunter2|p9"
    out = tmp_path / "app.conf"
    store.cli("inject", "-o", str(out), input=b"x={{ $S:db }} y={{ $S:@api/config/pw }}")
    assert out.read_bytes() == b"x=hunter2 y=p9"
    missing = store.cli("inject", "-o", str(tmp_path / "n"), input=b"{{ $S:nope }}", check=False)
    assert missing.returncode != 0 and not (tmp_path / "n").exists()


def test_doctor(store: Store) -> None:
    store.cli("secret", "set", "db", "--from-stdin", input=b"v1")
    store.cli("secret", "set", "db", "--from-stdin", input=b"v2")
    proc = store.cli("doctor", "--json", check=False)
    report = json.loads(proc.stdout)
    mine = {c["name"]: c for c in report["checks"] if not c["name"].startswith("mount ")}
    assert proc.returncode == 0 and report["healthy"], mine
    assert mine["values"]["status"] == "ok" and "2 stored version(s)" in mine["values"]["detail"]
    assert mine["unlock"]["status"] == "ok"
    integrity = "PRAGMA integrity_check" if store.kind == "sqlite" else "every record parses"
    assert mine["integrity"]["detail"] == f"{integrity}: ok"
    if store.kind == "etcd":
        assert mine["store"]["detail"].startswith("etcd cluster answers")
    wrong = store.cli("doctor", "--json", env=dict(store.env, SECRETFS_KEY="ab" * 32), check=False)
    checks = {c["name"]: c for c in json.loads(wrong.stdout)["checks"]}
    assert wrong.returncode == 1 and checks["unlock"]["status"] == "fail"


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


def test_registry_and_git_credentials(store: Store) -> None:
    store.cli("registry", "add", "ghcr.io", "-u", "bot", "--password-stdin", input=b"pw-1\n")
    store.cli("registry", "add", "quay.io", "-u", "ci", "--token-stdin", input=b"tok-2")
    assert "ghcr.io" in store.cli("registry", "ls").stdout.decode()
    config = json.loads(store.cli("secret", "get", "@registry/config.json").stdout)
    assert base64.b64decode(config["auths"]["quay.io"]["auth"]) == b"ci:tok-2"
    store.cli("registry", "rm", "ghcr.io")
    assert "ghcr.io" not in store.cli("registry", "ls").stdout.decode()
    store.cli("git", "add", "github", "--pat-stdin", input=b"ghp_x\n")
    assert store.cli("secret", "get", "@git/github").stdout.strip() == b"ghp_x"


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


def test_rm_restore_and_purge(store: Store) -> None:
    store.cli("secret", "set", "db", "--from-stdin", input=b"v1")
    store.cli("secret", "set", "db", "--from-stdin", input=b"v2")
    store.cli("grant", "db", "--uid", "1000")
    store.cli("secret", "rm", "db", "--force")
    assert store.cli("secret", "get", "db", check=False).returncode == 3
    store.cli("secret", "restore", "db")
    assert store.cli("secret", "get", "db", "--version", "1").stdout == b"v1"
    assert store.cli("secret", "get", "db").stdout == b"v2"
    assert _history(store, "db") == [1, 2]
    store.cli("secret", "rm", "db", "--force", "--purge")
    assert store.cli("secret", "restore", "db", check=False).returncode == 3

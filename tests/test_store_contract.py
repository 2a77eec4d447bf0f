"""The backend contract, one suite over every backend: SQLite, an etcd v3 cluster and
the in-memory store. The same CLI operations, and the same answers, on each; then the
contract's parts (store/base.py) asked directly. What one backend alone does (etcd's
conflicts and limits, SQLite's file) is tests/test_store_backends.py."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from secretfs.audit import AuditRecord, cli_record
from secretfs.errors import StoreError
from secretfs.refs import parse_ref
from secretfs.store import (
    ClientKeyRecord,
    GrantRecord,
    ScopeMeta,
    SealedVersion,
    VersionMeta,
    location,
)
from secretfs.store.base import Backend
from secretfs.vault import Vault
from tests.conftest import run_cli_process
from tests.stores import Store

MARKER = b"plaintext-marker-c0ffee"


@pytest.fixture
def store(each_store: Store) -> Store:
    return each_store


# -- every CLI operation on every backend ----------------------------------------------


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


def test_concurrent_rotations_all_become_versions(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writers at the same moment: each rotation is a version, none is lost. (Writers
    are processes; on a store of this process only, threads, each with its own Vault.)"""
    store.cli("secret", "set", "db", "--from-stdin", input=b"start")
    writers = 4
    values = [f"value-{i}".encode() for i in range(writers)]
    if store.shared:
        _rotate_in_processes(store, values)
    else:
        _rotate_in_threads(store, monkeypatch, values)
    history = json.loads(store.cli("secret", "history", "db", "--json").stdout)
    assert [h["version"] for h in history] == list(range(1, writers + 2))
    stored = {store.cli("secret", "get", "db", "--version", str(v)).stdout for v in range(2, 6)}
    assert stored == set(values)


def _rotate_in_processes(store: Store, values: list[bytes]) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "secretfs", "secret", "rotate", "db", "--from-stdin"],
            env=store.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in values
    ]
    for value, proc in zip(values, procs, strict=True):
        assert proc.stdin is not None
        proc.stdin.write(value)
        proc.stdin.close()
    for proc in procs:
        assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""


def _rotate_in_threads(store: Store, monkeypatch: pytest.MonkeyPatch, values: list[bytes]) -> None:
    monkeypatch.setenv("SECRETFS_KEY_FILE", store.env["SECRETFS_KEY_FILE"])
    vaults = [Vault.open(location.parse(store.url)) for _ in values]
    start = threading.Barrier(len(values))
    failed: list[BaseException] = []

    def rotate(vault: Vault, value: bytes) -> None:
        start.wait(timeout=10)
        try:
            vault.set(parse_ref("db"), value)
        except BaseException as exc:  # noqa: BLE001 - reported below
            failed.append(exc)

    threads = [
        threading.Thread(target=rotate, args=pair) for pair in zip(vaults, values, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    for vault in vaults:
        vault.close()
    assert not failed and not any(t.is_alive() for t in threads), failed


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
    env["SECRETFS_STORE"] = store.another_url(tmp_path)
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
    if store.shared:  # `run` is a process of its own: it sees no store of this one
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
    if store.kind == "memory":
        assert mine["store"]["detail"].startswith("in-memory store at memory://")
    wrong = store.cli("doctor", "--json", env=dict(store.env, SECRETFS_KEY="ab" * 32), check=False)
    checks = {c["name"]: c for c in json.loads(wrong.stdout)["checks"]}
    assert wrong.returncode == 1 and checks["unlock"]["status"] == "fail"


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


# -- the contract's parts, asked directly (store/base.py) --------------------------------


def _secret(backend: Backend, scope: str, name: str, versions: int, gen: int = 1) -> int:
    """A secret with `versions` versions (ciphertext stand-ins: the backend never opens
    them), in one transaction."""
    with backend.transaction():
        if not backend.data_keys():
            backend.put_data_key(gen, b"wrapped-" + bytes([gen]), 5)
        seq = backend.next_seq()
        sid = backend.add_secret(scope, name, 100, seq)
        for v in range(1, versions + 1):
            backend.put_version(
                sid, v, created_ns=100 + v, size=v, kind="raw", key_gen=gen,
                fingerprint=f"fp{v}", ciphertext=b"sealed-%d" % v, seq=backend.next_seq(),
            )  # fmt: skip
    return sid


def test_audit_retention_prunes_old_records_on_both_backends(store: Store) -> None:
    """`audit prune --before` (and `--dry-run`) remove exactly the records older than the
    cut on either backend: on etcd a key holding old and new records alike keeps the new
    ones with their ids; the prune records itself."""
    from dataclasses import replace

    from secretfs.audit import cli_record

    day = 86400 * 10**9
    now = time.time_ns()
    backend = location.parse(store.url).open()
    try:
        with backend.transaction():  # one batch: all old
            backend.append_audit([replace(cli_record("get", "$S:old"), time_ns=now - 9 * day)] * 3)
        with backend.transaction():  # one batch: old and new mixed
            backend.append_audit(
                [
                    replace(cli_record("get", "$S:mixed-old"), time_ns=now - 8 * day),
                    replace(cli_record("get", "$S:mixed-new"), time_ns=now - day),
                ]
            )
        with backend.transaction():
            backend.append_audit([cli_record("get", "$S:new")])
        before = backend.read_audit()
    finally:
        backend.close()
    dry = store.cli("audit", "prune", "--before", "7d", "--dry-run", "--json")
    assert json.loads(dry.stdout)["removed"] == 4
    done = store.cli("audit", "prune", "--before", "7d", "--json")
    assert json.loads(done.stdout)["removed"] == 4
    after = json.loads(store.cli("audit", "--json").stdout)
    kept = [(r.id, r.ref) for r in before if r.ref not in ("$S:old", "$S:mixed-old")]
    assert [(r["id"], r["ref"]) for r in after][: len(kept)] == kept
    notes = [r["detail"] for r in after if r["action"] == "audit"]
    assert len(notes) == 1 and notes[0].startswith("pruned 4 audit records before ")
    again = store.cli("audit", "prune", "--before", "7d", "--json")
    assert json.loads(again.stdout)["removed"] == 0


def test_secrets_and_versions(each_backend: Backend) -> None:
    b = each_backend
    sid = _secret(b, "deployment", "db", 3)
    meta = b.get_meta("deployment", "db")
    assert meta is not None and b.get_meta_by_id(sid) == meta
    assert (meta.version, meta.size, meta.updated_ns, meta.fingerprint) == (3, 3, 103, "fp3")
    assert (meta.created_ns, meta.deleted, meta.uid, meta.expires_ns) == (100, False, None, None)
    assert [v.version for v in b.history(sid)] == [1, 2, 3]
    assert b.history(sid)[0] == VersionMeta(1, 101, 1, "raw", 1, "fp1")
    sealed = b.sealed(sid, 2)
    assert sealed == SealedVersion(sid, "deployment", "db", 2, 1, b"sealed-2")
    assert b.sealed(sid, 9) is None and b.get_meta("deployment", "nope") is None
    assert [s.version for s in b.all_sealed()] == [1, 2, 3]
    with b.transaction():
        b.set_owner(sid, 1000, 50, 0o440, b.next_seq())
        b.set_schedule(sid, 999, 3600, b.next_seq())
    meta = b.get_meta_by_id(sid)
    assert meta is not None and (meta.uid, meta.gid, meta.mode) == (1000, 50, 0o440)
    assert (meta.expires_ns, meta.rotate_every_s) == (999, 3600)
    other = _secret(b, "@api", "token", 1)
    assert b.list_scopes() == ["@api", "deployment"]
    assert [m.name for m in b.list_meta()] == ["token", "db"]
    assert [m.name for m in b.list_meta("deployment")] == ["db"]
    seq = b.current_seq()
    with b.transaction():
        b.touch_secrets([sid], b.next_seq())
    assert [m.secret_id for m in b.changes_since(seq)] == [sid]
    assert {m.secret_id for m in b.changes_since(0)} == {sid, other}
    with b.transaction():
        b.remove_secret(sid, b.next_seq())
    gone = b.get_meta_by_id(sid)
    assert gone is not None and gone.deleted and gone.version == 3 and b.history(sid) == []
    assert [m.name for m in b.list_meta()] == ["token"]
    with b.transaction():
        b.revive_secret(sid, 200, b.next_seq())
    revived = b.get_meta_by_id(sid)
    assert revived is not None and not revived.deleted and revived.uid is None


def test_a_version_is_written_once(each_backend: Backend) -> None:
    b = each_backend
    sid = _secret(b, "deployment", "db", 1)
    with pytest.raises(StoreError), b.transaction():
        b.put_version(
            sid, 1, created_ns=1, size=1, kind="raw", key_gen=1, fingerprint="x",
            ciphertext=b"again", seq=b.next_seq(),
        )  # fmt: skip
    assert b.sealed(sid, 1) == SealedVersion(sid, "deployment", "db", 1, 1, b"sealed-1")


def test_pruning_and_reencryption_batches(each_backend: Backend) -> None:
    b = each_backend
    sid = _secret(b, "deployment", "db", 4)
    small = _secret(b, "deployment", "one", 1)
    assert b.secrets_over(2) == [sid] and b.secrets_over(4) == []
    with b.transaction():
        assert b.prune_versions(sid, 2) == [1, 2]
        assert b.prune_versions(small, 0) == []  # the current version always stays
    assert [v.version for v in b.history(sid)] == [3, 4]
    with b.transaction():
        b.put_data_key(2, b"wrapped-2", 7)
    assert b.versions_not_under(2) == 3
    batch = b.sealed_batch(2, (0, 0), 2)
    assert [(s.secret_id, s.version) for s in batch] == [(sid, 3), (sid, 4)]
    assert [s.version for s in b.sealed_batch(2, (sid, 4), 10)] == [1]
    with b.transaction():
        for old in batch:
            b.reseal_version(old, 2, b"resealed", "new-fp")
        b.reseal_version(batch[0], 2, b"not again", "x")  # no longer under gen 1: kept
    assert b.versions_not_under(2) == 1
    assert b.sealed(sid, 3) == SealedVersion(sid, "deployment", "db", 3, 2, b"resealed")
    meta = b.get_meta_by_id(sid)
    assert meta is not None and meta.fingerprint == "new-fp"
    assert b.data_key_info() == [(1, 5, 1), (2, 7, 2)]
    with b.transaction():
        b.put_data_key(2, b"rewrapped", 99)  # re-wrapped: the same generation, its time kept
    assert b.data_keys() == {1: b"wrapped-\x01", 2: b"rewrapped"}
    assert b.data_key_info()[1] == (2, 7, 2)


def test_scope_owners_grants_and_client_keys(each_backend: Backend) -> None:
    b = each_backend
    with b.transaction():
        b.set_scope_owner("@api", 1000, None, 0o440, seq := b.next_seq())
        assert b.add_grant("@api", "token", "uid", 1234, 5, b.next_seq())
        assert not b.add_grant("@api", "token", "uid", 1234, 6, b.next_seq())
        assert b.add_grant("@api", "", "gid", 50, 7, b.next_seq(), form="sealed")
    assert b.get_scope_meta("@api") == ScopeMeta("@api", 1000, None, 0o440, seq)
    assert b.list_scope_meta() == [b.get_scope_meta("@api")] and b.get_scope_meta("x") is None
    assert b.list_grants() == [
        GrantRecord("@api", "", "gid", 50, 7, "sealed"),
        GrantRecord("@api", "token", "uid", 1234, 5, "plain"),
    ]
    assert b.list_grants("@api", "token") == [GrantRecord("@api", "token", "uid", 1234, 5)]
    before = b.access_seq()
    with b.transaction():
        assert b.remove_grant(GrantRecord("@api", "token", "uid", 1234, 5), b.next_seq())
        assert not b.remove_grant(GrantRecord("@api", "token", "uid", 1234, 5), b.next_seq())
    assert b.access_seq() > before and len(b.list_grants()) == 1
    key = ClientKeyRecord("ck_" + "a" * 32, bytes(32), "ci", 1000, 10)
    with b.transaction():
        b.add_client_key(key, b.next_seq())
    with b.transaction():
        assert b.revoke_client_key(key.key_id, 20, b.next_seq())
        assert not b.revoke_client_key(key.key_id, 30, b.next_seq())
        b.touch_client_keys({key.key_id: 40})
    with b.transaction():
        b.touch_client_keys({key.key_id: 35})  # never moved back
    assert b.list_client_keys() == [replace(key, revoked_ns=20, last_used_ns=40)]


def test_meta(each_backend: Backend) -> None:
    b = each_backend
    with b.transaction():
        b.meta_set("tag/a", b"1")
        b.meta_set("tag/b", b"2")
        b.meta_set("other", b"3")
        assert b.meta_get("tag/a") == b"1"  # a transaction reads its own writes
    assert b.meta_scan("tag/") == {"tag/a": b"1", "tag/b": b"2"}
    with b.transaction():
        b.meta_delete("tag/a")
    assert b.meta_get("tag/a") is None and b.meta_get("store_id") == b"contract"


def test_a_transaction_that_fails_writes_nothing(each_backend: Backend) -> None:
    b = each_backend
    seq = b.current_seq()
    with pytest.raises(RuntimeError, match="midway"), b.transaction():
        sid = b.add_secret("deployment", "db", 1, b.next_seq())
        b.put_data_key(1, b"w", 1)
        b.put_version(
            sid, 1, created_ns=1, size=1, kind="raw", key_gen=1, fingerprint="x",
            ciphertext=b"c", seq=b.next_seq(),
        )  # fmt: skip
        b.meta_set("k", b"v")
        b.append_audit([cli_record("set", "$S:db", 1)])
        raise RuntimeError("midway")
    assert b.get_meta("deployment", "db") is None and b.list_meta() == []
    assert b.meta_get("k") is None and b.data_keys() == {} and b.current_seq() == seq
    assert b.read_audit() == []


def test_a_snapshot_sees_one_state(each_backend: Backend) -> None:
    b = each_backend
    sid = _secret(b, "deployment", "db", 1)
    writer = b.open_another()
    try:
        with b.snapshot():
            assert [v.version for v in b.history(sid)] == [1]
            with writer.transaction():
                writer.put_version(
                    sid, 2, created_ns=2, size=2, kind="raw", key_gen=1, fingerprint="y",
                    ciphertext=b"c2", seq=writer.next_seq(),
                )  # fmt: skip
            assert [v.version for v in b.history(sid)] == [1]
            meta = b.get_meta_by_id(sid)
            assert meta is not None and meta.version == 1
        meta = b.get_meta_by_id(sid)
        assert meta is not None and meta.version == 2
    finally:
        writer.close()


def test_the_change_feed_moves_with_a_commit(each_backend: Backend) -> None:
    b = each_backend
    writer = b.open_another()
    try:
        seen = b.data_version()
        with writer.transaction():
            writer.meta_set("x", b"1")
        deadline = time.monotonic() + 5
        while b.data_version() == seen:  # etcd's revision: at once; SQLite's: at once
            assert time.monotonic() < deadline, "data_version did not move"
            time.sleep(0.01)
        b.follow()
        status = b.status()
        assert status["backend"] in ("sqlite", "etcd", "memory") and status["store"] == b.name
    finally:
        writer.close()


def _audit(ref: str | None, time_ns: int) -> AuditRecord:
    return replace(cli_record("get", ref, 1), time_ns=time_ns)


def test_the_audit_log_filters(each_backend: Backend) -> None:
    b = each_backend
    refs = ["$S:db", "$S:@api/token", "$S:@api/config", None, "$S:@apix/k", "$S:db"]
    with b.transaction():
        b.append_audit([_audit(ref, 1000 + n) for n, ref in enumerate(refs[:3])])
    with b.transaction():
        b.append_audit([_audit(ref, 1003 + n) for n, ref in enumerate(refs[3:])])
    every = b.read_audit()
    assert [r.ref for r in every] == refs and [r.time_ns for r in every] == list(range(1000, 1006))
    ids = [r.id for r in every]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert [r.ref for r in b.read_audit(after_id=ids[2])] == refs[3:]
    assert [r.time_ns for r in b.read_audit(since_ns=1004)] == [1004, 1005]
    assert [r.id for r in b.read_audit(ref_exact=("$S:db",))] == [ids[0], ids[5]]
    by_prefix = b.read_audit(ref_prefixes=("$S:@api/",), ref_exact=("$S:db",))
    assert [r.ref for r in by_prefix] == ["$S:db", "$S:@api/token", "$S:@api/config", "$S:db"]
    assert [r.ref for r in b.read_audit(ref_prefixes=("$S:%",))] == []  # text, not LIKE
    assert [r.ref for r in b.read_audit(ref_exact=("$S:db",), limit=1)] == ["$S:db"]
    assert len(b.read_audit(limit=4)) == 4
    assert b.read_audit(after_id=ids[1], since_ns=1001, limit=2) == every[2:4]
    assert b.compact_audit(2000) >= 0 and b.read_audit() == every  # merged, never changed


def test_a_prunable_audit_log(each_backend: Backend) -> None:
    """Every backend deletes exactly the records older than the cut."""
    b = each_backend
    with b.transaction():
        b.append_audit([_audit("$S:a", 1000), _audit("$S:b", 2000), _audit("$S:c", 3000)])
    assert b.prune_audit(2500, dry_run=True) == 2 and len(b.read_audit()) == 3
    with b.transaction():
        assert b.prune_audit(2500) == 2
    assert [r.ref for r in b.read_audit()] == ["$S:c"]


def test_the_consistency_checks(each_backend: Backend) -> None:
    _secret(each_backend, "deployment", "db", 2)
    assert each_backend.integrity_check() == "ok"
    assert each_backend.foreign_key_problems() == 0

"""--json on every command that changes something, one schema per record type: each
command's output has exactly the fields docs/cli.md ("JSON output") lists for it."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli

DOCS = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def documented_fields(record: str) -> set[str]:
    section = DOCS.read_text().split("## JSON output", 1)[1].split("\n## ", 1)[0]
    body = section.split(f"\n### {record}\n", 1)[1].split("\n### ", 1)[0]
    return set(re.findall(r"^\| `(\w+)` \|", body, re.M))


def out(cli: Cli, *args: str, input: bytes | None = None) -> Any:
    proc = cli(*args, "--json", input=input)
    return json.loads(proc.stdout)


@pytest.fixture
def store(cli: Cli, initialized_store: Path) -> Path:
    return initialized_store


def test_write_records(cli: Cli, store: Path, tmp_path: Path) -> None:
    fields = documented_fields("write")
    assert len(fields) == 9
    created = out(cli, "secret", "create", "db", "--from-stdin", input=b"one")
    assert created["action"] == "created" and created["new_version"] == 1
    updated = out(cli, "secret", "set", "db", "--from-stdin", input=b"two")
    assert updated["action"] == "updated" and updated["previous_version"] == 1
    rotated = out(cli, "secret", "rotate", "db", "--generate")
    rolled = out(cli, "secret", "rollback", "db", "--to", "1")
    assert rolled["action"] == "rolled_back" and rolled["value_of_version"] == 1
    reg = out(cli, "registry", "add", "ghcr.io", "-u", "me", "--password-stdin", input=b"pw\n")
    reg_rm = out(cli, "registry", "rm", "ghcr.io")
    git = out(cli, "git", "add", "gh", "--pat-stdin", input=b"ghp_" + b"a" * 36)
    for record in (created, updated, rotated, rolled, reg, reg_rm, git):
        assert set(record) == fields, record
    assert b"one" not in json.dumps([created, updated]).encode()
    assert rotated["size"] == 32 and rotated["action"] == "rotated"


def test_removal_record(cli: Cli, store: Path) -> None:
    cli("secret", "create", "db", "--generate")
    cli("grant", "db", "--uid", "1000")
    record = out(cli, "secret", "rm", "db", "--force")
    assert set(record) == documented_fields("removal")
    assert record["action"] == "removed" and record["grants_removed"] == 1


def test_grant_records(cli: Cli, store: Path) -> None:
    cli("secret", "create", "db", "--generate")
    fields = documented_fields("grant")
    added = out(cli, "grant", "db", "--uid", "1000", "--gid", "1001")
    assert [(r["action"], r["kind"], r["id"]) for r in added] == [
        ("granted", "uid", 1000),
        ("granted", "gid", 1001),
    ]
    again = out(cli, "grant", "@api", "--uid", "1000", "--sealed-only")
    assert again[0]["target"] == "@api" and again[0]["form"] == "sealed"
    revoked = out(cli, "revoke", "db", "--all")
    assert sorted(r["id"] for r in revoked) == [1000, 1001]
    for record in (*added, *again, *revoked):
        assert set(record) == fields
    assert {r["action"] for r in revoked} == {"revoked"}


def test_owner_and_setting_records(cli: Cli, store: Path) -> None:
    cli("secret", "create", "db", "--generate")
    chmod = out(cli, "secret", "chmod", "db", "0440")
    assert set(chmod) == documented_fields("owner")
    assert chmod["after"]["mode"] == "0440" and chmod["changed"] is True
    chown = out(cli, "secret", "chown", "deployment", "1000:1000")
    assert chown["target"] == "deployment" and chown["after"]["uid"] == 1000
    fields = documented_fields("setting")
    for name, value, shown in (
        ("max-versions", "5", 5),
        ("max-value-size", "2048", 2048),
        ("audit-max-age", "90d", "7776000s"),
    ):
        record = out(cli, "config", "set", name, value)
        assert set(record) == fields and record["value"] == shown
        assert json.loads(cli("config", "show", "--json").stdout)[name] == shown


def test_existing_emitters_match_their_documented_schemas(
    cli: Cli, store: Path, tmp_path: Path
) -> None:
    key = base64.b64encode(bytes(range(32))).decode()
    added = out(cli, "client-key", "add", key)
    assert set(added) == documented_fields("client key")
    assert set(out(cli, "client-key", "rm", added["key_id"])) == documented_fields("client key")
    env = tmp_path / "x.env"
    env.write_text("A=1\nB=2\n")
    assert set(out(cli, "import", "--file", str(env))) == documented_fields("import")
    pruned = out(cli, "secret", "prune", "A")
    assert set(pruned[0]) == documented_fields("prune")


def test_audit_prune_record(cli: Cli, store: Path) -> None:
    cli("secret", "create", "db", "--generate")
    fields = documented_fields("audit prune")
    dry = out(cli, "audit", "prune", "--before", "1d", "--dry-run")
    assert set(dry) == fields and dry["dry_run"] is True
    done = out(cli, "audit", "prune", "--before", "2000-01-01")
    assert set(done) == fields and (done["removed"], done["dry_run"]) == (0, False)


def test_init_record(cli: Cli, store_path: Path) -> None:
    record = out(cli, "init", "--max-versions", "7")
    assert set(record) == documented_fields("init")
    key_file = f"{store_path}.key"
    assert record["store"] == str(store_path)
    assert record["kek"] == {"source": "key-file", "from": key_file}
    assert (record["max_versions"], record["max_value_size"]) == (7, 1024 * 1024)
    assert key_file in record["notes"][0]
    assert Path(key_file).stat().st_mode & 0o777 == 0o600
    assert Path(key_file).read_bytes().strip().decode() not in json.dumps(record)


def test_key_passwd_record(cli: Cli, cli_env: dict[str, str], store_path: Path) -> None:
    from tests import lifecycle_helpers

    lifecycle_helpers.password_store(store_path, "old-pw-7d2k1", {"db": b"x"})
    env = {**cli_env, "SECRETFS_PASSWORD": "old-pw-7d2k1"}
    proc = cli("key", "passwd", "--json", input=b"new-pw-9x3q8\n", env=env)
    record = json.loads(proc.stdout)
    assert set(record) == {"rewrapped", "notes"}
    assert record["rewrapped"] == 1 and "password changed" in record["notes"][0]
    assert b"pw-" not in proc.stdout  # neither password
    new_env = {**cli_env, "SECRETFS_PASSWORD": "new-pw-9x3q8"}
    assert cli("secret", "get", "db", env=new_env).stdout == b"x"


def test_install_records(cli: Cli, tmp_path: Path) -> None:
    fields = documented_fields("install")
    helper = out(cli, "install", "mount-helper", "--dir", str(tmp_path), "--command", "/bin/sfs -v")
    unit = out(cli, "install", "systemd", "--dir", str(tmp_path), "--command", "/bin/sfs")
    assert set(helper) == set(unit) == fields
    assert (helper["installed"], helper["command"], helper["notes"]) == (
        "mount-helper",
        ["/bin/sfs", "-v"],
        [],
    )
    assert Path(helper["path"]) == tmp_path / "mount.fuse.secretfs"
    assert Path(unit["path"]).read_text().count("/bin/sfs") >= 1
    assert unit["installed"] == "systemd" and "daemon-reload" in unit["notes"][0]

"""The CLI as a user runs it (argv, stdin, stdout, stderr, exit code), on a real store."""

from __future__ import annotations

import json
import os
import re
import secrets
import sqlite3
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli, cli_environment, run_cli

MIB = 1024 * 1024
LS_JSON_KEYS = {
    "ref",
    "path",
    "version",
    "size",
    "kind",
    "created",
    "updated",
    "uid",
    "gid",
    "mode",
    "fingerprint",
}
HISTORY_JSON_KEYS = {"version", "created", "size", "kind", "key_generation", "fingerprint"}
NAME_RULE = "names may use letters, digits"
REF_FORMS = "expected $S:name"


def new_marker() -> bytes:
    return b"MARKER" + secrets.token_hex(16).encode()


def out(proc: subprocess.CompletedProcess[bytes]) -> str:
    return proc.stdout.decode()


def err(proc: subprocess.CompletedProcess[bytes]) -> str:
    return proc.stderr.decode()


def assert_not_shown(proc: subprocess.CompletedProcess[bytes], *values: bytes) -> None:
    for value in values:
        assert value not in proc.stdout, f"value echoed on stdout: {proc.stdout!r}"
        assert value not in proc.stderr, f"value echoed on stderr: {proc.stderr!r}"


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def put(cli: Cli, ref: str, value: bytes, *args: str) -> None:
    cli("secret", "set", ref, "--from-stdin", *args, input=value)


def get(cli: Cli, ref: str, *args: str) -> bytes:
    return cli("secret", "get", ref, *args).stdout


# --- init ---------------------------------------------------------------------------


def test_init_creates_the_store_and_a_key_file(cli: Cli, store_path: Path) -> None:
    proc = cli("init")
    key_file = Path(f"{store_path}.key")
    assert f"created store {store_path}" in out(proc)
    assert f"key file {key_file} (mode 0600)" in out(proc)
    assert "back it up" in out(proc)
    assert mode_of(store_path) == 0o600
    assert mode_of(key_file) == 0o600
    assert key_file.read_text().strip() not in out(proc) + err(proc), "the key is never printed"


def test_init_with_secretfs_key(cli: Cli, cli_env: dict[str, str], store_path: Path) -> None:
    key = os.urandom(32).hex()
    env = {**cli_env, "SECRETFS_KEY": key}
    proc = cli("init", env=env)
    assert "key from $SECRETFS_KEY" in out(proc)
    assert key not in out(proc) + err(proc)
    assert not Path(f"{store_path}.key").exists()
    cli("secret", "set", "db", "--from-stdin", input=b"v", env=env)
    assert cli("secret", "get", "db", env=env).stdout == b"v"
    proc = cli("secret", "get", "db", check=False)
    assert proc.returncode == 5
    assert "key file" in err(proc) and "SECRETFS_KEY" in err(proc)


def test_init_with_password_then_wrong_password(cli: Cli, cli_env: dict[str, str]) -> None:
    env = {**cli_env, "SECRETFS_PASSWORD": "right password"}
    assert "key from $SECRETFS_PASSWORD" in out(cli("init", env=env))
    cli("secret", "set", "db", "--from-stdin", input=b"v", env=env)
    proc = cli(
        "secret", "get", "db", env={**cli_env, "SECRETFS_PASSWORD": "wrong one"}, check=False
    )
    assert proc.returncode == 5
    assert "$SECRETFS_PASSWORD" in err(proc) and "does not unlock" in err(proc)
    assert "wrong one" not in err(proc)


def test_init_refuses_an_existing_store(cli: Cli, initialized_store: Path) -> None:
    key_file = Path(f"{initialized_store}.key")
    key, db = key_file.read_bytes(), initialized_store.read_bytes()
    proc = cli("init", check=False)
    assert proc.returncode == 4  # exists (docs/cli.md#exit-codes)
    assert "already exists" in err(proc) and str(initialized_store) in err(proc)
    assert key_file.read_bytes() == key and initialized_store.read_bytes() == db


def test_init_refuses_an_orphan_key_file(cli: Cli, store_path: Path) -> None:
    key_file = Path(f"{store_path}.key")
    key_file.write_text("11" * 32 + "\n")
    proc = cli("init", check=False)
    assert proc.returncode == 5
    assert f"key file {key_file} exists" in err(proc)
    assert not store_path.exists()
    assert key_file.read_text() == "11" * 32 + "\n"


def test_store_option_overrides_the_environment(cli: Cli, tmp_path: Path, store_path: Path) -> None:
    other = tmp_path / "other" / "s.db"
    cli("init", "--store", str(other))
    cli("secret", "set", "db", "--from-stdin", "--store", str(other), input=b"x")
    assert cli("secret", "get", "db", "--store", str(other)).stdout == b"x"
    assert not store_path.exists()


def test_init_max_value_size(cli: Cli) -> None:
    cli("init", "--max-value-size", "4")
    put(cli, "db", b"1234")
    proc = cli("secret", "set", "db", "--from-stdin", input=b"12345", check=False)
    assert proc.returncode == 2
    assert "limit is 4 bytes" in err(proc)


def test_no_store_says_to_run_init(cli: Cli, store_path: Path) -> None:
    for args in (
        ("secret", "ls"),
        ("secret", "get", "db"),
        ("secret", "history", "db"),
        ("secret", "rm", "db"),
        ("secret", "set", "db", "--generate"),
        ("secret", "create", "db", "--generate"),
    ):
        proc = cli(*args, check=False)
        assert proc.returncode == 7, args
        assert "run `secretfs init`" in err(proc), args
        assert str(store_path) in err(proc)
        assert "Traceback" not in err(proc)
    assert not store_path.exists()


# --- create / set / get / history / rm ----------------------------------------------


@pytest.mark.usefixtures("initialized_store")
def test_secret_lifecycle_and_exit_codes(cli: Cli) -> None:
    proc = cli("secret", "create", "db", "--from-stdin", input=b"hunter2")
    assert proc.stdout == b""
    assert "created $S:db version 1 (7 bytes)" in err(proc)

    proc = cli("secret", "create", "db", "--from-stdin", input=b"other", check=False)
    assert proc.returncode == 4
    assert "already exists" in err(proc)
    assert get(cli, "db") == b"hunter2"

    proc = cli("secret", "set", "db", "--from-stdin", input=b"hunter3!")
    assert "updated $S:db version 2 (8 bytes)" in err(proc)
    assert get(cli, "db") == b"hunter3!"
    assert get(cli, "$S:db", "--version", "1") == b"hunter2"

    history = out(cli("secret", "history", "db"))
    assert re.search(r"^\s+1\s+7\s+raw\s", history, re.M)
    assert re.search(r"^\s+2\s+8\s+raw\s", history, re.M)
    records = json.loads(cli("secret", "history", "db", "--json").stdout)
    assert [r["version"] for r in records] == [1, 2]
    assert all(set(r) == HISTORY_JSON_KEYS for r in records)

    proc = cli("secret", "rm", "db")
    assert "removed $S:db (it was at version 2)" in err(proc)
    for args in (("get", "db"), ("rm", "db"), ("history", "db"), ("get", "db", "--version", "1")):
        proc = cli("secret", *args, check=False)
        assert proc.returncode == 3, args
        assert "not found" in err(proc) or "no version" in err(proc), args

    proc = cli("secret", "create", "db", "--from-stdin", input=b"again")
    assert "version 3" in err(proc), "a re-created secret continues the numbering"
    assert [r["version"] for r in json.loads(cli("secret", "history", "db", "--json").stdout)] == [
        3
    ]


@pytest.mark.usefixtures("initialized_store")
def test_missing_secret_is_exit_3(cli: Cli) -> None:
    for args in (
        ("get", "nope"),
        ("get", "@api/nope"),
        ("history", ":staging/nope"),
        ("rm", "shop:prod/nope"),
    ):
        proc = cli("secret", *args, check=False)
        assert proc.returncode == 3, args
        assert "not found" in err(proc)
    put(cli, "db", b"x")
    proc = cli("secret", "get", "db", "--version", "2", check=False)
    assert proc.returncode == 3
    assert "no version 2" in err(proc)
    proc = cli("secret", "get", "db", "--version", "0", check=False)
    assert proc.returncode == 2


@pytest.mark.usefixtures("initialized_store")
def test_set_owner_options_show_in_ls(cli: Cli) -> None:
    cli("secret", "set", "db", "--generate", "--uid", "1000", "--gid", "0", "--mode", "0440")
    (record,) = json.loads(cli("secret", "ls", "--json").stdout)
    assert (record["uid"], record["gid"], record["mode"]) == (1000, 0, "0440")
    proc = cli("secret", "set", "db", "--generate", "--mode", "999", check=False)
    assert proc.returncode == 2 and "--mode" in err(proc)


# --- value sources ------------------------------------------------------------------


@pytest.mark.usefixtures("initialized_store")
def test_value_from_stdin_is_exact_bytes(cli: Cli) -> None:
    for value in (bytes(range(256)), b"", b"trailing newline\n", b"\x00\xff\r\n"):
        put(cli, "db", value, "--allow-empty")  # empty: refused without it
        assert get(cli, "db") == value


@pytest.mark.usefixtures("initialized_store")
def test_a_value_of_dash_is_standard_input_never_the_byte(cli: Cli) -> None:
    cli("secret", "create", "db", "-", input=b"from the pipe")
    cli("secret", "set", "api", "-", input=b"too")
    assert (get(cli, "db"), get(cli, "api")) == (b"from the pipe", b"too")
    assert "process list" not in err(cli("secret", "rotate", "db", "-", input=b"v2"))
    assert get(cli, "db") == b"v2"
    both = cli("secret", "set", "db", "-", "--from-stdin", input=b"x", check=False)
    assert both.returncode == 2 and "(got - (standard input), --from-stdin)" in err(both)
    empty = cli("secret", "set", "db", "-", input=b"", check=False)
    assert empty.returncode == 2 and get(cli, "db") == b"v2"


@pytest.mark.usefixtures("initialized_store")
def test_trailing_newline_is_kept_with_a_note(cli: Cli) -> None:
    proc = cli("secret", "set", "db", "--from-stdin", input=b"line\n")
    assert "newline" in err(proc)
    assert get(cli, "db") == b"line\n"


@pytest.mark.usefixtures("initialized_store")
def test_value_from_file(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "value.bin"
    path.write_bytes(bytes(range(255, -1, -1)))
    cli("secret", "create", "a", "--from-file", str(path))
    cli("secret", "create", "b", "--from", f"file://{path}")
    assert get(cli, "a") == get(cli, "b") == path.read_bytes()
    proc = cli("secret", "create", "c", "--from-file", str(tmp_path / "missing"), check=False)
    assert proc.returncode == 2 and "cannot read" in err(proc)
    proc = cli("secret", "create", "c", "--from", f"file://{tmp_path}/missing", check=False)
    assert proc.returncode == 2 and "cannot read" in err(proc)


@pytest.mark.usefixtures("initialized_store")
def test_value_from_env(cli: Cli, cli_env: dict[str, str]) -> None:
    env = {**cli_env, "MY_SECRET": "from the environment ✓"}
    proc = cli("secret", "create", "db", "--from", "env://MY_SECRET", env=env)
    assert "from the environment" not in out(proc) + err(proc)
    assert get(cli, "db") == "from the environment ✓".encode()
    proc = cli("secret", "create", "x", "--from", "env://NOT_SET_ANYWHERE_42", check=False)
    assert proc.returncode == 2
    assert "NOT_SET_ANYWHERE_42" in err(proc) and "not set" in err(proc)


@pytest.mark.usefixtures("initialized_store")
def test_value_from_cmd(cli: Cli) -> None:
    cli("secret", "create", "db", "--from", "cmd://printf x")
    assert get(cli, "db") == b"x"
    cli("secret", "set", "db", "--from", "cmd://printf 'a b\\n'")
    assert get(cli, "db") == b"a b\n"


@pytest.mark.usefixtures("initialized_store")
def test_a_failing_cmd_is_reported_without_its_output(cli: Cli) -> None:
    marker = new_marker().decode()
    command = f"cmd://echo {marker}; echo {marker} >&2; exit 3"
    proc = cli("secret", "create", "db", "--from", command, check=False)
    assert proc.returncode != 0
    assert "status 3" in err(proc)
    assert_not_shown(proc, marker.encode())
    assert cli("secret", "get", "db", check=False).returncode == 3


@pytest.mark.usefixtures("initialized_store")
def test_bad_from_uris(cli: Cli) -> None:
    for uri in ("nothing", "env://", "ftp://host/x"):
        proc = cli("secret", "create", "db", "--from", uri, check=False)
        assert proc.returncode == 2, uri
        assert "env://" in err(proc), uri


@pytest.mark.usefixtures("initialized_store")
def test_generate(cli: Cli) -> None:
    proc = cli("secret", "create", "a", "--generate")
    assert proc.stdout == b""
    value = get(cli, "a")
    assert re.fullmatch(rb"[A-Za-z0-9]{32}", value)
    assert value not in proc.stderr
    cli("secret", "create", "b", "--generate", "8")
    assert re.fullmatch(rb"[A-Za-z0-9]{8}", get(cli, "b"))
    cli("secret", "set", "a", "--generate")
    assert get(cli, "a") != value
    assert cli("secret", "create", "c", "--generate", "0", check=False).returncode == 2


@pytest.mark.usefixtures("initialized_store")
def test_literal_value_works_with_a_warning(cli: Cli) -> None:
    proc = cli("secret", "create", "db", "literal-value")
    assert "warning" in err(proc) and "command line" in err(proc)
    assert "literal-value" not in err(proc)
    assert get(cli, "db") == b"literal-value"


@pytest.mark.usefixtures("initialized_store")
def test_exactly_one_value_source(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "v"
    path.write_bytes(b"v")
    proc = cli("secret", "create", "db", check=False, input=b"")
    assert proc.returncode == 2
    assert "exactly one of" in err(proc)
    for extra in (
        ("--from-stdin", "--generate"),
        ("--from-file", str(path), "--from", "env://HOME"),
        ("literal", "--from-stdin"),
        ("--generate", "8", "--from", "cmd://printf x"),
    ):
        proc = cli("secret", "set", "db", *extra, input=b"stdin", check=False)
        assert proc.returncode == 2, extra
        assert "exactly one of" in err(proc) and "got" in err(proc), extra
    assert cli("secret", "get", "db", check=False).returncode == 3


@pytest.mark.usefixtures("initialized_store")
def test_over_the_size_limit(cli: Cli) -> None:
    marker = new_marker()
    value = marker + b"x" * (MIB + 1 - len(marker))
    proc = cli("secret", "create", "big", "--from-stdin", input=value, check=False)
    assert proc.returncode == 2
    assert "1048576" in err(proc) and "limit" in err(proc)
    assert_not_shown(proc, marker)
    exact = os.urandom(MIB)
    cli("secret", "create", "big", "--from-stdin", input=exact)
    assert get(cli, "big") == exact


# --- get: fields and versions -------------------------------------------------------


CONFIG = (
    b'{"user":"app","password":"pw\\n","port":5432,"ratio":2.50,"tls":true,"none":null,'
    b'"replicas":["r0",{"host":"h1"}],"a":{"b":"deep"}}'
)


@pytest.mark.usefixtures("initialized_store")
def test_get_fields(cli: Cli) -> None:
    put(cli, "@api/config", CONFIG)
    assert get(cli, "@api/config") == CONFIG
    assert get(cli, "@api/config", "--field", "user") == b"app"
    assert get(cli, "@api/config/password") == b"pw\n"
    assert get(cli, "$S:@api/config/port") == b"5432"
    assert get(cli, "@api/config", "--field", "ratio") == b"2.50"
    assert get(cli, "@api/config/tls") == b"true"
    assert get(cli, "@api/config/none") == b""
    assert get(cli, "@api/config/replicas/0") == b"r0"
    assert get(cli, "@api/config", "--field", "replicas/1/host") == b"h1"
    assert get(cli, "@api/config", "--field", "a/b") == b"deep"
    assert get(cli, "@api/config/a", "--field", "b") == b"deep"
    assert json.loads(get(cli, "@api/config/a")) == {"b": "deep"}
    for args in (("@api/config/missing",), ("@api/config", "--field", "replicas/7")):
        proc = cli("secret", "get", *args, check=False)
        assert proc.returncode == 3, args
        assert "no field" in err(proc)
    proc = cli("secret", "get", "@api/config", "--field", "a//b", check=False)
    assert proc.returncode == 2


@pytest.mark.usefixtures("initialized_store")
def test_get_field_of_an_older_version(cli: Cli) -> None:
    put(cli, "db", b'{"password":"old"}')
    put(cli, "db", b'{"password":"new"}')
    assert get(cli, "db/password") == b"new"
    assert get(cli, "db/password", "--version", "1") == b"old"
    assert get(cli, "db", "--field", "password", "--version", "1") == b"old"


@pytest.mark.usefixtures("initialized_store")
def test_get_field_of_a_raw_secret(cli: Cli) -> None:
    put(cli, "db", b"not json")
    proc = cli("secret", "get", "db/field", check=False)
    assert proc.returncode == 3
    assert "not a JSON object or array" in err(proc)


@pytest.mark.usefixtures("initialized_store")
def test_field_references_cannot_be_written(cli: Cli) -> None:
    put(cli, "db", b'{"a":"1"}')
    proc = cli("secret", "set", "db/a", "--from-stdin", input=b"2", check=False)
    assert proc.returncode == 2
    assert "whole secret" in err(proc)


# --- ls -----------------------------------------------------------------------------

SCOPED = {
    "db": b"deployment value",
    "@api/token": b"api token value",
    "@api/db": b'{"password":"api db value"}',
    ":staging/db": b"staging value",
    "shop:prod/db": b"shop prod value",
    "shop:staging/db": b"shop staging value",
}


@pytest.fixture(scope="module")
def scoped_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One store with SCOPED in it, shared by the read-only `ls` tests of this module."""
    env = cli_environment(tmp_path_factory.mktemp("scoped") / "store.db")
    run_cli("init", env=env)
    for ref, value in SCOPED.items():
        run_cli("secret", "set", ref, "--from-stdin", input=value, env=env)
    return env


@pytest.fixture
def scoped(cli: Cli, scoped_env: dict[str, str]) -> Cli:
    """`cli` on the shared SCOPED store."""

    def run(*args: str, **kw: Any) -> subprocess.CompletedProcess[bytes]:
        return cli(*args, env=scoped_env, **kw)

    return run


def test_ls_shows_metadata_only(scoped: Cli) -> None:
    proc = scoped("secret", "ls")
    lines = out(proc).splitlines()
    assert lines[0].split() == ["REF", "VER", "SIZE", "KIND", "UPDATED"]
    assert len(lines) == 1 + len(SCOPED)
    assert "$S:@api/db" in out(proc) and "$S:shop:prod/db" in out(proc)
    row = next(line for line in lines if line.startswith("$S:@api/db "))
    assert row.split()[1:4] == ["1", str(len(SCOPED["@api/db"])), "json"]
    as_json = scoped("secret", "ls", "--json")
    for value in SCOPED.values():
        assert_not_shown(proc, value)
        assert_not_shown(as_json, value)


def test_ls_json(scoped: Cli) -> None:
    records = json.loads(scoped("secret", "ls", "--json").stdout)
    assert len(records) == len(SCOPED)
    for record in records:
        assert set(record) >= LS_JSON_KEYS
        assert "value" not in record
    by_ref = {r["ref"]: r for r in records}
    token = by_ref["$S:@api/token"]
    assert token["path"] == "@api/token"
    assert token["version"] == 1
    assert token["size"] == len(SCOPED["@api/token"])
    assert token["kind"] == "raw"
    assert by_ref["$S:@api/db"]["kind"] == "json"
    assert by_ref["$S::staging/db"]["path"] == "env/staging/db"
    assert by_ref["$S:shop:prod/db"]["path"] == "project/shop/prod/db"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", token["updated"])
    assert re.fullmatch(r"[0-9a-f]{32}", token["fingerprint"])


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        ("@api", {"$S:@api/db", "$S:@api/token"}),
        ("$S:@api", {"$S:@api/db", "$S:@api/token"}),
        ("env/staging", {"$S::staging/db"}),
        (":staging", {"$S::staging/db"}),
        ("$S::staging", {"$S::staging/db"}),
        ("shop:prod", {"$S:shop:prod/db"}),
        ("project/shop/prod", {"$S:shop:prod/db"}),
        ("deployment", {"$S:db"}),
        ("@nobody", set()),
    ],
)
def test_ls_scope_filter(scoped: Cli, scope: str, expected: set[str]) -> None:
    records = json.loads(scoped("secret", "ls", scope, "--json").stdout)
    assert {r["ref"] for r in records} == expected


@pytest.mark.usefixtures("initialized_store")
def test_ls_empty(cli: Cli) -> None:
    proc = cli("secret", "ls")
    assert proc.stdout == b""
    assert "no secrets" in err(proc)
    assert json.loads(cli("secret", "ls", "--json").stdout) == []


@pytest.mark.usefixtures("initialized_store")
def test_ls_invalid_scope(cli: Cli) -> None:
    for scope in ("bad scope", "a:b:c", "env", "@", "$S:deployment"):
        proc = cli("secret", "ls", scope, check=False)
        assert proc.returncode == 2, scope
        assert "expected a scope" in err(proc) or NAME_RULE in err(proc), scope


# --- invalid references -------------------------------------------------------------


def assert_ref_refused(proc: subprocess.CompletedProcess[bytes]) -> None:
    assert proc.returncode == 2, proc
    message = err(proc)
    assert message.startswith("secretfs: error: "), message
    assert NAME_RULE in message or REF_FORMS in message or "field path component" in message, (
        message
    )
    assert "Traceback" not in message


@pytest.mark.usefixtures("initialized_store")
@pytest.mark.parametrize(
    "ref",
    [
        *("$S:", "my db", "db.d", "db-", ".hidden", "$s:db", "@/x", "@svc/", "db//x"),
        *("db/../x", "a:b:c/x", "::x", "$secret://staging", "x" * 254, "caf\u00e9"),
    ],
)
def test_invalid_refs_are_exit_2_saying_what_is_allowed(cli: Cli, ref: str) -> None:
    assert_ref_refused(cli("secret", "get", ref, check=False))


@pytest.mark.usefixtures("initialized_store")
def test_every_secret_command_refuses_invalid_refs(cli: Cli) -> None:
    for args in (
        ("create", "my db", "--from-stdin"),
        ("set", "db.d", "--from-stdin"),
        ("get", "@svc/"),
        ("rm", "a:b:c/x"),
        ("history", "$S:"),
    ):
        assert_ref_refused(cli("secret", *args, input=b"v", check=False))
    assert json.loads(cli("secret", "ls", "--json").stdout) == []


# --- wrong key and tampering through the CLI ----------------------------------------


@pytest.mark.usefixtures("initialized_store")
def test_wrong_key_is_exit_5_and_names_the_source(
    cli: Cli, cli_env: dict[str, str], store_path: Path
) -> None:
    marker = new_marker()
    put(cli, "db", marker)
    wrong = {**cli_env, "SECRETFS_KEY": os.urandom(32).hex()}
    proc = cli("secret", "get", "db", env=wrong, check=False)
    assert proc.returncode == 5
    assert "$SECRETFS_KEY" in err(proc)
    assert_not_shown(proc, marker)
    proc = cli("secret", "ls", env={**cli_env, "SECRETFS_KEY": "short"}, check=False)
    assert proc.returncode == 5 and "SECRETFS_KEY" in err(proc)
    Path(f"{store_path}.key").unlink()
    proc = cli("secret", "ls", check=False)
    assert proc.returncode == 5 and f"{store_path}.key" in err(proc)
    assert not Path(f"{store_path}.key").exists()


@pytest.mark.usefixtures("initialized_store")
def test_tampered_record_is_exit_6_without_the_value(cli: Cli, store_path: Path) -> None:
    marker = new_marker()
    put(cli, "db", marker)
    put(cli, "other", b"fine")
    conn = sqlite3.connect(store_path, isolation_level=None)
    try:
        where = "WHERE secret_id = (SELECT id FROM secrets WHERE name = 'db')"
        (blob,) = conn.execute(f"SELECT ciphertext FROM versions {where}").fetchone()
        flipped = bytes([*blob[:-1], blob[-1] ^ 1])
        conn.execute(f"UPDATE versions SET ciphertext = ? {where}", (flipped,))
    finally:
        conn.close()
    proc = cli("secret", "get", "db", check=False)
    assert proc.returncode == 6
    assert "tampered" in err(proc)
    assert proc.stdout == b""
    assert_not_shown(proc, marker)
    assert get(cli, "other") == b"fine"
    assert "$S:db" in out(cli("secret", "ls")), "metadata is still listed"


# --- the value never shows in error output ------------------------------------------


@pytest.mark.usefixtures("initialized_store")
def test_error_output_never_contains_the_value(
    cli: Cli, cli_env: dict[str, str], tmp_path: Path
) -> None:
    marker = new_marker()
    json_marker = b'{"f":"' + marker + b'","n":{"x":"' + marker + b'"}}'
    put(cli, "db", marker)
    put(cli, "cfg", json_marker)
    env = {**cli_env, "MARKER_VAR": marker.decode()}
    marker_file = tmp_path / "m"
    marker_file.write_bytes(marker)
    attempts: list[tuple[tuple[str, ...], bytes | None]] = [
        (("secret", "create", "db", "--from-stdin"), marker),
        (("secret", "create", "db", "--from", "env://MARKER_VAR"), None),
        (("secret", "create", "db", "--from-file", str(marker_file)), None),
        (("secret", "create", "db", marker.decode()), None),
        (("secret", "set", "db", marker.decode(), "--from-stdin"), marker),
        (("secret", "set", "bad name", "--from-stdin"), marker),
        (("secret", "set", "db/field", "--from-stdin"), marker),
        (("secret", "set", "db", "--from-stdin", "--mode", "99999"), marker),
        (("secret", "set", "db", "--from-stdin"), marker + b"y" * MIB),
        (("secret", "get", "db/field"), None),
        (("secret", "get", "cfg/missing"), None),
        (("secret", "get", "cfg", "--field", "f/deeper"), None),
        (("secret", "get", "cfg", "--field", "n/x/y"), None),
        (("secret", "get", "cfg", "--version", "5"), None),
        (("secret", "get", "db", "--store", str(tmp_path / "none.db")), None),
    ]
    for args, stdin in attempts:
        proc = cli(*args, input=stdin, env=env, check=False)
        assert proc.returncode != 0, args
        assert "Traceback" not in err(proc), args
        assert_not_shown(proc, marker)
    assert get(cli, "db") == marker


# --- help ---------------------------------------------------------------------------


def _subcommands(help_text: str) -> list[str]:
    """Command names listed under 'Commands:' in click's help."""
    names, listing = [], False
    for line in help_text.splitlines():
        if line.strip() == "Commands:":
            listing = True
        elif listing and line.startswith("  ") and line.strip():
            if not line.startswith("    "):
                names.append(line.split()[0])
        elif listing and line.strip():
            listing = False
    return names


def test_help_works_for_every_command(cli: Cli) -> None:
    seen, todo = [], [()]
    while todo:
        path = todo.pop()
        proc = cli(*path, "--help")
        assert out(proc).startswith("Usage: secretfs"), path
        assert proc.stderr == b"", path
        seen.append(" ".join(path))
        todo.extend((*path, name) for name in _subcommands(out(proc)))
    for expected in ("init", "secret", "secret create", "secret set", "secret get", "secret ls"):
        assert expected in seen
    for expected in ("secret rm", "secret history", "mount", "umount"):
        assert expected in seen
    assert out(cli("secret", "get", "-h")).startswith("Usage: secretfs secret get")


def test_version_and_unknown_command(cli: Cli) -> None:
    assert "secretfs" in out(cli("--version"))
    proc = cli("secret", "frobnicate", check=False)
    assert proc.returncode == 2
    assert "No such command" in err(proc)

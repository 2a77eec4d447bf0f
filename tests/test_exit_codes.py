"""One exit-code table for every command (docs/cli.md#exit-codes): a representative
failure of each command group, checked against the table the docs publish."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from secretfs import errors
from tests.conftest import Cli

DOCS = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def _doc_table() -> dict[int, str]:
    text = DOCS.read_text()
    section = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    return {int(m[1]): m[2] for m in re.finditer(r"^\| (\d) \| ([^|]+)\|", section, re.M)}


def test_the_documented_table_is_the_one_the_errors_carry() -> None:
    table = _doc_table()
    assert sorted(table) == list(range(8))
    assert table[errors.UsageError.exit_code].startswith("bad input")
    assert table[errors.NotFoundError.exit_code].startswith("not found")
    assert table[errors.ConflictError.exit_code].startswith("exists")
    assert table[errors.KeySourceError.exit_code].startswith("the key")
    assert table[errors.IntegrityError.exit_code].startswith("a record failed")
    assert table[errors.StoreError.exit_code].startswith("the store")
    assert errors.StoreExistsError.exit_code == errors.ConflictError.exit_code


# (argv, stdin, expected code): each group's everyday failures.
CASES: list[tuple[tuple[str, ...], bytes | None, int]] = [
    # secret
    (("secret", "get", "nope"), None, 3),
    (("secret", "get", "a b"), None, 2),
    (("secret", "get", "db", "--version", "9"), None, 3),
    (("secret", "create", "db", "--generate"), None, 4),
    (("secret", "set", "x", "--from-stdin", "--generate"), None, 2),
    (("secret", "rm", "nope"), None, 3),
    (("secret", "rm", "granted"), None, 4),
    (("secret", "rotate", "nope", "--generate"), None, 3),
    (("secret", "rollback", "db", "--to", "7"), None, 3),
    (("secret", "prune", "nope"), None, 3),
    (("secret", "chmod", "nope", "0400"), None, 3),
    (("secret", "expiry", "nope"), None, 3),
    (("secret", "history", "nope"), None, 3),
    (("secret", "ls", "not-a-scope"), None, 2),
    (("read", "nope"), None, 3),
    (("read", "db", "--out-file", "/"), None, 2),
    (("secret", "restore", "nope"), None, 3),
    (("secret", "restore", "db"), None, 3),  # live, nothing removed to restore
    # access
    (("grant", "nope", "--uid", "5"), None, 3),
    (("grant", "db"), None, 2),
    (("permissions", "nope"), None, 3),
    # client keys
    (("client-key", "rm", "ck_" + "0" * 32), None, 3),
    (("client-key", "add", "bm90IGEga2V5"), None, 2),
    # config
    (("config", "set", "max-versions", "abc"), None, 2),
    # credentials
    (("registry", "rm", "nope.example"), None, 3),
    (("git", "add", "x"), None, 2),
    # transfer
    (("import", "--file", "/nonexistent.env"), None, 2),
    (("export", "nothere"), None, 2),
    # audit, key
    (("audit", "prune", "--before", "garbage"), None, 2),
    (("key", "rotate", "--new-key-from", "env://SECRETFS_TEST_UNSET"), None, 2),
    # setup, mount
    (("init",), None, 4),
    (("mount", "/nonexistent-dir"), None, 2),
    (("umount", "/"), None, 2),
    # click's own usage errors
    (("secret", "get"), None, 2),
    (("no-such-command",), None, 2),
]


@pytest.fixture
def populated(cli: Cli, initialized_store: Path) -> Path:
    cli("secret", "create", "db", "--generate")
    cli("secret", "create", "granted", "--generate")
    cli("grant", "granted", "--uid", "1000")
    return initialized_store


@pytest.mark.parametrize(("argv", "stdin", "code"), CASES, ids=lambda c: str(c))
def test_each_failure_maps_per_the_table(
    cli: Cli, populated: Path, argv: tuple[str, ...], stdin: bytes | None, code: int
) -> None:
    proc = cli(*argv, input=stdin, check=False)
    assert proc.returncode == code, proc.stderr
    assert proc.stderr.strip(), "every failure says why"
    assert b"Traceback" not in proc.stderr


def test_key_integrity_and_store_failures(
    cli: Cli, populated: Path, cli_env: dict[str, str], tmp_path: Path
) -> None:
    key = Path(f"{populated}.key")
    key.rename(tmp_path / "aside")
    assert cli("secret", "get", "db", check=False).returncode == 5
    (tmp_path / "aside").rename(key)
    with sqlite3.connect(populated) as conn:
        conn.execute("UPDATE versions SET ciphertext = zeroblob(length(ciphertext))")
    assert cli("secret", "get", "db", check=False).returncode == 6
    proc = cli("secret", "ls", "--store", str(tmp_path / "none.db"), check=False)
    assert proc.returncode == 7


def test_mount_help_lists_every_option_it_accepts(cli: Cli) -> None:
    from secretfs.cli import mount

    text = " ".join(cli("mount", "--help").stdout.decode().split())
    accepted = {*mount.KNOWN_OPTIONS, *mount.MOUNT8_OPTIONS}
    accepted |= {f"{k}=" for k in (*mount.VALUE_OPTIONS, *mount.DAEMON_OPTIONS)}
    missing = [o for o in sorted(accepted) if not re.search(rf"(?<![\w-]){o}", text)]
    assert missing == []
    assert "x-*" in text and "comment=" in text

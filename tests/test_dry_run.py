"""--dry-run on import, rm, prune and key rotation: says what would happen, changes
nothing (the store's bytes and SQLite's data_version stay the same)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import Cli


@contextmanager
def unchanged(store: Path) -> Iterator[None]:
    """The store file (and its WAL, key file) byte for byte, and data_version, as before."""
    watcher = sqlite3.connect(store)  # kept open: its data_version moves on any commit

    def state() -> tuple[int, list[str]]:
        version = watcher.execute("PRAGMA data_version").fetchone()[0]
        files = [store, Path(f"{store}-wal"), Path(f"{store}.key")]
        return version, [
            hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else "-" for p in files
        ]

    try:
        before = state()
        yield
        assert state() == before
    finally:
        watcher.close()


def err(proc: object) -> str:
    return proc.stderr.decode()  # type: ignore[attr-defined,no-any-return]


def test_rm_dry_run(cli: Cli, initialized_store: Path) -> None:
    cli("secret", "create", "db", "--generate")
    cli("grant", "db", "--uid", "1000")
    with unchanged(initialized_store):
        refused = cli("secret", "rm", "db", "--dry-run", check=False)
        assert refused.returncode == 4 and "granted to uid 1000" in err(refused)
        out = cli("secret", "rm", "db", "--force", "--dry-run", "--json")
        assert "would remove $S:db (at version 1, every version) and its 1 grant(s)" in err(out)
        assert json.loads(out.stdout)["grants_removed"] == 1
        assert json.loads(out.stdout)["recoverable_until"]  # rm-retention, 7d by default
        purge = cli("secret", "rm", "db", "--force", "--purge", "--dry-run", "--json")
        assert json.loads(purge.stdout)["recoverable_until"] is None
        assert cli("secret", "rm", "nope", "--dry-run", check=False).returncode == 3
    assert cli("secret", "get", "db").stdout


def test_prune_dry_run(cli: Cli, initialized_store: Path) -> None:
    for _ in range(4):
        cli("secret", "set", "db", "--generate")
    cli("secret", "set", "one", "--generate")
    with unchanged(initialized_store):
        out = cli("secret", "prune", "db", "--keep", "2", "--dry-run")
        assert out.stdout == b"would prune $S:db: 2 version(s) (1, 2)\n"
        every = json.loads(
            cli("secret", "prune", "--all", "--keep", "1", "--dry-run", "--json").stdout
        )
        assert every == [{"ref": "$S:db", "pruned": [1, 2, 3]}]
    real = cli("secret", "prune", "db", "--keep", "2", "--json")
    assert json.loads(real.stdout) == [{"ref": "$S:db", "pruned": [1, 2]}]


def test_import_dry_run(cli: Cli, initialized_store: Path, tmp_path: Path) -> None:
    cli("secret", "create", "A", "--from-stdin", input=b"1")
    cli("secret", "create", "B", "--from-stdin", input=b"old")
    env = tmp_path / "x.env"
    env.write_text("A=1\nB=2\nC=3\n")
    with unchanged(initialized_store):
        conflict = cli("import", "--file", str(env), "--dry-run", check=False)
        assert conflict.returncode == 4 and "exist already" in err(conflict)
        out = cli("import", "--file", str(env), "--overwrite", "--dry-run", "--json")
        report = json.loads(out.stdout)
        assert (report["created"], report["updated"], report["unchanged"]) == (
            ["$S:C"], ["$S:B"], ["$S:A"],
        )  # fmt: skip
        assert "would import into deployment" in err(out) and "nothing was changed" in err(out)
        bad = tmp_path / "bad.env"
        bad.write_text("nonsense\n")
        assert cli("import", "--file", str(bad), "--dry-run", check=False).returncode == 2
    real = json.loads(cli("import", "--file", str(env), "--overwrite", "--json").stdout)
    assert real == report


def test_key_rotate_dry_run(cli: Cli, initialized_store: Path) -> None:
    cli("secret", "set", "db", "--generate")
    cli("secret", "set", "db", "--generate")
    with unchanged(initialized_store):
        plain = json.loads(cli("key", "rotate", "--dry-run", "--json").stdout)
        assert plain["dry_run"] is True and plain["rewrapped"] == 1
        full = json.loads(cli("key", "rotate", "--reencrypt", "--dry-run", "--json").stdout)
        assert (full["generation"], full["reencrypted"]) == (2, 2)
        text = cli("key", "rotate", "--reencrypt", "--dry-run").stdout.decode()
        assert "would re-encrypt 2 version(s) under data key generation 2" in text
    done = json.loads(cli("key", "rotate", "--reencrypt", "--json").stdout)
    assert (done["generation"], done["reencrypted"]) == (2, 2)


def _rm_on_a_terminal(env: dict[str, str], answer: bytes, *extra: str) -> tuple[int, bytes]:
    """`secret rm db` with a real pty as its stdin/stdout/stderr, answering `answer`."""
    import os
    import pty
    import select
    import subprocess
    import sys

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "secretfs", "secret", "rm", "db", *extra],
        stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True,
    )  # fmt: skip
    os.close(slave)
    seen = b""
    try:
        deadline = 10.0
        while b"?" not in seen and proc.poll() is None and deadline > 0:
            ready, _, _ = select.select([master], [], [], 0.1)
            deadline -= 0.1
            if ready:
                try:
                    seen += os.read(master, 4096)
                except OSError:  # EIO: the child has exited and closed the terminal
                    break
        if b"?" in seen:
            os.write(master, answer)
        code = proc.wait(timeout=10)
        while select.select([master], [], [], 0.1)[0]:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return code, seen


def test_rm_asks_on_a_terminal(cli: Cli, initialized_store: Path, cli_env: dict[str, str]) -> None:
    cli("secret", "create", "db", "--generate")
    code, seen = _rm_on_a_terminal(cli_env, b"n\n")
    assert b"remove $S:db (at version 1, every version)? [y/N]" in seen
    assert code == 1 and cli("secret", "get", "db").returncode == 0
    code, seen = _rm_on_a_terminal(cli_env, b"y\n")
    assert code == 0 and b"removed $S:db" in seen
    assert cli("secret", "get", "db", check=False).returncode == 3
    cli("secret", "create", "db", "--generate")
    code, seen = _rm_on_a_terminal(cli_env, b"", "--yes")
    assert code == 0 and b"[y/N]" not in seen
    # Not a terminal (a script, CI): no question, as before.
    cli("secret", "create", "db", "--generate")
    assert cli("secret", "rm", "db").returncode == 0

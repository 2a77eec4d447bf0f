"""Shell completion through click's real entry point (`_SECRETFS_COMPLETE=bash_complete`
with COMP_WORDS/COMP_CWORD, as bash's completion function calls it), and the scripts that
`secretfs completion SHELL` prints, loaded by the real shells."""

from __future__ import annotations

import base64
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Cli

VALUES = [b"hunter2-value", b"tok-value-9", b"prod-value-7"]


@pytest.fixture
def names(cli: Cli, initialized_store: Path) -> Path:
    """A store with a few secrets (db in 3 versions) and one removed secret."""
    for value in VALUES:
        cli("secret", "set", "db", "--from-stdin", input=value)
    cli("secret", "set", "@api/token", "--from-stdin", input=VALUES[1])
    cli("secret", "set", "shop:prod/stripe", "--from-stdin", input=VALUES[2])
    cli("secret", "set", ":staging/gone", "--generate", "8")
    cli("secret", "rm", ":staging/gone")
    return initialized_store


def complete(line: str, env: dict[str, str], **kw: object) -> subprocess.CompletedProcess[str]:
    """What bash's completion function asks: the words so far, the word being completed."""
    words = line.split()
    cword = len(words) if line.endswith(" ") else len(words) - 1
    return subprocess.run(
        [sys.executable, "-m", "secretfs"],
        env={**env, "COMP_WORDS": line, "COMP_CWORD": str(cword),
             "_SECRETFS_COMPLETE": "bash_complete"},
        capture_output=True,
        text=True,
        **{"timeout": 30, **kw},  # type: ignore[arg-type]
    )  # fmt: skip


def offered(line: str, env: dict[str, str]) -> list[str]:
    proc = complete(line, env)
    assert (proc.returncode, proc.stderr) == (0, "")
    return [item.split(",", 1)[1] for item in proc.stdout.splitlines() if item]


def test_refs_scopes_and_versions_come_from_the_store(names: Path, cli_env: dict[str, str]) -> None:
    refs = ["@api/token", "db", "shop:prod/stripe"]
    assert sorted(offered("secretfs secret get ", cli_env)) == refs  # not the removed one
    assert offered("secretfs secret get @", cli_env) == ["@api/token"]
    assert offered("secretfs secret get $S:@", cli_env) == ["$S:@api/token"]
    assert offered("secretfs secret history sh", cli_env) == ["shop:prod/stripe"]
    assert sorted(offered("secretfs secret ls ", cli_env)) == ["@api", "deployment", "shop:prod"]
    assert sorted(offered("secretfs grant ", cli_env)) == sorted(
        [*refs, "@api", "deployment", "shop:prod"]
    )
    assert offered("secretfs audit --ref @", cli_env) == ["@api", "@api/token"]
    assert offered("secretfs secret get db --version ", cli_env) == ["3", "2", "1"]
    assert offered("secretfs secret rollback db --to ", cli_env) == ["3", "2", "1"]
    assert offered("secretfs secret get --store ", cli_env) == []  # a path: the shell's job
    assert "completion" in offered("secretfs comp", cli_env)


def test_completion_needs_no_key_and_never_prints_a_value(
    names: Path, cli_env: dict[str, str]
) -> None:
    names.with_name(names.name + ".key").unlink()  # the key is not needed for names
    assert offered("secretfs secret get d", cli_env) == ["db"]
    for line in ("secretfs secret get ", "secretfs grant ", "secretfs secret get db --version "):
        out = complete(line, cli_env).stdout.encode()
        assert not any(value in out for value in VALUES)


def test_completion_is_silent_when_the_store_cannot_be_read(
    names: Path, cli_env: dict[str, str], tmp_path: Path
) -> None:
    for store in (tmp_path / "missing.db", "etcd://127.0.0.1:9/none", tmp_path):
        env = {**cli_env, "SECRETFS_STORE": str(store)}
        proc = complete("secretfs secret get ", env)
        assert (proc.returncode, proc.stdout.strip(), proc.stderr) == (0, "", "")
    (tmp_path / "junk.db").write_bytes(b"not a database")
    proc = complete(
        "secretfs secret get ", {**cli_env, "SECRETFS_STORE": str(tmp_path / "junk.db")}
    )
    assert (proc.returncode, proc.stdout.strip(), proc.stderr) == (0, "", "")


def test_completion_does_not_wait_for_a_locked_store(names: Path, cli_env: dict[str, str]) -> None:
    """A writer holding the store exclusively would block a reader for SQLite's busy
    timeout (5 s and more): completion gives up within its bound and offers nothing."""
    holder = sqlite3.connect(names, isolation_level=None)
    try:
        holder.execute("PRAGMA locking_mode = EXCLUSIVE")
        holder.execute("BEGIN EXCLUSIVE")
        proc = complete("secretfs secret get ", cli_env, timeout=4)
        assert (proc.returncode, proc.stdout.strip(), proc.stderr) == (0, "", "")
    finally:
        holder.close()
    assert offered("secretfs secret get d", cli_env) == ["db"]


def _secretfs_on_path(tmp_path: Path) -> dict[str, str]:
    """A `secretfs` command that runs this tree, as the installed entry point would."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "secretfs").write_text(f'#!/bin/sh\nexec {sys.executable} -m secretfs "$@"\n')
    (bindir / "secretfs").chmod(0o755)
    return {"PATH": f"{bindir}:{os.environ['PATH']}"}


def test_bash_sources_the_script_and_completes_refs(
    names: Path, cli_env: dict[str, str], cli: Cli, tmp_path: Path
) -> None:
    script = tmp_path / "secretfs.bash"
    script.write_bytes(cli("completion", "bash").stdout)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    # Real bash: load it, then call the function it registered the way bash does.
    driver = f"""
source {script}
complete -p secretfs
COMP_WORDS=(secretfs secret get @); COMP_CWORD=3
fn=$(complete -p secretfs | sed -E 's/.* -F ([^ ]+) .*/\\1/')
"$fn" secretfs @ get  # bash passes: the command, the word, the word before
printf 'reply:%s\\n' "${{COMPREPLY[@]}}"
"""
    proc = subprocess.run(
        ["bash", "-c", driver],
        env={**cli_env, **_secretfs_on_path(tmp_path)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert "complete -o nosort -F _secretfs_completion secretfs" in proc.stdout
    assert "reply:@api/token" in proc.stdout.splitlines()


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_zsh_and_fish_scripts_parse(shell: str, cli: Cli, initialized_store: Path) -> None:
    out = cli("completion", shell).stdout
    assert b"_SECRETFS_COMPLETE" in out
    if shutil.which(shell) is None:
        pytest.fail(f"{shell} is not installed: run scripts/setup.sh")
    proc = subprocess.run([shell, "-n"], input=out, capture_output=True, timeout=30)
    assert (proc.returncode, proc.stderr) == (0, b"")


def test_an_unknown_shell_is_a_usage_error(cli: Cli, initialized_store: Path) -> None:
    proc = cli("completion", "tcsh", check=False)
    assert proc.returncode == 2
    assert b"tcsh" in proc.stderr


def test_client_key_ids_complete_live_keys_only(
    cli: Cli, initialized_store: Path, cli_env: dict[str, str]
) -> None:
    from nacl.public import PrivateKey

    def add() -> str:
        public = base64.b64encode(bytes(PrivateKey.generate().public_key)).decode()
        return cli("client-key", "add", public).stdout.decode().strip()

    live, revoked = add(), add()
    cli("client-key", "rm", revoked)
    assert offered("secretfs client-key rm ck_", cli_env) == [live]
    assert offered("secretfs secret get db --sealed-to ", cli_env) == [live]

"""Bad input to the CLI is a clear message and a usage exit, never a traceback: huge
numbers, a key file others can read, a mount point that is not there."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest

from secretfs.cli import commands
from secretfs.cli.params import INT_MAX
from tests.conftest import Cli

HUGE = "99999999999999999999"


def _params(group: click.Group, path: str = "secretfs") -> list[tuple[str, click.Parameter]]:
    out = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            out += _params(command, f"{path} {name}")
        else:
            out += [(f"{path} {name}", p) for p in command.params]
    return out


def test_every_integer_option_is_bounded() -> None:
    unbounded = [
        f"{where} {param.name}"
        for where, param in _params(commands())
        if isinstance(param.type, click.types.IntParamType)
        and not (
            isinstance(param.type, click.IntRange)
            and param.type.max is not None
            and param.type.min is not None
            and -INT_MAX - 1 <= param.type.min
            and param.type.max <= INT_MAX
        )
    ]
    assert not unbounded


@pytest.mark.parametrize(
    "args",
    [
        ["secret", "get", "db", "--version", HUGE],
        ["secret", "rollback", "db", "--to", HUGE],
        ["secret", "prune", "db", "--keep", HUGE],
        ["audit", "--last", HUGE],
        ["config", "set", "max-versions", HUGE],
        ["secret", "set", "db", "--from-stdin", "--uid", HUGE],
    ],
)
def test_huge_numbers_are_a_usage_error(cli: Cli, initialized_store: Path, args: list[str]) -> None:
    cli("secret", "set", "db", "--from-stdin", input=b"v1")
    proc = cli(*args, input=b"v2", check=False)
    assert proc.returncode == 2, proc.stderr
    assert b"Traceback" not in proc.stderr
    assert b"not in the range" in proc.stderr or b"must be between" in proc.stderr


def test_key_file_others_may_read_is_refused_with_the_chmod(
    cli: Cli, initialized_store: Path
) -> None:
    key = Path(f"{initialized_store}.key")
    for mode in (0o640, 0o604, 0o620):
        key.chmod(mode)
        proc = cli("secret", "ls", check=False)
        assert proc.returncode == 5, proc.stderr
        assert f"is mode {mode:04o}".encode() in proc.stderr
        assert f"run: chmod 600 {key}".encode() in proc.stderr
    key.chmod(0o600)
    assert cli("secret", "ls").returncode == 0


def test_mount_point_problems_say_what_is_wrong(
    cli: Cli, initialized_store: Path, tmp_path: Path
) -> None:
    proc = cli("mount", str(tmp_path / "absent"), check=False)
    assert proc.returncode == 2
    assert b"does not exist: create it first" in proc.stderr
    proc = cli("mount", str(initialized_store), check=False)
    assert proc.returncode == 2
    assert b"is not a directory" in proc.stderr
    proc = cli("umount", str(tmp_path), check=False)
    assert proc.returncode == 2
    assert b"is not mounted" in proc.stderr


@pytest.mark.parametrize(
    ("hide", "says"),
    [
        ("mount -t tmpfs none /dev", b"/dev/fuse does not exist: load the fuse module"),
        ("mount --bind /dev/null /dev/fuse", b"/dev/fuse is not the FUSE device"),
    ],
)
def test_missing_fuse_device_is_named(
    cli_env: dict[str, str], initialized_store: Path, tmp_path: Path, hide: str, says: bytes
) -> None:
    """In a private mount namespace (the host's /dev is untouched) without /dev/fuse."""
    (tmp_path / "mnt").mkdir()
    script = f'{hide} && exec "$0" -m secretfs mount "$1"'
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
         sys.executable, str(tmp_path / "mnt")],
        env=cli_env, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert says in proc.stderr
    assert b"exited with status" not in proc.stderr

"""Shared fixtures: a store path in tmp_path and the real CLI run as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

# etcd_cluster / own_etcd_cluster: a real 3-member etcd cluster (tests/etcd_cluster.py).
pytest_plugins = ["tests.etcd_cluster"]

CliRunner = Callable[..., "subprocess.CompletedProcess[bytes]"]


def cli_environment(store: Path) -> dict[str, str]:
    """A copy of os.environ without SECRETFS_* vars, with SECRETFS_STORE=store."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECRETFS_")}
    env["SECRETFS_STORE"] = str(store)
    return env


@pytest.fixture(autouse=True)
def _no_secretfs_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process code (Vault, keys) sees no SECRETFS_* unless a test sets it."""
    for name in list(os.environ):
        if name.startswith("SECRETFS_"):
            monkeypatch.delenv(name)


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


@pytest.fixture
def cli_env(store_path: Path) -> dict[str, str]:
    """The environment for a CLI subprocess: no SECRETFS_* but SECRETFS_STORE."""
    return cli_environment(store_path)


def run_cli(
    *args: str,
    env: dict[str, str],
    input: bytes | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    """Run `python -m secretfs ARGS`; with `check`, fail showing its output if it fails."""
    proc = subprocess.run(
        [sys.executable, "-m", "secretfs", *args],
        input=input,
        env=env,
        capture_output=True,
        check=False,
        timeout=60,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"secretfs {' '.join(args)} exited {proc.returncode}\n"
            f"stdout: {proc.stdout[:2000]!r}\nstderr: {proc.stderr[:2000]!r}"
        )
    return proc


@pytest.fixture
def cli(cli_env: dict[str, str]) -> CliRunner:
    """`cli(*args, input=None, env=None, check=True)`; env defaults to `cli_env`."""

    def run(
        *args: str,
        input: bytes | None = None,
        env: dict[str, str] | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[bytes]:
        return run_cli(*args, env=cli_env if env is None else env, input=input, check=check)

    return run


@pytest.fixture
def initialized_store(cli: CliRunner, store_path: Path) -> Path:
    """A store created by `secretfs init` with a key file beside it."""
    cli("init")
    return store_path

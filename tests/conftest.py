"""Shared fixtures: a store path in tmp_path and the real CLI, in-process or as a process.

`cli` / `run_cli` run the click group in this process (click's CliRunner): argv, stdin,
stdout, stderr, the environment and the exit code are the ones `python -m secretfs` would
have, without paying a Python start-up per call. `cli_process` / `run_cli_process` start
the real `python -m secretfs` for the tests where the process itself is the point (exec,
signals, children's environment, crashes, daemons, cores).
"""

from __future__ import annotations

import ctypes
import logging
import os
import resource
import subprocess
import sys
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
from click.testing import CliRunner as ClickRunner

from secretfs.cli import commands

# etcd_cluster / own_etcd_cluster: a real 3-member etcd cluster (tests/etcd_cluster.py).
# store / etcd_store: an initialized store on each backend (tests/stores.py).
pytest_plugins = ["tests.etcd_cluster", "tests.stores"]

# `cli(*args, input=None, env=None, check=True)` -> .returncode, .stdout, .stderr (bytes).
Cli = Callable[..., "subprocess.CompletedProcess[bytes]"]


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
    """The environment for a CLI call: no SECRETFS_* but SECRETFS_STORE."""
    return cli_environment(store_path)


def _checked(
    proc: subprocess.CompletedProcess[bytes], check: bool
) -> subprocess.CompletedProcess[bytes]:
    if check and proc.returncode != 0:
        raise AssertionError(
            f"secretfs {' '.join(proc.args[3:])} exited {proc.returncode}\n"
            f"stdout: {proc.stdout[:2000]!r}\nstderr: {proc.stderr[:2000]!r}"
        )
    return proc


class _StderrAtEmit(logging.Handler):
    """What Python's last-resort handler does in a CLI process: WARNING+ to stderr."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        sys.stderr.write(self.format(record) + "\n")


_LIBC = ctypes.CDLL(None, use_errno=True)
_PR_GET_DUMPABLE = 3


def _process_state() -> tuple[object, ...]:
    """What hardening a process changes: its core size limit and whether it is dumpable."""
    return resource.getrlimit(resource.RLIMIT_CORE), _LIBC.prctl(_PR_GET_DUMPABLE, 0, 0, 0, 0)


# `run` execs the user's command (it would replace pytest) and forwards signals; `mount`
# starts a daemon. A fault point armed by SECRETFS_TEST_* kills or stops its process.
PROCESS_COMMANDS = frozenset({"run", "mount"})


def needs_a_process(args: tuple[str, ...], env: Mapping[str, str]) -> bool:
    """Whether `secretfs ARGS` with `env` can only run as its own process."""
    return bool(args and args[0] in PROCESS_COMMANDS) or any(
        name.startswith("SECRETFS_TEST_") for name in env
    )


def run_cli(
    *args: str,
    env: dict[str, str],
    input: bytes | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    """`secretfs ARGS` in this process; with `check`, fail showing its output if it fails.

    os.environ is exactly `env` for the call; stdin is `input` (empty if None, as the
    /dev/null pytest gives a subprocess); an exception that escapes is a traceback on
    stderr and exit 1, as the interpreter would make it. What `needs_a_process` names
    runs as a process. This calls the click group, not `secretfs.cli.main()`: what
    main() does to the process (hardening) must not happen to the test process.
    """
    if needs_a_process(args, env):
        return run_cli_process(*args, env=env, input=input, check=check)
    before = _process_state()
    runner = ClickRunner()
    # CliRunner sets these for the call and restores them after; None removes a variable.
    call_env: dict[str, str | None] = {k: None for k in os.environ if k not in env}
    call_env.update(env)
    handler = _StderrAtEmit()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        result = runner.invoke(
            commands(), list(args), input=input or b"", env=call_env, prog_name="secretfs"
        )
    finally:
        root.removeHandler(handler)
    assert _process_state() == before, "the CLI changed the test process: do that in main()"
    stderr = result.stderr_bytes
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception)).encode()
    argv = [sys.executable, "-m", "secretfs", *args]  # what the process would have had
    proc = subprocess.CompletedProcess(argv, result.exit_code, result.stdout_bytes, stderr)
    return _checked(proc, check)


def run_cli_process(
    *args: str,
    env: dict[str, str],
    input: bytes | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    """Run `python -m secretfs ARGS` as a process; with `check`, fail on a non-zero exit."""
    proc = subprocess.run(
        [sys.executable, "-m", "secretfs", *args],
        input=input,
        env=env,
        capture_output=True,
        check=False,
        timeout=60,
    )
    return _checked(proc, check)


@pytest.fixture
def cli(cli_env: dict[str, str]) -> Cli:
    """`cli(*args, input=None, env=None, check=True)` in-process; env defaults to `cli_env`."""

    def run(
        *args: str,
        input: bytes | None = None,
        env: dict[str, str] | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[bytes]:
        return run_cli(*args, env=cli_env if env is None else env, input=input, check=check)

    return run


@pytest.fixture
def cli_process(cli_env: dict[str, str]) -> Cli:
    """`cli` as a real `python -m secretfs` process: for exec, signals, children, crashes."""

    def run(
        *args: str,
        input: bytes | None = None,
        env: dict[str, str] | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[bytes]:
        return run_cli_process(*args, env=cli_env if env is None else env, input=input, check=check)

    return run


@pytest.fixture
def initialized_store(cli: Cli, store_path: Path) -> Path:
    """A store created by `secretfs init` with a key file beside it."""
    cli("init")
    return store_path


# The longest modules start first: with one xdist worker per core (scripts/test.sh) the
# short tests then fill in around them instead of one long test ending the run alone.
LONGEST_FIRST = (
    "tests/test_crash_import.py",
    "tests/test_docs_run.py",
    "tests/test_crash_keys.py",
    "tests/mount/test_bench.py",
    "tests/mount/test_soak.py",
    "tests/mount/test_tls_mount.py",
    "tests/test_docs.py",
    "tests/test_fields.py",
    "tests/test_completion.py",
    "tests/test_formats.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: within a module, and for all others, the order is kept

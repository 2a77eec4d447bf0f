"""`secretfs run --on-change`: a real child, real signals, a real store being written."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from secretfs.refs import parse_ref
from secretfs.vault import Vault

# Notes each start (with $DB) and each SIGHUP in LOG, one line each; exits 0 on SIGTERM.
CHILD = """
import os, signal, sys
log = open(sys.argv[1], "a", buffering=1)
signal.signal(signal.SIGHUP, lambda *_: log.write("hup\\n"))
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
log.write("start " + os.environ["DB"] + "\\n")
while True:
    signal.pause()
"""


@pytest.fixture
def vault(store_path: Path) -> Iterator[Vault]:
    Vault.init(store_path)
    v = Vault.open(store_path)
    v.set(parse_ref("db"), b"one")
    try:
        yield v
    finally:
        v.close()


def lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def wait_lines(log: Path, n: int, timeout: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while len(lines(log)) < n:
        assert time.monotonic() < deadline, f"wanted {n} lines, got {lines(log)}"
        time.sleep(0.02)
    return lines(log)


def start(cli_env: dict[str, str], log: Path, *options: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "secretfs", "run", *options, "--debounce", "0.3", "--",
         sys.executable, "-c", CHILD, str(log)],
        env={**cli_env, "DB": "$S:db"},
        stderr=subprocess.PIPE,
    )  # fmt: skip


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)  # forwarded to the child, which exits 0
    try:
        return proc.wait(timeout=5)
    finally:
        proc.kill()
        proc.wait()


def test_one_sighup_per_real_change_and_none_for_the_same_value(
    cli_env: dict[str, str], vault: Vault, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    proc = start(cli_env, log, "--on-change", "HUP")
    try:
        assert wait_lines(log, 1) == ["start one"]
        vault.set(parse_ref("db"), b"two")
        assert wait_lines(log, 2) == ["start one", "hup"]
        vault.set(parse_ref("db"), b"two")  # a new version, the same value
        vault.set(parse_ref("other"), b"not used by the child")
        time.sleep(0.8)  # poll + debounce, with room
        assert lines(log) == ["start one", "hup"]
        for value in (b"three", b"four", b"five"):  # a burst: acted on once
            vault.set(parse_ref("db"), value)
        assert wait_lines(log, 3) == ["start one", "hup", "hup"]
        time.sleep(0.6)
        assert len(lines(log)) == 3
    finally:
        status = stop(proc)
    assert status == 0, proc.stderr.read() if proc.stderr else b""


def test_restart_starts_the_child_again_with_the_new_value(
    cli_env: dict[str, str], vault: Vault, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    proc = start(cli_env, log, "--on-change", "restart")
    try:
        assert wait_lines(log, 1) == ["start one"]
        vault.set(parse_ref("db"), b"two")
        assert wait_lines(log, 2) == ["start one", "start two"]
        # A reference that no longer resolves: the running child is kept.
        vault.remove(parse_ref("db"))
        time.sleep(0.8)
        assert lines(log) == ["start one", "start two"]
    finally:
        status = stop(proc)
    assert status == 0
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    assert "not restarting" in err and "two" not in err.replace("start two", "")


def test_the_child_exit_status_is_ours(cli_env: dict[str, str], vault: Vault) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "secretfs", "run", "--on-change", "HUP", "--",
         "sh", "-c", 'test "$DB" = one && exit 7'],
        env={**cli_env, "DB": "$S:db"},
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    assert proc.returncode == 7, proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--on-change", "NOPE"], b"give a signal"),
        (["--on-change", "HUP", "--scrub"], b"cannot be used together"),
        (["--watch", "db"], b"--watch goes with --on-change"),
    ],
)
def test_bad_on_change_usage_is_refused(
    cli_env: dict[str, str], vault: Vault, args: list[str], message: bytes
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "secretfs", "run", *args, "--", "true"],
        env={**cli_env, "DB": "$S:db"},
        capture_output=True,
        timeout=30,
    )
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_nothing_to_follow_is_refused(cli_env: dict[str, str], vault: Vault) -> None:
    env = {k: v for k, v in cli_env.items() if k != "DB"}
    proc = subprocess.run(
        [sys.executable, "-m", "secretfs", "run", "--on-change", "HUP", "--", "true"],
        env=env,
        capture_output=True,
        timeout=30,
    )
    assert proc.returncode == 2 and b"--watch" in proc.stderr, proc.stderr

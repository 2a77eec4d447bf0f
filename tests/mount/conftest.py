"""Real FUSE mounts: `secretfs mount` in the background, unmounted after each test."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from secretfs.refs import parse_ref
from secretfs.vault import Vault
from tests.conftest import run_cli, run_cli_process


def _is_mounted(path: Path) -> bool:
    # Only the parent is resolved: a stat of a dead mount's root would hang the test.
    target = os.path.join(os.path.realpath(path.parent), path.name)
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        return any(line.split()[4] == target for line in fh)


def wait_for(predicate: Callable[[], bool], timeout: float = 1.0) -> float:
    """Poll until `predicate()` holds; return how long it took, fail after `timeout`."""
    start = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not true within {timeout} s")
        time.sleep(0.01)


@dataclass
class Mount:
    path: Path
    store: Path
    env: dict[str, str]

    def cli(
        self, *args: str, input: bytes | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        """The CLI on this mount's store, in-process (`mount` itself runs as a process)."""
        return run_cli(*args, env=self.env, input=input, check=check)

    def cli_process(
        self, *args: str, input: bytes | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        """The CLI as a real process: for `mount`, which leaves a daemon behind."""
        return run_cli_process(*args, env=self.env, input=input, check=check)

    def seed(self, secrets: dict[str, bytes]) -> None:
        """Write secrets in-process (fast); the CLI path has its own tests."""
        vault = Vault.open(self.store)
        try:
            for ref, value in secrets.items():
                vault.set(parse_ref(ref), value)
        finally:
            vault.close()

    def daemon_pids(self) -> list[int]:
        out = subprocess.run(
            ["pgrep", "-f", f"secretfs mount {self.path} "], capture_output=True, text=True
        ).stdout
        return [int(p) for p in out.split()]


@pytest.fixture
def mount_factory(tmp_path: Path, cli_env: dict[str, str]) -> Iterator[Callable[..., Mount]]:
    """Mount a store (created if needed); everything mounted is unmounted afterwards."""
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        pytest.fail("these tests need /dev/fuse (run as root, as scripts/test.sh does)")
    made: list[Mount] = []

    def make(
        *options: str,
        secrets: dict[str, bytes] | None = None,
        name: str = "mnt",
        parent: Path | None = None,
    ) -> Mount:
        # `parent`: somewhere other uids can traverse (tmp_path's parents are 0700).
        path = (parent or tmp_path) / name
        path.mkdir(exist_ok=True)
        m = Mount(path, Path(cli_env["SECRETFS_STORE"]), cli_env)
        if not m.store.exists():
            m.cli("init")
        m.seed(secrets or {})
        m.cli_process("mount", str(path), *options)
        made.append(m)
        return m

    yield make
    for m in made:
        if _is_mounted(m.path):
            subprocess.run(["fusermount3", "-u", "-z", str(m.path)], check=False)
        deadline = time.monotonic() + 5
        while m.daemon_pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not m.daemon_pids(), "the daemon did not exit after unmount"


SAMPLE: dict[str, bytes] = {
    "db": b"hunter2",
    "@api/config": b'{"user":"app","password":"pw","port":5432,"ratio":2.50,'
    b'"tls":true,"none":null,"replicas":["a",{"host":"h1"}],"":1,"a/b":2}',
    ":staging/token": b"staging-token\n",
    "shop:prod/stripe": bytes(range(256)),
}


@pytest.fixture
def mounted(mount_factory: Callable[..., Mount]) -> Mount:
    return mount_factory(secrets=SAMPLE)

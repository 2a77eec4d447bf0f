"""Real FUSE mounts: `secretfs mount` in the background, unmounted after each test (or,
for `mounted_readonly`, after the module), and the helpers the mount tests share: a
directory every uid can traverse, and probes run as other real uids."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from secretfs.refs import parse_ref
from secretfs.vault import Vault
from tests.conftest import cli_environment, run_cli, run_cli_process

# The system Python: the venv's may live under a directory other uids cannot enter.
SYSTEM_PYTHON = "/usr/bin/python3"
# A command prefix that runs what follows as uid:gid 1000:1000 with no other groups.
AS_1000 = ["setpriv", "--reuid=1000", "--regid=1000", "--clear-groups"]


def _is_mounted(path: Path) -> bool:
    # Only the parent is resolved: a stat of a dead mount's root would hang the test.
    target = os.path.join(os.path.realpath(path.parent), path.name)
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        return any(line.split()[4] == target for line in fh)


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> float:
    """Poll until `predicate()` holds; return how long it took, fail after `timeout`.
    The timeout is a deadline for a mount that never gets there, not a latency bound:
    a loaded 2-core CI machine may take a poll or two longer (bench/ measures those)."""
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
        return daemon_pids(self.path)


def daemon_pids(mountpoint: Path) -> list[int]:
    """The pids of the `secretfs mount` daemons serving `mountpoint`."""
    out = subprocess.run(
        ["pgrep", "-f", f"secretfs mount {mountpoint} "], capture_output=True, text=True
    ).stdout
    return [int(p) for p in out.split()]


def _needs_fuse() -> None:
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        pytest.fail("these tests need /dev/fuse (run as root, as scripts/test.sh does)")


def _mount(
    base: Path,
    env: dict[str, str],
    options: tuple[str, ...],
    secrets: dict[str, bytes] | None,
    name: str,
    parent: Path | None,
) -> Mount:
    # `parent`: somewhere other uids can traverse (tmp_path's parents are 0700).
    path = (parent or base) / name
    path.mkdir(exist_ok=True)
    m = Mount(path, Path(env["SECRETFS_STORE"]), env)
    if not m.store.exists():
        m.cli("init")
    m.seed(secrets or {})
    m.cli_process("mount", str(path), *options)
    return m


def _unmount_all(made: list[Mount]) -> None:
    for m in made:
        if _is_mounted(m.path):
            subprocess.run(["fusermount3", "-u", "-z", str(m.path)], check=False)
        deadline = time.monotonic() + 5
        while m.daemon_pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not m.daemon_pids(), "the daemon did not exit after unmount"


@pytest.fixture
def mount_factory(tmp_path: Path, cli_env: dict[str, str]) -> Iterator[Callable[..., Mount]]:
    """Mount a store (created if needed); everything mounted is unmounted afterwards."""
    _needs_fuse()
    made: list[Mount] = []

    def make(
        *options: str,
        secrets: dict[str, bytes] | None = None,
        name: str = "mnt",
        parent: Path | None = None,
    ) -> Mount:
        made.append(_mount(tmp_path, cli_env, options, secrets, name, parent))
        return made[-1]

    yield make
    _unmount_all(made)


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


@pytest.fixture(scope="module")
def mounted_readonly(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    """SAMPLE mounted once for a module's tests that only look: none may change its store,
    its mount or its daemon (a test that does takes `mounted`, a mount of its own)."""
    _needs_fuse()
    base = tmp_path_factory.mktemp("readonly")
    with pytest.MonkeyPatch.context() as mp:  # as _no_secretfs_env does for a test
        for name in [n for n in os.environ if n.startswith("SECRETFS_")]:
            mp.delenv(name)
        made = [_mount(base, cli_environment(base / "store.db"), (), SAMPLE, "mnt", None)]
    yield made[0]
    _unmount_all(made)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every uid can traverse (pytest's tmp_path is 0700 root's)."""
    path = Path(tempfile.mkdtemp(prefix="secretfs-test-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


PROBE = r"""
import errno, json, os, sys
op, path = sys.argv[1], sys.argv[2]
try:
    if op == "read":
        with open(path, "rb") as fh:
            result = ["ok", fh.read().hex()]
    elif op == "list":
        result = ["ok", sorted(os.listdir(path))]
    elif op == "stat":
        st = os.stat(path)
        result = ["ok", [st.st_size, st.st_mode]]
    elif op == "xattr":
        result = ["ok", sorted(os.listxattr(path))]
        result[1] += [os.getxattr(path, "user.secretfs.fingerprint").decode()]
    else:
        result = ["ok", os.getxattr(path, "user.secretfs." + op).decode()]
except OSError as exc:
    result = [errno.errorcode[exc.errno], None]
print(json.dumps({"pid": os.getpid(), "result": result}))
"""


def probe(uid: int, gid: int, op: str, path: Path, groups: tuple[int, ...] = ()) -> Any:
    """Run `op` on `path` as a real process of uid/gid/groups: ("ok", data) or (errno
    name, None). `op`: read, list, stat, xattr (the names and the fingerprint), or the
    name of one user.secretfs.* attribute. `probe.last_pid` is the process's pid."""
    out = subprocess.run(
        [SYSTEM_PYTHON, "-c", PROBE, op, str(path)],
        user=uid,
        group=gid,
        extra_groups=list(groups),
        cwd="/",
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    answer = json.loads(out.stdout)
    probe.last_pid = answer["pid"]  # type: ignore[attr-defined]
    status, data = answer["result"]
    if status == "ok" and op == "read":
        return status, bytes.fromhex(data)
    return status, data

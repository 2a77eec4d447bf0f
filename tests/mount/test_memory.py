"""The daemon's memory stays bounded however many handles are open: one decrypted copy
per secret version is shared by every handle (issue 10.6a)."""

from __future__ import annotations

import os
import resource
from collections.abc import Callable, Iterator

import pytest

from tests.mount.conftest import Mount

HANDLES = 2000
SIZE = 1024 * 1024


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
def many_fds() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, HANDLES + 256), max(hard, HANDLES + 256)))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.usefixtures("many_fds")
def test_2000_handles_on_a_1mib_secret_hold_one_copy(
    mount_factory: Callable[..., Mount],
) -> None:
    value = os.urandom(SIZE)
    m = mount_factory(secrets={"big": value})
    (pid,) = m.daemon_pids()
    path = m.path / "deployment/big"
    fds: list[int] = []
    try:
        for _ in range(HANDLES):
            # O_DIRECT: each handle's read reaches the daemon, not the page cache.
            fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
            fds.append(fd)
            assert os.pread(fd, 4096, SIZE - 4096) == value[-4096:]
        rss = _rss_bytes(pid)
    finally:
        for fd in fds:
            os.close(fd)
    assert rss < 200 * 1024 * 1024, f"daemon RSS {rss >> 20} MiB with {HANDLES} handles"


def test_past_max_plain_reads_still_answer(mount_factory: Callable[..., Mount]) -> None:
    m = mount_factory("-o", "max_plain=1K", secrets={"a": b"x" * 4000, "b": b"small"})
    held = [os.open(m.path / "deployment/a", os.O_RDONLY | os.O_DIRECT) for _ in range(3)]
    try:
        for fd in held:
            assert os.pread(fd, 8192, 0) == b"x" * 4000
        assert (m.path / "deployment/b").read_bytes() == b"small"
    finally:
        for fd in held:
            os.close(fd)


def test_max_plain_must_be_a_size(mount_factory: Callable[..., Mount], tmp_path: object) -> None:
    m = mount_factory(secrets={"a": b"x"})
    out = m.cli("mount", str(m.path) + "-2", "-o", "max_plain=lots", check=False)
    assert out.returncode == 2
    assert b"max_plain" in out.stderr

"""Rotation that watchers notice: inotify on mounted files (docs/watching.md)."""

from __future__ import annotations

import os
import select
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.mount.conftest import Mount


@contextmanager
def inotifywait(*paths: Path) -> Iterator[subprocess.Popen[str]]:
    """`inotifywait -m` on `paths`, its watches in place before the body runs."""
    proc = subprocess.Popen(
        ["inotifywait", "-m", "--format", "%w%f %e", *map(str, paths)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "Watches established" in line:
                break
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=5)


def events(proc: subprocess.Popen[str], until: str, timeout: float = 3.0) -> list[str]:
    """Lines from the watcher up to one that ends with `until` (fails after `timeout`)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()  # read raw: a buffered reader would hide lines from select
    deadline = time.monotonic() + timeout
    text = ""
    while True:
        lines = text.splitlines()
        for n, line in enumerate(lines):
            if line.endswith(until):
                return lines[: n + 1]
        ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
        if not ready:
            raise AssertionError(f"no {until} within {timeout} s: {lines}")
        text += os.read(fd, 4096).decode()


def test_a_file_watcher_gets_delete_self_on_a_new_version(
    mount_factory: Callable[..., Mount],
) -> None:
    m = mount_factory(secrets={"db": b"v1", "cfg": b'{"a": {"b": "1"}}', "other": b"o"})
    db = m.path / "deployment/db"
    field = m.path / "deployment/cfg.d/a/b"
    with inotifywait(db, field) as proc, inotifywait(db.parent) as in_dir:
        m.cli("secret", "set", "db", "--from-stdin", input=b"v2")
        assert events(proc, "DELETE_SELF") == [f"{db} DELETE_SELF"]
        # As docs/watching.md says: the directory's watchers are told nothing.
        with pytest.raises(AssertionError, match="within"):
            events(in_dir, "", timeout=0.3)
        m.cli("secret", "set", "cfg", "--from-stdin", input=b'{"a": {"b": "2"}}')
        assert f"{field} DELETE_SELF" in events(proc, "DELETE_SELF")
    assert db.read_bytes() == b"v2"
    assert field.read_bytes() == b"2"


def test_a_file_watcher_gets_delete_self_on_removal_only_for_its_file(
    mount_factory: Callable[..., Mount],
) -> None:
    m = mount_factory(secrets={"db": b"v1", "other": b"o"})
    db, other = m.path / "deployment/db", m.path / "deployment/other"
    with inotifywait(db, other) as proc:
        m.cli("secret", "rm", "other")
        assert events(proc, "DELETE_SELF") == [f"{other} DELETE_SELF"]
    assert db.read_bytes() == b"v1"

"""What a mount leaves on disk and tells its operator: a private log without values, and
metadata changed by another writer reaching the mount."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from tests.mount.conftest import Mount, wait_for


def test_log_file_is_created_0600_and_holds_no_value(
    mount_factory: Callable[..., Mount], tmp_path: Path
) -> None:
    log = tmp_path / "daemon.log"
    old = os.umask(0o022)  # what a shell usually has: a plain open() would make it 0644
    try:
        m = mount_factory("--log-file", str(log), secrets={"db": b"hunter2-in-the-log?"})
    finally:
        os.umask(old)
    assert (m.path / "deployment" / "db").read_bytes() == b"hunter2-in-the-log?"
    m.cli("secret", "set", "db", "--from-stdin", input=b"second-value-xyz")
    wait_for(lambda: (m.path / "deployment" / "db").read_bytes() == b"second-value-xyz")
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    text = log.read_bytes()
    assert b"mounted" in text
    assert b"hunter2" not in text and b"second-value" not in text

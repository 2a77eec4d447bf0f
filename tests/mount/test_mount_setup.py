"""What a mount leaves on disk and tells its operator: a private log without values, and
metadata changed by another writer reaching the mount."""

from __future__ import annotations

import os
import sqlite3
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


def test_metadata_changed_by_another_writer_reaches_the_mount(
    mount_factory: Callable[..., Mount],
) -> None:
    """A writer that knows nothing of secretfs's change counters (sqlite3 by hand, a
    restore tool) changes a mode, a scope default and a size: the mount sees each at once
    (triggers move the counters it follows) and, as the access rows were changed without
    the key, serves those secrets to nobody (mode 0) rather than as changed."""
    m = mount_factory(secrets={"db": b"hunter2", "@api/token": b"t0ken"})
    db = m.path / "deployment" / "db"
    token = m.path / "@api" / "token"
    assert stat.S_IMODE(db.stat().st_mode) == 0o400
    m.cli("secret", "chmod", "@api", "0440")  # token inherits its scope's default
    wait_for(lambda: stat.S_IMODE(token.stat().st_mode) == 0o440, timeout=2)
    conn = sqlite3.connect(m.store, isolation_level=None)
    try:
        conn.execute("UPDATE secrets SET mode = ? WHERE name = 'db'", (0o444,))
        wait_for(lambda: stat.S_IMODE(db.stat().st_mode) == 0, timeout=2)
        conn.execute("UPDATE scopes SET mode = ? WHERE scope = '@api'", (0o404,))
        wait_for(lambda: stat.S_IMODE(token.stat().st_mode) == 0, timeout=2)
        conn.execute("UPDATE versions SET size = 3 WHERE size = 7")
        wait_for(lambda: db.stat().st_size == 3, timeout=2)
    finally:
        conn.close()

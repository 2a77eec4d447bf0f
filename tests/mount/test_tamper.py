"""Attacks on the store through a real mount and other real uids (issue 10, items 2-4):
fingerprints that say nothing across secrets, access rows changed with sqlite3 by someone
without the key, and rollbacks of a secret's version."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.mount.conftest import Mount, wait_for

SYSTEM_PYTHON = "/usr/bin/python3"  # the venv's may live where other uids cannot enter
PROBE = r"""
import errno, json, os, sys
op, path = sys.argv[1], sys.argv[2]
try:
    if op == "read":
        with open(path, "rb") as fh:
            result = ["ok", fh.read().hex()]
    else:
        result = ["ok", os.getxattr(path, "user.secretfs." + op).decode()]
except OSError as exc:
    result = [errno.errorcode[exc.errno], None]
print(json.dumps(result))
"""


def probe(uid: int, op: str, path: Path) -> tuple[str, Any]:
    """`op` (read, or an xattr name) on `path` as a real process of uid:gid `uid`."""
    out = subprocess.run(
        [
            "setpriv",
            f"--reuid={uid}",
            f"--regid={uid}",
            "--clear-groups",
            SYSTEM_PYTHON,
            "-c",
            PROBE,
            op,
            str(path),
        ],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    status, data = json.loads(out.stdout)
    if status == "ok" and op == "read":
        return status, bytes.fromhex(data)
    return status, data


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every uid can traverse (pytest's tmp_path is 0700 root's)."""
    path = Path(tempfile.mkdtemp(prefix="secretfs-test-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def shared(open_dir: Path, mount_factory: Callable[..., Mount]) -> Mount:
    """allow_other, reachable by other uids; @pub readable by all, @svc by its owner."""
    secrets = {"@svc/hidden": b"same-value", "@pub/visible": b"same-value", "@svc/db": b"pw"}
    m = mount_factory("-o", "allow_other", secrets=secrets, parent=open_dir)
    m.cli("secret", "chmod", "@pub", "0444")
    m.cli("secret", "chmod", "@svc", "0400")
    wait_for(lambda: probe(1000, "read", m.path / "@pub/visible")[0] == "ok")
    return m


def test_a_fingerprint_is_no_equality_oracle_across_secrets(shared: Mount) -> None:
    m = shared
    visible, hidden = m.path / "@pub/visible", m.path / "@svc/hidden"
    assert probe(1000, "read", hidden) == ("EACCES", None)
    status, fp_visible = probe(1000, "fingerprint", visible)
    assert status == "ok" and len(fp_visible) == 32
    # Warm the kernel's caches as an authorised reader would, then try as uid 1000.
    assert hidden.read_bytes() == b"same-value"
    status, fp_hidden = probe(1000, "fingerprint", hidden)
    assert status != "ok" or fp_hidden != fp_visible
    # The same value in two secrets: two fingerprints, even for who may read both.
    fp_root = os.getxattr(hidden, "user.secretfs.fingerprint").decode()
    assert fp_root != fp_visible
    # A new value of the same secret still changes its fingerprint.
    m.cli("secret", "set", "@pub/visible", "--from-stdin", input=b"other")
    wait_for(lambda: probe(1000, "fingerprint", visible)[1] not in (fp_visible, None))

"""systemd's LoadCredential= socket served by the mount (secretfs/credsock.py)."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from secretfs.credsock import MAX_CONNECTIONS
from tests.conftest import Cli
from tests.mount.conftest import AS_1000, Mount, wait_for

# What systemd does in load_credential() (src/core/exec-credential.c): bind its end to
# "@<random_u64 in hex>/unit/<unit>/<id>" (an abstract address), connect, read to EOF.
CLIENT = """
import os, socket, sys
path, unit, cred, form = sys.argv[1:5]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
if form == "systemd":
    s.bind(b"\\0" + os.urandom(8).hex().encode() + f"/unit/{unit}/{cred}".encode())
elif form == "other":
    s.bind(b"\\0not-systemd/" + cred.encode())
try:
    s.connect(path)
except OSError as exc:
    sys.stdout.write(f"connect: {exc.strerror}")
    sys.exit(0)
data = b""
while chunk := s.recv(65536):
    data += chunk
sys.stdout.buffer.write(data)
"""

VALUE = bytes(range(256)) * 3


def ask(
    sock: Path, unit: str, cred: str, form: str = "systemd", user: list[str] | None = None
) -> bytes:
    proc = subprocess.run(
        [*(user or []), sys.executable, "-c", CLIENT, str(sock), unit, cred, form],
        capture_output=True,
        timeout=10,
        check=True,
    )
    return proc.stdout


def credential_audit(m: Mount, n: int) -> list[dict[str, object]]:
    """The mount's `credential` audit records, once there are `n` (flushed in batches)."""
    found: list[dict[str, object]] = []

    def enough() -> bool:
        records = json.loads(m.cli("audit", "--json").stdout)
        found[:] = [r for r in records if r["action"] == "credential"]
        return len(found) >= n

    wait_for(enough, timeout=5)
    return found


@pytest.fixture
def served(mount_factory: Callable[..., Mount], open_dir: Path) -> tuple[Mount, Path]:
    sock = open_dir / "creds.sock"
    m = mount_factory(
        "--credential-socket",
        str(sock),
        secrets={"@app/token": VALUE, "db": b"deployment-db", "@app/db": b"app-db"},
    )
    return m, sock


def test_systemd_gets_the_exact_bytes_by_unit_then_deployment(served: tuple[Mount, Path]) -> None:
    m, sock = served
    st = sock.lstat()
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0
    assert ask(sock, "app.service", "token") == VALUE
    assert ask(sock, "app.service", "db") == b"app-db"  # the unit's own scope first
    assert ask(sock, "app@blue.service", "db") == b"app-db"  # an instance: its template's
    assert ask(sock, "web.service", "db") == b"deployment-db"  # then the deployment scope
    assert ask(sock, "web.service", "token") == b""  # no secret for it: nothing
    records = credential_audit(m, 5)
    assert [(r["ref"], r["version"], r["outcome"]) for r in records] == [
        ("$S:@app/token", 1, "allowed"),
        ("$S:@app/db", 1, "allowed"),
        ("$S:@app/db", 1, "allowed"),
        ("$S:db", 1, "allowed"),
        (None, None, "denied"),
    ]
    assert records[0]["detail"] == "unit app.service id token" and records[0]["uid"] == 0
    assert records[4]["detail"] == "unit web.service id token: no secret for it"


def test_a_new_version_is_served_at_once(served: tuple[Mount, Path]) -> None:
    m, sock = served
    m.cli("secret", "set", "@app/token", "--from-stdin", input=b"rotated")
    assert ask(sock, "app.service", "token") == b"rotated"


def test_other_address_forms_get_nothing(served: tuple[Mount, Path]) -> None:
    m, sock = served
    assert ask(sock, "app.service", "token", form="other") == b""
    assert ask(sock, "app.service", "token", form="unbound") == b""
    # The second, identical denial is folded into a later "repeated N times" record
    # (repeated denials are aggregated: docs/security.md); the first is written at once.
    records = credential_audit(m, 1)
    assert [(r["outcome"], r["detail"]) for r in records] == [
        ("denied", "not systemd's address"),
    ]


def test_a_non_root_peer_gets_nothing(served: tuple[Mount, Path]) -> None:
    m, sock = served
    assert ask(sock, "app.service", "token", user=AS_1000) == b"connect: Permission denied"
    # Were the socket's mode loosened, the daemon still refuses anyone but root.
    os.chmod(sock, 0o666)
    assert ask(sock, "app.service", "token", user=AS_1000) == b""
    (record,) = credential_audit(m, 1)
    assert (record["outcome"], record["uid"], record["ref"]) == ("denied", 1000, None)
    assert record["detail"] == "unit app.service id token: peer uid 1000 is not root"


def test_peers_that_do_not_read_block_no_one_and_are_bounded(
    mount_factory: Callable[..., Mount], tmp_path: Path
) -> None:
    sock = tmp_path / "creds.sock"
    big = os.urandom(1024 * 1024)
    m = mount_factory("--credential-socket", str(sock), secrets={"big": big, "small": b"s"})
    stuck = []
    try:
        for n in range(MAX_CONNECTIONS):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            stuck.append(s)
            s.bind(b"\0" + f"{n:x}/unit/slow.service/big".encode())
            s.connect(str(sock))  # and never reads: the daemon's send waits, not its loop
        assert (m.path / "deployment/small").read_bytes() == b"s"
        # Every slot is taken: one more is closed unanswered, at once.
        assert ask(sock, "fast.service", "small") == b""
    finally:
        for s in stuck:
            s.close()
    wait_for(lambda: ask(sock, "fast.service", "small") == b"s", timeout=5)


def test_a_path_that_is_no_socket_is_refused_and_nothing_is_mounted(
    cli: Cli, tmp_path: Path
) -> None:
    cli("init")
    taken = tmp_path / "taken"
    taken.write_bytes(b"keep me")
    other = tmp_path / "other"
    other.mkdir()
    proc = cli("mount", str(other), "--credential-socket", str(taken), check=False)
    assert proc.returncode == 7, proc.stderr
    assert b"exists and is not a socket" in proc.stderr
    assert taken.read_bytes() == b"keep me"
    assert not os.path.ismount(other)

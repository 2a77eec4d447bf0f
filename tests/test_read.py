"""`secretfs read REF [--out-file F --file-mode M --force]`, like `op read`."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tests.conftest import Cli


def test_read_prints_exact_bytes_and_fields(cli: Cli, initialized_store: Path) -> None:
    cli("secret", "set", "db", "--from-stdin", input=b"pw\n")
    assert cli("read", "db").stdout == b"pw\n"
    cli("secret", "set", "cfg", "--from-stdin", input=b'{"a": {"b": "x"}}')
    assert cli("read", "cfg/a/b").stdout == b"x"
    cli("secret", "set", "db", "--from-stdin", input=b"new")
    assert cli("read", "db", "--version", "1").stdout == b"pw\n"


def test_out_file_gets_exactly_the_mode_asked(
    cli: Cli, initialized_store: Path, tmp_path: Path
) -> None:
    cli("secret", "set", "db", "--from-stdin", input=b"pw")
    out = tmp_path / "pw.txt"
    old = os.umask(0o077)  # the umask must not narrow (or widen) the mode asked
    try:
        proc = cli("read", "db", "--out-file", str(out), "--file-mode", "0640")
    finally:
        os.umask(old)
    assert proc.stdout == b""
    assert out.read_bytes() == b"pw"
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".pw")) == []
    out2 = tmp_path / "default"
    cli("read", "db", "--out-file", str(out2))
    assert stat.S_IMODE(out2.stat().st_mode) == 0o600


def test_existing_file_is_refused_unless_force(
    cli: Cli, initialized_store: Path, tmp_path: Path
) -> None:
    cli("secret", "set", "db", "--from-stdin", input=b"pw")
    out = tmp_path / "there"
    out.write_bytes(b"keep")
    proc = cli("read", "db", "--out-file", str(out), check=False)
    assert proc.returncode == 4 and b"--force" in proc.stderr
    assert out.read_bytes() == b"keep"
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere")  # a dangling link is "there" too
    assert cli("read", "db", "--out-file", str(link), check=False).returncode == 4
    assert not (tmp_path / "elsewhere").exists()
    cli("read", "db", "--out-file", str(out), "--force")
    assert out.read_bytes() == b"pw" and stat.S_IMODE(out.stat().st_mode) == 0o600


def test_bad_uses(cli: Cli, initialized_store: Path, tmp_path: Path) -> None:
    cli("secret", "set", "db", "--from-stdin", input=b"pw")
    assert cli("read", "nope", check=False).returncode == 3
    assert cli("read", "db", "--force", check=False).returncode == 2
    bad = cli("read", "db", "-o", str(tmp_path / "f"), "--file-mode", "999", check=False)
    assert bad.returncode == 2 and not (tmp_path / "f").exists()
    missing_dir = cli("read", "db", "-o", str(tmp_path / "no" / "f"), check=False)
    assert missing_dir.returncode == 2

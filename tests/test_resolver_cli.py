"""`secretfs mount`'s resolver options refuse what cannot work before mounting anything."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import Cli


def test_a_socket_under_the_mount_point_is_refused(cli: Cli, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = cli("mount", str(mnt), "--resolver-socket", str(mnt / "r.sock"), check=False)
    assert proc.returncode == 2
    assert b"is under the mount point" in proc.stderr


def test_conflicting_or_bad_resolver_options_are_usage_errors(cli: Cli, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    both = cli("mount", str(mnt), "--resolver", "--resolver-socket", "/x.sock", check=False)
    assert both.returncode == 2 and b"use one" in both.stderr
    mode = cli(
        "mount",
        str(mnt),
        "--resolver-socket",
        "/x.sock",
        "--resolver-socket-mode",
        "999",
        check=False,
    )
    assert mode.returncode == 2 and b"--resolver-socket-mode" in mode.stderr

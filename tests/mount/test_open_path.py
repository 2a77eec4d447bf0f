"""The open path made cheap (issue 6) keeps its promises, through a real mount.

An open holds its version's ciphertext and decrypts on the first read, so a handle must
read the version it opened even once that version is gone from the store; and the
xattr namespaces the mount does not have say so, which `ls -l` relies on.
"""

from __future__ import annotations

import errno
import os
import subprocess

import pytest

from tests.mount.conftest import Mount, wait_for


def test_a_handle_reads_its_version_after_the_secret_is_removed(mounted: Mount) -> None:
    m = mounted.path
    # Opened warm (the mount verified both versions already) and not read yet.
    assert (m / "deployment/db").read_bytes() == b"hunter2"
    assert (m / "@api/config.d/password").read_bytes() == b"pw"
    whole = open(m / "deployment/db", "rb", buffering=0)
    field = open(m / "@api/config.d/password", "rb", buffering=0)
    try:
        mounted.cli("secret", "rm", "db")
        mounted.cli("secret", "rm", "@api/config")
        wait_for(lambda: not (m / "deployment/db").exists())
        wait_for(lambda: not (m / "@api/config").exists())
        with pytest.raises(FileNotFoundError):
            open(m / "@api/config.d/password", "rb")
        # Every version of both is deleted from the store, and the kernel's copy is
        # dropped: the reads reach the mount, and the handles still read their versions.
        for handle in (whole, field):
            os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        assert whole.read(3) == b"hun"
        assert whole.read() == b"ter2"
        assert field.read() == b"pw"
    finally:
        whole.close()
        field.close()
    mounted.cli("secret", "create", "db", "--from-stdin", input=b"again")
    wait_for(
        lambda: (m / "deployment/db").exists() and (m / "deployment/db").read_bytes() == b"again"
    )


def test_a_handle_keeps_a_pruned_version(mounted: Mount) -> None:
    path = mounted.path / "env/staging/token"
    assert path.read_bytes() == b"staging-token\n"
    with open(path, "rb", buffering=0) as old:
        mounted.cli("secret", "set", ":staging/token", "--from-stdin", input=b"second")
        mounted.cli("secret", "prune", ":staging/token", "--keep", "1")
        wait_for(lambda: path.read_bytes() == b"second")
        os.posix_fadvise(old.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        assert old.read() == b"staging-token\n"


def test_namespaces_the_mount_does_not_have_are_not_supported(mounted: Mount) -> None:
    path = mounted.path / "deployment/db"
    for name in ("security.selinux", "system.posix_acl_access", "trusted.x"):
        with pytest.raises(OSError) as exc:
            os.getxattr(path, name)
        assert exc.value.errno == errno.EOPNOTSUPP, name
    with pytest.raises(OSError) as exc:
        os.getxattr(path, "user.other")
    assert exc.value.errno == errno.ENODATA
    assert os.getxattr(path, "user.secretfs.version") == b"1"
    # ls -l asks for both of the first two per file, until told they are not supported.
    out = subprocess.run(
        ["ls", "-l", str(mounted.path / "@api")], capture_output=True, text=True, check=True
    )
    assert out.stderr == ""
    assert [line.split()[-1] for line in out.stdout.splitlines()[1:]] == ["config", "config.d"]

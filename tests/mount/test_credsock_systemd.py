"""systemd itself (PID 1 of a PID, mount and cgroup namespace) loads a credential from
the mount's credential socket: `LoadCredential=ID:SOCKET`, as on a real host.

Kept from touching the host: the unit has no default dependencies and every unit that
would change shared state (systemd-tmpfiles empties /tmp at boot, sysctl, udev,
modules, journald) is masked; /run is a tmpfs of the namespace's own; systemd's cgroups
live in a cgroup of the test's own, removed afterwards.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.mount.conftest import Mount, wait_for

SYSTEMD = "/lib/systemd/systemd"
MASKED = (
    "sysinit.target basic.target local-fs.target swap.target"
    " systemd-tmpfiles-setup.service systemd-tmpfiles-setup-dev.service"
    " systemd-tmpfiles-clean.timer systemd-sysctl.service systemd-modules-load.service"
    " systemd-random-seed.service systemd-udevd.service systemd-udev-trigger.service"
    " systemd-journald.service systemd-journald.socket systemd-journald-dev-log.socket"
    " systemd-journald-audit.socket systemd-binfmt.service systemd-hwdb-update.service"
    " systemd-update-utmp.service systemd-machine-id-commit.service"
)
# $1: the test's directory (socket, output), $2: the cgroup to run in. The unit's
# credentials are mounted from a helper's namespace: /run must propagate (shared).
INNER = r"""
set -e
mount --make-rprivate /
d=$(mktemp -d)
mount -t cgroup2 none "$d"
mkdir "$d/$2"
echo $$ > "$d/$2/cgroup.procs"
umount "$d"
rmdir "$d"
exec unshare --cgroup sh -c '
set -e
mount -t tmpfs tmpfs /sys/fs/cgroup
mount -t cgroup2 none /sys/fs/cgroup
mount -t tmpfs tmpfs /run
mount --make-shared /run
mkdir -p /run/systemd/system
for u in MASKED; do ln -s /dev/null "/run/systemd/system/$u"; done
cat > /run/systemd/system/credtest.service <<UNIT
[Unit]
DefaultDependencies=no
[Service]
Type=oneshot
StandardOutput=null
StandardError=null
LoadCredential=token:$1/creds.sock
LoadCredential=db:$1/creds.sock
ExecStart=/bin/sh -c "cd \$\$CREDENTIALS_DIRECTORY && cp token db $1/ && touch $1/done"
UNIT
exec env container=secretfs-test SYSTEMD --unit=credtest.service --log-target=null
' inner "$1"
""".replace("MASKED", MASKED).replace("SYSTEMD", SYSTEMD)


def _remove_cgroup(name: str) -> None:
    """Remove the test's cgroup tree (empty once the namespace's PID 1 is gone)."""
    script = (
        'set -e; d=$(mktemp -d); mount -t cgroup2 none "$d";'
        f' if [ -d "$d/{name}" ]; then find "$d/{name}" -depth -type d -exec rmdir {{}} +; fi;'
        ' umount "$d"; rmdir "$d"'
    )
    deadline = time.monotonic() + 5
    while True:
        proc = subprocess.run(["unshare", "--mount", "sh", "-c", script], capture_output=True)
        if proc.returncode == 0 or time.monotonic() > deadline:
            assert proc.returncode == 0, proc.stderr
            return
        time.sleep(0.1)  # its processes are still being torn down


def test_systemd_as_pid_1_loads_credentials_from_the_socket(
    mount_factory: Callable[..., Mount], tmp_path: Path
) -> None:
    token = b"tok\0en\n"  # exact bytes: a NUL and a trailing newline included
    m = mount_factory(
        "--credential-socket",
        str(tmp_path / "creds.sock"),
        secrets={"@credtest/token": token, "db": b"dbpw"},
    )
    cgroup = f"secretfs-test-{os.getpid()}"
    proc = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--kill-child", "--mount", "--mount-proc",
         "sh", "-c", INNER, "sh", str(tmp_path), cgroup],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while not (tmp_path / "done").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "systemd did not run the unit"
            time.sleep(0.05)
    finally:
        proc.kill()  # unshare --kill-child takes the namespace's PID 1 with it
        proc.wait()
        _remove_cgroup(cgroup)
    assert (tmp_path / "token").read_bytes() == token
    assert (tmp_path / "db").read_bytes() == b"dbpw"
    # Audit records are written in batches (every 0.5 s): wait for this one.
    wait_for(lambda: "unit credtest.service id db" in m.cli("audit").stdout.decode(), timeout=3)
    audit = m.cli("audit").stdout.decode()
    assert "unit credtest.service id token" in audit
    assert "unit credtest.service id db" in audit

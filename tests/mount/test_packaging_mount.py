"""packaging/ for real: the systemd unit's commands with Type=notify readiness, the
mount(8) helper through the real `mount -t fuse.secretfs` and an fstab line."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Cli
from tests.mount.conftest import _is_mounted, daemon_pids, wait_for
from tests.test_packaging import expand_command, parse_unit, systemd_escape_path

SECRET = b"hunter2"
HELPER = Path("/sbin/mount.fuse.secretfs")
HELPER_LOCK = Path("/run/lock/secretfs-tests-mount-helper.lock")
BUSYBOX = Path("/bin/busybox")


@pytest.fixture
def store(cli: Cli, initialized_store: Path) -> Path:
    cli("secret", "set", "db", "--from-stdin", input=SECRET)
    return initialized_store


@pytest.fixture
def mnt(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "mnt"
    path.mkdir()
    yield path
    if _is_mounted(path):
        subprocess.run(["fusermount3", "-u", "-z", str(path)], check=False)


class NotifySocket:
    """The service manager's end of sd_notify: a datagram socket that learns the sender's
    pid from the kernel (SO_PASSCRED), as systemd does for NotifyAccess=main."""

    def __init__(self, tmp_path: Path, abstract: bool) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        if abstract:
            self.address = f"@secretfs-test-{os.getpid()}-{tmp_path.name}"
            self.sock.bind("\0" + self.address[1:])
        else:
            self.address = str(tmp_path / "notify.sock")
            self.sock.bind(self.address)
        self.sock.settimeout(60)  # a hang guard, not a timed assertion

    def receive(self) -> tuple[dict[str, str], int]:
        data, ancdata, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        pids = [
            struct.unpack("3i", cdata[:12])[0]
            for level, kind, cdata in ancdata
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS
        ]
        fields = dict(line.split("=", 1) for line in data.decode().splitlines())
        return fields, pids[0]

    def pending(self) -> bytes | None:
        self.sock.setblocking(False)
        try:
            return self.sock.recv(4096)
        except BlockingIOError:
            return None
        finally:
            self.sock.settimeout(60)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path, abstract=request.param == "abstract")
    yield sock
    sock.close()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_ready_is_sent_only_once_the_mount_answers(
    store: Path, mnt: Path, cli_env: dict[str, str], notify_socket: NotifySocket
) -> None:
    env = {**cli_env, "NOTIFY_SOCKET": notify_socket.address}
    proc = subprocess.Popen(
        [sys.executable, "-m", "secretfs", "mount", str(mnt), "--foreground"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        message, pid = notify_socket.receive()
        os.kill(proc.pid, signal.SIGSTOP)  # freeze the daemon: check the state READY=1 saw
        try:
            assert message["READY"] == "1"
            assert message["STATUS"] == f"serving {store} at {mnt}"
            assert pid == proc.pid  # the main process itself, as NotifyAccess=main requires
            assert _is_mounted(mnt)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        assert (mnt / "deployment" / "db").read_bytes() == SECRET

        proc.send_signal(signal.SIGTERM)  # what `systemctl stop` sends (KillMode=mixed)
        message, pid = notify_socket.receive()
        assert message["STOPPING"] == "1" and pid == proc.pid
        assert proc.wait(timeout=30) == 0
        assert not _is_mounted(mnt)
        assert notify_socket.pending() is None
    finally:
        _stop(proc)


def test_a_background_mount_does_not_notify(
    store: Path, mnt: Path, cli: Cli, cli_process: Cli, cli_env: dict[str, str], tmp_path: Path
) -> None:
    """Only a --foreground daemon is the service's main process; a forked one must not
    claim readiness (systemd would drop it, and log the stray message)."""
    sock = NotifySocket(tmp_path, abstract=False)
    try:
        cli_process("mount", str(mnt), env={**cli_env, "NOTIFY_SOCKET": sock.address})
        assert (mnt / "deployment" / "db").read_bytes() == SECRET
        cli("umount", str(mnt))
        assert sock.pending() is None
    finally:
        sock.close()


def test_unit_commands_start_stop_and_recover_from_a_kill(
    store: Path, tmp_path: Path, cli: Cli, cli_env: dict[str, str]
) -> None:
    """Run the installed unit's own ExecStartPre/ExecStart/ExecStopPost lines the way
    systemd would (no systemd as PID 1 here): stopped or killed, no mount is left."""
    cli("install", "systemd", "--dir", str(tmp_path))
    service = parse_unit((tmp_path / "secretfs@.service").read_text())["Service"]
    mountpoint = tmp_path / "run" / "secretfs"  # ExecStartPre creates it
    instance = systemd_escape_path(mountpoint)
    env = dict(cli_env)
    for assignment in service["Environment"]:
        key, _, value = assignment.partition("=")
        env[key] = value
    # What /etc/secretfs/INSTANCE.env (EnvironmentFile=) would say for this mount:
    env |= {"SECRETFS_STORE": str(store), "SECRETFS_MOUNT_ARGS": "-o allow_other --mode 0440"}

    def run(key: str) -> None:
        for line in service[key]:
            argv, ignore_failure = expand_command(line, instance, env)
            proc = subprocess.run(argv, env=env, capture_output=True, check=False)
            assert ignore_failure or proc.returncode == 0, (argv, proc.stderr)

    def start() -> subprocess.Popen[bytes]:
        run("ExecStartPre")
        (line,) = service["ExecStart"]
        argv, _ = expand_command(line, instance, env)
        notify = NotifySocket(tmp_path, abstract=True)
        try:
            proc = subprocess.Popen(
                argv,
                env={**env, "NOTIFY_SOCKET": notify.address},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            message, _pid = notify.receive()
        finally:
            notify.close()
        assert message["READY"] == "1"
        return proc

    proc = start()
    try:
        path = mountpoint / "deployment" / "db"
        assert path.read_bytes() == SECRET
        assert os.stat(path).st_mode & 0o777 == 0o440  # SECRETFS_MOUNT_ARGS reached it

        proc.send_signal(signal.SIGTERM)  # systemctl stop
        assert proc.wait(timeout=30) == 0
        run("ExecStopPost")
        assert not _is_mounted(mountpoint)

        proc = start()
        proc.kill()  # SIGKILL, OOM: the kernel keeps a dead mount behind
        proc.wait()
        with pytest.raises(OSError) as dead:
            os.statvfs(mountpoint)
        assert dead.value.errno == errno.ENOTCONN
        run("ExecStopPost")
        assert not _is_mounted(mountpoint)

        proc = start()  # Restart=on-failure: the next start serves again
        assert path.read_bytes() == SECRET
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert not _is_mounted(mountpoint)
    finally:
        _stop(proc)
        if _is_mounted(mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)


# --- mount(8) ---------------------------------------------------------------------------


@pytest.fixture
def mount_helper(cli: Cli) -> Iterator[Path]:
    """/sbin/mount.fuse.secretfs for this test's secretfs; whatever was there is put back.
    A lock keeps concurrent test runs on this machine from removing it under each other."""
    with open(HELPER_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        before = HELPER.read_bytes() if HELPER.exists() else None
        cli("install", "mount-helper", "--command", f"{sys.executable} -m secretfs")
        try:
            yield HELPER
        finally:
            if before is None:
                HELPER.unlink(missing_ok=True)
            else:
                HELPER.write_bytes(before)


def _daemon_gone(mnt: Path) -> bool:
    return not daemon_pids(mnt)


def _mountinfo_line(mnt: Path) -> str:
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        (line,) = [line for line in fh if line.split()[4] == str(mnt)]
    return line


def test_mount_t_fuse_secretfs(
    mount_helper: Path, store: Path, mnt: Path, cli_env: dict[str, str]
) -> None:
    # A relative STORE, as a person types it: relative to where mount(8) runs.
    proc = subprocess.run(
        ["mount", "-t", "fuse.secretfs", store.name, str(mnt), "-o", "allow_other"],
        cwd=store.parent,
        env=cli_env,
        capture_output=True,
        text=True,
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    assert (mnt / "deployment" / "db").read_bytes() == SECRET
    line = _mountinfo_line(mnt)
    assert f"fuse.secretfs secretfs:{store} " in line
    assert "allow_other" in line.split()[-1]

    subprocess.run(["umount", str(mnt)], check=True)
    assert not _is_mounted(mnt)
    wait_for(lambda: _daemon_gone(mnt), timeout=5)


def test_fstab_line(
    mount_helper: Path, store: Path, mnt: Path, cli_env: dict[str, str], tmp_path: Path
) -> None:
    fstab = tmp_path / "fstab"
    options = [
        f"store={store}",
        "allow_other",
        "mode=0440",
        "nofail",
        "_netdev",
        "noauto",
        "x-systemd.requires=network-online.target",
    ]
    fstab.write_text(f"# a test fstab\nsecretfs {mnt} fuse.secretfs {','.join(options)} 0 0\n")
    proc = subprocess.run(
        ["mount", "--fstab", str(fstab), str(mnt)],
        env=cli_env,
        capture_output=True,
        text=True,
        cwd=tmp_path,  # mount(8) would resolve the source `secretfs` against ./secretfs
    )
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    path = mnt / "deployment" / "db"
    assert path.read_bytes() == SECRET
    assert os.stat(path).st_mode & 0o777 == 0o440
    assert f"secretfs:{store} " in _mountinfo_line(mnt)

    # Mounted already: mount(8) says so, and nothing is stacked on top.
    again = subprocess.run(["mount", "--fstab", str(fstab), str(mnt)], capture_output=True)
    assert again.returncode != 0

    subprocess.run(["umount", str(mnt)], check=True)
    assert not _is_mounted(mnt)
    wait_for(lambda: _daemon_gone(mnt), timeout=5)


# --- bind propagation: what the Kubernetes manifests and the Docker how-to rely on -----


def _propagation_bundle(directory: Path, source: Path, target: str, options: list[str]) -> Path:
    """runc runs `cat` on the secret, waits for a line on /ctl/go, then `cat`s again."""
    rootfs = directory / "rootfs"
    for sub in ("bin", "proc", "dev", "sys", "tmp", "ctl", target.lstrip("/")):
        (rootfs / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
    for applet in ("sh", "cat"):
        (rootfs / "bin" / applet).symlink_to("busybox")
    subprocess.run(["runc", "spec"], cwd=directory, check=True, capture_output=True)
    config = json.loads((directory / "config.json").read_text())
    read = "cat /run/secretfs/mnt/deployment/db"
    config["process"]["terminal"] = False
    config["process"]["args"] = ["sh", "-c", f"{read}; echo; read go < /ctl/go; {read}; echo"]
    config["root"] = {"path": "rootfs", "readonly": True}
    config["mounts"] += [
        {"destination": target, "type": "bind", "source": str(source), "options": options},
        {"destination": "/ctl", "type": "bind", "source": str(directory.parent / "ctl"),
         "options": ["rbind"]},
    ]  # fmt: skip
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def test_a_restarted_daemon_reaches_running_containers_through_the_parent(
    store: Path, cli: Cli, cli_process: Cli, tmp_path: Path
) -> None:
    """The parent directory bound `rslave` (Kubernetes: HostToContainer) sees the new
    mount of a restarted daemon; a bind of the FUSE mount itself is left dead."""
    if shutil.which("runc") is None or not BUSYBOX.exists():
        pytest.fail("this test needs runc and busybox-static: run scripts/setup.sh")
    parent = tmp_path / "run-secretfs"
    parent.mkdir()
    # The host side: a shared mount, as / is under systemd (Kubernetes: Bidirectional).
    subprocess.run(["mount", "--bind", str(parent), str(parent)], check=True)
    containers: list[tuple[str, subprocess.Popen[bytes]]] = []
    state = tmp_path / "runc-state"
    try:
        subprocess.run(["mount", "--make-shared", str(parent)], check=True)
        mnt = parent / "mnt"
        mnt.mkdir()
        (tmp_path / "ctl").mkdir()
        os.mkfifo(tmp_path / "ctl" / "go")
        cli_process("mount", str(mnt))
        for name, source, target, options in [
            ("parent", parent, "/run/secretfs", ["rbind", "ro", "rslave"]),
            ("direct", mnt, "/run/secretfs/mnt", ["rbind", "ro"]),
        ]:
            bundle = _propagation_bundle(tmp_path / name, source, target, options)
            cid = f"secretfs-test-{tmp_path.name}-{name}"[-60:]
            proc = subprocess.Popen(
                ["runc", "--root", str(state), "run", "--bundle", str(bundle), cid],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            containers.append((cid, proc))
            assert proc.stdout is not None
            assert proc.stdout.readline() == SECRET + b"\n"  # both read it before

        (daemon_pid,) = daemon_pids(mnt)
        os.kill(daemon_pid, signal.SIGKILL)  # a crash, an OOM kill, a node agent upgrade
        cli("secret", "set", "db", "--from-stdin", input=b"v2")
        cli_process("mount", str(mnt))  # the restarted daemon clears the dead mount, mounts anew

        with open(tmp_path / "ctl" / "go", "wb") as go:  # each container reads one line
            go.write(b"1\n2\n")
        results = {cid: proc.communicate(timeout=60) for cid, proc in containers}
        parent_out, _ = results[containers[0][0]]
        direct_out, direct_err = results[containers[1][0]]
        assert parent_out == b"v2\n"
        assert b"Transport endpoint is not connected" in direct_err
        assert direct_out == b"\n"
    finally:
        for cid, proc in containers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            subprocess.run(["runc", "--root", str(state), "delete", "--force", cid], check=False)
        if _is_mounted(parent / "mnt"):
            subprocess.run(["fusermount3", "-u", "-z", str(parent / "mnt")], check=False)
        subprocess.run(["umount", "-l", str(parent)], check=False)

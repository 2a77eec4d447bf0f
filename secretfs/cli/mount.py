"""`secretfs mount` and `secretfs umount`."""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from secretfs.cli.common import cli, handle_errors, store_option, store_path
from secretfs.cli.params import GROUP_ID, USER_ID, bounded_int, parse_id
from secretfs.cli.resolver_options import resolver_args, resolver_config, resolver_options
from secretfs.errors import SecretfsError, StoreError, UsageError
from secretfs.store.location import StoreLocation
from secretfs.store.location import parse as parse_location

if TYPE_CHECKING:
    from secretfs.resolver.server import ResolverConfig

READY = b"ready\n"
KNOWN_OPTIONS = {"allow_other"}
# What mount(8) and /etc/fstab pass along: accepted and ignored, since the mount is
# always ro,nosuid,nodev,noexec and mount(8) itself acts on auto, user, nofail, ...
MOUNT8_OPTIONS = {
    *("rw", "ro", "suid", "nosuid", "dev", "nodev", "exec", "noexec", "sync", "async"),
    *("atime", "noatime", "relatime", "strictatime", "diratime", "nodiratime"),
    *("lazytime", "nolazytime", "defaults", "auto", "noauto", "user", "nouser"),
    *("users", "owner", "group", "_netdev", "nofail"),
}
VALUE_OPTIONS = ("store", "uid", "gid", "mode")  # -o forms of --store --uid --gid --mode
DAEMON_OPTIONS = ("max_plain", "audit_fail")  # the daemon's own, never passed to FUSE
_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def _parse_options(opts: tuple[str, ...]) -> tuple[bool, tuple[str, ...]]:
    allow_other = False
    extra: list[str] = []
    for group in opts:
        for opt in filter(None, group.split(",")):
            if opt == "allow_other":
                allow_other = True
            elif opt in MOUNT8_OPTIONS or opt.startswith(("x-", "comment=")):
                continue
            elif opt.partition("=")[0] in (*VALUE_OPTIONS, *DAEMON_OPTIONS) and "=" in opt:
                continue  # taken by _option_values, _daemon_options
            elif opt == "default_permissions":
                raise UsageError(
                    "-o default_permissions is not supported: the kernel would then check"
                    " mode bits alone and ignore grants; secretfs checks both itself"
                )
            elif opt in KNOWN_OPTIONS:
                extra.append(opt)
            else:
                raise UsageError(
                    f"unknown mount option {opt!r}: secretfs takes allow_other, store=PATH,"
                    " uid=N, gid=N, mode=OCTAL, max_plain=SIZE, audit_fail=closed|open"
                    " (ro,nosuid,nodev,noexec are always on)"
                )
    return allow_other, tuple(extra)


def _option_values(
    opts: tuple[str, ...],
    store: StoreLocation | None,
    uid: int | None,
    gid: int | None,
    mode: str,
) -> tuple[StoreLocation | None, int | None, int | None, str]:
    """Apply -o store=, uid=, gid=, mode= (an fstab line can pass nothing else)."""
    ctx = click.get_current_context()
    given: dict[str, str] = {}
    for group in opts:
        for opt in filter(None, group.split(",")):
            key, sep, value = opt.partition("=")
            if not sep or key not in VALUE_OPTIONS:
                continue
            if given.setdefault(key, value) != value:
                raise UsageError(f"mount option {key}= given twice with different values")
            if ctx.get_parameter_source(key) is not click.core.ParameterSource.DEFAULT:
                raise UsageError(f"--{key} and -o {key}= both given: use one")
            if not value:
                raise UsageError(f"mount option {key}= needs a value")
    if "store" in given:
        store = parse_location(given["store"])
    uid = parse_id(given["uid"], "user") if "uid" in given else uid
    gid = parse_id(given["gid"], "group") if "gid" in given else gid
    return store, uid, gid, given.get("mode", mode)


def _parse_size(key: str, text: str) -> int:
    number, unit = (text[:-1], text[-1].upper()) if text[-1:].isalpha() else (text, "")
    if not number.isdigit() or unit not in _SIZE_UNITS:
        raise UsageError(f"mount option {key}={text!r}: a size is needed, e.g. 64M")
    return int(number) * _SIZE_UNITS[unit]


def _daemon_options(opts: tuple[str, ...]) -> dict[str, str]:
    """-o max_plain=, audit_fail=: checked here, handed to the daemon as given (the last
    one wins)."""
    out: dict[str, str] = {}
    for group in opts:
        for opt in filter(None, group.split(",")):
            key, sep, value = opt.partition("=")
            if sep and key in DAEMON_OPTIONS:
                if key == "max_plain":
                    _parse_size(key, value)
                elif value not in ("closed", "open"):
                    raise UsageError(f"mount option audit_fail={value!r}: closed or open")
                out[key] = value
    return out


@cli.command()
@click.argument("mountpoint", type=click.Path(path_type=Path, readable=False))
@store_option
@click.option("--foreground", "-f", is_flag=True, help="Serve in this process until unmounted.")
@click.option(
    "-o",
    "options",
    multiple=True,
    metavar="OPT[,OPT]",
    help="Mount options: allow_other; store=PATH, uid=N|NAME, gid=N|NAME, mode=OCTAL;"
    " max_plain=SIZE:"
    " decrypted bytes held for open files at most, shared per secret version (default 64M;"
    " K/M/G; past it each read decrypts again); audit_fail=closed|open: when audit records"
    " cannot be written, refuse new opens with EIO (closed, the default) or serve them."
    " Accepted and ignored, as mount(8) and fstab pass them (the mount is always"
    f" ro,nosuid,nodev,noexec): {', '.join(sorted(MOUNT8_OPTIONS, key=str.lstrip))},"
    " x-*, comment=*.",
)
@click.option("--uid", type=USER_ID, help="Default owner of files (number or name).")
@click.option("--gid", type=GROUP_ID, help="Default group of files (number or name).")
@click.option("--mode", default="0400", show_default=True, help="Default file mode (octal).")
@click.option("--log-file", type=click.Path(dir_okay=False, path_type=Path), help="Daemon log.")
@click.option(
    "--credential-socket",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also serve systemd's LoadCredential=ID:PATH on this socket (root only).",
)
@click.option("--ready-fd", type=bounded_int(0, 2**31 - 1), hidden=True)
@resolver_options
@handle_errors
def mount(
    mountpoint: Path,
    store: StoreLocation | None,
    foreground: bool,
    options: tuple[str, ...],
    uid: int | None,
    gid: int | None,
    mode: str,
    log_file: Path | None,
    credential_socket: Path | None,
    ready_fd: int | None,
    resolver: bool,
    resolver_socket: Path | None,
    resolver_socket_mode: str,
    docker_uids: tuple[int, ...],
) -> None:
    """Mount the store read-only at MOUNTPOINT.

    Returns once the mount answers (the daemon goes on in the background), or with
    --foreground serves until unmounted or sent SIGTERM/SIGINT.
    """
    from secretfs.cli.values import parse_mode
    from secretfs.daemon import clear_stale_mount

    allow_other, extra = _parse_options(options)
    daemon_opts = _daemon_options(options)
    store, uid, gid, mode = _option_values(options, store, uid, gid, mode)
    file_mode = parse_mode(mode)
    check_mount_setup(mountpoint)
    serve_api = resolver_config(
        mountpoint, resolver, resolver_socket, resolver_socket_mode, docker_uids
    )
    clear_stale_mount(mountpoint)
    path = store_path(store)
    if not foreground:
        args = [str(mountpoint), "--store", str(path), "--mode", f"{file_mode:04o}"]
        args += [f"-o{o}" for o in (*extra, *(["allow_other"] if allow_other else []))]
        args += [f"-o{k}={v}" for k, v in daemon_opts.items()]
        args += [f"--{k}={v}" for k, v in (("uid", uid), ("gid", gid)) if v is not None]
        if log_file is not None:
            args += ["--log-file", str(log_file)]
        args += resolver_args(serve_api)
        if credential_socket is not None:
            args += ["--credential-socket", str(credential_socket.absolute())]
        _spawn_daemon(args, mountpoint, path, log_file)
        return
    _serve(
        mountpoint, path, allow_other, extra, uid, gid, file_mode, log_file, ready_fd,
        daemon_opts, serve_api, credential_socket,
    )  # fmt: skip


def _serve(
    mountpoint: Path,
    path: StoreLocation,
    allow_other: bool,
    extra: tuple[str, ...],
    uid: int | None,
    gid: int | None,
    mode: int,
    log_file: Path | None,
    ready_fd: int | None,
    daemon_opts: dict[str, str],
    serve_api: ResolverConfig | None = None,
    credential_socket: Path | None = None,
) -> None:
    from secretfs.daemon import MountOptions, harden, serve
    from secretfs.plainpool import DEFAULT_CAP
    from secretfs.sdnotify import Notifier
    from secretfs.vault import Vault

    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s secretfs[%(process)d] %(levelname)s %(message)s",
        stream=os.fdopen(open_log_file(log_file), "a", buffering=1) if log_file else None,
    )

    def ready() -> None:
        logging.getLogger("secretfs").info("mounted %s at %s", path, mountpoint)
        if ready_fd is not None:
            os.write(ready_fd, READY)
            os.close(ready_fd)
        else:
            notifier.notify("READY=1", f"STATUS=serving {path} at {mountpoint}")
            click.echo(f"secretfs: serving {path} at {mountpoint} (Ctrl-C to unmount)", err=True)

    # Under systemd Type=notify: READY=1 once the mount answers, STOPPING=1 once unmounted.
    notifier = Notifier.from_environ() if ready_fd is None else Notifier(None)
    try:
        harden()  # before the key is unwrapped into this process's memory
        vault = Vault.open(path)
        try:
            max_plain = daemon_opts.get("max_plain")
            opts = MountOptions(
                allow_other,
                -1 if uid is None else uid,
                -1 if gid is None else gid,
                mode,
                extra,
                DEFAULT_CAP if max_plain is None else _parse_size("max_plain", max_plain),
                daemon_opts.get("audit_fail", "closed"),
            )
            try:
                serve(vault, mountpoint.resolve(), opts, ready, serve_api, credential_socket)
            except (RuntimeError, OSError) as exc:  # pyfuse3 says only "... failed"
                why = diagnose(mountpoint, exc)
                raise MountError(f"cannot mount at {mountpoint}: {why}") from None
            notifier.notify("STOPPING=1", f"STATUS=unmounted {mountpoint}")
        finally:
            vault.close()
    except SecretfsError as exc:
        notifier.notify(f"STATUS=failed: {exc}")
        if ready_fd is not None:
            os.write(ready_fd, f"error {exc.exit_code}: {exc}\n".encode())
        raise


def _spawn_daemon(
    args: list[str], mountpoint: Path, path: StoreLocation, log_file: Path | None
) -> None:
    """Run `mount --foreground` detached and wait until it says the mount answers."""
    read_end, write_end = os.pipe()
    cmd = [sys.executable, "-m", "secretfs", "mount", *args, "--foreground"]
    cmd += ["--ready-fd", str(write_end)]
    log = open_log_file(log_file) if log_file else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(
            cmd,
            pass_fds=(write_end,),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
    finally:
        os.close(write_end)
        if log is not subprocess.DEVNULL:
            os.close(log)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read()
    if answer == READY:
        click.echo(f"mounted {path} at {mountpoint} (daemon pid {proc.pid})")
        return
    code = proc.wait()
    status, _, message = answer.decode(errors="replace").strip().partition(": ")
    if not message:
        raise MountError(
            f"the mount daemon exited with status {code} before it was ready"
            + (f" (see {log_file})" if log_file else "; run with --log-file FILE to see why")
        )
    error = MountError(message)
    error.exit_code = int(status.removeprefix("error ")) if status[6:].isdigit() else 1
    raise error


def open_log_file(path: Path) -> int:
    """The daemon's log, appended to; a new one is created 0600 (it names secrets and
    uids), never widened by the umask nor chmod-ed after creation."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        return os.open(path, flags, 0o600)
    except OSError as exc:
        raise UsageError(f"cannot open log file {path}: {exc.strerror}") from None


class MountError(SecretfsError):
    """The FUSE mount itself failed: the message says why (device, permission, place)."""


FUSE_DEVICE = Path("/dev/fuse")
_FUSE_RDEV = os.makedev(10, 229)  # the misc device the kernel's fuse module registers


def check_mount_setup(mountpoint: Path) -> None:
    """What can be checked before mounting: the mount point and the FUSE device."""
    if not os.path.lexists(mountpoint):
        raise UsageError(
            f"mount point {mountpoint} does not exist: create it first (mkdir {mountpoint})"
        )
    try:
        is_dir = mountpoint.is_dir()
    except OSError:
        is_dir = True  # a dead mount (ENOTCONN) is cleared by clear_stale_mount
    if not is_dir:
        raise UsageError(f"mount point {mountpoint} is not a directory")
    problem = fuse_device_problem()
    if problem:
        raise MountError(problem)


def fuse_device_problem() -> str | None:
    try:
        st = FUSE_DEVICE.stat()
    except FileNotFoundError:
        return (
            f"{FUSE_DEVICE} does not exist: load the fuse module (modprobe fuse), or in a"
            " container pass the device in (--device /dev/fuse)"
        )
    except OSError as exc:
        return f"{FUSE_DEVICE}: {exc.strerror}"
    if not stat.S_ISCHR(st.st_mode) or st.st_rdev != _FUSE_RDEV:
        return f"{FUSE_DEVICE} is not the FUSE device (character device 10:229)"
    return None


def diagnose(mountpoint: Path, exc: BaseException) -> str:
    """Why a mount that passed check_mount_setup failed, as far as we can tell."""
    problem = fuse_device_problem()
    if problem:
        return problem
    if os.geteuid() != 0:
        if not os.access(FUSE_DEVICE, os.R_OK | os.W_OK) and not shutil.which("fusermount3"):
            return (
                f"permission denied: {FUSE_DEVICE} is not read-writable by uid"
                f" {os.geteuid()} and there is no fusermount3 to mount for it"
            )
        if not os.access(mountpoint, os.W_OK):
            return f"permission denied: uid {os.geteuid()} cannot write to {mountpoint}"
    if os.path.ismount(mountpoint):
        return f"{mountpoint} is already a mount point: `secretfs umount` it first"
    return f"{exc} (the daemon's log, --log-file, may say more)"


@cli.command()
@click.argument("mountpoint", type=click.Path(path_type=Path, readable=False))
@click.option("--lazy", "-z", is_flag=True, help="Detach even if busy or dead.")
@handle_errors
def umount(mountpoint: Path, lazy: bool) -> None:
    """Unmount a secretfs mount (its daemon then exits)."""
    from secretfs.daemon import is_mounted, mount_fs_type, unmount

    if not is_mounted(mountpoint):
        raise UsageError(f"{mountpoint} is not mounted")
    fs_type = mount_fs_type(mountpoint) or "unknown"
    if not fs_type.startswith("fuse"):
        raise UsageError(f"{mountpoint} is not a secretfs mount (it is {fs_type})")
    try:
        unmount(mountpoint, lazy=lazy)
    except StoreError as exc:  # the kernel refused (busy...): a mount failure, not the store's
        raise MountError(str(exc)) from None
    click.echo(f"unmounted {mountpoint}", err=True)

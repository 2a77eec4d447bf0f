"""`secretfs mount` and `secretfs umount`."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import click

from secretfs.cli import cli, handle_errors, store_option, store_path
from secretfs.errors import SecretfsError, StoreError, UsageError

READY = b"ready\n"
KNOWN_OPTIONS = {"allow_other", "default_permissions"}


def _parse_options(opts: tuple[str, ...]) -> tuple[bool, tuple[str, ...]]:
    allow_other = False
    extra: list[str] = []
    for group in opts:
        for opt in filter(None, group.split(",")):
            if opt == "allow_other":
                allow_other = True
            elif opt in ("ro", "nosuid", "nodev", "noexec", "noatime"):
                continue  # always on
            elif opt in KNOWN_OPTIONS:
                extra.append(opt)
            else:
                raise UsageError(
                    f"unknown mount option {opt!r}: secretfs takes allow_other"
                    " (ro,nosuid,nodev,noexec are always on)"
                )
    return allow_other, tuple(extra)


@cli.command()
@click.argument("mountpoint", type=click.Path(path_type=Path, readable=False))
@store_option
@click.option("--foreground", "-f", is_flag=True, help="Serve in this process until unmounted.")
@click.option(
    "-o", "options", multiple=True, metavar="OPT[,OPT]", help="Mount options: allow_other."
)
@click.option("--uid", type=click.IntRange(0, 2**32 - 2), help="Default owner of files.")
@click.option("--gid", type=click.IntRange(0, 2**32 - 2), help="Default group of files.")
@click.option("--mode", default="0400", show_default=True, help="Default file mode (octal).")
@click.option("--log-file", type=click.Path(dir_okay=False, path_type=Path), help="Daemon log.")
@click.option("--ready-fd", type=int, hidden=True)
@handle_errors
def mount(
    mountpoint: Path,
    store: Path | None,
    foreground: bool,
    options: tuple[str, ...],
    uid: int | None,
    gid: int | None,
    mode: str,
    log_file: Path | None,
    ready_fd: int | None,
) -> None:
    """Mount the store read-only at MOUNTPOINT.

    Returns once the mount answers (the daemon goes on in the background), or with
    --foreground serves until unmounted or sent SIGTERM/SIGINT.
    """
    from secretfs.cli.secret import _mode
    from secretfs.daemon import clear_stale_mount

    allow_other, extra = _parse_options(options)
    file_mode = _mode(mode)
    assert file_mode is not None
    clear_stale_mount(mountpoint)
    if not mountpoint.is_dir():
        raise UsageError(f"mount point {mountpoint} is not a directory")
    path = store_path(store)
    if not foreground:
        args = [str(mountpoint), "--store", str(path), "--mode", f"{file_mode:04o}"]
        args += [f"-o{o}" for o in (*extra, *(["allow_other"] if allow_other else []))]
        args += [f"--{k}={v}" for k, v in (("uid", uid), ("gid", gid)) if v is not None]
        if log_file is not None:
            args += ["--log-file", str(log_file)]
        _spawn_daemon(args, mountpoint, path, log_file)
        return
    _serve(mountpoint, path, allow_other, extra, uid, gid, file_mode, log_file, ready_fd)


def _serve(
    mountpoint: Path,
    path: Path,
    allow_other: bool,
    extra: tuple[str, ...],
    uid: int | None,
    gid: int | None,
    mode: int,
    log_file: Path | None,
    ready_fd: int | None,
) -> None:
    from secretfs.daemon import MountOptions, serve
    from secretfs.vault import Vault

    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s secretfs[%(process)d] %(levelname)s %(message)s",
        filename=str(log_file) if log_file else None,
    )

    def ready() -> None:
        logging.getLogger("secretfs").info("mounted %s at %s", path, mountpoint)
        if ready_fd is not None:
            os.write(ready_fd, READY)
            os.close(ready_fd)
        else:
            click.echo(f"secretfs: serving {path} at {mountpoint} (Ctrl-C to unmount)", err=True)

    try:
        vault = Vault.open(path)
        try:
            opts = MountOptions(
                allow_other, -1 if uid is None else uid, -1 if gid is None else gid, mode, extra
            )
            serve(vault, mountpoint.resolve(), opts, ready)
        finally:
            vault.close()
    except SecretfsError as exc:
        if ready_fd is not None:
            os.write(ready_fd, f"error: {exc}\n".encode())
        raise


def _spawn_daemon(args: list[str], mountpoint: Path, path: Path, log_file: Path | None) -> None:
    """Run `mount --foreground` detached and wait until it says the mount answers."""
    read_end, write_end = os.pipe()
    cmd = [sys.executable, "-m", "secretfs", "mount", *args, "--foreground"]
    cmd += ["--ready-fd", str(write_end)]
    log = open(log_file, "ab") if log_file else subprocess.DEVNULL
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
            log.close()  # type: ignore[union-attr]
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read()
    if answer == READY:
        click.echo(f"mounted {path} at {mountpoint} (daemon pid {proc.pid})")
        return
    code = proc.wait()
    message = answer.decode(errors="replace").strip().removeprefix("error: ")
    raise StoreError(message or f"the mount daemon exited with status {code} before it was ready")


@cli.command()
@click.argument("mountpoint", type=click.Path(path_type=Path, readable=False))
@click.option("--lazy", "-z", is_flag=True, help="Detach even if busy or dead.")
@handle_errors
def umount(mountpoint: Path, lazy: bool) -> None:
    """Unmount a secretfs mount (its daemon then exits)."""
    from secretfs.daemon import is_mounted, unmount

    if not is_mounted(mountpoint):
        raise UsageError(f"{mountpoint} is not mounted")
    unmount(mountpoint, lazy=lazy)
    click.echo(f"unmounted {mountpoint}", err=True)

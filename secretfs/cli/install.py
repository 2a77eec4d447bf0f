"""`secretfs install`: the mount(8) helper and the systemd unit, pinned to this install.

The texts live here, so that a `pip install`ed secretfs can install them; packaging/
in the source tree holds the same texts rendered for `/usr/local/bin/secretfs`
(tests/test_packaging.py keeps the two equal).
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import click

from secretfs.cli.common import cli, emit_json, handle_errors
from secretfs.cli.records import install_record, json_option
from secretfs.errors import UsageError
from secretfs.files import write_file_atomically

PLACEHOLDER = "@SECRETFS@"
PACKAGED_COMMAND = "/usr/local/bin/secretfs"  # what packaging/ is rendered with
HELPER_NAME = "mount.fuse.secretfs"
UNIT_NAME = "secretfs@.service"

MOUNT_HELPER = r"""#!/bin/sh
# mount(8) helper for secretfs, installed as /sbin/mount.fuse.secretfs by
# `secretfs install mount-helper`. It makes these work:
#   mount -t fuse.secretfs /var/lib/secretfs/store.db /run/secretfs/mnt -o allow_other
#   /etc/fstab: /var/lib/secretfs/store.db /run/secretfs/mnt fuse.secretfs allow_other,nofail 0 0
# mount(8) runs it as: mount.fuse.secretfs STORE MOUNTPOINT [-sfnv] [-o OPTIONS]
# STORE `secretfs` means the default store, or the one named by -o store=PATH.
# It returns once the mount answers; the daemon goes on in the background.
set -eu
prog=mount.fuse.secretfs
if [ $# -lt 2 ]; then
  echo "usage: $prog STORE MOUNTPOINT [-sfnv] [-o OPTIONS]" >&2
  exit 1
fi
store=$1
mountpoint=$2
shift 2
opts=
fake=no
verbose=no
while [ $# -gt 0 ]; do
  case $1 in
    -o)
      if [ $# -lt 2 ]; then echo "$prog: -o needs a value" >&2; exit 1; fi
      opts=${opts:+$opts,}$2
      shift 2 ;;
    -o*) opts=${opts:+$opts,}${1#-o}; shift ;;
    -t) shift; [ $# -gt 0 ] && shift ;;  # the type, fuse.secretfs
    -N*) echo "$prog: -N (another mount namespace) is not supported" >&2; exit 1 ;;
    -*)
      flags=${1#-}
      while [ -n "$flags" ]; do
        rest=${flags#?}
        case ${flags%"$rest"} in
          f) fake=yes ;;
          v) verbose=yes ;;
          s | n) ;;  # sloppy, no mtab: nothing to do
          *) echo "$prog: unknown flag -${flags%"$rest"}" >&2; exit 1 ;;
        esac
        flags=$rest
      done
      shift ;;
    *) echo "$prog: unexpected argument $1" >&2; exit 1 ;;
  esac
done
if [ "$fake" = yes ]; then exit 0; fi
set -- mount "$mountpoint"
if [ "$store" != secretfs ]; then
  case $store in /*) ;; *) store=$PWD/$store ;; esac
  set -- "$@" --store "$store"
fi
if [ -n "$opts" ]; then set -- "$@" -o "$opts"; fi
if [ "$verbose" = yes ]; then
  exec @SECRETFS@ "$@"
fi
exec @SECRETFS@ "$@" >/dev/null
"""

SYSTEMD_UNIT = """\
# secretfs@.service: a secretfs store mounted read-only at the path the instance names.
#
#   systemctl enable --now secretfs@run-secretfs-mnt.service    # mounts at /run/secretfs/mnt
#   systemctl enable --now "secretfs@$(systemd-escape --path /srv/app/secrets).service"
#
# Per mount settings go in /etc/secretfs/INSTANCE.env, for example
#   SECRETFS_STORE=/var/lib/secretfs/store.db
#   SECRETFS_MOUNT_ARGS=-o allow_other --mode 0440
# and the key as for any secretfs command (the key file beside the store by default,
# or SECRETFS_KEY_FILE, SECRETFS_KEY, SECRETFS_PASSWORD).
# `secretfs install systemd` writes this file with the path of the secretfs it runs.

[Unit]
Description=secretfs: secrets mounted read-only at %f
After=local-fs.target

[Service]
Type=notify
NotifyAccess=main
Environment=SECRETFS_STORE=/var/lib/secretfs/store.db
EnvironmentFile=-/etc/secretfs/%i.env
ExecStartPre=/bin/mkdir -p %f
ExecStart=@SECRETFS@ mount %f --foreground $SECRETFS_MOUNT_ARGS
# A daemon killed with SIGKILL leaves a dead mount (ENOTCONN) behind: detach it.
ExecStopPost=-/bin/fusermount3 -u -z %f
Restart=on-failure
RestartSec=2s
KillMode=mixed
TimeoutStopSec=30s

# Hardening. Nothing here may give the service a mount namespace of its own
# (ProtectSystem=, ProtectHome=, PrivateTmp=, PrivateDevices=, ReadWritePaths=,
# ProtectKernelTunables=, ...): the FUSE mount would be made inside it, out of the
# host's sight. Root is needed to mount; only the capabilities for that are kept.
NoNewPrivileges=yes
CapabilityBoundingSet=CAP_SYS_ADMIN CAP_IPC_LOCK
UMask=0077
LimitCORE=0
LimitMEMLOCK=infinity
DevicePolicy=closed
DeviceAllow=/dev/fuse rw
RestrictAddressFamilies=AF_UNIX
IPAddressDeny=any
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service @mount
SystemCallErrorNumber=EPERM

[Install]
WantedBy=multi-user.target
DefaultInstance=run-secretfs-mnt
"""

# A systemd command line word, or a shell word, that needs no quoting either way.
_PLAIN_WORD = re.compile(r"[A-Za-z0-9_./+:@=-]+")


def this_command() -> list[str]:
    """The command that runs this secretfs, whatever PATH says."""
    return [sys.executable, "-m", "secretfs"]


def render_mount_helper(command: list[str]) -> str:
    return MOUNT_HELPER.replace(PLACEHOLDER, shlex.join(command))


def render_systemd_unit(command: list[str]) -> str:
    for word in command:
        if not _PLAIN_WORD.fullmatch(word):
            raise UsageError(
                f"{word!r} cannot go into a unit file as it is: use a path of letters,"
                " digits and ._/+:@=- only"
            )
    return SYSTEMD_UNIT.replace(PLACEHOLDER, " ".join(command))


def _write(path: Path, text: str, mode: int) -> None:
    """Replace `path` atomically: a half-written helper must never be run by mount(8)."""
    if not path.parent.is_dir():
        raise UsageError(f"{path.parent} is not a directory")
    write_file_atomically(path, text.encode(), mode=mode, replace=True)


def _command_option(fn: click.decorators.FC) -> click.decorators.FC:
    return click.option(
        "--command",
        "command",
        metavar="CMD",
        help="How to run secretfs, e.g. /usr/local/bin/secretfs"
        " (default: this Python with -m secretfs).",
    )(fn)


def _command(text: str | None) -> list[str]:
    if text is None:
        return this_command()
    words = shlex.split(text)
    if not words or not words[0].startswith("/"):
        raise UsageError("--command must start with an absolute path")
    return words


@cli.group()
def install() -> None:
    """Install the mount(8) helper or the systemd unit for this secretfs."""


@install.command("mount-helper")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("/sbin"),
    show_default=True,
    help="Where mount(8) looks for helpers.",
)
@_command_option
@json_option
@handle_errors
def install_mount_helper(directory: Path, command: str | None, as_json: bool = False) -> None:
    """Install mount.fuse.secretfs, so that `mount -t fuse.secretfs` and fstab work."""
    path = directory / HELPER_NAME
    words = _command(command)
    _write(path, render_mount_helper(words), 0o755)
    _installed("mount-helper", path, words, [], as_json)


@install.command("systemd")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("/etc/systemd/system"),
    show_default=True,
    help="The unit directory.",
)
@_command_option
@json_option
@handle_errors
def install_systemd(directory: Path, command: str | None, as_json: bool = False) -> None:
    """Install the secretfs@.service template unit (one instance per mount point)."""
    path = directory / UNIT_NAME
    words = _command(command)
    _write(path, render_systemd_unit(words), 0o644)
    then = "then: systemctl daemon-reload && systemctl enable --now secretfs@run-secretfs-mnt"
    _installed("systemd", path, words, [then], as_json)


def _installed(kind: str, path: Path, command: list[str], notes: list[str], as_json: bool) -> None:
    if as_json:
        emit_json(install_record(kind, str(path), command, notes))
        return
    click.echo(f"installed {path}")
    for note in notes:
        click.echo(note)

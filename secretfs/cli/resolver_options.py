"""`secretfs mount`'s options for the Docker secrets-engine resolver socket."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from secretfs.errors import UsageError

if TYPE_CHECKING:
    from secretfs.resolver.server import ResolverConfig

F = TypeVar("F", bound=Callable[..., Any])


def resolver_options(fn: F) -> F:
    """--resolver, --resolver-socket, --resolver-socket-mode, --docker-abstract-uid."""
    for option in reversed(
        (
            click.option(
                "--resolver",
                is_flag=True,
                help="Serve the Docker secrets-engine API on the default socket"
                " (/run/secretfs-resolver.sock as root, else"
                " $XDG_RUNTIME_DIR/secretfs-resolver.sock).",
            ),
            click.option(
                "--resolver-socket",
                type=click.Path(dir_okay=False, path_type=Path),
                help="Serve the Docker secrets-engine API on this unix socket.",
            ),
            click.option(
                "--resolver-socket-mode",
                default="0660",
                show_default=True,
                help="Mode of the resolver socket (octal); each request is access-checked.",
            ),
            click.option(
                "--docker-abstract-uid",
                "docker_uids",
                type=click.IntRange(0, 2**32 - 2),
                multiple=True,
                help="Also listen where Docker's client of this uid looks"
                " (@docker-secrets-engine/UID/daemon.sock). Repeatable.",
            ),
        )
    ):
        fn = option(fn)
    return fn


def resolver_config(
    mountpoint: Path, resolver: bool, socket: Path | None, mode: str, uids: tuple[int, ...]
) -> ResolverConfig | None:
    """The resolver's sockets from the options, or None when none was asked for."""
    from secretfs.cli.values import parse_mode
    from secretfs.resolver.server import ResolverConfig, default_socket

    if not (resolver or socket or uids):
        return None
    if resolver and socket is not None:
        raise UsageError("--resolver and --resolver-socket both given: use one")
    socket_mode = parse_mode(mode, "--resolver-socket-mode")
    path = default_socket() if resolver else socket
    if path is not None:
        path = path.absolute()
        if path.resolve().is_relative_to(mountpoint.resolve()):
            raise UsageError(f"resolver socket {path} is under the mount point: put it elsewhere")
    return ResolverConfig(
        path=path,
        mode=socket_mode,
        abstract_uids=tuple(dict.fromkeys(uids)),
    )


def resolver_args(config: ResolverConfig | None) -> list[str]:
    """The same options again, for the daemon `mount` starts in the background."""
    if config is None:
        return []
    args = [f"--resolver-socket-mode={config.mode:04o}"]
    if config.path is not None:
        args.append(f"--resolver-socket={config.path}")
    args += [f"--docker-abstract-uid={uid}" for uid in config.abstract_uids]
    return args

"""Click parameter types shared by every command."""

from __future__ import annotations

import grp
import pwd
from typing import Any, Literal

import click

from secretfs.errors import UsageError

#: The largest integer SQLite (and etcd's int64 fields) can hold: no number option may
#: take more, or it ends in an OverflowError instead of a usage message.
INT_MAX = 2**63 - 1


def bounded_int(min_value: int = 1, max_value: int = INT_MAX) -> click.IntRange:
    """An integer option in [min_value, max_value]; out of range is a usage error (exit 2)."""
    return click.IntRange(min_value, min(max_value, INT_MAX))


#: The largest owner id: (uid_t)-1 means "no change" to the kernel, never an owner.
MAX_ID = 2**32 - 2


def parse_id(text: str, kind: Literal["user", "group"]) -> int:
    """A numeric id (it need not exist here: container users often do not), or the
    name of a user or group of this host; anything else is a usage error."""
    if text.isdigit():
        number = int(text)
        if number > MAX_ID:
            raise UsageError(f"{kind} id {text} is not in the range 0 to {MAX_ID}")
        return number
    try:
        if kind == "user":
            return pwd.getpwnam(text).pw_uid
        return grp.getgrnam(text).gr_gid
    except KeyError:
        raise UsageError(
            f"no {kind} named {text!r} on this host: give a numeric id"
            " (container users often exist only inside the container)"
        ) from None


class OwnerId(click.ParamType):  # type: ignore[type-arg]
    """A uid or gid option: a number, or a user or group name of this host."""

    def __init__(self, kind: Literal["user", "group"]) -> None:
        self.kind: Literal["user", "group"] = kind
        self.name = "uid" if kind == "user" else "gid"

    def get_metavar(self, param: Any, ctx: Any = None) -> str:
        return "UID|NAME" if self.kind == "user" else "GID|NAME"

    def convert(self, value: Any, param: Any, ctx: Any) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_id(str(value), self.kind)
        except UsageError as exc:
            self.fail(str(exc), param, ctx)


#: Every --uid/--gid (and --owner) option takes one of these.
USER_ID = OwnerId("user")
GROUP_ID = OwnerId("group")

"""No core dumps and no same-uid ptrace for every secretfs process that holds a value or
a key: the CLI (from `main`), `run`'s parent, the mount helper (it execs the CLI) and the
daemon (which adds locked memory, see daemon.harden).

A child we start gets the core limit the user had back (`restore_core_limit`); the
dumpable flag resets by itself on exec.
"""

from __future__ import annotations

import ctypes
import logging
import os
import resource

log = logging.getLogger(__name__)

_PR_SET_DUMPABLE = 4
_PR_GET_DUMPABLE = 3
#: RLIMIT_CORE as it was before no_core_dumps(); None until then.
_original_core: tuple[int, int] | None = None


def no_core_dumps(*, keep_hard_limit: bool = False) -> int:
    """Core limit 0 and dumpable 0 for this process; returns the dumpable flag now in
    force. `keep_hard_limit` lowers only the soft limit, so that a child of ours can get
    the user's limit back (the CLI); the daemon starts no user command and lowers both."""
    global _original_core
    current = resource.getrlimit(resource.RLIMIT_CORE)
    if _original_core is None:
        _original_core = current
    resource.setrlimit(resource.RLIMIT_CORE, (0, current[1] if keep_hard_limit else 0))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        log.warning("cannot turn off dumpable: %s", os.strerror(ctypes.get_errno()))
    return int(libc.prctl(_PR_GET_DUMPABLE, 0, 0, 0, 0))


def restore_core_limit() -> None:
    """Give this process the user's core limit back, just before it execs the user's
    command (it then holds only what that command is given). Safe in a forked child."""
    if _original_core is None:
        return
    soft = _original_core[0]
    current_hard = resource.getrlimit(resource.RLIMIT_CORE)[1]
    if current_hard != resource.RLIM_INFINITY and (
        soft == resource.RLIM_INFINITY or soft > current_hard
    ):
        soft = current_hard  # the hard limit was lowered for good: as close as we may
    resource.setrlimit(resource.RLIMIT_CORE, (soft, current_hard))

"""Fault points for the crash-safety tests: stop or kill this process at a named point.

A test arms them in the environment of a process it starts:
`SECRETFS_TEST_KILL=POINT[:N]` sends SIGKILL to that process the Nth time (default 1st)
it reaches `checkpoint(POINT)`; `SECRETFS_TEST_STOP=POINT[:N]` sends it SIGSTOP there,
so a test can look at the store mid-operation and then kill or continue it.
`SECRETFS_TEST_FAULT=POINT[:N]` makes `fault(POINT)` true the Nth time: the etcd
backend then acts as if a write's outcome were unknown (`etcd-txn-unsent`: never sent;
`etcd-txn-answer-lost`: applied, answer lost) and must resolve it by reading back.

Unarmed (production), a checkpoint does nothing. Importing this module reads nothing; the
first checkpoint a process reaches reads the two variables once, and from then on an
unarmed checkpoint tests one module global. Why the environment and not a call that
arms: the crash tests kill the real `python -m secretfs`, whose only inputs a test
controls are argv, stdin and the environment (a test-only option would be one more thing
users see). Why lazily: the process's environment when it first writes decides, not
whoever imported this module first (the test process, which runs the CLI in-process,
imports it long before any test sets anything).

This only ever stops or kills the process that carries the variable, which whoever sets
its environment can do anyway: it changes nothing that is written, read or checked.

Points: `before-commit` / `after-commit` (every store write transaction), and the named
steps of key rotation and re-encryption (see secretfs/keyrotation.py).
"""

from __future__ import annotations

import os
import signal

ENV_KILL = "SECRETFS_TEST_KILL"
ENV_STOP = "SECRETFS_TEST_STOP"
ENV_FAULT = "SECRETFS_TEST_FAULT"

# action ("kill" / "stop") -> (point, the Nth time); None until the first checkpoint.
_armed: dict[str, tuple[str, int]] | None = None
_seen: dict[str, int] = {}


def _parse(text: str | None) -> tuple[str, int] | None:
    if not text:
        return None
    point, _, count = text.rpartition(":")
    if not (point and count.isdigit() and int(count) > 0):
        return text, 1
    return point, int(count)


def _read_environment() -> dict[str, tuple[str, int]]:
    global _armed
    _armed = {
        action: parsed
        for action, parsed in (
            ("kill", _parse(os.environ.get(ENV_KILL))),
            ("stop", _parse(os.environ.get(ENV_STOP))),
            ("fault", _parse(os.environ.get(ENV_FAULT))),
        )
        if parsed is not None
    }
    return _armed


def checkpoint(point: str) -> None:
    """Reached `point`: stop or kill this process if a test asked for it here."""
    armed = _read_environment() if _armed is None else _armed
    if not armed:
        return
    _seen[point] = _seen.get(point, 0) + 1
    for action, (wanted, nth) in armed.items():
        if action != "fault" and wanted == point and _seen[point] == nth:
            os.kill(os.getpid(), signal.SIGKILL if action == "kill" else signal.SIGSTOP)


def fault(point: str) -> bool:
    """Reached `point`: whether a test asked for a simulated failure here this time."""
    armed = (_read_environment() if _armed is None else _armed).get("fault")
    if armed is None:
        return False
    seen = _seen[f"fault:{point}"] = _seen.get(f"fault:{point}", 0) + 1
    return armed == (point, seen)

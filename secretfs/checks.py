"""`doctor`'s findings: one check says ok, warn, fail or skip, and what to do about it.

A leaf module, so that store locations can check themselves without importing doctor.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Status = Literal["ok", "warn", "fail", "skip"]


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str | None = None


def mode_check(name: str, path: Path, what: str) -> Check:
    st = path.stat()
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        return Check(
            name,
            "fail",
            f"{path} is mode {mode:04o}: others may read the {what}",
            f"chmod 600 {path}",
        )
    if st.st_uid != os.geteuid():
        return Check(
            name,
            "warn",
            f"{path} belongs to uid {st.st_uid}, not to you (uid {os.geteuid()})",
            f"chown {os.geteuid()} {path}, or run secretfs as uid {st.st_uid}",
        )
    return Check(name, "ok", f"{path} mode {mode:04o}")

"""The mount's default owner may be given by name, in -o as in --uid/--gid (issue 12.4)."""

from __future__ import annotations

import os
from collections.abc import Callable

from tests.mount.conftest import Mount


def test_mount_o_uid_gid_take_names(mount_factory: Callable[..., Mount]) -> None:
    m = mount_factory("-o", "uid=www-data,gid=nogroup", secrets={"db": b"x"})
    st = os.stat(m.path / "deployment/db")
    assert (st.st_uid, st.st_gid) == (33, 65534)

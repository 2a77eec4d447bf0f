"""The credential socket's rules as pure logic (secretfs/credsock.py)."""

from __future__ import annotations

import pytest

from secretfs.credsock import Request, candidates, parse_peer


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        (b"\0" + b"9a3f0c2b1d4e5f60/unit/app.service/db", Request("app.service", "db")),
        (b"\0" + b"0/unit/app@blue.service/tls.key", Request("app@blue.service", "tls.key")),
        (b"\0" + b"9a3f/unit/app.service/db/extra", None),  # one id, no more
        (b"\0" + b"XYZ/unit/app.service/db", None),  # not random_u64 in hex
        (b"\0" + b"12345678901234567/unit/app.service/db", None),  # more than 64 bits
        (b"9a3f/unit/app.service/db", None),  # not abstract
        (b"\0" + b"9a3f/unit//db", None),
        ("/run/some.sock", None),  # a path
        ("", None),  # unbound
    ],
)
def test_only_systemds_address_form_is_a_request(
    address: bytes | str, expected: Request | None
) -> None:
    assert parse_peer(address) == expected


@pytest.mark.parametrize(
    ("unit", "cred", "refs"),
    [
        ("app.service", "db", ["$S:@app/db", "$S:db"]),
        ("app@blue.service", "db", ["$S:@app/db", "$S:db"]),
        ("my.app.service", "db", ["$S:@my.app/db", "$S:db"]),
        ("backup.timer", "key", ["$S:@backup/key", "$S:key"]),
        ("weird\\x2dname.service", "db", ["$S:db"]),  # no service name: deployment only
        ("app.service", "../etc", []),  # no secret name: nothing
        ("app.service", "x.d", []),
    ],
)
def test_a_request_maps_to_the_unit_scope_then_deployment(
    unit: str, cred: str, refs: list[str]
) -> None:
    assert [str(r) for r in candidates(Request(unit, cred))] == refs

"""A stored tag's one canonical form: `_parse_gen_tag` accepts exactly the bytes
`_gen_tag` writes (checked against parsing by building the form again)."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from secretfs import crypto
from secretfs.keyring import _gen_tag, _parse_gen_tag


def _reference(raw: bytes) -> tuple[int, bytes] | None:
    try:
        gen_text, hex_tag = raw.decode("ascii").split(":", 1)
        tag = bytes.fromhex(hex_tag)
        gen = int(gen_text)
    except (UnicodeDecodeError, ValueError):
        return None
    if len(tag) != crypto.MAC_BYTES or raw != _gen_tag(gen, tag):
        return None
    return gen, tag


MAC = bytes(range(crypto.MAC_BYTES))
GOOD = _gen_tag(7, MAC)


@given(st.integers(min_value=0, max_value=10**12), st.binary(min_size=32, max_size=32))
def test_every_tag_written_parses_back(gen: int, mac: bytes) -> None:
    assert _parse_gen_tag(_gen_tag(gen, mac)) == (gen, mac)


@given(st.binary(max_size=80))
@example(b"07:" + MAC.hex().encode())  # a leading zero
@example(b"+7:" + MAC.hex().encode())  # a sign
@example(b" 7:" + MAC.hex().encode())
@example(b"7:" + MAC.hex().upper().encode())  # capitals
@example(b"7:" + MAC.hex().encode()[:-2] + b" 0")  # a space fromhex would skip
@example(b"7:" + MAC.hex().encode() + b":")
@example(b"\xd9\xa7:" + MAC.hex().encode())  # a non-ASCII digit
@example(b"7" + MAC.hex().encode())
@example(b":" + MAC.hex().encode())
@example(GOOD)
def test_only_the_canonical_form_parses(raw: bytes) -> None:
    assert _parse_gen_tag(raw) == _reference(raw)


@given(st.integers(min_value=0, max_value=len(GOOD) - 1), st.integers(0, 255))
def test_no_changed_byte_of_a_tag_parses_to_the_same(at: int, byte: int) -> None:
    changed = GOOD[:at] + bytes([byte]) + GOOD[at + 1 :]
    assert _parse_gen_tag(changed) == _reference(changed)
    if changed != GOOD:
        assert _parse_gen_tag(changed) != (7, MAC)

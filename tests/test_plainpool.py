"""The shared plaintext pool (secretfs/plainpool.py): one copy per key, counted, wiped
by the last release, capped with a per-read fallback."""

from __future__ import annotations

import pytest

from secretfs.plainpool import PlainPool


class Maker:
    def __init__(self, value: bytes) -> None:
        self.value = value
        self.calls = 0

    def __call__(self) -> bytes:
        self.calls += 1
        return self.value


def test_handles_on_one_key_share_one_copy_made_once() -> None:
    pool = PlainPool(cap=1024)
    make = Maker(b"secret")
    first, shared1 = pool.acquire(("s", 1), make)
    second, shared2 = pool.acquire(("s", 1), make)
    assert shared1 and shared2 and first is second
    assert make.calls == 1
    assert pool.refs(("s", 1)) == 2 and pool.held == 6


def test_the_last_release_wipes_and_frees() -> None:
    pool = PlainPool(cap=1024)
    data, _ = pool.acquire("k", Maker(b"secret"))
    pool.acquire("k", Maker(b"secret"))
    pool.release("k")
    assert bytes(data) == b"secret"  # one handle still reads it
    pool.release("k")
    assert bytes(data) == b"\0" * 6
    assert pool.held == 0 and len(pool) == 0 and pool.refs("k") == 0
    pool.release("k")  # a release too many changes nothing
    assert pool.held == 0


def test_past_the_cap_each_acquire_decrypts_for_itself() -> None:
    pool = PlainPool(cap=10)
    pool.acquire("a", Maker(b"x" * 8))
    make = Maker(b"y" * 8)
    data, shared = pool.acquire("b", make)
    assert not shared and bytes(data) == b"y" * 8
    assert pool.held == 8 and pool.refs("b") == 0
    pool.acquire("b", make)
    assert make.calls == 2  # nothing held for b: made again
    pool.release("a")
    _, shared = pool.acquire("b", make)
    assert shared and pool.held == 8


def test_different_versions_and_fields_are_different_copies() -> None:
    pool = PlainPool(cap=100)
    a, _ = pool.acquire((1, 1, ()), Maker(b"v1"))
    b, _ = pool.acquire((1, 2, ()), Maker(b"v2"))
    c, _ = pool.acquire((1, 2, ("password",)), Maker(b"pw"))
    assert (bytes(a), bytes(b), bytes(c)) == (b"v1", b"v2", b"pw")
    assert pool.held == 6


def test_a_cap_of_zero_holds_nothing_and_a_negative_cap_is_refused() -> None:
    pool = PlainPool(cap=0)
    _, shared = pool.acquire("k", Maker(b"v"))
    assert not shared and pool.held == 0
    with pytest.raises(ValueError):
        PlainPool(cap=-1)

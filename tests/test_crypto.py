"""Known-answer, tamper and property tests for secretfs.crypto (the on-disk format)."""

from __future__ import annotations

import base64
import hashlib

import nacl.bindings
import pytest
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from hypothesis import given
from hypothesis import strategies as st

from secretfs import crypto
from secretfs.errors import IntegrityError, UsageError

AUTH_MSG = "authentication failed: tampered, moved, or sealed under another key"

KAT_KEY = bytes(range(32))
KAT_NONCE = bytes(range(0x40, 0x58))
STORE_ID = bytes.fromhex("00112233445566778899aabbccddeeff")

# draft-irtf-cfrg-xchacha-03, Appendix A.3.1 (AEAD_XChaCha20_Poly1305).
DRAFT_KEY = bytes(range(0x80, 0xA0))
DRAFT_NONCE = bytes(range(0x40, 0x58))
DRAFT_AAD = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
DRAFT_PLAINTEXT = (
    b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip "
    b"for the future, sunscreen would be it."
)
DRAFT_CIPHERTEXT = bytes.fromhex(
    "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb"
    "731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452"
    "2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9"
    "21f9664c97637da9768812f615c68b13b52e"
)
DRAFT_TAG = bytes.fromhex("c0875924c1c7987947deafd8780acf49")


# --- known answers ------------------------------------------------------------


def test_constants() -> None:
    assert crypto.KEY_BYTES == 32
    assert crypto.FORMAT_V1 == 1


def test_xchacha_core_matches_draft_vector() -> None:
    out = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
        DRAFT_PLAINTEXT, DRAFT_AAD, DRAFT_NONCE, DRAFT_KEY
    )
    assert out == DRAFT_CIPHERTEXT + DRAFT_TAG


def test_seal_layout_is_header_nonce_then_draft_ciphertext() -> None:
    blob = crypto._seal_with_nonce(DRAFT_KEY, DRAFT_PLAINTEXT, DRAFT_AAD, DRAFT_NONCE)
    assert blob == b"\x01" + DRAFT_NONCE + DRAFT_CIPHERTEXT + DRAFT_TAG
    assert crypto.open_sealed(DRAFT_KEY, blob, DRAFT_AAD) == DRAFT_PLAINTEXT


def test_seal_known_answer() -> None:
    blob = crypto._seal_with_nonce(KAT_KEY, b"hunter2", b"secretfs-kat", KAT_NONCE)
    assert blob.hex() == (
        "01"
        "404142434445464748494a4b4c4d4e4f5051525354555657"
        "bc4c6b04b5924b"
        "0b2aee8044802439c9119f59a66f09d8"
    )
    assert crypto.open_sealed(KAT_KEY, blob, b"secretfs-kat") == b"hunter2"


def test_seal_known_answer_empty() -> None:
    blob = crypto._seal_with_nonce(KAT_KEY, b"", b"", KAT_NONCE)
    assert blob.hex() == (
        "01404142434445464748494a4b4c4d4e4f505152535455565761d8489bd58cfbe3ec6d5913671c3779"
    )
    assert crypto.open_sealed(KAT_KEY, blob, b"") == b""


def test_value_aad_encoding() -> None:
    aad = crypto.value_aad(STORE_ID, "team/prod", "db-password", 7, 2)
    assert aad == (
        b"secretfs/value/v1"
        b"\x00\x00\x00\x10" + STORE_ID + b"\x00\x00\x00\x09team/prod"
        b"\x00\x00\x00\x0bdb-password"
        b"\x00\x00\x00\x08\x00\x00\x00\x00\x00\x00\x00\x07"
        b"\x00\x00\x00\x08\x00\x00\x00\x00\x00\x00\x00\x02"
    )


def test_value_aad_utf8() -> None:
    aad = crypto.value_aad(b"", "é", "", 0, 0)
    assert aad == (
        b"secretfs/value/v1\x00\x00\x00\x00\x00\x00\x00\x02\xc3\xa9\x00\x00\x00\x00"
        b"\x00\x00\x00\x08" + bytes(8) + b"\x00\x00\x00\x08" + bytes(8)
    )


def test_data_key_aad_encoding() -> None:
    assert crypto.data_key_aad(STORE_ID, 2) == (
        b"secretfs/dek/v1"
        b"\x00\x00\x00\x10" + STORE_ID + b"\x00\x00\x00\x08\x00\x00\x00\x00\x00\x00\x00\x02"
    )


def test_aad_field_boundaries_are_unambiguous() -> None:
    assert crypto.value_aad(STORE_ID, "a:b", "c", 1, 1) != crypto.value_aad(
        STORE_ID, "a", "b:c", 1, 1
    )
    assert crypto.value_aad(STORE_ID, "ab", "", 1, 1) != crypto.value_aad(STORE_ID, "a", "b", 1, 1)
    # A value's aad can never serve as a data key's aad.
    assert crypto.value_aad(STORE_ID, "", "", 0, 0) != crypto.data_key_aad(STORE_ID, 0)


@pytest.mark.parametrize("bad", [-1, 2**64, True])
def test_aad_rejects_out_of_range_ints(bad: int) -> None:
    with pytest.raises(UsageError):
        crypto.value_aad(STORE_ID, "s", "n", bad, 0)
    with pytest.raises(UsageError):
        crypto.data_key_aad(STORE_ID, bad)


def test_aad_rejects_unencodable_text() -> None:
    with pytest.raises(UsageError):
        crypto.value_aad(STORE_ID, "\udc80", "n", 1, 1)


def test_derive_kek_known_answer() -> None:
    params = crypto.KdfParams(time_cost=1, memory_kib=8, parallelism=1)
    kek = crypto.derive_kek(b"correct horse battery staple", b"secretfs-salt-16", params)
    assert kek.hex() == "4175cbd8138c1c68ff9d04d7c2e891e2eee09b53e841b11d1ec85e9970782c52"
    # Independent implementation (OpenSSL via pyca/cryptography) agrees.
    other = Argon2id(
        salt=b"secretfs-salt-16", length=32, iterations=1, lanes=1, memory_cost=8
    ).derive(b"correct horse battery staple")
    assert kek == other


def test_derive_kek_depends_on_every_input() -> None:
    p = crypto.KdfParams(time_cost=1, memory_kib=8, parallelism=1)
    salt = b"secretfs-salt-16"
    base = crypto.derive_kek(b"pw", salt, p)
    assert crypto.derive_kek(b"pX", salt, p) != base
    assert crypto.derive_kek(b"pw", b"secretfs-salt-17", p) != base
    assert crypto.derive_kek(b"pw", salt, crypto.KdfParams(2, 8, 1)) != base
    assert crypto.derive_kek(b"pw", salt, crypto.KdfParams(1, 16, 1)) != base
    assert crypto.derive_kek(b"pw", salt, crypto.KdfParams(1, 16, 2)) != base


def test_derive_kek_rejects_empty_password_and_short_salt() -> None:
    p = crypto.KdfParams(1, 8, 1)
    with pytest.raises(UsageError):
        crypto.derive_kek(b"", b"secretfs-salt-16", p)
    with pytest.raises(UsageError):
        crypto.derive_kek(b"pw", b"short", p)


def test_fingerprint_known_answer() -> None:
    fp_key = crypto.fingerprint_key(KAT_KEY)
    assert fp_key.hex() == "2127b21fcacda4557049333ae713dc03d6a09f4311605210b59451aa1362cdf5"
    assert crypto.fingerprint(fp_key, b"hunter2") == "f8e9eea27e075fd5aa9a2d2845e57e93"
    # Independent implementation (hashlib's BLAKE2b) agrees.
    ref_key = hashlib.blake2b(b"", key=KAT_KEY, person=b"secretfs/fpkey/1", digest_size=32)
    assert ref_key.digest() == fp_key
    ref = hashlib.blake2b(b"hunter2", key=fp_key, person=b"secretfs/fp/v1", digest_size=32)
    assert ref.hexdigest()[:32] == crypto.fingerprint(fp_key, b"hunter2")


def test_blake2b_is_libsodiums() -> None:
    """The fingerprints and row MACs (hashlib's BLAKE2b) equal libsodium's generichash
    with the same key and personalization: stores written either way verify alike."""
    import nacl.encoding
    import nacl.hash

    mac_key = crypto.mac_key(KAT_KEY)
    for data in (b"", b"x", bytes(range(256)) * 3):
        ours = crypto.mac(mac_key, data)
        theirs = nacl.hash.blake2b(
            data,
            digest_size=len(ours),
            key=mac_key,
            person=crypto._MAC_PERSON,
            encoder=nacl.encoding.RawEncoder,
        )
        assert ours == theirs
    fp_key = nacl.hash.blake2b(
        b"",
        digest_size=32,
        key=KAT_KEY,
        person=b"secretfs/fpkey/1",
        encoder=nacl.encoding.RawEncoder,
    )
    assert crypto.fingerprint_key(KAT_KEY) == fp_key


def test_fingerprint_is_keyed_and_separated() -> None:
    fp_key = crypto.fingerprint_key(KAT_KEY)
    assert fp_key != KAT_KEY
    fp = crypto.fingerprint(fp_key, b"hunter2")
    assert len(fp) == 32
    assert int(fp, 16) >= 0
    assert fp != hashlib.blake2b(b"hunter2", digest_size=32).hexdigest()[:32]
    assert fp != hashlib.sha256(b"hunter2").hexdigest()[:32]
    other_key = crypto.fingerprint_key(crypto.random_key())
    assert crypto.fingerprint(other_key, b"hunter2") != fp
    assert crypto.fingerprint(fp_key, b"hunter3") != fp


# --- tamper -------------------------------------------------------------------


def test_every_single_byte_flip_is_rejected() -> None:
    aad = crypto.value_aad(STORE_ID, "s", "n", 1, 1)
    blob = crypto.seal(KAT_KEY, b"abc", aad)
    for i in range(len(blob)):
        for mask in (0x01, 0x80, 0xFF):
            bad = bytearray(blob)
            bad[i] ^= mask
            with pytest.raises(IntegrityError) as info:
                crypto.open_sealed(KAT_KEY, bytes(bad), aad)
            assert str(info.value) == AUTH_MSG


def test_truncation_and_extension_are_rejected() -> None:
    blob = crypto.seal(KAT_KEY, b"abc", b"aad")
    for n in range(len(blob)):
        with pytest.raises(IntegrityError):
            crypto.open_sealed(KAT_KEY, blob[:n], b"aad")
    with pytest.raises(IntegrityError):
        crypto.open_sealed(KAT_KEY, blob + b"\x00", b"aad")


def test_empty_blob_is_rejected() -> None:
    with pytest.raises(IntegrityError, match="authentication failed"):
        crypto.open_sealed(KAT_KEY, b"", b"")


@pytest.mark.parametrize("fmt", [0, 2, 0x81, 0xFF])
def test_unknown_format_byte_is_rejected(fmt: int) -> None:
    blob = crypto.seal(KAT_KEY, b"abc", b"aad")
    with pytest.raises(IntegrityError):
        crypto.open_sealed(KAT_KEY, bytes([fmt]) + blob[1:], b"aad")


def test_wrong_key_is_rejected() -> None:
    blob = crypto.seal(KAT_KEY, b"abc", b"aad")
    with pytest.raises(IntegrityError, match="authentication failed"):
        crypto.open_sealed(crypto.random_key(), blob, b"aad")


@pytest.mark.parametrize(
    "other",
    [
        (b"\xff" * 16, "team/prod", "db", 3, 1),
        (STORE_ID, "team/dev", "db", 3, 1),
        (STORE_ID, "team/prod", "db2", 3, 1),
        (STORE_ID, "team/prod", "db", 2, 1),
        (STORE_ID, "team/prod", "db", 3, 2),
    ],
)
def test_swapped_row_is_rejected(other: tuple[bytes, str, str, int, int]) -> None:
    blob = crypto.seal(KAT_KEY, b"s3cret", crypto.value_aad(STORE_ID, "team/prod", "db", 3, 1))
    with pytest.raises(IntegrityError):
        crypto.open_sealed(KAT_KEY, blob, crypto.value_aad(*other))


def test_colliding_join_would_not_open() -> None:
    blob = crypto.seal(KAT_KEY, b"v", crypto.value_aad(STORE_ID, "a:b", "c", 1, 1))
    with pytest.raises(IntegrityError):
        crypto.open_sealed(KAT_KEY, blob, crypto.value_aad(STORE_ID, "a", "b:c", 1, 1))


def test_error_messages_hold_no_plaintext() -> None:
    marker = b"MARKER-9f2c-do-not-leak"
    blob = crypto.seal(KAT_KEY, marker, b"aad")
    bad = bytearray(blob)
    bad[-1] ^= 1
    attempts = [
        (KAT_KEY, bytes(bad), b"aad"),
        (KAT_KEY, blob, b"other"),
        (crypto.random_key(), blob, b"aad"),
        (KAT_KEY, blob[:-1], b"aad"),
    ]
    for key, candidate, aad in attempts:
        with pytest.raises(IntegrityError) as info:
            crypto.open_sealed(key, candidate, aad)
        text = str(info.value) + repr(info.value)
        assert marker.decode() not in text
        assert marker.hex() not in text
        assert key.hex() not in text
        assert info.value.__cause__ is None
        assert info.value.__suppress_context__


# --- seal/open ----------------------------------------------------------------


@given(plaintext=st.binary(max_size=4096), aad=st.binary(max_size=256))
def test_round_trip(plaintext: bytes, aad: bytes) -> None:
    blob = crypto.seal(KAT_KEY, plaintext, aad)
    assert blob[0] == crypto.FORMAT_V1
    assert len(blob) == 1 + 24 + len(plaintext) + 16
    assert crypto.open_sealed(KAT_KEY, blob, aad) == plaintext


@given(
    scope=st.text(max_size=40),
    name=st.text(max_size=40),
    version=st.integers(0, 2**64 - 1),
    gen=st.integers(0, 2**64 - 1),
    value=st.binary(max_size=512),
)
def test_round_trip_with_value_aad(
    scope: str, name: str, version: int, gen: int, value: bytes
) -> None:
    aad = crypto.value_aad(STORE_ID, scope, name, version, gen)
    assert crypto.open_sealed(KAT_KEY, crypto.seal(KAT_KEY, value, aad), aad) == value


def test_nonces_are_fresh() -> None:
    blobs = {crypto.seal(KAT_KEY, b"same", b"same") for _ in range(64)}
    assert len(blobs) == 64
    assert len({b[1:25] for b in blobs}) == 64


def test_random_key_and_salt() -> None:
    keys = {crypto.random_key() for _ in range(16)}
    assert len(keys) == 16
    assert all(len(k) == 32 for k in keys)
    salts = {crypto.new_salt() for _ in range(16)}
    assert len(salts) == 16
    assert all(len(s) == 16 for s in salts)


@pytest.mark.parametrize("key", [b"", b"\x00" * 31, b"\x00" * 33])
def test_bad_key_length_is_a_usage_error(key: bytes) -> None:
    with pytest.raises(UsageError):
        crypto.seal(key, b"x", b"")
    with pytest.raises(UsageError):
        crypto.open_sealed(key, b"\x01" + bytes(40), b"")


def test_seal_with_nonce_rejects_bad_nonce() -> None:
    with pytest.raises(UsageError):
        crypto._seal_with_nonce(KAT_KEY, b"x", b"", bytes(12))


# --- key wrapping -------------------------------------------------------------


def test_wrap_unwrap_round_trip() -> None:
    kek, dek = crypto.random_key(), crypto.random_key()
    aad = crypto.data_key_aad(STORE_ID, 1)
    wrapped = crypto.wrap_key(kek, dek, aad)
    assert dek not in wrapped
    assert crypto.unwrap_key(kek, wrapped, aad) == dek
    with pytest.raises(IntegrityError):
        crypto.unwrap_key(kek, wrapped, crypto.data_key_aad(STORE_ID, 2))
    with pytest.raises(IntegrityError):
        crypto.unwrap_key(crypto.random_key(), wrapped, aad)


def test_unwrap_rejects_wrong_length_payload() -> None:
    kek = crypto.random_key()
    aad = crypto.data_key_aad(STORE_ID, 1)
    with pytest.raises(IntegrityError):
        crypto.unwrap_key(kek, crypto.seal(kek, b"\x00" * 31, aad), aad)


def test_wrap_rejects_wrong_length_data_key() -> None:
    with pytest.raises(UsageError):
        crypto.wrap_key(crypto.random_key(), b"\x00" * 16, b"")


# --- KDF parameters -----------------------------------------------------------


def test_kdf_defaults_are_rfc9106_second_option() -> None:
    p = crypto.KdfParams()
    assert (p.time_cost, p.memory_kib, p.parallelism) == (3, 65536, 4)


def test_kdf_params_json_round_trip_and_literal() -> None:
    p = crypto.KdfParams(time_cost=2, memory_kib=19456, parallelism=1)
    assert p.to_json() == '{"alg":"argon2id","m":19456,"p":1,"t":2,"v":19}'
    assert crypto.KdfParams.from_json(p.to_json()) == p
    assert crypto.KdfParams.from_json(crypto.KdfParams().to_json()) == crypto.KdfParams()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "[]",
        "null",
        '{"alg":"argon2id","m":19456,"p":1,"t":2}',
        '{"alg":"argon2i","m":19456,"p":1,"t":2,"v":19}',
        '{"alg":"argon2id","m":19456,"p":1,"t":2,"v":16}',
        '{"alg":"argon2id","m":19456,"p":1,"t":2,"v":19.0}',
        '{"alg":"argon2id","m":19456,"p":1,"t":2,"v":19,"x":1}',
        '{"alg":"argon2id","m":"19456","p":1,"t":2,"v":19}',
        '{"alg":"argon2id","m":19456,"p":1,"t":true,"v":19}',
        '{"alg":"argon2id","m":19456,"p":1,"t":0,"v":19}',
        '{"alg":"argon2id","m":4,"p":1,"t":1,"v":19}',
        '{"alg":"argon2id","m":8,"p":2,"t":1,"v":19}',
        '{"alg":"argon2id","m":99999999999,"p":1,"t":1,"v":19}',
        '{"alg":"argon2id","m":19456,"p":1,"t":1000000,"v":19}',
    ],
)
def test_kdf_params_from_json_rejects_malformed(text: str) -> None:
    with pytest.raises(IntegrityError):
        crypto.KdfParams.from_json(text)


@pytest.mark.parametrize(
    "kwargs",
    [{"time_cost": 0}, {"parallelism": 0}, {"memory_kib": 7, "parallelism": 1}],
)
def test_kdf_params_constructor_validates(kwargs: dict[str, int]) -> None:
    with pytest.raises(UsageError):
        crypto.KdfParams(**kwargs)


# --- key text -----------------------------------------------------------------

TEXT_KEY = bytes(range(0xE0, 0x100))  # contains bytes whose base64 differs from urlsafe


def test_parse_key_text_accepts_hex_base64_urlsafe() -> None:
    hex_text = TEXT_KEY.hex()
    std = base64.b64encode(TEXT_KEY).decode()
    url = base64.urlsafe_b64encode(TEXT_KEY).decode()
    assert std != url
    for text in (
        hex_text,
        hex_text.upper(),
        f"  {hex_text}\n",
        std,
        url,
        std.rstrip("="),
        url.rstrip("="),
        f"\t{std}\n",
        std[:20] + "\n" + std[20:],
    ):
        assert crypto.parse_key_text(text) == TEXT_KEY


def test_format_key_text_round_trip() -> None:
    assert crypto.format_key_text(TEXT_KEY) == TEXT_KEY.hex()
    key = crypto.random_key()
    assert crypto.parse_key_text(crypto.format_key_text(key)) == key


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        bytes(31).hex(),
        bytes(33).hex(),
        base64.b64encode(bytes(range(31))).decode(),
        base64.b64encode(bytes(range(33))).decode(),
        base64.urlsafe_b64encode(bytes(range(31))).decode(),
        "zz" * 32,
        "hunter2-hunter2-hunter2-hunter2-hunter2-hunte",
        "é" * 44,
        "!" * 44,
    ],
)
def test_parse_key_text_rejects(text: str) -> None:
    with pytest.raises(UsageError) as info:
        crypto.parse_key_text(text)
    msg = str(info.value)
    assert "hex" in msg
    assert "base64" in msg
    if text.strip():
        assert text.strip() not in msg


def test_parse_key_text_never_echoes_near_miss() -> None:
    secret = "0123456789abcdef" * 4 + "0"  # 65 hex chars: one too many
    with pytest.raises(UsageError) as info:
        crypto.parse_key_text(secret)
    assert secret[:16] not in str(info.value)


# --- wipe ---------------------------------------------------------------------


def test_wipe_zeroes_in_place() -> None:
    buf = bytearray(b"top secret value")
    view = memoryview(buf)
    crypto.wipe(buf)
    assert buf == bytearray(16)
    assert view.tobytes() == bytes(16)
    view.release()
    empty = bytearray()
    crypto.wipe(empty)
    assert empty == bytearray()


def _reference_row_data(tag: str, *fields: str | int | bool | bytes | None) -> bytes:
    """row_data as first written (one isinstance chain): the stored tags' encoding."""

    def field(data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + data

    parts = [field(tag.encode())]
    for value in fields:
        if value is None:
            parts.append(b"N")
        elif isinstance(value, bool):
            parts.append(b"B" + (b"\x01" if value else b"\x00"))
        elif isinstance(value, int):
            parts.append(b"I" + field(str(value).encode()))
        elif isinstance(value, bytes):
            parts.append(b"Y" + field(value))
        else:
            parts.append(b"S" + field(value.encode()))
    return b"".join(parts)


@given(
    st.text(),
    st.lists(
        st.none() | st.booleans() | st.integers() | st.binary() | st.text(),
        max_size=12,
    ),
)
def test_row_data_encodes_as_it_always_has(tag: str, fields: list[object]) -> None:
    """The fast path (exact types first) writes the bytes every stored tag was made
    over; a changed byte would make every row of every store fail its tag."""
    try:
        expected = _reference_row_data(tag, *fields)  # type: ignore[arg-type]
    except UnicodeEncodeError:
        with pytest.raises(UsageError):
            crypto.row_data(tag, *fields)  # type: ignore[arg-type]
        return
    assert crypto.row_data(tag, *fields) == expected  # type: ignore[arg-type]

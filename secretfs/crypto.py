"""The only module that touches nonces, raw keys, the AEAD and the KDF.

Everything here is a thin recipe over vetted primitives (libsodium via PyNaCl,
Argon2 via argon2-cffi); nothing is hand-rolled. The byte layouts below are the
on-disk format and are pinned by known-answer tests in tests/test_crypto.py.

Sealed blob (format 1)::

    0x01 || nonce (24 random bytes) || XChaCha20-Poly1305(key, nonce, aad, plaintext)

Associated data is built by ``value_aad`` / ``data_key_aad``: a domain tag, then
every field as a 4-byte big-endian length followed by its bytes (text as UTF-8,
integers as 8-byte big-endian), so distinct field tuples never encode alike.
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import hashlib
import json
import os
import re
import struct
from dataclasses import dataclass
from typing import Any, cast

import nacl.bindings
import nacl.encoding
import nacl.exceptions
import nacl.hash
import nacl.public
from argon2.low_level import Type, hash_secret_raw

from secretfs.errors import IntegrityError, UsageError

__all__ = [
    "FORMAT_V1",
    "KEY_BYTES",
    "SALT_BYTES",
    "KdfParams",
    "data_key_aad",
    "derive_kek",
    "fingerprint",
    "fingerprint_key",
    "format_key_text",
    "identity_fingerprint",
    "kdf_record_digest",
    "kek_check",
    "kek_matches",
    "mac",
    "mac_key",
    "new_salt",
    "open_sealed",
    "parse_key_text",
    "random_key",
    "row_data",
    "seal",
    "unwrap_key",
    "value_aad",
    "wipe",
    "wrap_key",
]

KEY_BYTES = 32
FORMAT_V1 = 1
SALT_BYTES = 16

_NONCE_BYTES: int = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES  # 24
_TAG_BYTES: int = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_ABYTES  # 16
_HEADER = bytes([FORMAT_V1])
_MIN_BLOB = len(_HEADER) + _NONCE_BYTES + _TAG_BYTES

_AUTH_FAILED = "authentication failed: tampered, moved, or sealed under another key"

_VALUE_AAD_TAG = b"secretfs/value/v1"
_DEK_AAD_TAG = b"secretfs/dek/v1"
_KEK_CHECK_TAG = b"secretfs/kek-check/v1"
_KDF_RECORD_PERSON = b"secretfs/kdf/v1"

# BLAKE2b personalizations (at most 16 bytes); distinct so derived keys never collide.
_FP_KEY_PERSON = b"secretfs/fpkey/1"
_FP_PERSON = b"secretfs/fp/v1"
_FP_HEX_CHARS = 32
_FP2_KEY_PERSON = b"secretfs/fpkey/2"
_FP2_TAG = b"secretfs/fp/v2"
_MAC_KEY_PERSON = b"secretfs/mackey1"
_MAC_PERSON = b"secretfs/mac/v1"
MAC_BYTES = 32

_KDF_ALG = "argon2id"
_KDF_VERSION = 19  # Argon2 v1.3
# Upper bounds so a corrupted store cannot make us allocate or spin without limit.
_KDF_MAX_TIME = 64
_KDF_MAX_MEMORY_KIB = 4 * 1024 * 1024  # 4 GiB
_KDF_MAX_PARALLELISM = 64

_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")
_KEY_TEXT_HELP = (
    "key must be 32 bytes written as 64 hex characters or as base64 / URL-safe "
    "base64 (44 characters); generate one with `openssl rand -hex 32`"
)


def _check_key(key: bytes, what: str = "key") -> None:
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise UsageError(f"{what} must be exactly {KEY_BYTES} bytes")


# --- randomness ---------------------------------------------------------------


def random_key() -> bytes:
    """Return a fresh random 32-byte key."""
    return os.urandom(KEY_BYTES)


def new_salt() -> bytes:
    """Return a fresh random 16-byte salt for the password KDF."""
    return os.urandom(SALT_BYTES)


# --- AEAD ---------------------------------------------------------------------


def _seal_with_nonce(key: bytes, plaintext: bytes, aad: bytes, nonce: bytes) -> bytes:
    """Seal with a caller-chosen nonce. Known-answer tests only: never reuse a nonce."""
    _check_key(key)
    if len(nonce) != _NONCE_BYTES:
        raise UsageError(f"nonce must be exactly {_NONCE_BYTES} bytes")
    body = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, aad, nonce, key)
    return _HEADER + nonce + body


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """Encrypt and authenticate ``plaintext`` bound to ``aad`` under a random nonce."""
    return _seal_with_nonce(key, plaintext, aad, os.urandom(_NONCE_BYTES))


def open_sealed(key: bytes, blob: bytes, aad: bytes) -> bytes:
    """Return the plaintext of ``blob``; raise IntegrityError if anything does not verify."""
    _check_key(key)
    blob = bytes(blob)
    if len(blob) < _MIN_BLOB or blob[:1] != _HEADER:
        raise IntegrityError(_AUTH_FAILED)
    nonce = blob[1 : 1 + _NONCE_BYTES]
    body = blob[1 + _NONCE_BYTES :]
    try:
        return nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(body, aad, nonce, key)
    except nacl.exceptions.CryptoError:
        raise IntegrityError(_AUTH_FAILED) from None


# --- associated data ----------------------------------------------------------


def _field(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _text_field(text: str, what: str) -> bytes:
    try:
        return _field(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise UsageError(f"{what} is not valid Unicode text") from None


def _int_field(value: int, what: str) -> bytes:
    if isinstance(value, bool) or not 0 <= value < 2**64:
        raise UsageError(f"{what} must be an integer in [0, 2**64)")
    return _field(struct.pack(">Q", value))


def value_aad(store_id: bytes, scope_key: str, name: str, version: int, key_gen: int) -> bytes:
    """Associated data binding a value to its store, scope, name, version and key generation."""
    return b"".join(
        (
            _VALUE_AAD_TAG,
            _field(store_id),
            _text_field(scope_key, "scope"),
            _text_field(name, "name"),
            _int_field(version, "version"),
            _int_field(key_gen, "key generation"),
        )
    )


def data_key_aad(store_id: bytes, key_gen: int) -> bytes:
    """Associated data binding a wrapped data key to its store and key generation."""
    return b"".join((_DEK_AAD_TAG, _field(store_id), _int_field(key_gen, "key generation")))


# --- envelope -----------------------------------------------------------------


def wrap_key(kek: bytes, data_key: bytes, aad: bytes) -> bytes:
    """Seal a 32-byte data key under the key-encryption key."""
    _check_key(data_key, "data key")
    return seal(kek, data_key, aad)


def unwrap_key(kek: bytes, wrapped: bytes, aad: bytes) -> bytes:
    """Open a wrapped data key; raise IntegrityError unless it verifies and is 32 bytes."""
    data_key = open_sealed(kek, wrapped, aad)
    if len(data_key) != KEY_BYTES:
        raise IntegrityError(_AUTH_FAILED)
    return data_key


def kek_check(kek: bytes, store_id: bytes) -> bytes:
    """A sealed empty record that only `kek` opens: tells a wrong key from a damaged data key."""
    return seal(kek, b"", _KEK_CHECK_TAG + _field(store_id))


def kek_matches(kek: bytes, store_id: bytes, check: bytes) -> bool:
    """Whether `check` (from `kek_check`) was sealed under `kek` for this store."""
    try:
        return open_sealed(kek, check, _KEK_CHECK_TAG + _field(store_id)) == b""
    except IntegrityError:
        return False


# --- password KDF -------------------------------------------------------------


@dataclass(frozen=True)
class KdfParams:
    """Argon2id cost parameters; defaults are RFC 9106's second recommended option."""

    time_cost: int = 3
    memory_kib: int = 65536
    parallelism: int = 4

    def __post_init__(self) -> None:
        for name, value, low, high in (
            ("time_cost", self.time_cost, 1, _KDF_MAX_TIME),
            ("parallelism", self.parallelism, 1, _KDF_MAX_PARALLELISM),
            ("memory_kib", self.memory_kib, 8 * self.parallelism, _KDF_MAX_MEMORY_KIB),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise UsageError(f"KDF parameter {name} must be an integer in [{low}, {high}]")

    def to_json(self) -> str:
        """Serialize with the algorithm and version, for storing beside the salt."""
        return json.dumps(
            {
                "alg": _KDF_ALG,
                "v": _KDF_VERSION,
                "t": self.time_cost,
                "m": self.memory_kib,
                "p": self.parallelism,
            },
            sort_keys=True,
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, s: str) -> KdfParams:
        """Parse stored parameters; raise IntegrityError if they are malformed."""
        malformed = IntegrityError("stored KDF parameters are malformed or unsupported")
        try:
            obj: Any = json.loads(s)
        except (TypeError, ValueError):
            raise malformed from None
        if not isinstance(obj, dict) or set(obj) != {"alg", "v", "t", "m", "p"}:
            raise malformed
        if obj["alg"] != _KDF_ALG or type(obj["v"]) is not int or obj["v"] != _KDF_VERSION:
            raise malformed
        try:
            return cls(time_cost=obj["t"], memory_kib=obj["m"], parallelism=obj["p"])
        except UsageError:
            raise malformed from None


def derive_kek(password: bytes, salt: bytes, params: KdfParams) -> bytes:
    """Derive a 32-byte key-encryption key from a password with Argon2id."""
    if not password:
        raise UsageError("password must not be empty")
    if len(salt) < SALT_BYTES:
        raise UsageError(f"salt must be at least {SALT_BYTES} bytes")
    return hash_secret_raw(
        secret=password,
        salt=salt,
        time_cost=params.time_cost,
        memory_cost=params.memory_kib,
        parallelism=params.parallelism,
        hash_len=KEY_BYTES,
        type=Type.ID,
        version=_KDF_VERSION,
    )


def kdf_record_digest(salt: bytes, params_json: bytes) -> bytes:
    """A checksum of the stored salt and parameters, so damage to them is named as such.

    Not a secret and not an authenticator (whoever can write the store can rewrite it):
    it only tells a damaged KDF record apart from a wrong password.
    """
    return nacl.hash.blake2b(
        _field(salt) + _field(params_json),
        digest_size=16,
        person=_KDF_RECORD_PERSON,
        encoder=nacl.encoding.RawEncoder,
    )


# --- fingerprints -------------------------------------------------------------


def _blake2b(data: bytes, key: bytes, person: bytes, size: int) -> bytes:
    # hashlib's BLAKE2b is libsodium's generichash with the same key and personalization
    # (tests/test_crypto.py holds them equal) at a fifteenth of the cost per call, which
    # a mount's load pays twice per secret (docs/cluster.md, "Sizes and limits").
    return hashlib.blake2b(data, digest_size=size, key=key, person=person).digest()


def fingerprint_key(data_key: bytes) -> bytes:
    """Derive the fingerprint subkey; a separate personalization keeps it apart from data_key."""
    _check_key(data_key, "data key")
    return _blake2b(b"", data_key, _FP_KEY_PERSON, KEY_BYTES)


def fingerprint(fp_key: bytes, value: bytes) -> str:
    """Keyed BLAKE2b-256 of ``value`` as 32 hex chars: comparable, not brute-forceable offline."""
    _check_key(fp_key, "fingerprint key")
    return _blake2b(value, fp_key, _FP_PERSON, 32).hex()[:_FP_HEX_CHARS]


def identity_fingerprint(
    data_key: bytes, store_id: bytes, scope_key: str, name: str, value: bytes
) -> str:
    """Fingerprint v2: keyed per store AND per secret, so it says nothing across secrets."""
    _check_key(data_key, "data key")
    fp_key = _blake2b(b"", data_key, _FP2_KEY_PERSON, KEY_BYTES)
    identity = b"".join(
        (_FP2_TAG, _field(store_id), _text_field(scope_key, "scope"), _text_field(name, "name"))
    )
    return _blake2b(identity + value, fp_key, _FP_PERSON, 32).hex()[:_FP_HEX_CHARS]


def mac_key(data_key: bytes) -> bytes:
    """Derive the metadata MAC subkey from a data key (its own personalization)."""
    _check_key(data_key, "data key")
    return _blake2b(b"", data_key, _MAC_KEY_PERSON, KEY_BYTES)


_LENGTH = struct.Struct(">I").pack


def row_data(tag: str, *fields: str | int | bool | bytes | None) -> bytes:
    """Encode a row unambiguously: a tag, then each field typed and length-prefixed.

    A mount's load encodes every secret row (100k: ~0.2 s), hence the exact-type tests
    first; anything else takes the isinstance path (tests/test_crypto.py holds the two
    equal)."""
    parts = [_text_field(tag, "tag")]
    append = parts.append
    for value in fields:
        kind = type(value)
        if value is None:
            append(b"N")
        elif kind is int:
            text = str(value).encode()
            append(b"I" + _LENGTH(len(text)) + text)
        elif kind is str:
            append(b"S" + _text_field(cast(str, value), "field"))
        else:
            append(_typed_field(value))
    return b"".join(parts)


def _typed_field(value: str | int | bool | bytes) -> bytes:
    if isinstance(value, bool):
        return b"B" + (b"\x01" if value else b"\x00")
    if isinstance(value, int):
        return b"I" + _field(str(value).encode())
    if isinstance(value, bytes):
        return b"Y" + _field(value)
    return b"S" + _text_field(value, "field")


def mac(key: bytes, data: bytes) -> bytes:
    """Keyed BLAKE2b-256 of `data` under a MAC subkey."""
    _check_key(key, "MAC key")
    return _blake2b(data, key, _MAC_PERSON, MAC_BYTES)


# --- key text -----------------------------------------------------------------


def parse_key_text(text: str) -> bytes:
    """Parse a 32-byte key from 64 hex chars or (URL-safe) base64; whitespace is ignored."""
    compact = "".join(text.split())
    if _HEX_KEY.fullmatch(compact):
        return bytes.fromhex(compact)
    if compact.isascii() and 43 <= len(compact) <= 44:
        padded = compact.rstrip("=")
        padded += "=" * (-len(padded) % 4)
        for altchars in (None, b"-_"):
            try:
                key = base64.b64decode(padded, altchars=altchars, validate=True)
            except (binascii.Error, ValueError):
                continue
            if len(key) == KEY_BYTES:
                return key
    raise UsageError(_KEY_TEXT_HELP)


def format_key_text(key: bytes) -> str:
    """Render a key as 64 lowercase hex characters."""
    _check_key(key)
    return key.hex()


def wipe(buf: bytearray) -> None:
    """Overwrite ``buf`` with zeros in place (best effort; copies elsewhere are not reached)."""
    n = len(buf)
    if n:
        ctypes.memset((ctypes.c_char * n).from_buffer(buf), 0, n)


# -- node keys: libsodium sealed boxes (X25519) -----------------------------------------

BOX_KEY_BYTES = 32


def box_private_key() -> bytes:
    """A new X25519 private key (a node's own)."""
    return bytes(nacl.public.PrivateKey.generate())


def box_public_key(private_key: bytes) -> bytes:
    _check_key(private_key, "node private key")
    return bytes(nacl.public.PrivateKey(private_key).public_key)


def box_seal(public_key: bytes, message: bytes) -> bytes:
    """libsodium's sealed box of `message` to `public_key` (anonymous sender)."""
    return bytes(nacl.public.SealedBox(nacl.public.PublicKey(public_key)).encrypt(message))


def box_open(private_key: bytes, box: bytes) -> bytes:
    """Open a sealed box; IntegrityError if it was not sealed to this key or was changed."""
    try:
        return bytes(nacl.public.SealedBox(nacl.public.PrivateKey(private_key)).decrypt(box))
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        raise IntegrityError("sealed box does not open with this key") from None


def box_auth_seal(sender_private: bytes, recipient_public: bytes, message: bytes) -> bytes:
    """libsodium's crypto_box: `message` to `recipient_public`, authenticated as coming
    from `sender_private`'s public key (random 24-byte nonce, prepended)."""
    _check_key(sender_private, "store private key")
    box = nacl.public.Box(
        nacl.public.PrivateKey(sender_private), nacl.public.PublicKey(recipient_public)
    )
    return bytes(box.encrypt(message))


def box_auth_open(recipient_private: bytes, sender_public: bytes, blob: bytes) -> bytes:
    """Open a crypto_box; IntegrityError unless `sender_public`'s private key made it for
    `recipient_private` and it is unchanged."""
    try:
        box = nacl.public.Box(
            nacl.public.PrivateKey(recipient_private), nacl.public.PublicKey(sender_public)
        )
        return bytes(box.decrypt(blob))
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        raise IntegrityError("the box was not made by this sender for this key") from None

"""Sealed reads: a secret's value sealed to a client's registered X25519 public key.

The box is libsodium's sealed box (`crypto_box_seal`, through PyNaCl's `SealedBox`): a
fresh ephemeral key pair per seal, so two seals of one value differ; its output is the
32-byte ephemeral public key, then the box (16-byte tag over the message), 48 bytes over
the message in all. Only the holder of the client's private key opens it; whoever
relays it learns only its length. The box authenticates the message and nothing else:
anyone holding the public key can seal a message of their choice, and the name and
version shown next to a box (`SealedSecret`) are not covered. The bound form puts the
ref and version inside the sealed message (`bound_message`), see docs/sealed.md.

Client keys (ZLayer's model): id `ck_<32 hex>`, fingerprint `sha256:<16 hex>`, revoked
softly (`revoked_ns`, the row kept for the audit trail), `last_used_ns` the last
sealed read. This module owns all of it: the CLI, the mount and the resolver call here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
import struct
from collections.abc import Iterable, Mapping
from typing import Any

from nacl.public import PublicKey, SealedBox

from secretfs import audit as audit_log
from secretfs.errors import KeySourceError, NotFoundError, UsageError
from secretfs.store import ClientKeyRecord

PUBLIC_KEY_LEN = 32
OVERHEAD = 48  # crypto_box_SEALBYTES: ephemeral public key (32) + tag (16)
KEY_ID_RE = re.compile(r"^ck_[0-9a-f]{32}$")
BOUND_TAG = b"secretfs.sealed.v1"  # the bound form's domain tag
SEALED_TO_HEADER = "Secretfs-Sealed-To"  # resolver request: seal every envelope to this key
SEALED_BOUND_HEADER = "Secretfs-Sealed-Bound"  # "1": the bound form
_DETAIL_PREFIX = "sealed to "


class ClientKeyRevokedError(KeySourceError):
    """A sealed read to a key that was revoked: refused, never sealed."""


# -- keys -------------------------------------------------------------------------------


def parse_public_key(text: str | bytes) -> bytes:
    """A 32-byte X25519 public key from its standard (padded) base64 text."""
    raw = text.strip() if isinstance(text, bytes) else text.strip().encode()
    try:
        key = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise UsageError("a client public key is 32 bytes in standard base64") from None
    if len(key) != PUBLIC_KEY_LEN:
        raise UsageError(
            f"a client public key is {PUBLIC_KEY_LEN} bytes, this one is {len(key)} bytes"
        )
    if key == bytes(PUBLIC_KEY_LEN):
        raise UsageError("the all-zero public key cannot be sealed to")
    return key


def public_key_text(key: bytes) -> str:
    return base64.b64encode(key).decode()


def fingerprint(key: bytes) -> str:
    """ZLayer's fingerprint: `sha256:` and the first 16 hex digits of SHA-256(key)."""
    return "sha256:" + hashlib.sha256(key).hexdigest()[:16]


def new_key_id() -> str:
    return "ck_" + secrets.token_hex(16)


def is_key_id(text: str) -> bool:
    return KEY_ID_RE.match(text) is not None


def live_keys(keys: Iterable[ClientKeyRecord]) -> dict[str, bytes]:
    """key id -> public key of every key not revoked: what may be sealed to."""
    return {k.key_id: k.public_key for k in keys if k.revoked_ns is None}


def find_key(keys: Iterable[ClientKeyRecord], spec: str) -> ClientKeyRecord:
    """The key `spec` names (a key id or a registered public key); refused if revoked."""
    spec = spec.strip()
    keys = list(keys)
    if is_key_id(spec):
        found = [k for k in keys if k.key_id == spec]
        what = spec
    else:
        try:
            public = parse_public_key(spec)
        except UsageError:
            raise UsageError(
                f"{spec[:40]!r} is neither a client key id (ck_<32 hex>) nor a public key"
            ) from None
        found = [k for k in keys if k.public_key == public]
        what = f"public key {fingerprint(public)}"
        # One live registration wins over revoked ones of the same public key.
        found.sort(key=lambda k: k.revoked_ns is not None)
    if not found:
        raise NotFoundError(f"no client key {what}: register it with `secretfs client-key add`")
    key = found[0]
    if key.revoked_ns is not None:
        raise ClientKeyRevokedError(
            f"client key {key.key_id} was revoked at {audit_log.iso_time_ns(key.revoked_ns)}:"
            " nothing is sealed to it"
        )
    return key


# -- sealing ----------------------------------------------------------------------------


def seal(message: bytes, public_key: bytes) -> bytes:
    """libsodium's sealed box of `message` to `public_key` (fresh ephemeral key each call)."""
    return bytes(SealedBox(PublicKey(public_key)).encrypt(message))


def bound_message(ref: str, version: int, value: bytes) -> bytes:
    """The bound form's plaintext: tag, ref, version and value, each length-prefixed.

    u16 BE len(tag)   tag   ("secretfs.sealed.v1")
    u16 BE len(ref)   ref   (the canonical ref, UTF-8, e.g. "$S:@api/token")
    u64 BE version
    u32 BE len(value) value
    """
    ref_bytes = ref.encode()
    if len(ref_bytes) > 0xFFFF or len(value) > 0xFFFFFFFF:
        raise UsageError("ref or value too long for the bound form")
    return b"".join(
        (
            struct.pack(">H", len(BOUND_TAG)),
            BOUND_TAG,
            struct.pack(">H", len(ref_bytes)),
            ref_bytes,
            struct.pack(">QI", version, len(value)),
            value,
        )
    )


def parse_bound(message: bytes) -> tuple[str, int, bytes]:
    """(ref, version, value) of a bound-form plaintext; UsageError if it is not one."""
    try:
        (tag_len,) = struct.unpack_from(">H", message, 0)
        tag = message[2 : 2 + tag_len]
        at = 2 + tag_len
        (ref_len,) = struct.unpack_from(">H", message, at)
        ref = message[at + 2 : at + 2 + ref_len].decode()
        at += 2 + ref_len
        version, value_len = struct.unpack_from(">QI", message, at)
        at += 12
    except (struct.error, UnicodeDecodeError):
        raise UsageError("not a secretfs bound sealed message") from None
    if tag != BOUND_TAG or len(message) != at + value_len:
        raise UsageError("not a secretfs bound sealed message")
    return ref, int(version), message[at:]


def seal_envelope_value(
    value: bytes, key: ClientKeyRecord, *, bound: bool, ref: str, version: int
) -> bytes:
    """What a sealed read hands out (the CLI, the resolver): the box of `value`, or of
    its bound form, to `key`. Refused for a revoked key."""
    if key.revoked_ns is not None:
        raise ClientKeyRevokedError(f"client key {key.key_id} was revoked: nothing is sealed to it")
    return seal(bound_message(ref, version, value) if bound else value, key.public_key)


def sealed_secret(name: str, version: int, key_id: str, box: bytes) -> dict[str, Any]:
    """ZLayer's `SealedSecret` JSON (name and version are NOT authenticated by the box)."""
    return {
        "name": name,
        "version": version,
        "key_id": key_id,
        "ciphertext_b64": base64.b64encode(box).decode(),
    }


# -- audit and last use ----------------------------------------------------------------


def sealed_detail(key_id: str, bound: bool = False) -> str:
    """The audit detail of a sealed read: who the value was sealed to."""
    return _DETAIL_PREFIX + key_id + (" (bound)" if bound else "")


def last_uses(records: Iterable[audit_log.AuditRecord]) -> dict[str, int]:
    """key id -> time of its last allowed sealed read in an audit batch (the mount writes
    `last_used_ns` with the batch instead of on each open)."""
    out: dict[str, int] = {}
    for r in records:
        if r.outcome == audit_log.ALLOWED and r.detail and r.detail.startswith(_DETAIL_PREFIX):
            key_id = r.detail[len(_DETAIL_PREFIX) :].split(" ", 1)[0]
            out[key_id] = max(out.get(key_id, 0), r.time_ns)
    return out


# -- the resolver socket (secretfs/resolver/) -------------------------------------------


def sealed_request(
    headers: Mapping[str, str], keys: Iterable[ClientKeyRecord]
) -> tuple[ClientKeyRecord, bool] | None:
    """The key (and whether the bound form) a resolver request asks its envelopes to be
    sealed to, from its `Secretfs-Sealed-To` / `Secretfs-Sealed-Bound` headers (names
    case-insensitive); None if it asks for plaintext. Raises as `find_key` does, and
    UsageError for a bad header (`invalid_argument`)."""
    lower = {k.lower(): v for k, v in headers.items()}
    spec = lower.get(SEALED_TO_HEADER.lower())
    if spec is None:
        return None
    bound_text = lower.get(SEALED_BOUND_HEADER.lower(), "0").strip()
    if bound_text not in ("0", "1"):
        raise UsageError(f"{SEALED_BOUND_HEADER} is 0 or 1")
    return find_key(keys, spec), bound_text == "1"


def envelope_metadata(key: ClientKeyRecord, bound: bool) -> dict[str, str]:
    """What a sealed envelope's `metadata` adds: to whom and in which form it is sealed."""
    return {
        "secretfs.sealed-to": key.key_id,
        "secretfs.sealed-form": "bound" if bound else "box",
        "secretfs.sealed-fingerprint": fingerprint(key.public_key),
    }

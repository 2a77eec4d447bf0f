"""The Keyring: the one object that holds a store's keys and does every keyed operation.

Like pyca/cryptography's `Fernet`/`MultiFernet`, it is a recipe over private primitives
(`secretfs.crypto`): given the store id, the data keys by generation, the active
generation and the key-encryption key (KEK), it alone seals and opens values, wraps and
unwraps data keys, fingerprints values, MACs the metadata rows that decide who may read,
adds a generation, re-wraps and re-encrypts. Every associated data is built here; no
other module sees a nonce, a raw key or an AAD.

Metadata MACs (docs/security.md, "Authenticated metadata"): each row that decides access
(a secret's scope/name/version/deleted/uid/gid/mode, a scope's defaults, a grant) gets a
keyed BLAKE2b tag under a subkey of the active data key, stored with its generation as
`<gen>:<hex tag>`. The store also keeps `auth_state`: the sum mod 2**256 of every row
tag and a serial number counting authenticated writes, tagged itself, so a deleted or
replayed row changes the sum and an older `auth_state` has a lower serial.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from secretfs import crypto, keys
from secretfs.clock import SYSTEM, Clock
from secretfs.errors import IntegrityError, KeySourceError, SecretfsError
from secretfs.store import ClientKeyRecord, GrantRecord, ScopeMeta, SealedVersion, SecretMeta

if TYPE_CHECKING:
    from secretfs.store.base import Backend

log = logging.getLogger(__name__)

KEY_RETRY_SECONDS = 5.0  # how often a mount retries a data key it could not unlock

# Marks a key operation leaves in the store's meta (secretfs/keyrotation.py writes them).
KEY_OP = "key_op"
KEK_ROTATION = "kek_rotation"
KEK_NEXT = "kek_next:"
KEK_NEXT_CHECK = "kek_next_check"
REENCRYPT = "reencrypt"

# Fingerprint schemes: 1 keyed per store (an equality oracle across secrets), 2 keyed per
# store and per secret identity. A store records 2 once every version carries one.
FINGERPRINT_SCHEME = "fingerprint_scheme"


class SealedValue:
    """One version, sealed: an opaque handle that opens (and so verifies) it on demand.

    It holds the keyring and the sealed record, never a raw key: what the mount and the
    verified-versions cache keep for the versions they serve.
    """

    __slots__ = ("_keyring", "_record")

    def __init__(self, keyring: Keyring, record: SealedVersion) -> None:
        self._keyring = keyring
        self._record = record

    def open(self) -> bytes:
        """The plaintext; IntegrityError if the ciphertext does not verify."""
        return self._keyring.open_value(self._record)

    @property
    def cost(self) -> int:
        """Bytes of memory this and its place in a cache take, about."""
        r = self._record
        return len(r.ciphertext) + len(r.scope) + len(r.name) + 400

    def __repr__(self) -> str:
        return f"<SealedValue #{self._record.secret_id} v{self._record.version}>"


@dataclass(frozen=True, slots=True)
class AuthState:
    """The store-wide high-water mark: sum of every row tag, and the write serial."""

    digest: int
    serial: int
    access: int = 0  # the sum of the scope and grant tags alone (a mount checks it often)


# Per-node keys (docs/cluster.md, "Nodes"): `node/<id>` is an enrolled node's record
# (JSON; its tag is `mac/n/<id>`, under the store digest: secretfs/authmeta.py);
# `nodewrap/<gen>/<id>` is data key generation `gen` in a crypto_box from the store's own
# X25519 key to that node's public key, after a tag binding store id, generation, node id
# and public key. The store's private key is `store_key/<gen>`, wrapped under each data
# key generation (only key holders make boxes); each node pins its public key at
# enrollment, so a box made by anyone else (an anonymous sealed box, the form before) is
# refused.
NODE_PREFIX = "node/"
NODE_WRAP_PREFIX = "nodewrap/"
STORE_KEY_PREFIX = "store_key/"
NODE_WRAP_BOXED = b"box2:"  # marks a node wrap made with the store's key


def node_wrap_key(gen: int, node_id: str) -> str:
    return f"{NODE_WRAP_PREFIX}{gen}/{node_id}"


def node_id_of(public_key: bytes) -> str:
    """A node's id: `nd_` and 16 hex digits of a hash of its public key."""
    return "nd_" + crypto.kdf_record_digest(public_key, b"secretfs node id").hex()[:16]


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """An enrolled node: what decides which public keys the data keys are sealed to."""

    node_id: str
    public_key: bytes
    label: str
    created_ns: int
    revoked_ns: int | None = None
    tag: bytes | None = None

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "public_key": self.public_key.hex(),
                "label": self.label,
                "created_ns": self.created_ns,
                "revoked_ns": self.revoked_ns,
                "tag": None if self.tag is None else self.tag.decode(),
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_json(cls, node_id: str, raw: bytes) -> NodeRecord | None:
        try:
            obj: Any = json.loads(raw)
            revoked = obj["revoked_ns"]
            tag = obj["tag"]
            return cls(
                node_id,
                bytes.fromhex(obj["public_key"]),
                str(obj["label"]),
                int(obj["created_ns"]),
                None if revoked is None else int(revoked),
                None if tag is None else str(tag).encode(),
            )
        except (ValueError, KeyError, TypeError):
            return None


def node_row(store_id: bytes, node: NodeRecord) -> bytes:
    return crypto.row_data(
        "node",
        store_id,
        node.node_id,
        node.public_key,
        node.label,
        node.created_ns,
        node.revoked_ns,
    )


def _node_wrap_row(store_id: bytes, gen: int, node_id: str, public_key: bytes) -> bytes:
    return crypto.row_data("node_wrap", store_id, gen, node_id, public_key)


def _store_key_aad(store_id: bytes, gen: int) -> bytes:
    return crypto.row_data("store_key", store_id, gen)


def is_boxed(wrap: bytes) -> bool:
    """Whether a node wrap was made with the store's key (not an anonymous sealed box)."""
    return wrap.startswith(NODE_WRAP_BOXED)


def list_nodes(backend: Backend) -> list[NodeRecord]:
    """Every node record in the store (an unparsable one is skipped: it seals to nobody)."""
    out = []
    for key, raw in sorted(backend.meta_scan(NODE_PREFIX).items()):
        record = NodeRecord.from_json(key[len(NODE_PREFIX) :], raw)
        if record is None:
            log.error("%s: node record %s is damaged: ignored", backend.name, key)
            continue
        out.append(record)
    return out


@dataclass(frozen=True, slots=True)
class NodeKey:
    """This node's own key pair, from its key file (the private half never leaves it)."""

    path: str
    private_key: bytes

    @property
    def public_key(self) -> bytes:
        return crypto.box_public_key(self.private_key)

    @property
    def node_id(self) -> str:
        return node_id_of(self.public_key)

    @property
    def source(self) -> keys.KekSource:
        return keys.KekSource(keys.KIND_NODE, f"node key {self.path} ({self.node_id})")


def _gen_tag(gen: int, tag: bytes) -> bytes:
    return f"{gen}:{tag.hex()}".encode()


def _parse_gen_tag(raw: bytes | None) -> tuple[int, bytes] | None:
    """A stored tag's generation and MAC; None unless it is exactly `_gen_tag`'s form
    (no byte of a stored tag may change: no leading zero, sign, space or capital).
    A mount's load parses every secret's tag, so the form is checked field by field
    rather than by building it again (tests/test_keyring.py holds the two equal)."""
    if raw is None:
        return None
    gen_text, _, hex_tag = raw.partition(b":")
    if (
        len(hex_tag) != 2 * crypto.MAC_BYTES
        or not gen_text.isdigit()  # ASCII digits only, and at least one
        or (gen_text[0] == 0x30 and len(gen_text) > 1)
        or hex_tag != hex_tag.lower()
    ):
        return None
    try:
        tag = bytes.fromhex(hex_tag.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    if len(tag) != crypto.MAC_BYTES:  # fromhex skips spaces: 64 characters, fewer bytes
        return None
    return int(gen_text), tag


def secret_row(meta: SecretMeta) -> bytes:
    """Every field of a secret row that decides who reads what (not seq, not times)."""
    return crypto.row_data(
        "secret",
        meta.secret_id,
        meta.scope,
        meta.name,
        meta.version,
        meta.deleted,
        meta.uid,
        meta.gid,
        meta.mode,
    )


def scope_row(meta: ScopeMeta) -> bytes:
    return crypto.row_data("scope", meta.scope, meta.uid, meta.gid, meta.mode)


def grant_row(grant: GrantRecord) -> bytes:
    """Every field of a grant, by the dataclass's own field list: a new field is covered."""
    return crypto.row_data("grant", *(getattr(grant, f.name) for f in dataclasses.fields(grant)))


def client_key_row(key: ClientKeyRecord) -> bytes:
    """Every field of a client key that decides what is sealed to whom (not its last use,
    which the mount writes as it serves)."""
    return crypto.row_data(
        "client_key",
        key.key_id,
        key.public_key,
        key.label,
        key.owner_uid,
        key.created_ns,
        key.revoked_ns,
    )


def _state_row(store_id: bytes, state: AuthState) -> bytes:
    return crypto.row_data("auth_state", store_id, state.digest, state.serial, state.access)


class Keyring:
    """A store's keys: the store id, the data keys by generation, the active one, the KEK."""

    def __init__(
        self,
        store_id: bytes,
        data_keys: dict[int, bytes],
        active_gen: int,
        source: keys.KekSource,
        kek: bytes | None = None,
        damaged: dict[int, str] | None = None,
        node: NodeKey | None = None,
    ) -> None:
        self.store_id = store_id
        self.node = node
        self._data_keys = data_keys
        self.active_gen = active_gen
        self.kek_source = source
        self._kek = kek  # kept so a generation added later (re-encryption) unwraps
        self.damaged = dict(damaged or {})
        self._retry_at = 0.0
        self.clock: Clock = SYSTEM  # when to resolve the KEK again (a mount sets its own)
        self._mac_keys: dict[int, bytes] = {}
        self._store_key: bytes | None = None  # the store's X25519 private key, once unwrapped

    # -- opening -----------------------------------------------------------------------

    @classmethod
    def create(cls, store_id: bytes, kek: bytes, source: keys.KekSource) -> Keyring:
        """A new store's keyring: generation 1 active."""
        return cls(store_id, {1: crypto.random_key()}, 1, source, kek)

    def write_new_store(self, backend: Backend, now_ns: int) -> None:
        """The key records of a new store (inside its first transaction)."""
        backend.meta_set("active_gen", str(self.active_gen).encode())
        backend.meta_set("kek_check", self.kek_check())
        backend.meta_set(FINGERPRINT_SCHEME, b"2")
        for gen, wrapped in self.wrapped_keys().items():
            backend.put_data_key(gen, wrapped, now_ns)
        self.write_state(backend, AuthState(0, 0))

    @classmethod
    def unlock(cls, backend: Backend) -> Keyring:
        """Resolve the KEK and unwrap every data key generation of the store."""
        store_id = backend.meta_get("store_id")
        active = backend.meta_get("active_gen")
        if store_id is None or active is None:
            from secretfs.errors import StoreError

            raise StoreError(f"{backend.name} is not an initialized secretfs store")
        node = None if keys.env_source() is not None else load_node_key(backend)
        node_problem = ""
        if node is not None:
            keyring = cls(store_id, {}, int(active), node.source, None, node=node)
            keyring._unwrap_node(backend, list(backend.data_keys()))
            if keyring.active_gen in keyring._data_keys:
                keyring._add_key_file_quietly(backend)
                return keyring
            node_problem = keyring.node_problem(backend)
        try:
            kek, source = resolve_kek(backend)
        except KeySourceError as exc:
            if node is None:
                node_path = keys.node_key_file_path(backend.key_file())
                raise KeySourceError(f"{exc} (no node key file at {node_path} either)") from None
            raise KeySourceError(f"{node_problem}; and {exc}") from None
        keyring = cls(store_id, {}, int(active), source, kek, node=node)
        failed = keyring._unwrap(backend, backend.data_keys(), kek)
        if failed:
            try:
                keyring._diagnose(backend, failed)
            except KeySourceError as exc:
                if node is None:
                    raise
                raise KeySourceError(f"{node_problem}; and {exc}") from None
        if keyring.active_gen in keyring.damaged:
            if not backend.data_keys().get(keyring.active_gen):
                raise KeySourceError(keyring.damaged[keyring.active_gen])
            raise IntegrityError(keyring.damaged[keyring.active_gen])
        if keyring.active_gen not in keyring._data_keys:
            from secretfs.errors import StoreError

            raise StoreError(f"{backend.name}: the active data key is missing")
        return keyring

    def _unwrap(self, backend: Backend, wrapped: dict[int, bytes], kek: bytes) -> list[int]:
        """Unwrap what `kek` opens of `wrapped` (either wrapping left by an interrupted
        KEK rotation); returns the generations it did not open."""
        failed: list[int] = []
        for gen, blob in sorted(wrapped.items()):
            aad = crypto.data_key_aad(self.store_id, gen)
            for candidate in (blob, backend.meta_get(f"{KEK_NEXT}{gen}")):
                if candidate is None:
                    continue
                try:
                    self._data_keys[gen] = crypto.unwrap_key(kek, candidate, aad)
                except IntegrityError:
                    continue
                self.damaged.pop(gen, None)
                self._kek = kek
                break
            else:
                failed.append(gen)
        return failed

    def _unwrap_node(self, backend: Backend, gens: list[int]) -> None:
        """Open what is sealed to this node of `gens`. A wrap opens only as a box from the
        store key this node pinned, with a tag binding it to this store, generation and
        node; anything else (an anonymous sealed box anyone could have made) is refused
        and named in `damaged`."""
        import hmac

        node = self.node
        if node is None:
            return
        public = node.public_key
        pin_problem = (
            f"this node has not pinned {backend.name}'s store key"
            f" ({keys.store_pin_path(Path(node.path))}): run `secretfs node enroll"
            " --store-key KEY` with the key a member printed when it enrolled this node"
        )
        try:
            pin = keys.read_store_pin(Path(node.path), self.store_id)
        except KeySourceError as exc:
            pin, pin_problem = None, str(exc)
        again = (
            "enroll this node again from a member"
            f" (`secretfs node enroll {crypto.format_key_text(public)}`)"
        )
        for gen in sorted(gens):
            if gen in self._data_keys:
                continue
            blob = backend.meta_get(node_wrap_key(gen, node.node_id))
            if blob is None:
                continue
            what = f"{backend.name}: data key generation {gen} sealed to {node.node_id}"
            if pin is None:
                self.damaged[gen] = f"{what} is refused: {pin_problem}"
                continue
            if not is_boxed(blob):
                self.damaged[gen] = (
                    f"{what} is an anonymous sealed box, not one from the store's key: refused"
                    " (anyone who can write to the store could have made it; a copy from"
                    " before node keys were authenticated is sealed again by any secretfs"
                    " command on a host with the key-encryption key)"
                )
                continue
            blob = blob[len(NODE_WRAP_BOXED) :]
            tag, box = blob[: crypto.MAC_BYTES], blob[crypto.MAC_BYTES :]
            try:
                key = crypto.box_auth_open(node.private_key, pin, box)
            except IntegrityError:
                key = b""
            row = _node_wrap_row(self.store_id, gen, node.node_id, public)
            if len(key) != crypto.KEY_BYTES or not hmac.compare_digest(
                crypto.mac(crypto.mac_key(key), row), tag
            ):
                self.damaged[gen] = (
                    f"{what} is damaged or not authentic (not from the store key this node"
                    " pinned, or moved from another slot): compare the key pinned in"
                    f" {keys.store_pin_path(Path(node.path))} with `secretfs node ls` on a"
                    f" member, or {again}"
                )
                continue
            self._data_keys[gen] = key
            self.damaged.pop(gen, None)

    def _add_key_file_quietly(self, backend: Backend) -> None:
        """A node that also has the store's key file holds the KEK too, so a generation it
        adds is wrapped under the KEK as well (hosts without a node key keep opening)."""
        try:
            path = backend.key_file()
            if not path.exists():
                return
            kek = keys.read_key_file(path)
        except SecretfsError:
            return
        if self.kek_matches(backend.meta_get("kek_check") or b"", kek):
            self._kek = kek
            self._unwrap(
                backend,
                {g: b for g, b in backend.data_keys().items() if g not in self._data_keys},
                kek,
            )

    def node_problem(self, backend: Backend) -> str:
        """Why this node's key does not open the store's active generation."""
        node = self.node
        assert node is not None
        record = next((n for n in list_nodes(backend) if n.node_id == node.node_id), None)
        what = f"the node key {node.path} ({node.node_id})"
        if record is None:
            return (
                f"{what} is not enrolled in {backend.name}: on a member that opens the store,"
                f" run `secretfs node enroll {crypto.format_key_text(node.public_key)}`"
            )
        if record.revoked_ns is not None:
            from secretfs.timeutil import iso_time

            return f"{what} was revoked from {backend.name} at {iso_time(record.revoked_ns)}"
        if self.active_gen in self.damaged:
            return self.damaged[self.active_gen]
        return (
            f"{what} has no copy of {backend.name}'s data key generation {self.active_gen}"
            " (enrolled after a key change it missed?): enroll it again from a member"
        )

    def _diagnose(self, backend: Backend, failed: list[int]) -> None:
        """A wrong KEK (KeySourceError) or damaged generations (named in `damaged`)."""
        assert self._kek is not None
        checks = [backend.meta_get("kek_check"), backend.meta_get(KEK_NEXT_CHECK)]
        key_is_right = bool(self._data_keys) or any(
            c is not None and crypto.kek_matches(self._kek, self.store_id, c) for c in checks
        )
        if not key_is_right:
            damaged_hint = "" if checks[0] is not None else ", or a damaged key record"
            raise KeySourceError(
                f"the key from {self.kek_source.description} does not unlock {backend.name}"
                f" (wrong key or password{damaged_hint})"
            )
        wrapped = backend.data_keys()
        for gen in failed:
            if not wrapped.get(gen):
                self.damaged[gen] = (
                    f"{backend.name}: data key generation {gen} was made by a node without the"
                    " key-encryption key, so it is sealed to the enrolled nodes only: open the"
                    " store with a node key (`secretfs node enroll`), or run `secretfs key"
                    " rotate --reencrypt` on a node that also has the key file"
                )
                continue
            self.damaged[gen] = (
                f"{backend.name}: the wrapped data key of generation {gen} is damaged (the"
                f" key from {self.kek_source.description} is right): restore the store from"
                " a backup"
            )

    def refresh(self, backend: Backend) -> list[int]:
        """Unwrap generations added since unlocking; returns them.

        With the KEK held, else the KEK resolved again (a key file `key rotate` replaced,
        a password store's new salt), at most every KEY_RETRY_SECONDS while some
        generation still does not unwrap.
        """
        new = {g: b for g, b in backend.data_keys().items() if g not in self._data_keys}
        if not new:
            return []
        before = set(self._data_keys)
        self._unwrap_node(backend, list(new))
        if self._kek is not None:
            self._unwrap(
                backend, {g: b for g, b in new.items() if g not in self._data_keys}, self._kek
            )
        missing = {g: b for g, b in new.items() if g not in self._data_keys}
        if missing and self.kek_source.kind == keys.KIND_NODE:
            for gen in missing:
                if gen not in self.damaged:
                    self.damaged[gen] = (
                        f"data key generation {gen} is not sealed to this node: "
                        + self._node_gen_problem(backend)
                    )
                    log.error("%s", self.damaged[gen])
            missing = {}
        if missing and self.clock.monotonic() >= self._retry_at:
            try:
                kek = resolve_kek(backend)[0]
            except SecretfsError as exc:
                log.error("cannot resolve the key-encryption key again: %s", exc)
            else:
                self._unwrap(backend, missing, kek)
            if any(g not in self._data_keys for g in missing):
                self._retry_at = self.clock.monotonic() + KEY_RETRY_SECONDS
        for gen in new:
            if gen not in self._data_keys and gen not in self.damaged:
                self.damaged[gen] = (
                    f"data key generation {gen} does not unwrap with the key from"
                    f" {self.kek_source.description}: the key-encryption key changed and"
                    " this process cannot get the new one (restart it with the new key)"
                )
                log.error("%s", self.damaged[gen])
        return sorted(set(self._data_keys) - before)

    def _node_gen_problem(self, backend: Backend) -> str:
        node = self.node
        assert node is not None
        record = next((n for n in list_nodes(backend) if n.node_id == node.node_id), None)
        if record is None or record.revoked_ns is not None:
            return f"{node.node_id} was revoked (values written from now on do not open here)"
        return f"{node.node_id} was left out of a key change: enroll it again from a member"

    def sync_active(self, backend: Backend) -> int:
        """The store's active generation now (a re-encryption may have moved it on)."""
        raw = backend.meta_get("active_gen")
        gen = int(raw) if raw else self.active_gen
        if gen != self.active_gen:
            if gen not in self._data_keys:
                self.refresh(backend)
            if gen not in self._data_keys:
                raise KeySourceError(
                    f"cannot unlock the store's current data key (generation {gen}):"
                    f" {self.damaged.get(gen, 'it is missing')}"
                )
            self.active_gen = gen
        return gen

    # -- what the keyring holds --------------------------------------------------------

    @property
    def generations(self) -> list[int]:
        return sorted(self._data_keys)

    def has(self, gen: int) -> bool:
        return gen in self._data_keys

    def missing(self, backend: Backend) -> list[int]:
        """Generations the store has that this keyring cannot open."""
        return sorted(set(backend.data_keys()) - set(self._data_keys))

    # -- values ------------------------------------------------------------------------

    def _value_aad(self, scope: str, name: str, version: int, gen: int) -> bytes:
        return crypto.value_aad(self.store_id, scope, name, version, gen)

    def seal_value(self, scope: str, name: str, version: int, value: bytes) -> tuple[int, bytes]:
        """Seal a new version under the active generation: (generation, blob)."""
        gen = self.active_gen
        aad = self._value_aad(scope, name, version, gen)
        return gen, crypto.seal(self._data_keys[gen], value, aad)

    def open_value(self, record: SealedVersion) -> bytes:
        """Open one sealed version; IntegrityError if it does not verify."""
        key = self._data_keys.get(record.key_gen)
        if key is None:
            problem = self.damaged.get(record.key_gen, "it cannot be unlocked")
            raise IntegrityError(
                f"secret #{record.secret_id} v{record.version}: its data key (generation"
                f" {record.key_gen}) is not available: {problem}"
            )
        aad = self._value_aad(record.scope, record.name, record.version, record.key_gen)
        return crypto.open_sealed(key, record.ciphertext, aad)

    def handle(self, record: SealedVersion) -> SealedValue:
        """An opaque handle on a sealed version (IntegrityError if its key is missing)."""
        if record.key_gen not in self._data_keys:
            problem = self.damaged.get(record.key_gen, "it cannot be unlocked")
            raise IntegrityError(
                f"secret #{record.secret_id} v{record.version}: its data key (generation"
                f" {record.key_gen}) is not available: {problem}"
            )
        return SealedValue(self, record)

    def fingerprint(self, scope: str, name: str, value: bytes) -> str:
        """Keyed per store and per secret: did THIS secret change? Says nothing across
        secrets (equal values in two secrets fingerprint differently)."""
        return crypto.identity_fingerprint(
            self._data_keys[self.active_gen], self.store_id, scope, name, value
        )

    def reseal(self, record: SealedVersion, target: int) -> tuple[bytes, str]:
        """Open a version and seal it again under generation `target`, with its
        fingerprint under that generation: (blob, fingerprint)."""
        value = self.open_value(record)
        key = self._data_keys[target]
        blob = crypto.seal(
            key, value, self._value_aad(record.scope, record.name, record.version, target)
        )
        fp = crypto.identity_fingerprint(key, self.store_id, record.scope, record.name, value)
        return blob, fp

    def refingerprint(self, record: SealedVersion) -> str:
        """The version's fingerprint under its own generation (scheme 2)."""
        value = self.open_value(record)
        return crypto.identity_fingerprint(
            self._data_keys[record.key_gen], self.store_id, record.scope, record.name, value
        )

    # -- data keys and the KEK ---------------------------------------------------------

    @property
    def has_kek(self) -> bool:
        return self._kek is not None

    def wrapped_keys(self, kek: bytes | None = None) -> dict[int, bytes]:
        """Every held data key wrapped under `kek` (default: the keyring's own)."""
        kek = self._require_kek() if kek is None else kek
        return {
            gen: crypto.wrap_key(kek, key, crypto.data_key_aad(self.store_id, gen))
            for gen, key in sorted(self._data_keys.items())
        }

    def kek_check(self, kek: bytes | None = None) -> bytes:
        return crypto.kek_check(self._require_kek() if kek is None else kek, self.store_id)

    def kek_matches(self, check: bytes, kek: bytes | None = None) -> bool:
        """Whether `check` was sealed under `kek` (default: the keyring's own KEK)."""
        kek = self._kek if kek is None else kek
        return kek is not None and crypto.kek_matches(kek, self.store_id, check)

    def use_kek(self, kek: bytes) -> None:
        """From now on this KEK wraps (after a rotation committed it)."""
        self._kek = kek

    def add_generation(self, existing: list[int]) -> tuple[int, bytes]:
        """A new data key generation after `existing`, held here: (gen, wrapped)."""
        gen = max(existing) + 1 if existing else 1
        key = crypto.random_key()
        self._data_keys[gen] = key
        if self._kek is None:
            # A node without the KEK: the generation is sealed to the enrolled nodes only.
            return gen, b""
        return gen, crypto.wrap_key(self._kek, key, crypto.data_key_aad(self.store_id, gen))

    # -- nodes ------------------------------------------------------------------------

    def legacy_node_ok(self, node: NodeRecord) -> bool:
        """Whether the tag inside a record from before node records were under the store
        digest verifies (only the migration reads it: secretfs/nodes.py)."""
        return self.verify(node_row(self.store_id, node), node.tag)

    def wrap_to_node(self, gen: int, node: NodeRecord) -> bytes:
        """Data key generation `gen` in a box from the store's key to `node`, after its
        binding tag (`store_key` must have been called in this transaction)."""
        private = self._store_key
        if private is None:
            raise KeySourceError("internal: the store's key is not at hand")
        key = self._data_keys[gen]
        row = _node_wrap_row(self.store_id, gen, node.node_id, node.public_key)
        tag = crypto.mac(crypto.mac_key(key), row)
        return NODE_WRAP_BOXED + tag + crypto.box_auth_seal(private, node.public_key, key)

    def store_key(self, backend: Backend, *, write: bool = False) -> bytes | None:
        """The store's public key (what nodes pin), its private half unwrapped with a held
        data key; None when the store has none. With `write` (inside the caller's
        transaction): made when there is none, and wrapped under every held generation
        that lacks a copy.

        A node only uses a store key it pinned: a different one is refused."""
        private = self._store_key
        if private is None:
            for gen in sorted(self._data_keys, reverse=True):
                blob = backend.meta_get(f"{STORE_KEY_PREFIX}{gen}")
                if blob is None:
                    continue
                try:
                    private = crypto.unwrap_key(
                        self._data_keys[gen], blob, _store_key_aad(self.store_id, gen)
                    )
                except IntegrityError:
                    log.error("%s: the store key under generation %d is damaged", backend.name, gen)
                    continue
                break
        created = private is None
        if private is None:
            if not write:
                return None
            if self.node is not None and self.kek_source.kind == keys.KIND_NODE:
                raise KeySourceError(
                    f"{backend.name} has no store key this node can unwrap: a new one would"
                    " not be the one the nodes pinned; run this on a host with the"
                    " key-encryption key"
                )
            private = crypto.box_private_key()
        public = crypto.box_public_key(private)
        if self.node is not None and self.kek_source.kind == keys.KIND_NODE:
            pin = keys.read_store_pin(Path(self.node.path), self.store_id)
            if pin != public:
                raise KeySourceError(
                    f"{backend.name}'s store key is not the one this node pinned: refusing"
                    " to seal data keys with it (`secretfs doctor`)"
                )
        self._store_key = private
        if write:
            for gen, key in sorted(self._data_keys.items()):
                name = f"{STORE_KEY_PREFIX}{gen}"
                if created or backend.meta_get(name) is None:
                    aad = _store_key_aad(self.store_id, gen)
                    backend.meta_set(name, crypto.wrap_key(key, private, aad))
        return public

    def drop(self, gens: list[int]) -> None:
        for gen in gens:
            self._data_keys.pop(gen, None)
            self._mac_keys.pop(gen, None)

    def _require_kek(self) -> bytes:
        if self._kek is None:
            raise KeySourceError("the key-encryption key is not at hand")
        return self._kek

    # -- metadata MACs -----------------------------------------------------------------

    def _mac_key(self, gen: int) -> bytes | None:
        key = self._mac_keys.get(gen)
        if key is None:
            data_key = self._data_keys.get(gen)
            if data_key is None:
                return None
            key = self._mac_keys[gen] = crypto.mac_key(data_key)
        return key

    def tag(self, row: bytes) -> bytes:
        """`<gen>:<hex tag>` of an encoded row, under the active generation."""
        key = self._mac_key(self.active_gen)
        assert key is not None
        return _gen_tag(self.active_gen, crypto.mac(key, row))

    def record_tag(self, purpose: bytes, data: bytes, gen: int | None = None) -> str | None:
        """A keyed tag (hex) over a record kept outside the rows (a removed secret kept for
        restore), under generation `gen` (default: the active one); None once retired."""
        key = self._mac_key(self.active_gen if gen is None else gen)
        if key is None:
            return None
        return crypto.mac(key, crypto.row_data("record", purpose, data)).hex()

    def verify(self, row: bytes, stored: bytes | None) -> bool:
        """Whether `stored` (from `tag`) authenticates `row` (constant time)."""
        import hmac

        parsed = _parse_gen_tag(stored)
        if parsed is None:
            return False
        key = self._mac_key(parsed[0])
        return key is not None and hmac.compare_digest(crypto.mac(key, row), parsed[1])

    def tag_generation(self, stored: bytes | None) -> int | None:
        """The data key generation a stored tag names (None: not a tag at all)."""
        parsed = _parse_gen_tag(stored)
        return None if parsed is None else parsed[0]

    def read_state(self, backend: Backend) -> AuthState | None:
        """The store's high-water mark, or None if missing or not authentic."""
        raw = backend.meta_get("auth_state")
        if raw is None:
            return None
        try:
            obj: Any = json.loads(raw)
            state = AuthState(int(obj["digest"], 16), int(obj["serial"]), int(obj["access"], 16))
            tag = str(obj["tag"]).encode()
        except (ValueError, KeyError, TypeError):
            return None
        return state if self.verify(_state_row(self.store_id, state), tag) else None

    def write_state(self, backend: Backend, state: AuthState) -> None:
        tag = self.tag(_state_row(self.store_id, state)).decode()
        backend.meta_set(
            "auth_state",
            json.dumps(
                {
                    "digest": f"{state.digest:x}",
                    "serial": state.serial,
                    "access": f"{state.access:x}",
                    "tag": tag,
                },
                sort_keys=True,
            ).encode(),
        )


def tag_value(stored: bytes | None) -> int:
    """A stored tag's contribution to the store digest (0 for none or unparsable)."""
    parsed = _parse_gen_tag(stored)
    return 0 if parsed is None else int.from_bytes(parsed[1], "big")


DIGEST_MOD = 2**256


def load_node_key(backend: Backend) -> NodeKey | None:
    """This node's key, when its node key file exists (KeySourceError if unusable)."""
    path = keys.node_key_file_path(backend.key_file())
    if not path.exists():
        return None
    return NodeKey(str(path), keys.read_node_key(path))


def resolve_kek(backend: Backend) -> tuple[bytes, keys.KekSource]:
    """The KEK from $SECRETFS_KEY, $SECRETFS_PASSWORD (with the store's salt) or the key file."""
    source = keys.env_source()
    if source is not None and source.kind == keys.KIND_KEY:
        return keys.kek_from_env_key(), source
    if source is not None:
        salt, params = backend.meta_get("kdf_salt"), backend.meta_get("kdf_params")
        if salt is None or params is None:
            raise KeySourceError(
                f"${keys.ENV_PASSWORD} is set but {backend.name} was not initialized with a"
                " password (unset it to use the store's key file or $SECRETFS_KEY)"
            )
        kdf_params = crypto.KdfParams.from_json(params.decode())
        check = backend.meta_get("kdf_check")
        if check is not None and check != crypto.kdf_record_digest(salt, params):
            raise KeySourceError(
                f"{backend.name}: the stored KDF salt or parameters that turn"
                f" ${keys.ENV_PASSWORD} into the key are damaged (they do not match their"
                " checksum): restore the store from a backup"
            )
        return keys.kek_from_password(salt, kdf_params), source
    path = backend.key_file()
    return keys.read_key_file(path), keys.KekSource(keys.KIND_KEY_FILE, str(path))


# -- what a killed key operation left ------------------------------------------------------


def start_ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def running(holder: dict[str, Any]) -> bool:
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid == os.getpid():
        return False
    return start_ticks(pid) is not None and start_ticks(pid) == holder.get("start")


def key_op_holder(backend: Backend) -> dict[str, Any] | None:
    raw = backend.meta_get(KEY_OP)
    if not raw:
        return None
    try:
        holder = json.loads(raw)
    except ValueError:
        return {"op": "unknown", "pid": None, "since_ns": 0}
    return holder if isinstance(holder, dict) else None


def pending_reencryption(backend: Backend) -> int | None:
    mark = backend.meta_get(REENCRYPT)
    return None if mark is None else int(mark)


def unfinished(backend: Backend) -> list[str]:
    """What a killed key operation left to finish (nothing while one is running)."""
    holder = key_op_holder(backend)
    if holder is not None and running(holder):
        return []
    notes = []
    if backend.meta_get(KEK_ROTATION) is not None:
        notes.append(
            f"a key rotation of {backend.name} was interrupted (the store opens with the old"
            " and the new key): `secretfs key rotate` finishes it"
        )
    target = pending_reencryption(backend)
    if target is not None:
        notes.append(
            f"a re-encryption of {backend.name} to data key generation {target} was"
            " interrupted (every value still reads): `secretfs key rotate --reencrypt`"
            " finishes it"
        )
    return notes

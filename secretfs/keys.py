"""Where the key-encryption key (KEK) comes from.

Sources, in order: `SECRETFS_KEY` (32 bytes, hex or base64), `SECRETFS_PASSWORD`
(Argon2id with the salt and parameters stored in the store), then this node's own key
(`<store>.node.key`, or `$SECRETFS_NODE_KEY_FILE`; an X25519 private key the data keys
are sealed to once the node is enrolled, see secretfs/keyring.py), then the key file
next to the store (`<store>.key`, or `$SECRETFS_KEY_FILE`). `secretfs init` writes that
key file when neither variable is set. An existing store is never given a fresh key.
"""

from __future__ import annotations

import base64
import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from secretfs import crypto
from secretfs.errors import ConflictError, KeySourceError, SecretfsError
from secretfs.files import fsync_dir, write_file_atomically

ENV_KEY = "SECRETFS_KEY"
ENV_PASSWORD = "SECRETFS_PASSWORD"  # noqa: S105 - the variable's name, not a password
ENV_KEY_FILE = "SECRETFS_KEY_FILE"
ENV_NODE_KEY_FILE = "SECRETFS_NODE_KEY_FILE"

#: Variables that hold key material: never in a child's environment (see child_environment).
KEY_ENV_VARS = (ENV_KEY, ENV_PASSWORD)
#: SECRETFS_ variables whose names say KEY but that hold a path, not key material.
_KEY_PATH_VARS = (ENV_KEY_FILE, ENV_NODE_KEY_FILE, "SECRETFS_ETCD_KEY")

_E = TypeVar("_E", str, bytes)

KIND_KEY = "key"
KIND_PASSWORD = "password"  # noqa: S105
KIND_KEY_FILE = "key-file"
KIND_NODE = "node-key"


@dataclass(frozen=True, slots=True)
class KekSource:
    """Which source gave the KEK, said so in errors and `key status`."""

    kind: str
    description: str


def key_file_path(store_path: Path) -> Path:
    env = os.environ.get(ENV_KEY_FILE)
    return Path(env) if env else store_path.with_name(store_path.name + ".key")


def remote_key_file_path(backend: str, name: str) -> Path:
    """The key file of a store that is not a file here (etcd, memory): `$SECRETFS_KEY_FILE`,
    else `/etc/secretfs/<backend>/<name>.key` (root) or `~/.config/secretfs/<backend>/...`,
    `/` in the name written as `_`."""
    env = os.environ.get(ENV_KEY_FILE)
    if env:
        return Path(env)
    if os.geteuid() == 0:
        base = Path("/etc/secretfs")
    else:
        base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "secretfs"
    return base / backend / (name.replace("/", "_") + ".key")


def node_key_file_path(key_file: Path) -> Path:
    """This node's private key: `$SECRETFS_NODE_KEY_FILE`, else beside the store key file
    (`<store>.node.key`)."""
    env = os.environ.get(ENV_NODE_KEY_FILE)
    return (
        Path(env) if env else key_file.with_name(key_file.name.removesuffix(".key") + ".node.key")
    )


def read_node_key(path: Path) -> bytes:
    """A node's X25519 private key from its file (refused unless 0600, as the key file)."""
    try:
        return read_key_file(path)
    except KeySourceError as exc:
        raise KeySourceError(str(exc).replace("key file", "node key file", 1)) from None


def store_pin_path(node_key: Path) -> Path:
    """The store keys this node pinned at enrollment (0600, beside its node key file)."""
    return node_key.with_name(node_key.name + ".pins")


def read_store_pin(node_key: Path, store_id: bytes) -> bytes | None:
    """The store key this node pinned for `store_id` (None: none pinned); KeySourceError
    if the pin file is unreadable, damaged or open to other users (its keys decide which
    data keys the node accepts)."""
    path = store_pin_path(node_key)
    try:
        st = path.stat()
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeySourceError(f"cannot read the pinned store keys {path}: {exc}") from None
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise KeySourceError(
            f"pinned store keys {path} are mode {mode:04o}: other users may change them,"
            f" so they are not used; run: chmod 600 {path}"
        )
    try:
        pins = json.loads(text)
        found = pins.get(store_id.hex())
        return None if found is None else crypto.parse_key_text(str(found))
    except (ValueError, AttributeError, SecretfsError):
        raise KeySourceError(f"the pinned store keys {path} are damaged") from None


def write_store_pin(node_key: Path, store_id: bytes, public_key: bytes) -> None:
    """Pin `public_key` as the store's key for this node (0600 from creation); refused if
    another key is pinned for the store already."""
    old = read_store_pin(node_key, store_id)
    if old == public_key:
        return
    path = store_pin_path(node_key)
    if old is not None:
        raise KeySourceError(
            f"{path} pins another key for this store ({crypto.format_key_text(old)}):"
            " not replaced; if the store's key really changed, remove that line (or the"
            " file) and pin again"
        )
    try:
        pins = json.loads(path.read_text(encoding="ascii")) if path.exists() else {}
    except (OSError, ValueError) as exc:
        raise KeySourceError(f"cannot read the pinned store keys {path}: {exc}") from None
    pins[store_id.hex()] = crypto.format_key_text(public_key)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_file_atomically(path, (json.dumps(pins, sort_keys=True) + "\n").encode(), replace=True)


def env_source() -> KekSource | None:
    if os.environ.get(ENV_KEY):
        return KekSource(KIND_KEY, f"${ENV_KEY}")
    if os.environ.get(ENV_PASSWORD):
        return KekSource(KIND_PASSWORD, f"${ENV_PASSWORD}")
    return None


def is_key_env_var(name: str | bytes) -> bool:
    """Key material by name: the listed variables and, failing closed for ones added
    later, any other SECRETFS_ name with KEY, PASSWORD, TOKEN or SECRET in it."""
    text = os.fsdecode(name)
    if text in KEY_ENV_VARS:
        return True
    upper = text.upper()
    return (
        upper.startswith("SECRETFS_")
        and text not in _KEY_PATH_VARS
        and any(word in upper for word in ("KEY", "PASSWORD", "TOKEN", "SECRET_"))
    )


def child_environment(env: Mapping[_E, _E], *, pass_key: bool = False) -> dict[_E, _E]:
    """`env` for a process we start: without key material unless `pass_key` (the user's
    explicit `run --pass-key-env`). Every spawn of a user-given command goes through here."""
    if pass_key:
        return dict(env)
    return {k: v for k, v in env.items() if not is_key_env_var(k)}


def key_material_forms(env: Mapping[str, str] | None = None) -> list[bytes]:
    """Every text form of the key material in `env` (default os.environ), for `--scrub`:
    the variable's text as given, and the hex and base64 forms of a parsed key."""
    env = os.environ if env is None else env
    forms: set[bytes] = set()
    for name, text in env.items():
        if not text or not is_key_env_var(name):
            continue
        forms.update({os.fsencode(text), os.fsencode(text.strip())})
        try:
            key = crypto.parse_key_text(text)
        except SecretfsError:
            continue
        b64 = base64.b64encode(key)
        url = base64.urlsafe_b64encode(key)
        forms.update({key.hex().encode(), key.hex().upper().encode(), b64, url})
        forms.update({b64.rstrip(b"="), url.rstrip(b"=")})
    return sorted(f for f in forms if f)


def kek_from_env_key() -> bytes:
    try:
        return crypto.parse_key_text(os.environ[ENV_KEY])
    except SecretfsError as exc:
        raise KeySourceError(f"${ENV_KEY} is not usable: {exc}") from None


def kek_from_password(salt: bytes, params: crypto.KdfParams) -> bytes:
    return crypto.derive_kek(os.environ[ENV_PASSWORD].encode(), salt, params)


def read_key_file(path: Path) -> bytes:
    try:
        st = path.stat()
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise KeySourceError(
            f"no key: ${ENV_KEY} and ${ENV_PASSWORD} are unset and the key file {path}"
            " does not exist (set one of them, or point $SECRETFS_KEY_FILE at the key file)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeySourceError(f"cannot read key file {path}: {exc}") from None
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        # As ssh does with a private key: a key others could have copied is not used.
        raise KeySourceError(
            f"key file {path} is mode {mode:04o}: other users may read or change the key,"
            f" so it is not used; run: chmod 600 {path}"
        )
    try:
        return crypto.parse_key_text(text)
    except SecretfsError:
        raise KeySourceError(f"key file {path} does not hold a 32-byte key") from None


def write_key_file(path: Path, key: bytes) -> None:
    """Create the key file 0600 from the start, atomically, never replacing one."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        write_file_atomically(path, _key_file_text(key), replace=False)
    except ConflictError:
        raise KeySourceError(f"key file {path} exists already; not replacing it") from None


def _key_file_text(key: bytes) -> bytes:
    return (crypto.format_key_text(key) + "\n").encode()


# -- key file rotation (see secretfs/keyrotation.py for the order of steps) ------------------


def next_key_file_path(path: Path) -> Path:
    """Where `key rotate` puts the new key before it replaces the key file."""
    return path.with_name(path.name + ".next")


def write_next_key_file(path: Path, key: bytes) -> Path:
    """Write the key that is to replace `path` beside it: 0600 from creation, the old
    file's owner when we are root, fsynced; replaces a stale `.next` of an earlier try."""
    target = next_key_file_path(path)
    try:
        old = path.stat()
    except OSError:
        old = None
    owner = None
    if old is not None and os.geteuid() == 0 and (old.st_uid, old.st_gid) != (0, 0):
        # A service user that could read the old key file can read the new one.
        owner = (old.st_uid, old.st_gid)
    write_file_atomically(target, _key_file_text(key), replace=True, owner=owner)
    return target


def install_next_key_file(path: Path) -> None:
    """Atomically replace the key file with `<key file>.next`, durably."""
    os.replace(next_key_file_path(path), path)
    fsync_dir(path.parent)


def leftover_key_files(path: Path) -> list[Path]:
    """Temporary key files (`.<name>.<pid>.new`) left by a process that died."""
    out = []
    for candidate in path.parent.glob(f".{path.name}.*.new"):
        pid = candidate.name[len(path.name) + 2 : -len(".new")]
        if pid.isdigit() and not _alive(int(pid)):
            out.append(candidate)
    return sorted(out)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

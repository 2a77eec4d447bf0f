"""Typed credentials: registry logins as a Docker `config.json`, git tokens and SSH keys.

Each is an ordinary secret whose value is already in the format its consumer reads, so
the mounted file works as it is: `~/.docker/config.json`, `podman --authfile`, a kubelet
`.dockerconfigjson`, a token file, or an `ssh -i` key.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

from secretfs.errors import ConflictError, NotFoundError, UsageError

DEFAULT_REGISTRY_REF = "@registry/config.json"
GIT_SCOPE = "@git"
#: The key Docker, podman and the kubelet all use for Docker Hub.
DOCKER_HUB_KEY = "https://index.docker.io/v1/"
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io", "hub.docker.com"})
_REGISTRY_RE = re.compile(
    r"^(?P<host>[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\])(:(?P<port>[0-9]{1,5}))?(?P<path>(/[A-Za-z0-9._-]+)*)$"
)
#: Top-level keys of a Docker config.json other than "auths".
_DOCKER_CONFIG_KEYS = frozenset(
    {"credsStore", "credHelpers", "HttpHeaders", "psFormat", "imagesFormat", "detachKeys",
     "proxies", "experimental", "currentContext", "plugins", "aliases", "features"}
)  # fmt: skip
_SSH_KEY_RE = re.compile(
    rb"\A\s*-----BEGIN ((OPENSSH|RSA|DSA|EC|ENCRYPTED) )?PRIVATE KEY-----\r?\n"
    rb".+\r?\n-----END ((OPENSSH|RSA|DSA|EC|ENCRYPTED) )?PRIVATE KEY-----\s*\Z",
    re.DOTALL,
)


# --------------------------------------------------------------------------- registries


def registry_key(registry: str) -> str:
    """The `auths` key for REGISTRY: host[:port][/namespace], Docker Hub's own key for
    Docker Hub; a scheme and a trailing '/' are dropped."""
    text = registry.strip()
    for scheme in ("https://", "http://"):
        if text.lower().startswith(scheme):
            text = text[len(scheme) :]
            break
    text = text.rstrip("/")
    if text.lower() in _HUB_ALIASES or text.lower() in ("index.docker.io/v1", "docker.io/v1"):
        return DOCKER_HUB_KEY
    m = _REGISTRY_RE.fullmatch(text)
    if m is None or (m.group("port") and not 0 < int(m.group("port")) < 65536):
        raise UsageError(
            f"not a registry: {registry[:80]!r}; expected a host name with an optional"
            " :port and /namespace, e.g. ghcr.io, registry.example.com:5000, quay.io/myorg"
        )
    host = text[: m.end("port") if m.group("port") else m.end("host")]
    return host.lower() + (m.group("path") or "")


def read_login_secret(data: bytes, what: str) -> bytes:
    """A password or token from stdin: one trailing newline (and CR) dropped, like
    `docker login --password-stdin`."""
    if data.endswith(b"\n"):
        data = data[:-1]
    if data.endswith(b"\r"):
        data = data[:-1]
    if not data:
        raise UsageError(f"the {what} on standard input is empty")
    return data


def check_username(username: str) -> str:
    if not username:
        raise UsageError("--username must not be empty")
    if ":" in username:
        raise UsageError("--username must not contain ':' (it separates user and password)")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in username):
        raise UsageError("--username must not contain control characters")
    return username


def load_docker_config(value: bytes | None, where: str) -> dict[str, Any]:
    """The Docker config in `value` (a new one for None); ConflictError if `value` is
    something else, so `registry add` never overwrites an unrelated secret."""
    if value is None:
        return {"auths": {}}
    try:
        doc = json.loads(value)
    except ValueError:
        doc = None
    if (
        not isinstance(doc, dict)
        or not isinstance(doc.get("auths", {}), dict)
        or ("auths" not in doc and not set(doc) <= _DOCKER_CONFIG_KEYS)
    ):
        raise ConflictError(
            f'{where} exists and is not a Docker config.json (no "auths" object):'
            " choose another --secret, or remove it first"
        )
    doc.setdefault("auths", {})
    return doc


def dump_docker_config(doc: dict[str, Any]) -> bytes:
    """Tab-indented JSON with a final newline, as `docker login` writes it."""
    return (json.dumps(doc, indent="\t", ensure_ascii=False) + "\n").encode()


def basic_auth(username: str, password: bytes) -> str:
    return base64.b64encode(username.encode() + b":" + password).decode("ascii")


def set_auth(doc: dict[str, Any], key: str, username: str, password: bytes) -> bool:
    """Add or replace the login for `key`; True if it replaced one."""
    auths: dict[str, Any] = doc["auths"]
    replaced = key in auths
    auths[key] = {"auth": basic_auth(username, password)}
    return replaced


def remove_auth(doc: dict[str, Any], key: str, where: str) -> None:
    auths: dict[str, Any] = doc["auths"]
    if key not in auths:
        raise NotFoundError(f"{where} has no login for {key}")
    del auths[key]


@dataclass(frozen=True, slots=True)
class RegistryLogin:
    """One `auths` entry as `registry ls` shows it: never the password."""

    registry: str
    username: str | None
    kind: str  # "basic", "identitytoken", or "other"


def list_logins(doc: dict[str, Any]) -> list[RegistryLogin]:
    out = []
    for key, entry in doc.get("auths", {}).items():
        user = None
        kind = "other"
        if isinstance(entry, dict):
            if isinstance(entry.get("auth"), str):
                kind = "basic"
                try:
                    decoded = base64.b64decode(entry["auth"], validate=True)
                    user = decoded.split(b":", 1)[0].decode("utf-8", "replace")
                except (binascii.Error, ValueError):
                    user = None
            elif isinstance(entry.get("identitytoken"), str):
                kind = "identitytoken"
            if isinstance(entry.get("username"), str):
                user = entry["username"]
        out.append(RegistryLogin(str(key), user, kind))
    return out


# --------------------------------------------------------------------------- git


def check_ssh_private_key(data: bytes) -> bytes:
    """An SSH private key as `ssh -i` wants it: PEM/OpenSSH armour, one final newline."""
    if not _SSH_KEY_RE.match(data):
        raise UsageError(
            "not an SSH private key: expected a file that starts with '-----BEGIN OPENSSH"
            " PRIVATE KEY-----' (or an RSA/EC/PKCS#8 PEM key), as ssh-keygen writes it"
        )
    if b"\0" in data:
        raise UsageError("not an SSH private key: it contains NUL bytes")
    # OpenSSH refuses a key whose last line has no newline: add one, and only that.
    return data if data.endswith(b"\n") else data + b"\n"


def check_token(data: bytes) -> bytes:
    """A personal access token from stdin: one trailing newline dropped, one line."""
    token = read_login_secret(data, "token")
    if b"\n" in token or b"\0" in token:
        raise UsageError("a token is one line: the one on standard input has more")
    return token

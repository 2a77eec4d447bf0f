"""`vault://` values: read a secret from HashiCorp Vault or OpenBao through hvac.

    vault://MOUNT/PATH[?kv=1|2][&version=N][#FIELD]

- The server and token come from `VAULT_ADDR`/`VAULT_TOKEN`, else `BAO_ADDR`/`BAO_TOKEN`,
  else `~/.vault-token` (where `vault login` and `bao login` keep it); TLS from
  `VAULT_CACERT`/`VAULT_CAPATH`/`VAULT_CLIENT_CERT`/`VAULT_CLIENT_KEY`/`VAULT_SKIP_VERIFY`
  (or the `BAO_` names), a namespace from `VAULT_NAMESPACE`/`BAO_NAMESPACE`.
- The mount and its KV version are asked of the server, as `vault kv get` does
  (`sys/internal/ui/mounts/PATH`), so mounts with a `/` in their name work. When that
  is not allowed, MOUNT is the first path component and KV v2 is tried, then KV v1.
  `?kv=2` or `?kv=1` says which and skips both. Any other engine (e.g. `database/creds/
  ro`) is read with a plain logical read.
- With `#FIELD`: that field's value (strings raw, numbers and booleans as JSON text, null
  empty, objects/arrays as compact JSON). Without: the whole secret as a JSON object,
  so its fields show up under `<name>.d/` in the mount.
- `?version=N` reads version N of a KV v2 secret.

No message built here holds a value or the token: only the URI, the address and the
server's error text.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

from secretfs.errors import NotFoundError, SecretfsError, UsageError
from secretfs.files import INPUT_LIMIT, too_large

DEFAULT_ADDR = "https://127.0.0.1:8200"  # what the vault and bao CLIs use
DEFAULT_TIMEOUT = 30.0
_TRUE = frozenset({"1", "t", "true", "y", "yes", "on"})


class ProviderError(SecretfsError):
    """A value source that could not give its value (unreachable, denied, server error)."""


@dataclass(frozen=True, slots=True)
class HashiCorpURI:
    path: str  # as the user wrote it, percent-decoded, no leading/trailing '/'
    field: str | None
    kv: int | None  # forced KV version, or None to detect
    version: int | None

    def __str__(self) -> str:
        text = f"vault://{self.path}"
        options = [f"kv={self.kv}"] if self.kv else []
        options += [f"version={self.version}"] if self.version else []
        if options:
            text += "?" + "&".join(options)
        if self.field is not None:
            text += f"#{self.field}"
        return text


def parse_hashicorp_uri(uri: str) -> HashiCorpURI:
    rest = uri.removeprefix("vault://")
    rest, _, fragment = rest.partition("#")
    raw_path, _, query = rest.partition("?")
    path = unquote(raw_path).strip("/")
    shown = uri[:120]
    if not path:
        raise UsageError(f"{shown!r}: expected vault://MOUNT/PATH[#FIELD]")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise UsageError(f"{shown!r}: a Vault path has no empty, '.' or '..' components")
    field = unquote(fragment) if fragment else None
    kv = version = None
    try:
        params = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise UsageError(f"{shown!r}: the query must be kv=1|2 and/or version=N") from None
    for key, values in params.items():
        if key not in ("kv", "version") or len(values) != 1:
            raise UsageError(f"{shown!r}: unknown or repeated option {key!r} (kv=1|2, version=N)")
    if "kv" in params:
        if params["kv"][0] not in ("1", "2"):
            raise UsageError(f"{shown!r}: kv= takes 1 or 2")
        kv = int(params["kv"][0])
    if "version" in params:
        text = params["version"][0]
        if not text.isdigit() or int(text) < 1:
            raise UsageError(f"{shown!r}: version= takes a version number (1, 2, ...)")
        version = int(text)
        if kv == 1:
            raise UsageError(f"{shown!r}: KV v1 keeps no versions; drop version= or kv=1")
    return HashiCorpURI(path, field, kv, version)


@dataclass(frozen=True, slots=True)
class HashiCorpConfig:
    addr: str
    token: str
    namespace: str | None
    verify: bool | str
    cert: tuple[str, str] | None
    timeout: float


def _env(environ: Mapping[str, str], name: str) -> str | None:
    for prefix in ("VAULT_", "BAO_"):
        value = environ.get(prefix + name)
        if value:
            return value
    return None


def hashicorp_config(environ: Mapping[str, str] | None = None) -> HashiCorpConfig:
    env = os.environ if environ is None else environ
    addr = _env(env, "ADDR") or DEFAULT_ADDR
    token = _env(env, "TOKEN")
    if token is None:
        token_file = Path(env.get("HOME", "~")).expanduser() / ".vault-token"
        try:
            token = token_file.read_text(encoding="utf-8").strip() or None
        except (OSError, UnicodeDecodeError):
            token = None
    if token is None:
        raise UsageError(
            "no Vault token: set VAULT_TOKEN (or BAO_TOKEN), or log in with"
            " `vault login` / `bao login`"
        )
    verify: bool | str = True
    if (_env(env, "SKIP_VERIFY") or "").lower() in _TRUE:
        verify = False
    else:
        verify = _env(env, "CACERT") or _env(env, "CAPATH") or True
    cert_file, key_file = _env(env, "CLIENT_CERT"), _env(env, "CLIENT_KEY")
    cert = (cert_file, key_file) if cert_file and key_file else None
    timeout = DEFAULT_TIMEOUT
    raw_timeout = _env(env, "CLIENT_TIMEOUT")
    if raw_timeout:
        try:
            timeout = float(raw_timeout.removesuffix("s"))
        except ValueError:
            raise UsageError(
                f"VAULT_CLIENT_TIMEOUT must be a number of seconds, not {raw_timeout[:20]!r}"
            ) from None
    return HashiCorpConfig(addr, token, _env(env, "NAMESPACE"), verify, cert, timeout)


def read_hashicorp(
    uri: str, environ: Mapping[str, str] | None = None, *, limit: int = INPUT_LIMIT
) -> bytes:
    """The bytes `uri` names (see the module doc); a value over `limit` bytes is refused,
    and no answer is read past what such a value can take as JSON."""
    parsed = parse_hashicorp_uri(uri)
    config = hashicorp_config(environ)
    reader = _Reader(parsed, config, _answer_limit(limit))
    data = reader.read()
    if parsed.field is None:
        value = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
    elif parsed.field not in data:
        keys = sorted(str(k) for k in data)
        shown = ", ".join(keys[:20]) + (f" and {len(keys) - 20} more" if len(keys) > 20 else "")
        raise NotFoundError(f"{parsed}: no field {parsed.field!r} (it has: {shown or 'none'})")
    else:
        value = render_field(data[parsed.field])
    if len(value) > limit:
        raise too_large(f"{parsed}", limit)
    return value


def _answer_limit(limit: int) -> int:
    """The most of one HTTP answer read for a value of at most `limit` bytes: JSON may
    escape each byte as six (\\u0000), plus the envelope."""
    return 6 * limit + 64 * 1024


def render_field(node: Any) -> bytes:
    if isinstance(node, str):
        return node.encode()
    if node is None:
        return b""
    if node is True:
        return b"true"
    if node is False:
        return b"false"
    return json.dumps(node, ensure_ascii=False, separators=(",", ":")).encode()


class _Reader:
    def __init__(self, uri: HashiCorpURI, config: HashiCorpConfig, answer_limit: int) -> None:
        import hvac  # here: only vault:// needs it, and it takes a while to import

        self.uri = uri
        self.config = config
        self.client = hvac.Client(
            session=_limited_session(answer_limit, str(uri)),
            url=config.addr,
            token=config.token,
            namespace=config.namespace,
            verify=config.verify,
            cert=config.cert,
            timeout=config.timeout,
        )

    def read(self) -> dict[str, Any]:
        mount, kind, kv = self._mount()
        rest = self.uri.path[len(mount) :].strip("/")
        if kind == "kv" and not rest:
            raise UsageError(f"{self.uri}: names the mount {mount}/ itself, not a secret in it")
        if kind != "kv":
            if self.uri.version is not None:
                raise UsageError(f"{self.uri}: version= is for KV v2 secrets only")
            return self._data(self._get(f"/v1/{self.uri.path}"))
        if kv == 2:
            return self._read_v2(mount, rest)
        if kv == 1:
            return self._data(self._get(f"/v1/{mount}/{rest}"))
        try:  # unknown version: v2 first (the default of `vault secrets enable kv`)
            return self._read_v2(mount, rest)
        except NotFoundError:
            return self._data(self._get(f"/v1/{mount}/{rest}"))

    def _mount(self) -> tuple[str, str, int | None]:
        """(mount path, engine type, KV version or None if unknown)."""
        if self.uri.kv is not None:
            return self.uri.path.split("/", 1)[0], "kv", self.uri.kv
        answer = self._get(f"/v1/sys/internal/ui/mounts/{self.uri.path}", quiet=True)
        info = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(info, dict) or not isinstance(info.get("path"), str):
            return self.uri.path.split("/", 1)[0], "kv", None
        mount = info["path"].strip("/")
        kind = str(info.get("type", ""))
        if kind == "generic":
            kind = "kv"
        options = info.get("options") or {}
        version = options.get("version") if isinstance(options, dict) else None
        return mount, kind, 2 if version == "2" else 1 if kind == "kv" else None

    def _read_v2(self, mount: str, rest: str) -> dict[str, Any]:
        query = f"?version={self.uri.version}" if self.uri.version is not None else ""
        body = self._data(self._get(f"/v1/{mount}/data/{rest}{query}", deleted_ok=True))
        data = body.get("data")
        if data is None:
            meta = body.get("metadata") or {}
            state = "destroyed" if meta.get("destroyed") else "deleted"
            raise NotFoundError(f"{self.uri}: that version is {state}")
        if not isinstance(data, dict):
            raise ProviderError(f"{self.uri}: the server's answer is not a KV v2 secret")
        return data

    def _data(self, answer: Any) -> dict[str, Any]:
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, dict):
            raise NotFoundError(f"{self.uri}: the answer from {self.config.addr} holds no data")
        return data

    def _get(self, url: str, *, quiet: bool = False, deleted_ok: bool = False) -> Any:
        """GET `url`; with `quiet`, an error answer from the server gives None; with
        `deleted_ok`, the 404 of a deleted KV v2 version gives its answer (metadata)."""
        import hvac.exceptions
        import requests

        where = f"{self.uri} at {self.config.addr}"
        try:
            return self.client.adapter.get(url)
        except hvac.exceptions.VaultError as exc:
            if quiet:
                return None
            if isinstance(exc, hvac.exceptions.InvalidPath):
                answer = exc.json
                if deleted_ok and isinstance(answer, dict) and _is_deleted_version(answer):
                    return answer
                raise NotFoundError(f"{where}: not found") from None
            if isinstance(exc, hvac.exceptions.Unauthorized | hvac.exceptions.Forbidden):
                raise ProviderError(
                    f"{where}: permission denied; check the token and its policy"
                    f" (server: {_server_says(exc)})"
                ) from None
            raise ProviderError(f"{where}: {type(exc).__name__}: {_server_says(exc)}") from None
        except requests.exceptions.SSLError:
            raise ProviderError(
                f"{where}: TLS verification failed (set VAULT_CACERT to the server's CA)"
            ) from None
        except requests.exceptions.Timeout:
            raise ProviderError(f"{where}: no answer within {self.config.timeout:g} s") from None
        except requests.exceptions.RequestException as exc:
            raise ProviderError(
                f"cannot reach Vault at {self.config.addr} ({type(exc).__name__}); is"
                " VAULT_ADDR (or BAO_ADDR) right?"
            ) from None


def _is_deleted_version(answer: dict[str, Any]) -> bool:
    data = answer.get("data")
    meta = data.get("metadata") if isinstance(data, dict) else None
    return isinstance(meta, dict) and bool(meta.get("deletion_time") or meta.get("destroyed"))


def _server_says(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if isinstance(errors, list) and errors:
        text = "; ".join(str(e) for e in errors)
    else:
        text = "no detail"
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:300] + "..."


def _limited_session(limit: int, what: str) -> Any:
    """A requests session that reads each answer as a stream and stops past `limit`."""
    import requests

    class LimitedSession(requests.Session):
        def send(self, request: Any, **kwargs: Any) -> Any:
            kwargs["stream"] = True
            response = super().send(request, **kwargs)
            chunks: list[bytes] = []
            total = 0
            try:
                for chunk in response.iter_content(64 * 1024):
                    total += len(chunk)
                    if total > limit:
                        raise too_large(f"the answer for {what}", limit)
                    chunks.append(chunk)
            finally:
                response.close()
            response._content = b"".join(chunks)
            return response

    return LimitedSession()

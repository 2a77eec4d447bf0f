"""etcd over httpx: its JSON gateway (`/v3/kv/range`, `/v3/watch`, keys and values
base64) and gRPC (kvgrpc.py: every Txn, and a whole store's load), with one deadline per
call across members, TLS and user/password auth for both."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import orjson

from secretfs.errors import (
    StoreError,
    StoreUnavailableError,
)
from secretfs.store.etcd import kvgrpc
from secretfs.store.etcd.txn import Txn, TxnAnswer, b64, from_json, to_json, unb64

if TYPE_CHECKING:
    from secretfs.store.etcd.location import EtcdLocation

log = logging.getLogger(__name__)
# httpx logs every request at INFO: noise in a mount's log, so only its warnings.
logging.getLogger("httpx").setLevel(logging.WARNING)

ENV_TIMEOUT = "SECRETFS_ETCD_TIMEOUT"
ENV_CACERT = "SECRETFS_ETCD_CACERT"
ENV_CERT = "SECRETFS_ETCD_CERT"
ENV_CERT_KEY = "SECRETFS_ETCD_KEY"
ENV_USER = "SECRETFS_ETCD_USER"
ENV_PASSWORD = "SECRETFS_ETCD_PASSWORD"  # noqa: S105 - a variable name
ENV_PASSWORD_FILE = "SECRETFS_ETCD_PASSWORD_FILE"  # noqa: S105 - a variable name
ENV_LOAD_TIMEOUT = "SECRETFS_ETCD_LOAD_TIMEOUT"
ENV_MAX_TXN_OPS = "SECRETFS_ETCD_MAX_TXN_OPS"
DEFAULT_TIMEOUT = 2.0  # seconds for one request; a cluster without quorum fails this fast
DEFAULT_LOAD_TIMEOUT = 120.0  # seconds for a mount's initial load (paginated)
LOAD_PAGE = 2000  # keys per range while loading
# A bulk load's pages: the first this many keys, the next sized to about LOAD_PAGE_BYTES.
# Few pages matter: etcd 3.4 walks its index from a page's start to the range's end.
LOAD_FIRST_PAGE = 256  # values may be up to 1 MiB each: a first page of bounded size
LOAD_MIN_PAGE = 16
LOAD_PAGE_BYTES = 8 << 20
LOAD_MAX_PAGE = 50_000
LOAD_STREAMS = 3  # ranges loaded at once (their requests share one HTTP/2 connection)
DEFAULT_MAX_TXN_OPS = 128  # etcd's default --max-txn-ops
CONNECT_TIMEOUT = 1.0
MIN_ATTEMPT = 0.3  # the least one endpoint gets of a call's deadline
# Cancel a watch (and fail a request) on a member that has lost its leader, rather
# than leave it silently waiting: the gateway passes this on as gRPC metadata.
_LEADER = {"Grpc-Metadata-hasleader": "true"}
_JSON = {"Content-Type": "application/json"}


class CompactedError(StoreError):
    """A read at a revision etcd has compacted away."""


def prefix_end(prefix: bytes) -> bytes:
    """The first key after every key that starts with `prefix`."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


def env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise StoreError(f"${name}={raw!r} is not a number of seconds") from None
    if not 0 < value <= 3600:
        raise StoreError(f"${name} must be between 0 and 3600 seconds")
    return value


def _timeout() -> float:
    return env_seconds(ENV_TIMEOUT, DEFAULT_TIMEOUT)


def _tls(location: EtcdLocation) -> ssl.SSLContext | bool:
    """The TLS context: the CA bundle, and the client certificate when one is set.

    One SSLContext carries both (httpx 0.28 ignores `cert=` when `verify` is a path).
    """
    if not location.tls:
        # Plain etcd:// speaks only http://: no context to build, which saves loading
        # the CA bundle (~0.1 s) on every CLI command.
        return False
    cafile = os.environ.get(ENV_CACERT) or None
    cert = os.environ.get(ENV_CERT) or None
    key = os.environ.get(ENV_CERT_KEY) or None
    try:
        context = ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise StoreError(
            f"${ENV_CACERT}: cannot load the CA file {cafile}: {_reason(exc)}"
        ) from None
    if key and not cert:
        raise StoreError(f"${ENV_CERT_KEY} is set but ${ENV_CERT} is not: set both")
    if cert:
        try:
            context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise StoreError(
                f"${ENV_CERT}/${ENV_CERT_KEY}: cannot load the client certificate {cert}"
                f" with its key: {_reason(exc)}"
            ) from None
    return context


def max_txn_ops() -> int:
    raw = os.environ.get(ENV_MAX_TXN_OPS)
    if not raw:
        return DEFAULT_MAX_TXN_OPS
    if not raw.isdigit() or not 16 <= int(raw) <= 1_000_000:
        raise StoreError(
            f"${ENV_MAX_TXN_OPS}={raw!r}: give the cluster's --max-txn-ops (16 or more)"
        )
    return int(raw)


def _password() -> str | None:
    path = os.environ.get(ENV_PASSWORD_FILE)
    if path:
        try:
            return Path(path).read_text().rstrip("\r\n")
        except OSError as exc:
            raise StoreError(f"${ENV_PASSWORD_FILE}: cannot read {path}: {_reason(exc)}") from None
    return os.environ.get(ENV_PASSWORD)


class UnknownOutcomeError(StoreError):
    """A write reached a member that gave no answer: it may or may not be applied."""


class WatchIdleError(StoreError):
    """A watch that sent nothing for a while: a hung member, or an idle store on a
    cluster that sends no progress notifications."""


class AuthError(StoreError):
    """etcd refused our credentials or our user's permissions (not a reachability problem)."""


# etcd's messages that say "your credentials", not "the cluster is down".
_AUTH_REFUSED = (
    "authentication failed",
    "user name is empty",
    "user name not found",
    "permission denied",
    "authentication is not enabled",
)
_TOKEN_STALE = ("invalid auth token", "auth token is expired", "revision of auth store is old")

_T = TypeVar("_T")
_A = TypeVar("_A")


class _TryNext(Exception):
    """This endpoint's answer was no answer: say why, and try the next one."""


class Gateway:
    """etcd's JSON gateway on each endpoint in turn: the one that answered last first.

    Every call has ONE deadline across endpoints (the request timeout): an endpoint
    gets what is left but MIN_ATTEMPT for each one after it, so hung members cost the
    call its timeout once, not once each.
    """

    def __init__(self, location: EtcdLocation, timeout: float | None = None) -> None:
        self.location = location
        self.timeout = _timeout() if timeout is None else timeout
        self._urls = location.urls()
        self._good = 0
        self._user = os.environ.get(ENV_USER) or None
        self._token: str | None = None
        self._verify = _tls(location)
        self._client = httpx.Client(
            timeout=httpx.Timeout(self.timeout, connect=min(CONNECT_TIMEOUT, self.timeout)),
            verify=self._verify,
            trust_env=False,  # never through an HTTP proxy
            headers=_LEADER,
        )
        self._h2: httpx.Client | None = None  # gRPC for load(), made when first used
        self._grpc = kvgrpc.AVAILABLE  # False once an endpoint answered gRPC with HTTP/1
        self._watch_lock = threading.Lock()
        self._watch_response: httpx.Response | None = None
        self.watch_url: str | None = None  # the member carrying the watch, when one does

    @property
    def grpc(self) -> bool:
        """Whether load() goes over gRPC (not once an endpoint answered it otherwise)."""
        return self._grpc

    def close(self) -> None:
        self.stop_watch()
        self._client.close()
        if self._h2 is not None:
            self._h2.close()

    def _order(self) -> list[int]:
        n = len(self._urls)
        return [(self._good + i) % n for i in range(n)]

    def _headers(self, url: str, *, renew: bool = False) -> dict[str, str]:
        """The Authorization header when a user is set: a token from etcd (renewed when
        it expired or `renew`)."""
        if self._user is None:
            return {}
        if self._token is None or renew:
            self._token = self._authenticate(url)
        return {"Authorization": self._token}

    def _authenticate(self, url: str) -> str:
        password = _password()
        if password is None:
            raise AuthError(
                f"${ENV_USER} is set but neither ${ENV_PASSWORD_FILE} nor ${ENV_PASSWORD}"
            )
        response = self._client.post(
            url + "/v3/auth/authenticate", json={"name": self._user, "password": password}
        )
        try:
            data = response.json()
        except ValueError:
            data = {}
        token = data.get("token") if response.status_code == 200 else None
        if not token:
            message = str(data.get("message") or data.get("error") or response.status_code)
            raise AuthError(
                f"etcd at {url} refused user {self._user!r}: {message} (check"
                f" ${ENV_USER} and the password in ${ENV_PASSWORD_FILE}/${ENV_PASSWORD})"
            )
        return str(token)

    def _post(self, url: str, path: str, body: dict[str, Any], timeout: float) -> httpx.Response:
        limit = httpx.Timeout(timeout, connect=min(CONNECT_TIMEOUT, timeout))
        # orjson: a mount's audit flush encodes hundreds of records while reads wait on
        # the GIL; the stdlib's encoder takes ~10x as long.
        content = orjson.dumps(body)
        response = self._client.post(
            url + path, content=content, headers=self._headers(url) | _JSON, timeout=limit
        )
        if response.status_code != 200 and self._user is not None:
            text = response.text
            if any(stale in text for stale in _TOKEN_STALE):
                response = self._client.post(
                    url + path,
                    content=content,
                    headers=self._headers(url, renew=True) | _JSON,
                    timeout=limit,
                )
        return response

    def call(
        self,
        path: str,
        body: dict[str, Any],
        *,
        write: bool = False,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """POST to the first endpoint that answers; StoreError naming every one tried.

        A write that reached a member but got no answer is not sent elsewhere (it may
        have been applied): UnknownOutcomeError, which the caller resolves by reading.
        """

        def send(url: str, limit: float) -> dict[str, Any]:
            response = self._post(url, path, body, limit)
            try:
                data = orjson.loads(response.content)
            except ValueError:
                raise _TryNext(f"HTTP {response.status_code}, not an etcd answer") from None
            if not isinstance(data, dict):
                raise _TryNext(f"HTTP {response.status_code}, not an etcd answer")
            if response.status_code != 200:
                message = str(data.get("message") or data.get("error") or response.status_code)
                self._refused(url, message, write=write)
                raise _TryNext(message)
            return dict(data)

        return self._each_endpoint(send, timeout, write=write)

    def _each_endpoint(
        self, send: Callable[[str, float], _T], timeout: float | None, *, write: bool
    ) -> _T:
        """`send` to each endpoint in turn (the one that answered last first) within
        one deadline, until one answers."""
        budget = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + budget
        problems: list[str] = []
        order = self._order()
        for n, index in enumerate(order):
            url = self._urls[index]
            left = deadline - time.monotonic()
            if left <= 0:
                problems.append(f"{url}: not tried (the {budget:g}s were spent)")
                continue
            # Most of what is left, keeping MIN_ATTEMPT for each endpoint after this one.
            after = len(order) - n - 1
            share = max(left - MIN_ATTEMPT * after, left / (after + 1))
            try:
                result = send(url, min(share, left))
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                _refused_tls(url, exc)
                problems.append(f"{url}: cannot connect ({_reason(exc)})")
                continue
            except httpx.TimeoutException:
                if write:
                    raise UnknownOutcomeError(
                        f"etcd at {url} did not confirm the write within {share:.1f}s"
                    ) from None
                problems.append(f"{url}: did not answer within {share:.1f}s (hung? no quorum?)")
                continue
            except httpx.HTTPError as exc:
                _refused_tls(url, exc)
                if write:
                    raise UnknownOutcomeError(
                        f"etcd at {url} broke off during the write ({_reason(exc)})"
                    ) from None
                problems.append(f"{url}: {_reason(exc)}")
                continue
            except _TryNext as exc:
                problems.append(f"{url}: {exc}")
                continue
            self._good = index
            return result
        raise StoreUnavailableError(
            f"cannot reach the etcd cluster of {self.location} within {budget:g}s: "
            + "; ".join(problems)
        )

    def _refused(self, url: str, message: str, *, write: bool) -> None:
        """Raise what etcd's error `message` means when another member would not do
        better (compacted, auth, limits, a refused write); return when one might."""
        if "compacted" in message:
            raise CompactedError(f"etcd: {message}")
        if any(refused in message for refused in _AUTH_REFUSED):
            who = f"user {self._user!r}" if self._user else "no user"
            raise AuthError(
                f"etcd at {url} refused the request ({who}): {message}"
                + (
                    ""
                    if self._user
                    else f" (the cluster asks for a user: set ${ENV_USER} and"
                    f" ${ENV_PASSWORD_FILE}, or a client certificate)"
                )
            )
        if "too many operations" in message:
            raise StoreError(
                f"etcd refused the write: {message} (raise the cluster's"
                f" --max-txn-ops, or set ${ENV_MAX_TXN_OPS} to the cluster's value)"
            )
        if "request is too large" in message:
            raise StoreError(
                f"etcd refused the write: {message} (raise the cluster's"
                " --max-request-bytes, or lower the store's max value size)"
            )
        if write and "no leader" not in message:
            raise StoreError(f"etcd at {url}: {message}")

    def range(
        self,
        key: bytes,
        end: bytes | None = None,
        *,
        revision: int = 0,
        limit: int = 0,
        keys_only: bool = False,
    ) -> tuple[list[dict[str, Any]], int]:
        body: dict[str, Any] = {"key": b64(key)}
        if end is not None:
            body["range_end"] = b64(end)
        if revision:
            body["revision"] = str(revision)
        if limit:
            body["limit"] = str(limit)
        if keys_only:
            body["keys_only"] = True
        data = self.call("/v3/kv/range", body)
        return list(data.get("kvs", [])), int(data["header"]["revision"])

    def range_all(
        self, key: bytes, end: bytes, *, page: int, deadline: float
    ) -> tuple[list[dict[str, Any]], int]:
        """Every key in [key, end) at one revision, `page` keys per request, all of it
        before `deadline` (time.monotonic())."""
        out: list[dict[str, Any]] = []
        kvs, revision = self.range(key, end, limit=page)
        while True:
            out.extend(kvs)
            if len(kvs) < page:
                return out, revision
            if time.monotonic() > deadline:
                raise StoreError(
                    f"loading {self.location} took longer than ${ENV_LOAD_TIMEOUT}"
                    f" ({len(out)} keys read): raise it"
                )
            start = unb64(kvs[-1]["key"]) + b"\0"
            kvs, _ = self.range(start, end, revision=revision, limit=page)

    def load(
        self,
        ranges: list[tuple[bytes, bytes]],
        *,
        deadline: float,
        revision: int = 0,
        on_page: Callable[[list[tuple[bytes, bytes]]], None] | None = None,
    ) -> tuple[dict[bytes, bytes], int]:
        """Every key in these ranges at one revision (`revision`, or the latest), all
        of it before `deadline`
        (time.monotonic()): over gRPC where the cluster speaks it (protobuf, ~5x the
        gateway's JSON), in pages of about LOAD_PAGE_BYTES, each page a request
        within the request timeout; the ranges after the first (which fixes the
        revision) LOAD_STREAMS at a time, so etcd encodes while we decode. `on_page` sees
        each page as it comes, on the thread that read it (while others wait on etcd)."""
        stop = threading.Event()

        def one(start: bytes, end: bytes, revision: int) -> tuple[dict[bytes, bytes], int]:
            out: dict[bytes, bytes] = {}
            key, limit = start, LOAD_FIRST_PAGE
            while not stop.is_set():
                if time.monotonic() > deadline:
                    raise StoreError(
                        f"loading {self.location} took longer than ${ENV_LOAD_TIMEOUT}"
                        f" ({len(out)} keys of a range read): raise it"
                    )
                kvs, at, more, size = self._page(key, end, revision, limit)
                revision = revision or at
                out.update(kvs)
                if on_page is not None:
                    on_page(kvs)
                if not more or not kvs:
                    break
                key = kvs[-1][0] + b"\0"
                limit = min(
                    LOAD_MAX_PAGE, max(LOAD_MIN_PAGE, limit * LOAD_PAGE_BYTES // max(1, size))
                )
            return out, revision

        (start, end), *rest = ranges
        out, revision = one(start, end, revision)
        with ThreadPoolExecutor(LOAD_STREAMS, thread_name_prefix="secretfs-etcd-load") as pool:
            try:
                for part, _ in pool.map(lambda r: one(r[0], r[1], revision), rest):
                    out.update(part)
            finally:
                stop.set()  # one range failed: the others stop at their next page
        return out, revision

    def _page(
        self, key: bytes, end: bytes, revision: int, limit: int
    ) -> tuple[list[tuple[bytes, bytes]], int, bool, int]:
        """One page of load(): its keys and values, its revision, whether more follow,
        and its size in bytes."""
        if self._grpc:
            try:
                return self._each_endpoint(
                    lambda url, limit_s: self._grpc_page(url, key, end, revision, limit, limit_s),
                    None,
                    write=False,
                )
            except (kvgrpc.NotGrpcError, StoreUnavailableError) as exc:
                # Not gRPC there (a proxy that speaks HTTP/1.1?), or no member answers:
                # the gateway says which, and when it answers, it does the rest.
                log.warning(
                    "etcd at %s: no gRPC (%s): loading through the JSON gateway", self.location, exc
                )
                self._grpc = False
        kvs, at = self.range(key, end, revision=revision, limit=limit)
        data = [(unb64(kv["key"]), unb64(kv.get("value"))) for kv in kvs]
        return data, at, len(kvs) == limit, sum(len(k) + len(v) for k, v in data)

    def _grpc_page(
        self, url: str, key: bytes, end: bytes, revision: int, limit: int, timeout: float
    ) -> tuple[list[tuple[bytes, bytes]], int, bool, int]:
        body = kvgrpc.range_request(key, end, revision=revision, limit=limit)
        content, answer = self._grpc_call(
            url, kvgrpc.RANGE_PATH, body, kvgrpc.parse_range, timeout, write=False
        )
        kvs = [(kv.key, kv.value) for kv in answer.kvs]
        return kvs, int(answer.header.revision), bool(answer.more), len(content)

    def _grpc_call(
        self,
        url: str,
        path: str,
        body: bytes,
        parse: Callable[[int, Any, bytes], _A],
        timeout: float,
        *,
        write: bool,
    ) -> tuple[bytes, _A]:
        """One gRPC call to `url`: the answer's bytes and `parse` of them. The token is
        renewed once when etcd says it expired; an error etcd gives is raised as the
        gateway's would be (_refused), else _TryNext."""
        if self._h2 is None:
            self._h2 = httpx.Client(http1=False, http2=True, verify=self._verify, trust_env=False)
        limits = httpx.Timeout(timeout, connect=min(CONNECT_TIMEOUT, timeout))
        for renew in (False, True):
            headers = {"content-type": "application/grpc", "te": "trailers", "hasleader": "true"}
            token = self._headers(url, renew=renew).get("Authorization")
            if token is not None:
                headers["token"] = token
            response = self._h2.post(url + path, content=body, headers=headers, timeout=limits)
            try:
                return response.content, parse(
                    response.status_code, response.headers, response.content
                )
            except kvgrpc.GrpcStatusError as exc:
                message = str(exc)
                if not renew and self._user is not None and any(t in message for t in _TOKEN_STALE):
                    continue
                self._refused(url, message, write=write)
                raise _TryNext(message) from None
        raise AssertionError("unreachable")

    def txn(self, txn: Txn, *, write: bool = False) -> TxnAnswer:
        """One Txn on the first member that answers (as call()): over gRPC, or the JSON
        gateway where a member does not speak it."""
        if self._grpc:
            body = kvgrpc.txn_request(txn)
            try:
                return self._each_endpoint(
                    lambda url, limit: self._grpc_call(
                        url, kvgrpc.TXN_PATH, body, kvgrpc.parse_txn, limit, write=write
                    )[1],
                    None,
                    write=write,
                )
            except kvgrpc.NotGrpcError as exc:
                # Answered, but not as gRPC: nothing was applied. The gateway from now on.
                log.warning("etcd at %s: no gRPC (%s): using the JSON gateway", self.location, exc)
                self._grpc = False
        return from_json(self.call("/v3/kv/txn", to_json(txn), write=write))

    def watch(
        self, key: bytes, end: bytes, start_revision: int, idle: float
    ) -> Generator[dict[str, Any], None, None]:
        """The watch's results, from the first endpoint that takes it; StoreError when
        none does, when the stream breaks, or when it delivers nothing (not even a
        progress notification) for `idle` seconds: the next try starts elsewhere."""
        body = {
            "create_request": {
                "key": b64(key),
                "range_end": b64(end),
                "start_revision": str(start_revision),
                "progress_notify": True,
            }
        }
        problems: list[str] = []
        for index in self._order():
            url = self._urls[index]
            timeout = httpx.Timeout(idle, connect=CONNECT_TIMEOUT)
            established = False
            try:
                with self._client.stream(
                    "POST",
                    url + "/v3/watch",
                    json=body,
                    timeout=timeout,
                    headers=self._headers(url),
                ) as response:
                    if response.status_code != 200:
                        self._token = None  # an expired token shows here: a new one next
                        problems.append(f"{url}: HTTP {response.status_code}")
                        continue
                    established = True
                    with self._watch_lock:
                        self._watch_response = response
                        self.watch_url = url
                    self._good = index
                    for line in response.iter_lines():
                        if not line.strip():
                            continue
                        message = json.loads(line)
                        if "error" in message:
                            error = message["error"]
                            raise StoreError(f"etcd watch at {url}: {error.get('message', error)}")
                        yield dict(message.get("result", {}))
            except httpx.ReadTimeout:
                self._good = (index + 1) % len(self._urls)  # try another member next
                raise WatchIdleError(f"etcd watch at {url}: sent nothing for {idle:g}s") from None
            except httpx.HTTPError as exc:
                problems.append(f"{url}: {_reason(exc)}")
                if established:
                    break  # it was established, then broke: the caller decides what next
                continue
            finally:
                with self._watch_lock:
                    self._watch_response = None
                    self.watch_url = None
            problems.append(f"{url}: the watch ended")
            break
        raise StoreError(f"etcd watch on {self.location}: " + "; ".join(problems))

    def stop_watch(self, *, elsewhere: bool = False) -> None:
        """Break the current watch stream now, from another thread (a read blocked on a
        hung member included); `elsewhere`: the next watch starts on another member."""
        with self._watch_lock:
            response = self._watch_response
            if response is not None and elsewhere and self.watch_url in self._urls:
                self._good = (self._urls.index(self.watch_url) + 1) % len(self._urls)
        if response is None:
            return
        stream = response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is not None:
            # close() alone does not wake a recv() in another thread; shutdown does.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(Exception):
            response.close()


def _refused_tls(url: str, exc: BaseException) -> None:
    """A TLS handshake refused (no or unknown client certificate, unverifiable server):
    AuthError saying so, not "cannot reach the cluster"."""
    text = _reason(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        raise AuthError(
            f"cannot verify the certificate of etcd at {url}: {text} (is ${ENV_CACERT} the"
            " cluster's CA?)"
        )
    if "certificate" in text.lower() and "alert" in text.lower():
        raise AuthError(
            f"etcd at {url} refused our TLS client certificate: {text} (the cluster asks for"
            f" one its CA signed: set ${ENV_CERT} and ${ENV_CERT_KEY})"
        )


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text[:200] if text else type(exc).__name__

"""GetSecrets as pure logic: a caller and a pattern in, envelopes or a Connect error out.

The caller gets exactly what the mount would let it open: the tree's own check (mode
bits, then grants) on the secret's current version, decrypted through the mount's
verified versions. A pattern with a wildcard returns the secrets (whole values, never
fields) the caller may read, and is silent about the rest, as a directory listing is;
a pattern without one names a single ID (a secret or a field), and one the caller may
not read is `permission_denied`. Each envelope served and each denial is audited as an
open, with "resolver" as the way in. If one matched value does not decrypt, the whole
request fails (`internal`) and that is audited: the protocol has no per-item error.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import trio

from secretfs import audit as _audit
from secretfs import expiry, fields, sealing
from secretfs.access import Caller
from secretfs.errors import NotFoundError, RefError, SecretfsError
from secretfs.refs import Ref, Scope
from secretfs.resolver.ids import InvalidPattern, Pattern, id_to_ref, parse_pattern, scope_prefix
from secretfs.resolver.messages import Envelope
from secretfs.store import ClientKeyRecord, SecretMeta
from secretfs.tree import Tree
from secretfs.verified import VerifiedVersions

PROVIDER = "secretfs"
NOT_FOUND = "secret not found"  # the engine's ErrNotFound, word for word
PARSED_KEPT = 4096  # patterns kept parsed, at most
CHECKPOINT_EVERY = 128  # envelopes decrypted between two yields to the FUSE loop

# Connect's error codes and the HTTP status each is sent with (connectrpc.com/docs/protocol).
CODE_STATUS = {
    "canceled": 499,
    "unknown": 500,
    "invalid_argument": 400,
    "deadline_exceeded": 504,
    "not_found": 404,
    "already_exists": 409,
    "permission_denied": 403,
    "resource_exhausted": 429,
    "failed_precondition": 400,
    "aborted": 409,
    "out_of_range": 400,
    "unimplemented": 501,
    "internal": 500,
    "unavailable": 503,
    "data_loss": 500,
    "unauthenticated": 401,
}


class ConnectError(Exception):
    """A Connect error: `code` is one of CODE_STATUS; `message` never holds a value."""

    def __init__(self, code: str, message: str) -> None:
        assert code in CODE_STATUS
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def status(self) -> int:
        return CODE_STATUS[self.code]


@dataclass(frozen=True, slots=True)
class RequestOptions:
    """How the caller wants its envelopes. `sealed_to`: each value is sealed to that
    client key (docs/sealed.md), `bound` in the form that binds ref and version; then a
    sealed-only grant suffices, as for the mount's `.sealed/` tree."""

    sealed_to: ClientKeyRecord | None = None
    bound: bool = False

    def may(self, tree: Tree, meta: SecretMeta, caller: Caller) -> bool:
        if self.sealed_to is not None:
            return tree.may_read_sealed(meta, caller)
        return tree.may_read(meta, caller)

    def detail(self) -> str | None:
        """The audit detail of what is served (who it was sealed to), if anything."""
        if self.sealed_to is None:
            return None
        return sealing.sealed_detail(self.sealed_to.key_id, self.bound)


@dataclass(frozen=True, slots=True)
class Match:
    """One secret (or one field of it) a request resolves to."""

    meta: SecretMeta
    field: tuple[str, ...]
    id: str
    ref: str  # canonical $S: text
    bulk: bool = False  # one of many (a wildcard): read past the mount's kept versions


class Resolver:
    def __init__(
        self,
        tree: Tree,
        versions: VerifiedVersions,
        audit: _audit.AuditQueue,
        catch_up: Callable[[], bool] = lambda: False,
        clock: Callable[[], int] = time.time_ns,
        refusal: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.tree = tree
        # Why the mount serves nothing now (store replaced, audit not written), as for opens.
        self._refusal = refusal
        self._versions = versions  # the mount's: verified once, kept sealed
        self.audit = audit
        # Takes in store changes not yet polled (one cheap query when there are none).
        self._catch_up = catch_up
        self._clock = clock
        self._names = _audit.ProcessNames()
        self._prefixes: dict[str, tuple[tuple[str, ...], str]] = {}
        # Patterns as parsed (pure): the same IDs are asked for again and again.
        self._parsed: dict[str, tuple[Pattern, Ref | None]] = {}

    # -- which secrets -------------------------------------------------------------------

    def plan(self, caller: Caller, text: str, options: RequestOptions | None = None) -> list[Match]:
        """What `text` resolves to for `caller`, not decrypted yet (ConnectError if
        nothing, or if it names one ID the caller may not read)."""
        parsed = self._parsed.get(text)
        if parsed is None:
            try:
                pattern = parse_pattern(text)
            except InvalidPattern as exc:
                raise ConnectError(
                    "invalid_argument", f"invalid pattern {_go_quote(text)}: {exc}"
                ) from None
            parsed = (pattern, id_to_ref(text) if pattern.literal else None)
            if len(self._parsed) >= PARSED_KEPT:
                self._parsed.clear()
            self._parsed[text] = parsed
        pattern, ref = parsed
        self._catch_up()  # a write just made is served by the next request, as by an open
        opts = options or RequestOptions()
        if pattern.literal:
            return [self._exact(caller, text, ref, opts)]
        found = self._scan(caller, pattern, opts)
        if not found:
            raise ConnectError("not_found", NOT_FOUND)
        return found

    def _exact(self, caller: Caller, text: str, ref: Ref | None, options: RequestOptions) -> Match:
        if ref is None:
            raise ConnectError("not_found", NOT_FOUND)
        meta = self.tree.find(ref.scope.key, ref.name)
        if meta is None:
            raise ConnectError("not_found", NOT_FOUND)
        match = Match(meta, ref.field, text, str(ref))
        if not options.may(self.tree, meta, caller):
            self._record(caller, match, _audit.DENIED, _join("EACCES", options.detail()))
            raise ConnectError("permission_denied", f"permission denied: {text}")
        return match

    def _scan(self, caller: Caller, pattern: Pattern, options: RequestOptions) -> list[Match]:
        out: list[Match] = []
        for scope, names in self.tree.scopes():
            prefix, ref_prefix = self._prefix(scope)
            if not pattern.could_match_below(prefix):
                continue
            for name, meta in names.items():
                parts = (*prefix, name)
                if pattern.match(parts) and options.may(self.tree, meta, caller):
                    out.append(Match(meta, (), "/".join(parts), ref_prefix + name, True))
        out.sort(key=lambda m: m.id)
        return out

    def _prefix(self, scope: str) -> tuple[tuple[str, ...], str]:
        """A scope's ID components and the start of its refs (`$S:@api/`), made once."""
        known = self._prefixes.get(scope)
        if known is None:
            if len(self._prefixes) >= 4096:
                self._prefixes.clear()
            try:
                parsed = Scope.from_key(scope)
                known = (scope_prefix(parsed), str(Ref(parsed, "x"))[:-1])
            except RefError:
                known = (("",), "")  # matches no pattern: a pattern has no empty component
            self._prefixes[scope] = known
        return known

    # -- their values --------------------------------------------------------------------

    def envelope(
        self, caller: Caller, match: Match, now_ns: int, options: RequestOptions
    ) -> tuple[Match, Envelope]:
        """Decrypt one match into its envelope, with the match as served (ConnectError:
        not_found for a field the secret does not have, internal for a value that does
        not decrypt). A version pruned since the match was made is served as the one
        current now, if the caller may read that one too."""

        def load(meta: SecretMeta) -> bytes:
            if meta is not match.meta and not options.may(self.tree, meta, caller):
                raise NotFoundError(NOT_FOUND)
            return self._value(meta, match.bulk)

        try:
            meta, value = self.tree.load_current(match.meta, load, self._catch_up)
            if meta is not match.meta:
                match = replace(match, meta=meta)
            if match.field:
                value = fields.extract(value, match.field)
        except NotFoundError:
            raise ConnectError("not_found", NOT_FOUND) from None
        except SecretfsError as exc:
            raise ConnectError(
                "internal", f"failed to get secret {_go_quote(match.id)}: {type(exc).__name__}"
            ) from exc
        metadata = {"ref": match.ref}
        key = options.sealed_to
        if key is not None:
            try:
                value = sealing.seal_envelope_value(
                    value, key, bound=options.bound, ref=match.ref, version=meta.version
                )
            except SecretfsError as exc:  # revoked since the request was read
                raise ConnectError("permission_denied", str(exc)) from None
            metadata.update(sealing.envelope_metadata(key, options.bound))
        return match, Envelope(
            id=match.id,
            value=value,
            version=str(meta.version),
            created_ns=meta.updated_ns,
            resolved_ns=now_ns,
            expires_ns=meta.expires_ns,
            metadata=metadata,
            provider=PROVIDER,
        )

    def _value(self, meta: SecretMeta, bulk: bool) -> bytes:
        if bulk:
            # A `**` over thousands would push out every version the mount's opens keep.
            kept = self._versions.peek(meta.secret_id, meta.version)
            sealed = kept or self._versions.load(meta.secret_id, meta.version)
            return sealed.open()
        sealed, value = self._versions.get(meta.secret_id, meta.version)
        return sealed.open() if value is None else value

    async def get_secrets(
        self, caller: Caller, text: str, options: RequestOptions | None = None
    ) -> list[Envelope]:
        """The envelopes `text` resolves to for `caller`, audited (ConnectError else).

        Yields to the loop every CHECKPOINT_EVERY envelopes: a `**` over thousands of
        secrets must not hold up the mount's reads.
        """
        opts = options or RequestOptions()
        refused = self._refusal()
        if refused is not None:
            raise ConnectError("unavailable", f"not serving: {refused}")
        matches = self.plan(caller, text, opts)
        now = self._clock()
        out: list[Envelope] = []
        for i, match in enumerate(matches):
            if i and i % CHECKPOINT_EVERY == 0:
                await trio.lowlevel.checkpoint()
            try:
                matches[i], envelope = self.envelope(caller, match, now, opts)
            except ConnectError as exc:
                if exc.code == "internal":
                    self._record(caller, match, _audit.ERROR, _join("EIO", opts.detail()))
                raise
            out.append(envelope)
        process = self._names.get(caller.pid)
        for match in matches:
            # The sealed detail first: the audit writer reads the key id from its start.
            detail = _join(opts.detail(), self._expired(match.meta, now))
            self._record(caller, match, _audit.ALLOWED, detail, now, process)
        return out

    # -- audit ---------------------------------------------------------------------------

    @staticmethod
    def _expired(meta: SecretMeta, now_ns: int) -> str | None:
        if meta.expires_ns is None:
            return None
        return "expired" if expiry.status(meta, now_ns).expired else None

    def _record(
        self,
        caller: Caller,
        match: Match,
        outcome: str,
        detail: str | None,
        now_ns: int | None = None,
        process: str | None = None,
    ) -> None:
        self.audit.add(
            _audit.AuditRecord(
                time_ns=self._clock() if now_ns is None else now_ns,
                source=_audit.SOURCE_RESOLVER,
                action="open",
                ref=match.ref,
                version=match.meta.version,
                uid=caller.uid,
                gid=caller.gid,
                pid=caller.pid,
                process=self._names.get(caller.pid) if process is None else process,
                outcome=outcome,
                detail=detail,
            )
        )


def _join(*parts: str | None) -> str | None:
    return " ".join(p for p in parts if p) or None


def _go_quote(text: str) -> str:
    """`text` as Go's %q prints it (the engine's messages), cut at 200 characters."""
    cut = text[:200]
    out = ['"']
    for ch in cut:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}" if ord(ch) > 0x7F else f"\\x{ord(ch):02x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    out.append('"')
    return "".join(out) + ("..." if len(text) > 200 else "")

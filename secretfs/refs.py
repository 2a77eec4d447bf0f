"""References, scopes and paths: the ``$S:`` grammar and its one-to-one map to the tree.

A reference names a secret (and optionally a field inside a JSON secret) in one of four
scopes. Each reference has exactly one path under the mount and one canonical text:

=================== ======================= ==============================
scope               reference               path under the mount
=================== ======================= ==============================
deployment          ``$S:name``             ``deployment/name``
service             ``$S:@svc/name``        ``@svc/name``
environment         ``$S::env/name``        ``env/env/name``
project environment ``$S:proj:env/name``    ``project/proj/env/name``
=================== ======================= ==============================

A field is appended as ``/a/b/0`` to the reference and lives under ``<name>.d/`` in the
tree (``deployment/name.d/a/b/0``). The grammar is a superset of ZLayer's: ZLayer takes
one top-level field only, we take a path.

Every error raised here is a :class:`~secretfs.errors.RefError` whose message says what
went wrong and what is allowed, and quotes the offending input (truncated) and nothing
else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, get_args

from secretfs.errors import RefError

__all__ = [
    "DEPLOYMENT",
    "MAX_FIELD_COMPONENT_BYTES",
    "MAX_NAME_BYTES",
    "NAME_RE",
    "PREFIX",
    "SECRET_URL_PREFIX",
    "Ref",
    "Scope",
    "ScopeKind",
    "format_ref",
    "is_valid_field_key",
    "name_problem",
    "parse_ref",
    "parse_scope",
    "path_to_ref",
    "ref_to_path",
    "validate_field_component",
    "validate_name",
]

ScopeKind = Literal["deployment", "service", "env", "project"]
_SCOPE_KINDS: frozenset[str] = frozenset(get_args(ScopeKind))

#: Allowed names (secret, service, env, project). Use ``NAME_RE.fullmatch`` (or
#: :func:`validate_name`): with ``match``, ``$`` would also accept one trailing newline.
NAME_RE: re.Pattern[str] = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?$")
MAX_NAME_BYTES = 253
MAX_FIELD_COMPONENT_BYTES = 255
#: Suffix of the directory that holds a JSON secret's fields; names may not end in it.
FIELD_DIR_SUFFIX = ".d"

PREFIX = "$S:"
SECRET_URL_PREFIX = "$secret://"  # noqa: S105 - a syntax prefix, not a password

_QUOTE_LIMIT = 80
_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_NAME_CHARS = _ALNUM | frozenset("_.-")

_NAME_RULE = (
    "names may use letters, digits, '_', '.' and '-', must start and end with a letter "
    f"or digit, be at most {MAX_NAME_BYTES} bytes, and must not end in "
    f"'{FIELD_DIR_SUFFIX}' (reserved for field directories)"
)
_FIELD_RULE = (
    "a field path component (a JSON key or array index) must be non-empty, not '.' or "
    f"'..', contain no '/' or NUL, and be at most {MAX_FIELD_COMPONENT_BYTES} bytes of UTF-8"
)
_REF_FORMS = (
    "expected $S:name, $S:@service/name, $S::env/name or $S:project:env/name "
    "(the '$S:' prefix is optional; $secret://env/name means $S::env/name), "
    "each optionally followed by /field/path"
)
_PATH_FORMS = (
    "expected deployment/<name>, @<service>/<name>, env/<env>/<name> or "
    "project/<project>/<env>/<name>, or a field file <that path>.d/<field>/..."
)
_SCOPE_FORMS = (
    "expected a scope: deployment, @service, env/<env> (or :env), "
    "project/<project>/<env> (or project:env); the '$S:' prefix is optional "
    "on the @service, :env and project:env forms"
)


def _quote(text: str) -> str:
    """Quote user input for an error message, cut at a bounded length."""
    if len(text) > _QUOTE_LIMIT:
        return f"{text[:_QUOTE_LIMIT]!r}... ({len(text)} characters)"
    return repr(text)


# --------------------------------------------------------------------------- names


def _name_problem(name: str) -> str | None:
    """Why ``name`` is not an allowed name, or None when it is."""
    if not name:
        return "is empty"
    if NAME_RE.fullmatch(name) is None:
        bad = next((c for c in name if c not in _NAME_CHARS), None)
        if bad is not None:
            return f"contains {bad!r}"
        if name[0] not in _ALNUM:
            return f"starts with {name[0]!r}"
        return f"ends with {name[-1]!r}"
    if len(name) > MAX_NAME_BYTES:  # ASCII only once NAME_RE matched: chars == bytes
        return f"is {len(name)} bytes long"
    if name.endswith(FIELD_DIR_SUFFIX):
        return f"ends in '{FIELD_DIR_SUFFIX}'"
    return None


def _check_name(name: str, what: str, context: str | None = None) -> str:
    problem = _name_problem(name)
    if problem is not None:
        where = f" in {_quote(context)}" if context not in (None, name) else ""
        raise RefError(f"invalid {what} {_quote(name)}{where}: it {problem}; {_NAME_RULE}")
    return name


def validate_name(name: str, what: str = "secret name") -> str:
    """Return ``name`` if it is an allowed secret/service/env/project name.

    Raise :class:`RefError` otherwise, with a message that says what is allowed.
    ``what`` names the thing in the message (``"service name"``, ``"env name"``...).
    """
    if not isinstance(name, str):
        raise RefError(f"invalid {what}: expected text; {_NAME_RULE}")
    return _check_name(name, what)


def name_problem(name: str) -> str | None:
    """Why ``name`` is not an allowed name, without quoting it; None when it is allowed.

    For input that may be a value read in the wrong place (a mis-parsed import line):
    the message says what is wrong and what is allowed, never the text itself.
    """
    problem = _name_problem(name)
    return None if problem is None else f"it {problem}; {_NAME_RULE}"


def _field_problem(part: str) -> str | None:
    if not part:
        return "is empty"
    if part in (".", ".."):
        return f"is {part!r}"
    if "/" in part:
        return "contains '/'"
    if "\x00" in part:
        return "contains NUL"
    try:
        size = len(part.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid Unicode text"
    if size > MAX_FIELD_COMPONENT_BYTES:
        return f"is {size} bytes long"
    return None


def _check_field(part: str, context: str | None = None) -> str:
    problem = _field_problem(part)
    if problem is not None:
        where = f" in {_quote(context)}" if context not in (None, part) else ""
        raise RefError(
            f"invalid field path component {_quote(part)}{where}: it {problem}; {_FIELD_RULE}"
        )
    return part


def validate_field_component(part: str) -> str:
    """Return ``part`` if it is usable as one field path component (and file name)."""
    if not isinstance(part, str):
        raise RefError(f"invalid field path component: expected text; {_FIELD_RULE}")
    return _check_field(part)


def is_valid_field_key(key: str) -> bool:
    """True when the JSON key ``key`` can be a file name in a ``<name>.d/`` directory."""
    return isinstance(key, str) and _field_problem(key) is None


# --------------------------------------------------------------------------- scopes


@dataclass(frozen=True, slots=True)
class Scope:
    """One of the four scopes. Construction validates: an invalid Scope cannot exist."""

    kind: ScopeKind
    service: str | None = None  # kind == "service"
    env: str | None = None  # kind in ("env", "project")
    project: str | None = None  # kind == "project"

    def __post_init__(self) -> None:
        if self.kind not in _SCOPE_KINDS:
            raise RefError(
                f"invalid scope kind {_quote(str(self.kind))}: expected one of "
                "'deployment', 'service', 'env', 'project'"
            )
        wanted = {
            "deployment": (),
            "service": ("service",),
            "env": ("env",),
            "project": ("project", "env"),
        }[self.kind]
        for attr in ("service", "env", "project"):
            value = getattr(self, attr)
            if attr in wanted:
                if not isinstance(value, str):
                    raise RefError(f"a {self.kind} scope needs a {attr} name; {_NAME_RULE}")
                _check_name(value, f"{attr} name")
            elif value is not None:
                raise RefError(
                    f"a {self.kind} scope takes no {attr} name (got {_quote(str(value))})"
                )

    @property
    def key(self) -> str:
        """Canonical storage key, equal to the scope's directory under the mount."""
        return "/".join(self.path_parts())

    @classmethod
    def from_key(cls, key: str) -> Scope:
        """Inverse of :attr:`key`: ``deployment``, ``@svc``, ``env/e``, ``project/p/e``."""
        if not isinstance(key, str):
            raise RefError(f"invalid scope key: expected text; {_SCOPE_FORMS}")
        parts = key.split("/")
        head = parts[0]
        if head == "deployment" and len(parts) == 1:
            return DEPLOYMENT
        if head.startswith("@") and len(parts) == 1:
            return cls("service", service=_check_name(head[1:], "service name", key))
        if head == "env" and len(parts) == 2:
            return cls("env", env=_check_name(parts[1], "env name", key))
        if head == "project" and len(parts) == 3:
            return cls(
                "project",
                project=_check_name(parts[1], "project name", key),
                env=_check_name(parts[2], "env name", key),
            )
        raise RefError(
            f"invalid scope key {_quote(key)}: expected deployment, @<service>, "
            "env/<env> or project/<project>/<env>"
        )

    def path_parts(self) -> tuple[str, ...]:
        """The scope's directory under the mount, as path components."""
        if self.kind == "deployment":
            return ("deployment",)
        if self.kind == "service":
            return (f"@{self.service}",)
        if self.kind == "env":
            return ("env", str(self.env))
        return ("project", str(self.project), str(self.env))

    def _ref_prefix(self) -> str:
        """The scope's part of a canonical reference, up to and including the '/'."""
        if self.kind == "deployment":
            return PREFIX
        if self.kind == "service":
            return f"{PREFIX}@{self.service}/"
        if self.kind == "env":
            return f"{PREFIX}:{self.env}/"
        return f"{PREFIX}{self.project}:{self.env}/"

    def __str__(self) -> str:
        return self.key


DEPLOYMENT: Scope = Scope("deployment")


# --------------------------------------------------------------------------- refs


@dataclass(frozen=True, slots=True)
class Ref:
    """A secret (``field == ()``) or a field inside a JSON secret. Validated on creation."""

    scope: Scope
    name: str
    field: tuple[str, ...] = ()  # JSON field path, e.g. ("a", "b", "0")

    def __post_init__(self) -> None:
        if not isinstance(self.scope, Scope):
            raise RefError("a reference needs a Scope")
        if not isinstance(self.name, str):
            raise RefError(f"invalid secret name: expected text; {_NAME_RULE}")
        _check_name(self.name, "secret name")
        if isinstance(self.field, str) or not all(isinstance(p, str) for p in self.field):
            raise RefError(f"a field path is a sequence of components; {_FIELD_RULE}")
        if not isinstance(self.field, tuple):
            object.__setattr__(self, "field", tuple(self.field))
        for part in self.field:
            _check_field(part)

    def __str__(self) -> str:
        return format_ref(self)

    def without_field(self) -> Ref:
        """The whole secret this reference points into."""
        return self if not self.field else Ref(self.scope, self.name)

    @property
    def path(self) -> str:
        """Relative path of the file under the mount (see :func:`ref_to_path`)."""
        return ref_to_path(self)


def format_ref(ref: Ref) -> str:
    """Canonical ``$S:`` text of ``ref``; :func:`parse_ref` gives ``ref`` back."""
    text = ref.scope._ref_prefix() + ref.name
    if ref.field:
        text += "/" + "/".join(ref.field)
    return text


def _split_fields(rest: str, text: str) -> tuple[str, ...]:
    """Field path after a name's '/': every component must be valid (no '//', no '/' end)."""
    if rest == "":
        raise RefError(
            f"trailing '/' in reference {_quote(text)}: a '/' after the name must be "
            f"followed by a field path; {_REF_FORMS}"
        )
    return tuple(_check_field(part, text) for part in rest.split("/"))


def _parse_body(body: str, text: str) -> Ref:
    """Parse the part of a reference after an optional ``$S:`` prefix."""
    if body == "":
        raise RefError(f"empty reference {_quote(text)}: {_REF_FORMS}")

    if body.startswith("@"):
        svc, slash, rest = body[1:].partition("/")
        if not slash:
            raise RefError(f"service reference {_quote(text)} has no secret name: {_REF_FORMS}")
        if svc == "":
            raise RefError(
                f"service reference {_quote(text)} has an empty service name: {_REF_FORMS}"
            )
        scope = Scope("service", service=_check_name(svc, "service name", text))
    else:
        head, slash, rest = body.partition("/")
        if ":" in head:
            if not slash:
                raise RefError(
                    f"invalid reference {_quote(text)}: a ':' form needs "
                    f"[project]:env/name; {_REF_FORMS}"
                )
            parts = head.split(":")
            if len(parts) != 2:
                raise RefError(
                    f"invalid reference {_quote(text)}: at most one ':' before "
                    f"the first '/'; {_REF_FORMS}"
                )
            project, env = parts
            if env == "":
                raise RefError(f"reference {_quote(text)} has an empty env name: {_REF_FORMS}")
            _check_name(env, "env name", text)
            if project == "":
                scope = Scope("env", env=env)
            else:
                scope = Scope(
                    "project", project=_check_name(project, "project name", text), env=env
                )
        else:
            if head == "":
                raise RefError(f"reference {_quote(text)} has an empty secret name: {_REF_FORMS}")
            return _finish(DEPLOYMENT, head, slash, rest, text)

    # Scoped forms: ``rest`` is "name[/field...]".
    name, slash, fields = rest.partition("/")
    return _finish(scope, name, slash, fields, text)


def _finish(scope: Scope, name: str, slash: str, fields: str, text: str) -> Ref:
    if name == "":
        raise RefError(f"reference {_quote(text)} has an empty secret name: {_REF_FORMS}")
    _check_name(name, "secret name", text)
    field = _split_fields(fields, text) if slash else ()
    return Ref(scope, name, field)


def parse_ref(text: str) -> Ref:
    """Parse a reference.

    Accepted: the ``$S:`` forms (``$S:name``, ``$S:@svc/name``, ``$S::env/name``,
    ``$S:proj:env/name``, each optionally followed by ``/field/path``), the same forms
    without the ``$S:`` prefix (``@api/db``, ``:staging/db``, ``shop:prod/db``,
    ``db/field``), and ``$secret://env/KEY[/field...]`` (meaning ``$S::env/KEY[...]``).
    The ``$S:`` prefix is case-sensitive. Anything else raises :class:`RefError`.
    """
    if not isinstance(text, str):
        raise RefError(f"a reference must be text; {_REF_FORMS}")
    if text.startswith(PREFIX):
        return _parse_body(text[len(PREFIX) :], text)
    if text[: len(PREFIX)].upper() == PREFIX.upper():
        raise RefError(
            f"invalid reference {_quote(text)}: the '$S:' prefix is case-sensitive; {_REF_FORMS}"
        )
    if text.startswith(SECRET_URL_PREFIX):
        rest = text[len(SECRET_URL_PREFIX) :]
        env, slash, _ = rest.partition("/")
        if env == "" or not slash:
            raise RefError(
                f"invalid reference {_quote(text)}: $secret:// takes "
                f"$secret://env/name[/field...]; {_REF_FORMS}"
            )
        return _parse_body(":" + rest, text)
    return _parse_body(text, text)


def parse_scope(text: str) -> Scope:
    """Parse a scope as the CLI takes it.

    Accepted: scope keys (``deployment``, ``@svc``, ``env/staging``,
    ``project/shop/prod``, each with at most one trailing ``/``) and the scope part of a
    reference (``@svc``, ``:staging``, ``shop:prod``, each optionally prefixed by
    ``$S:``). Anything else raises :class:`RefError`.
    """
    if not isinstance(text, str):
        raise RefError(f"a scope must be text; {_SCOPE_FORMS}")
    body = text
    prefixed = text.startswith(PREFIX)
    if prefixed:
        body = text[len(PREFIX) :]
    elif body.endswith("/") and ":" not in body:
        body = body[:-1]
    if body == "":
        raise RefError(f"empty scope {_quote(text)}: {_SCOPE_FORMS}")

    if ":" in body:
        parts = body.split(":")
        if len(parts) != 2:
            raise RefError(
                f"invalid scope {_quote(text)}: use exactly one ':' as in :env or "
                f"project:env; {_SCOPE_FORMS}"
            )
        project, env = parts
        if env == "":
            raise RefError(f"scope {_quote(text)} has an empty env name: {_SCOPE_FORMS}")
        _check_name(env, "env name", text)
        if project == "":
            return Scope("env", env=env)
        return Scope("project", project=_check_name(project, "project name", text), env=env)
    if body.startswith("@"):
        svc = body[1:]
        if svc == "":
            raise RefError(f"scope {_quote(text)} has an empty service name: {_SCOPE_FORMS}")
        if "/" not in svc:
            return Scope("service", service=_check_name(svc, "service name", text))
    elif not prefixed:
        parts = body.split("/")
        if parts == ["deployment"]:
            return DEPLOYMENT
        if parts[0] == "env" and len(parts) == 2:
            return Scope("env", env=_check_name(parts[1], "env name", text))
        if parts[0] == "project" and len(parts) == 3:
            return Scope(
                "project",
                project=_check_name(parts[1], "project name", text),
                env=_check_name(parts[2], "env name", text),
            )
    raise RefError(f"invalid scope {_quote(text)}: {_SCOPE_FORMS}")


# --------------------------------------------------------------------------- paths


def ref_to_path(ref: Ref) -> str:
    """Relative path of ``ref`` under the mount (no leading ``/``).

    ``deployment/db``, ``@api/token``, ``env/staging/db``, ``project/shop/prod/db``; a
    field is a file under ``<name>.d/``: ``deployment/db.d/a/b/0``.
    """
    parts = ref.scope.path_parts()
    if ref.field:
        return "/".join((*parts, ref.name + FIELD_DIR_SUFFIX, *ref.field))
    return "/".join((*parts, ref.name))


def path_to_ref(path: str) -> Ref:
    """Inverse of :func:`ref_to_path`. One leading ``/`` is tolerated.

    Raise :class:`RefError` when ``path`` is not the path of a secret or field file
    (for example a scope directory or a ``<name>.d`` directory).
    """
    if not isinstance(path, str):
        raise RefError(f"a path must be text; {_PATH_FORMS}")
    rel = path[1:] if path.startswith("/") else path
    parts = rel.split("/")
    head = parts[0]
    if head == "deployment":
        scope, rest = DEPLOYMENT, parts[1:]
    elif head.startswith("@") and len(head) > 1:
        scope = Scope("service", service=_check_name(head[1:], "service name", path))
        rest = parts[1:]
    elif head == "env" and len(parts) >= 2:
        scope, rest = Scope("env", env=_check_name(parts[1], "env name", path)), parts[2:]
    elif head == "project" and len(parts) >= 3:
        scope = Scope(
            "project",
            project=_check_name(parts[1], "project name", path),
            env=_check_name(parts[2], "env name", path),
        )
        rest = parts[3:]
    else:
        raise RefError(f"not a secret path {_quote(path)}: {_PATH_FORMS}")

    if not rest or rest == [""]:
        raise RefError(f"{_quote(path)} is a scope directory, not a secret: {_PATH_FORMS}")
    first = rest[0]
    if len(rest) == 1:
        if first.endswith(FIELD_DIR_SUFFIX) and _name_problem(first[:-2]) is None:
            raise RefError(f"{_quote(path)} is a field directory, not a file: {_PATH_FORMS}")
        return Ref(scope, _check_name(first, "secret name", path))
    if not first.endswith(FIELD_DIR_SUFFIX):
        raise RefError(
            f"not a secret path {_quote(path)}: fields live under "
            f"<name>{FIELD_DIR_SUFFIX}/; {_PATH_FORMS}"
        )
    name = _check_name(first[: -len(FIELD_DIR_SUFFIX)], "secret name", path)
    return Ref(scope, name, tuple(_check_field(part, path) for part in rest[1:]))

"""Docker secrets-engine IDs and patterns, and their one-to-one map to secretfs refs.

The grammar and the matching are the engine's (docker/secrets-engine `x/secrets`
identifiers.go and pattern.go), rule for rule:

- an ID is components of ``A-Z a-z 0-9 . _ : -`` joined by ``/``: none empty, no leading,
  trailing or double ``/``;
- a pattern is the same, except that a component may be exactly ``*`` (one component)
  or ``**`` (zero or more); ``*`` mixed with other characters is invalid.

A secretfs reference maps to exactly one ID, its scope kind first:

=================== ======================= ==============================
scope               reference               engine ID
=================== ======================= ==============================
deployment          ``$S:db``               ``deployment/db``
service             ``$S:@api/token``       ``service/api/token``
environment         ``$S::staging/db``      ``env/staging/db``
project environment ``$S:shop:prod/db``     ``project/shop/prod/db``
=================== ======================= ==============================

A JSON field follows as further components (``$S:@api/config/user`` is
``service/api/config/user``). Secret, service, env and project names use only ID
characters, so every secret has an ID; a field whose key holds any other character
(a space, ``@``, non-ASCII) has none and is reached through its whole secret.
"""

from __future__ import annotations

from secretfs.errors import RefError
from secretfs.refs import Ref, Scope

__all__ = [
    "Pattern",
    "id_to_ref",
    "parse_pattern",
    "ref_to_id",
    "scope_prefix",
    "valid_id",
]

_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-")
_PATTERN_CHARS = _ID_CHARS | {"*"}


class InvalidPattern(ValueError):
    """The engine's ErrInvalidPattern: its text is the engine's, "invalid pattern"."""

    def __init__(self) -> None:
        super().__init__("invalid pattern")


def _valid_component(part: str) -> bool:
    return bool(part) and all(c in _ID_CHARS for c in part)


def valid_id(text: str) -> bool:
    """The engine's validIdentifier."""
    return bool(text) and all(_valid_component(p) for p in text.split("/"))


def _valid_pattern_component(part: str) -> bool:
    if not part or any(c not in _PATTERN_CHARS for c in part):
        return False
    stars = part.count("*")
    # At most two stars, and a component with a star is stars only (`*`, `**`).
    return stars == 0 or (stars <= 2 and stars == len(part))


class Pattern:
    """A parsed pattern: match it against IDs (already split on `/`).

    Matching is the engine's, made safe against patterns built to backtrack forever
    (`**/a/**/a/...` against `a/a/a/...` would take exponential time, holding up the
    mount's loop): runs of `**` are one `**` (the same set of IDs), an ID with fewer
    components than the pattern's fixed ones is no match, and the rest is memoized.
    """

    __slots__ = ("fixed", "literal", "parts", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        parts: list[str] = []
        for part in text.split("/"):
            if not (part == "**" and parts and parts[-1] == "**"):
                parts.append(part)
        self.parts = tuple(parts)
        self.fixed = sum(1 for p in parts if p != "**")  # components each take one
        # No wildcard: the pattern names one ID, which may be a field's.
        self.literal = not any(p in ("*", "**") for p in self.parts)

    def __str__(self) -> str:
        return self.text

    def match(self, id_parts: tuple[str, ...] | list[str]) -> bool:
        if self.fixed > len(id_parts):
            return False
        return _match(self.parts, tuple(id_parts))

    def could_match_below(self, prefix: tuple[str, ...]) -> bool:
        """Whether some ID starting with `prefix` (and at least one more component) may
        match: lets a scan skip whole scopes. May say True where nothing matches."""
        for i, part in enumerate(prefix):
            if i >= len(self.parts):
                return False
            pat = self.parts[i]
            if pat == "**":
                return True
            if pat != "*" and pat != part:
                return False
        return len(self.parts) > len(prefix)


def parse_pattern(text: str) -> Pattern:
    """The engine's ParsePattern; InvalidPattern if it is not one."""
    if not text or not all(_valid_pattern_component(p) for p in text.split("/")):
        raise InvalidPattern()
    return Pattern(text)


def _match(pattern: tuple[str, ...], path: tuple[str, ...]) -> bool:
    """The engine's match(): `*` is one component, `**` zero or more (a trailing `**`
    takes the rest), each other component itself; memoized on (pattern, path) places."""
    seen: dict[tuple[int, int], bool] = {}

    def at(pi: int, si: int) -> bool:
        key = (pi, si)
        known = seen.get(key)
        if known is not None:
            return known
        if pi == len(pattern):
            out = si == len(path)
        elif si == len(path):
            out = all(p == "**" for p in pattern[pi:])
        elif pattern[pi] == "**":
            out = pi + 1 == len(pattern) or any(
                at(pi + 1, si + skip) for skip in range(len(path) - si + 1)
            )
        elif pattern[pi] in ("*", path[si]) or path[si] == "*":
            out = at(pi + 1, si + 1)
        else:
            out = False
        seen[key] = out
        return out

    return at(0, 0)


def scope_prefix(scope: Scope) -> tuple[str, ...]:
    """The ID components of a scope: ``deployment``, ``service/<s>``, ``env/<e>``,
    ``project/<p>/<e>``."""
    if scope.kind == "deployment":
        return ("deployment",)
    if scope.kind == "service":
        return ("service", str(scope.service))
    if scope.kind == "env":
        return ("env", str(scope.env))
    return ("project", str(scope.project), str(scope.env))


def ref_to_id(ref: Ref) -> str | None:
    """The engine ID of `ref`; None for a field whose key is no ID component."""
    if not all(_valid_component(p) for p in ref.field):
        return None
    return "/".join((*scope_prefix(ref.scope), ref.name, *ref.field))


# How many components name the scope, after the kind.
_SCOPE_WIDTH = {"deployment": 0, "service": 1, "env": 1, "project": 2}


def id_to_ref(text: str) -> Ref | None:
    """The reference an engine ID names (a secret or one of its fields), or None."""
    if not valid_id(text):
        return None
    parts = text.split("/")
    width = _SCOPE_WIDTH.get(parts[0])
    if width is None or len(parts) < width + 2:
        return None
    names = parts[1 : 1 + width]
    try:
        if parts[0] == "deployment":
            scope = Scope("deployment")
        elif parts[0] == "service":
            scope = Scope("service", service=names[0])
        elif parts[0] == "env":
            scope = Scope("env", env=names[0])
        else:
            scope = Scope("project", project=names[0], env=names[1])
        return Ref(scope, parts[1 + width], tuple(parts[2 + width :]))
    except RefError:
        return None  # a name secretfs does not allow (`:`, a leading `.`, ...)

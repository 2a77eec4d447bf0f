"""JSON secrets as field trees: which fields exist, and each field's bytes.

Numbers keep their exact source text (`1.50` stays `1.50`); strings are raw UTF-8 with no
quotes; booleans are `true`/`false`; null is empty. Objects and arrays are directories
in the mount and compact JSON when asked for as a value.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from secretfs.errors import NotFoundError
from secretfs.refs import is_valid_field_key


@dataclass(frozen=True, slots=True)
class _Number:
    text: str


def parse(value: bytes) -> dict[str, Any] | list[Any] | None:
    """The JSON object or array in `value`, or None when it is not one."""
    try:
        doc = json.loads(value, parse_int=_Number, parse_float=_Number, parse_constant=_Number)
    except (ValueError, RecursionError):  # RecursionError: nested too deep to walk
        return None
    return doc if isinstance(doc, dict | list) else None


def is_container(node: Any) -> bool:
    return isinstance(node, dict | list)


def children(node: Any) -> list[tuple[str, Any]]:
    """The entries of an object or array as (file name, child), unusable keys left out."""
    if isinstance(node, dict):
        return [(k, v) for k, v in node.items() if is_valid_field_key(k)]
    if isinstance(node, list):
        return [(str(i), v) for i, v in enumerate(node)]
    return []


def child(node: Any, name: str) -> Any:
    if isinstance(node, dict) and is_valid_field_key(name) and name in node:
        return node[name]
    # ASCII digits only: str.isdigit() also takes '²' (int() fails) and Arabic-Indic
    # digits (int() reads them, which would make aliases of the canonical index names).
    if (
        isinstance(node, list)
        and name.isascii()
        and name.isdigit()
        and (name == "0" or name[0] != "0")
    ):
        index = int(name)
        if index < len(node):
            return node[index]
    raise KeyError(name)


def resolve(doc: Any, path: tuple[str, ...]) -> Any:
    node = doc
    for i, part in enumerate(path):
        try:
            node = child(node, part)
        except KeyError:
            raise NotFoundError(f"no field {'/'.join(path[: i + 1])!r}") from None
    return node


def render(node: Any) -> bytes:
    """A field's file content."""
    if isinstance(node, str):
        # A lone surrogate ("\\ud800" in the source) has no UTF-8: pass it through
        # rather than fail the whole field directory.
        return node.encode("utf-8", "surrogatepass")
    if isinstance(node, _Number):
        return node.text.encode()
    if node is True:
        return b"true"
    if node is False:
        return b"false"
    if node is None:
        return b""
    return _compact(node).encode()


def _compact(node: Any) -> str:
    """Compact JSON that keeps every number's source text.

    Iterative: any document `parse` accepted renders, however deeply it nests.
    """
    out: list[str] = []
    stack: list[tuple[bool, Any]] = [(False, node)]  # (is literal text, item)
    while stack:
        literal, item = stack.pop()
        if literal:
            out.append(item)
        elif isinstance(item, dict):
            parts: list[tuple[bool, Any]] = [(True, "{")]
            for i, (k, v) in enumerate(item.items()):
                parts += [(True, ("," if i else "") + _json_str(k) + ":"), (False, v)]
            stack += reversed([*parts, (True, "}")])
        elif isinstance(item, list):
            parts = [(True, "[")]
            for i, v in enumerate(item):
                parts += [(True, ","), (False, v)] if i else [(False, v)]
            stack += reversed([*parts, (True, "]")])
        elif isinstance(item, _Number):
            out.append(item.text)
        elif isinstance(item, str):
            out.append(_json_str(item))
        else:
            out.append(json.dumps(item))
    return "".join(out)


def _json_str(text: str) -> str:
    """A JSON string literal that is valid UTF-8 (lone surrogates stay \\u escapes)."""
    out = json.dumps(text, ensure_ascii=False)
    try:
        out.encode()
    except UnicodeEncodeError:
        return json.dumps(text)
    return out


def extract(value: bytes, path: tuple[str, ...]) -> bytes:
    """The bytes of field `path` of a JSON secret (NotFoundError if there is none)."""
    doc = parse(value)
    if doc is None:
        raise NotFoundError("the secret is not a JSON object or array: it has no fields")
    return render(resolve(doc, path))

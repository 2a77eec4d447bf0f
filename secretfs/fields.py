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
    except ValueError:
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
    if isinstance(node, list) and name.isdigit() and (name == "0" or name[0] != "0"):
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
        return node.encode()
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
    """Compact JSON that keeps every number's source text."""
    if isinstance(node, dict):
        items = (json.dumps(k, ensure_ascii=False) + ":" + _compact(v) for k, v in node.items())
        return "{" + ",".join(items) + "}"
    if isinstance(node, list):
        return "[" + ",".join(_compact(v) for v in node) + "]"
    if isinstance(node, _Number):
        return node.text
    return json.dumps(node, ensure_ascii=False)


def extract(value: bytes, path: tuple[str, ...]) -> bytes:
    """The bytes of field `path` of a JSON secret (NotFoundError if there is none)."""
    doc = parse(value)
    if doc is None:
        raise NotFoundError("the secret is not a JSON object or array: it has no fields")
    return render(resolve(doc, path))

"""One etcd Txn, as secretfs builds it, and its answer: the same whichever way it is
sent (gRPC as protobuf, kvgrpc.py; or the JSON gateway, base64, here).

A Txn's compares are all "this key's mod_revision is still N" (0: the key does not
exist): the only compare secretfs makes.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Put:
    key: bytes
    value: bytes


@dataclass(frozen=True, slots=True)
class Delete:
    key: bytes


@dataclass(frozen=True, slots=True)
class Range:
    """Every key in [key, end) (end None: the key alone) at `revision` (0: the
    latest); `serializable`: a member's own copy will do (no ReadIndex round)."""

    key: bytes
    end: bytes | None = None
    revision: int = 0
    serializable: bool = False


Op = Put | Delete | Range


@dataclass(frozen=True, slots=True)
class Txn:
    ops: list[Op]
    unchanged: list[tuple[bytes, int]] = field(default_factory=list)  # (key, mod_revision)


@dataclass(frozen=True, slots=True)
class KV:
    key: bytes
    value: bytes
    mod_revision: int


@dataclass(frozen=True, slots=True)
class TxnAnswer:
    """Whether the compares held (and the ops ran), the revision after it, and for each
    op in order the keys a Range found (empty for a put or a delete)."""

    succeeded: bool
    revision: int
    ranges: list[list[KV]]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def to_json(txn: Txn) -> dict[str, Any]:
    """The TxnRequest as etcd's JSON gateway takes it."""
    ops: list[dict[str, Any]] = []
    for op in txn.ops:
        if isinstance(op, Put):
            ops.append({"request_put": {"key": b64(op.key), "value": b64(op.value)}})
        elif isinstance(op, Delete):
            ops.append({"request_delete_range": {"key": b64(op.key)}})
        else:
            body: dict[str, Any] = {"key": b64(op.key)}
            if op.end is not None:
                body["range_end"] = b64(op.end)
            if op.revision:
                body["revision"] = str(op.revision)
            if op.serializable:
                body["serializable"] = True
            ops.append({"request_range": body})
    compare = [
        {"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(revision)}
        for key, revision in txn.unchanged
    ]
    return {"compare": compare, "success": ops, "failure": []}


def from_json(data: dict[str, Any]) -> TxnAnswer:
    """A TxnResponse as etcd's JSON gateway gives it (defaults left out)."""
    ranges = []
    for response in data.get("responses") or []:
        kvs = (response.get("response_range") or {}).get("kvs") or []
        ranges.append(
            [
                KV(unb64(kv["key"]), unb64(kv.get("value")), int(kv.get("mod_revision", 0)))
                for kv in kvs
            ]
        )
    return TxnAnswer(bool(data.get("succeeded")), int(data["header"]["revision"]), ranges)

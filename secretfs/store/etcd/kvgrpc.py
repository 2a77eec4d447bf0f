"""etcd's `KV.Range` and `KV.Txn` over gRPC (HTTP/2).

The JSON gateway marshals about 10 MB/s on each member and base64s every key and
value; gRPC sends them as protobuf, about 5x faster end to end for a whole store's
load, and half the time of a commit of 30 secrets (docs/cluster.md, "Sizes and
limits"). A mount's initial load and its reload after a compaction use Range; every
Txn (writes, and the reads a write batches) goes this way too. The messages are built
here from the fields of etcd's `rpc.proto`/`kv.proto` that we use, in a pool of our own
(no generated code, no protoc), as secretfs/resolver/messages.py does; httpx with h2
carries them, so TLS, client certificates and the auth token are the gateway's.
"""

from __future__ import annotations

import struct
from typing import Any
from urllib.parse import unquote

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

from secretfs.store.etcd.txn import KV, Delete, Put, Txn, TxnAnswer

try:
    import h2  # noqa: F401 - httpx's HTTP/2 needs it

    AVAILABLE = True
except ImportError:  # pragma: no cover - a dependency; without it the gateway does all
    AVAILABLE = False

RANGE_PATH = "/etcdserverpb.KV/Range"
TXN_PATH = "/etcdserverpb.KV/Txn"
_EQUAL, _MOD = 0, 2  # CompareResult.EQUAL, CompareTarget.MOD

_F = descriptor_pb2.FieldDescriptorProto


def _add(msg: descriptor_pb2.DescriptorProto, name: str, number: int, kind: int, **kw: Any) -> None:
    label = kw.pop("label", _F.LABEL_OPTIONAL)
    msg.field.add(name=name, number=number, type=kind, label=label, **kw)


def _message(
    f: descriptor_pb2.FileDescriptorProto,
    name: str,
    fields: list[tuple[str, int, Any, str]],
    oneof: str | None = None,
) -> None:
    """A message of (name, number, type, message type or "") fields; with `oneof`, every
    field but "header" is in that oneof (as etcd's RequestOp, ResponseOp, Compare)."""
    msg = f.message_type.add(name=name)
    if oneof is not None:
        msg.oneof_decl.add(name=oneof)
    for field, number, kind, type_name in fields:
        extra: dict[str, Any] = {}
        if type_name:
            extra["type_name"] = f".etcdserverpb.{type_name}"
        if oneof is not None and field not in _NOT_IN_ONEOF:
            extra["oneof_index"] = 0
        if field in _REPEATED:
            extra["label"] = _F.LABEL_REPEATED
        _add(msg, field, number, kind, **extra)


_NOT_IN_ONEOF = {"header", "result", "target", "key", "range_end"}
_REPEATED = {"kvs", "compare", "success", "failure", "responses"}
_MSG, _BYTES, _I64, _U64, _BOOL, _ENUM = (
    _F.TYPE_MESSAGE,
    _F.TYPE_BYTES,
    _F.TYPE_INT64,
    _F.TYPE_UINT64,
    _F.TYPE_BOOL,
    _F.TYPE_ENUM,
)


def _file() -> descriptor_pb2.FileDescriptorProto:
    """The parts of etcd's etcdserverpb that Range and Txn use (field numbers and enum
    values as in etcd 3.4+'s rpc.proto and mvccpb's kv.proto)."""
    f = descriptor_pb2.FileDescriptorProto(
        name="secretfs/etcd/rpc.proto", package="etcdserverpb", syntax="proto3"
    )
    for enum, names in (
        ("CompareResult", ("EQUAL", "GREATER", "LESS", "NOT_EQUAL")),
        ("CompareTarget", ("VERSION", "CREATE", "MOD", "VALUE", "LEASE")),
    ):
        e = f.enum_type.add(name=enum)
        for number, value in enumerate(names):
            e.value.add(name=value, number=number)
    header = [("header", 1, _MSG, "ResponseHeader")]
    _message(f, "ResponseHeader", [
        ("cluster_id", 1, _U64, ""), ("member_id", 2, _U64, ""),
        ("revision", 3, _I64, ""), ("raft_term", 4, _U64, ""),
    ])  # fmt: skip
    _message(f, "KeyValue", [
        ("key", 1, _BYTES, ""), ("create_revision", 2, _I64, ""),
        ("mod_revision", 3, _I64, ""), ("version", 4, _I64, ""),
        ("value", 5, _BYTES, ""), ("lease", 6, _I64, ""),
    ])  # fmt: skip
    _message(f, "RangeRequest", [
        ("key", 1, _BYTES, ""), ("range_end", 2, _BYTES, ""), ("limit", 3, _I64, ""),
        ("revision", 4, _I64, ""), ("serializable", 7, _BOOL, ""),
        ("keys_only", 8, _BOOL, ""),
    ])  # fmt: skip
    _message(f, "RangeResponse", [
        *header, ("kvs", 2, _MSG, "KeyValue"), ("more", 3, _BOOL, ""), ("count", 4, _I64, ""),
    ])  # fmt: skip
    _message(f, "PutRequest", [("key", 1, _BYTES, ""), ("value", 2, _BYTES, "")])
    _message(f, "PutResponse", header)
    _message(f, "DeleteRangeRequest", [("key", 1, _BYTES, ""), ("range_end", 2, _BYTES, "")])
    _message(f, "DeleteRangeResponse", [*header, ("deleted", 2, _I64, "")])
    _message(f, "Compare", [
        ("result", 1, _ENUM, "CompareResult"), ("target", 2, _ENUM, "CompareTarget"),
        ("key", 3, _BYTES, ""), ("version", 4, _I64, ""), ("create_revision", 5, _I64, ""),
        ("mod_revision", 6, _I64, ""), ("value", 7, _BYTES, ""), ("lease", 8, _I64, ""),
        ("range_end", 64, _BYTES, ""),
    ], oneof="target_union")  # fmt: skip
    _message(f, "RequestOp", [
        ("request_range", 1, _MSG, "RangeRequest"), ("request_put", 2, _MSG, "PutRequest"),
        ("request_delete_range", 3, _MSG, "DeleteRangeRequest"),
    ], oneof="request")  # fmt: skip
    _message(f, "ResponseOp", [
        ("response_range", 1, _MSG, "RangeResponse"), ("response_put", 2, _MSG, "PutResponse"),
        ("response_delete_range", 3, _MSG, "DeleteRangeResponse"),
    ], oneof="response")  # fmt: skip
    _message(f, "TxnRequest", [
        ("compare", 1, _MSG, "Compare"), ("success", 2, _MSG, "RequestOp"),
        ("failure", 3, _MSG, "RequestOp"),
    ])  # fmt: skip
    _message(f, "TxnResponse", [
        *header, ("succeeded", 2, _BOOL, ""), ("responses", 3, _MSG, "ResponseOp"),
    ])  # fmt: skip
    return f


_pool = descriptor_pool.DescriptorPool()
_pool.Add(_file())
RangeRequest = message_factory.GetMessageClass(
    _pool.FindMessageTypeByName("etcdserverpb.RangeRequest")
)
RangeResponse = message_factory.GetMessageClass(
    _pool.FindMessageTypeByName("etcdserverpb.RangeResponse")
)
TxnRequest = message_factory.GetMessageClass(_pool.FindMessageTypeByName("etcdserverpb.TxnRequest"))
TxnResponse = message_factory.GetMessageClass(
    _pool.FindMessageTypeByName("etcdserverpb.TxnResponse")
)


class NotGrpcError(Exception):
    """The endpoint answered, but not as a gRPC server (a proxy that speaks only HTTP/1.1?)."""


class GrpcStatusError(Exception):
    """A gRPC error status, with etcd's message (e.g. "etcdserver: mvcc: required
    revision has been compacted")."""


def _framed(message: Message) -> bytes:
    body: bytes = message.SerializeToString()
    return struct.pack(">BI", 0, len(body)) + body


def range_request(key: bytes, end: bytes, *, revision: int, limit: int) -> bytes:
    """A length-prefixed RangeRequest, as a gRPC request body."""
    return _framed(RangeRequest(key=key, range_end=end, revision=revision, limit=limit))


def txn_request(txn: Txn) -> bytes:
    """A length-prefixed TxnRequest, as a gRPC request body."""
    request: Any = TxnRequest()
    for key, revision in txn.unchanged:
        request.compare.add(key=key, target=_MOD, result=_EQUAL, mod_revision=revision)
    for op in txn.ops:
        if isinstance(op, Put):
            put = request.success.add().request_put
            put.key, put.value = op.key, op.value
        elif isinstance(op, Delete):
            request.success.add().request_delete_range.key = op.key
        else:
            get = request.success.add().request_range
            get.key, get.revision, get.serializable = op.key, op.revision, op.serializable
            if op.end is not None:
                get.range_end = op.end
    return _framed(request)


def _answer(status: int, headers: Any, content: bytes, kind: Any) -> Message:
    """The message of type `kind` in an HTTP/2 answer; GrpcStatusError for an error
    status (carried in the headers when there is no message: "trailers only")."""
    grpc_status = headers.get("grpc-status")
    if grpc_status not in (None, "0"):
        raise GrpcStatusError(
            unquote(headers.get("grpc-message", "")) or f"gRPC status {grpc_status}"
        )
    if status != 200 or not headers.get("content-type", "").startswith("application/grpc"):
        raise NotGrpcError(f"HTTP {status}, {headers.get('content-type', 'no content type')}")
    if len(content) < 5:
        raise GrpcStatusError("the answer ended before its message")
    compressed, length = struct.unpack(">BI", content[:5])
    if compressed or len(content) < 5 + length:
        raise GrpcStatusError("a compressed or cut-off message")
    try:
        message: Message = kind.FromString(content[5 : 5 + length])
    except DecodeError as exc:
        raise GrpcStatusError(f"not a {kind.DESCRIPTOR.name} ({exc})") from None
    return message


def parse_range(status: int, headers: Any, content: bytes) -> Any:
    """The RangeResponse in an HTTP/2 answer (a message: typed Any, as it is built)."""
    return _answer(status, headers, content, RangeResponse)


def parse_txn(status: int, headers: Any, content: bytes) -> TxnAnswer:
    """The TxnResponse in an HTTP/2 answer, as a TxnAnswer."""
    answer: Any = _answer(status, headers, content, TxnResponse)
    ranges = [
        [KV(kv.key, kv.value, kv.mod_revision) for kv in op.response_range.kvs]
        for op in answer.responses
    ]
    return TxnAnswer(answer.succeeded, answer.header.revision, ranges)

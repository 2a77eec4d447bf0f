"""etcd's `KV.Range` over gRPC (HTTP/2), for reading a whole store at once.

The JSON gateway marshals about 10 MB/s on each member and base64s every key and
value; gRPC sends them as protobuf, about 5x faster end to end (docs/cluster.md,
"Sizes and limits"). Only bulk reads use it: a mount's initial load and its reload
after a compaction. The messages are built here from the fields of etcd's
`rpc.proto`/`kv.proto` that we use, in a pool of our own (no generated code, no protoc),
as secretfs/resolver/messages.py does; httpx with h2 carries them, so TLS, client
certificates and the auth token are the gateway's.
"""

from __future__ import annotations

import struct
from typing import Any
from urllib.parse import unquote

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

try:
    import h2  # noqa: F401 - httpx's HTTP/2 needs it

    AVAILABLE = True
except ImportError:  # pragma: no cover - a dependency; without it the gateway does all
    AVAILABLE = False

RANGE_PATH = "/etcdserverpb.KV/Range"

_F = descriptor_pb2.FieldDescriptorProto


def _add(msg: descriptor_pb2.DescriptorProto, name: str, number: int, kind: int, **kw: Any) -> None:
    label = kw.pop("label", _F.LABEL_OPTIONAL)
    msg.field.add(name=name, number=number, type=kind, label=label, **kw)


def _file() -> descriptor_pb2.FileDescriptorProto:
    """The part of etcd's etcdserverpb that a Range uses (field numbers as in etcd 3.4+)."""
    f = descriptor_pb2.FileDescriptorProto(
        name="secretfs/etcd/rpc.proto", package="etcdserverpb", syntax="proto3"
    )
    header = f.message_type.add(name="ResponseHeader")
    _add(header, "cluster_id", 1, _F.TYPE_UINT64)
    _add(header, "member_id", 2, _F.TYPE_UINT64)
    _add(header, "revision", 3, _F.TYPE_INT64)
    _add(header, "raft_term", 4, _F.TYPE_UINT64)
    kv = f.message_type.add(name="KeyValue")
    _add(kv, "key", 1, _F.TYPE_BYTES)
    _add(kv, "create_revision", 2, _F.TYPE_INT64)
    _add(kv, "mod_revision", 3, _F.TYPE_INT64)
    _add(kv, "version", 4, _F.TYPE_INT64)
    _add(kv, "value", 5, _F.TYPE_BYTES)
    _add(kv, "lease", 6, _F.TYPE_INT64)
    request = f.message_type.add(name="RangeRequest")
    _add(request, "key", 1, _F.TYPE_BYTES)
    _add(request, "range_end", 2, _F.TYPE_BYTES)
    _add(request, "limit", 3, _F.TYPE_INT64)
    _add(request, "revision", 4, _F.TYPE_INT64)
    response = f.message_type.add(name="RangeResponse")
    _add(response, "header", 1, _F.TYPE_MESSAGE, type_name=".etcdserverpb.ResponseHeader")
    _add(
        response,
        "kvs",
        2,
        _F.TYPE_MESSAGE,
        type_name=".etcdserverpb.KeyValue",
        label=_F.LABEL_REPEATED,
    )
    _add(response, "more", 3, _F.TYPE_BOOL)
    _add(response, "count", 4, _F.TYPE_INT64)
    return f


_pool = descriptor_pool.DescriptorPool()
_pool.Add(_file())
RangeRequest = message_factory.GetMessageClass(
    _pool.FindMessageTypeByName("etcdserverpb.RangeRequest")
)
RangeResponse = message_factory.GetMessageClass(
    _pool.FindMessageTypeByName("etcdserverpb.RangeResponse")
)


class NotGrpcError(Exception):
    """The endpoint answered, but not as a gRPC server (a proxy that speaks only HTTP/1.1?)."""


class GrpcStatusError(Exception):
    """A gRPC error status, with etcd's message (e.g. "etcdserver: mvcc: required
    revision has been compacted")."""


def range_request(key: bytes, end: bytes, *, revision: int, limit: int) -> bytes:
    """A length-prefixed RangeRequest, as a gRPC request body."""
    body: bytes = RangeRequest(
        key=key, range_end=end, revision=revision, limit=limit
    ).SerializeToString()
    return struct.pack(">BI", 0, len(body)) + body


def parse_range(status: int, headers: Any, content: bytes) -> Message:
    """The RangeResponse in an HTTP/2 answer; GrpcStatusError for an error status
    (carried in the headers when there is no message: "trailers only")."""
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
        return RangeResponse.FromString(content[5 : 5 + length])
    except DecodeError as exc:
        raise GrpcStatusError(f"not a RangeResponse ({exc})") from None

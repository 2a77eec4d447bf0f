"""The resolver's protobuf messages, and their binary and JSON forms.

The descriptors are built here at import from the same definitions as
`proto/resolver.proto` and `proto/health.proto` (the engine's, as proto3), in a pool of
our own: no generated code to keep in step with the protobuf runtime, no protoc at
build time. The protobuf runtime does every encoding; only the JSON of a list of
envelopes is written directly (``envelopes_json``), because json_format takes ~50 µs
per envelope, and a test holds it equal to json_format's.
"""

from __future__ import annotations

import base64
import datetime
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    json_format,
    message_factory,
    timestamp_pb2,
)
from google.protobuf.message import DecodeError, Message

JSON = "json"
PROTO = "proto"
# The zero time.Time of Go, which the engine's client reads as "no expiry".
ZERO_TIME_S = -62135596800

_F = descriptor_pb2.FieldDescriptorProto


@dataclass(frozen=True, slots=True)
class Envelope:
    """One resolved secret, as GetSecretsResponse.Envelope carries it."""

    id: str
    value: bytes
    version: str
    created_ns: int
    resolved_ns: int
    expires_ns: int | None  # None: the zero time
    metadata: dict[str, str] = field(default_factory=dict)
    provider: str = "secretfs"


def _add(msg: descriptor_pb2.DescriptorProto, name: str, number: int, kind: int, **kw: Any) -> None:
    msg.field.add(name=name, number=number, type=kind, label=_F.LABEL_OPTIONAL, **kw)


def _resolver_file() -> descriptor_pb2.FileDescriptorProto:
    f = descriptor_pb2.FileDescriptorProto(
        name="secretfs/resolver/proto/resolver.proto",
        package="resolver.v1",
        syntax="proto3",
        dependency=["google/protobuf/timestamp.proto"],
    )
    _add(f.message_type.add(name="GetSecretsRequest"), "pattern", 1, _F.TYPE_STRING)
    resp = f.message_type.add(name="GetSecretsResponse")
    resp.field.add(
        name="envelopes",
        number=1,
        type=_F.TYPE_MESSAGE,
        label=_F.LABEL_REPEATED,
        type_name=".resolver.v1.GetSecretsResponse.Envelope",
    )
    env = resp.nested_type.add(name="Envelope")
    for number, name in enumerate(("id", "value", "provider", "version"), 1):
        _add(env, name, number, _F.TYPE_BYTES if name == "value" else _F.TYPE_STRING)
    for number, name in enumerate(("created_at", "resolved_at", "expires_at"), 5):
        _add(env, name, number, _F.TYPE_MESSAGE, type_name=".google.protobuf.Timestamp")
    entry = env.nested_type.add(name="MetadataEntry")
    entry.options.map_entry = True
    _add(entry, "key", 1, _F.TYPE_STRING)
    _add(entry, "value", 2, _F.TYPE_STRING)
    env.field.add(
        name="metadata",
        number=8,
        type=_F.TYPE_MESSAGE,
        label=_F.LABEL_REPEATED,
        type_name=".resolver.v1.GetSecretsResponse.Envelope.MetadataEntry",
    )
    return f


def _health_file() -> descriptor_pb2.FileDescriptorProto:
    f = descriptor_pb2.FileDescriptorProto(
        name="secretfs/resolver/proto/health.proto", package="health.v1", syntax="proto3"
    )
    f.message_type.add(name="GetVersionRequest")
    resp = f.message_type.add(name="GetVersionResponse")
    for number, name in enumerate(("version", "date", "commit_hash"), 1):
        _add(resp, name, number, _F.TYPE_STRING)
    return f


_pool = descriptor_pool.DescriptorPool()
_pool.AddSerializedFile(timestamp_pb2.DESCRIPTOR.serialized_pb)
_pool.Add(_resolver_file())
_pool.Add(_health_file())


def _cls(name: str) -> type[Message]:
    return message_factory.GetMessageClass(_pool.FindMessageTypeByName(name))


GetSecretsRequest = _cls("resolver.v1.GetSecretsRequest")
GetSecretsResponse = _cls("resolver.v1.GetSecretsResponse")
GetVersionRequest = _cls("health.v1.GetVersionRequest")
GetVersionResponse = _cls("health.v1.GetVersionResponse")


class BadMessage(ValueError):
    """A request body that is not the message it should be (Connect: invalid_argument)."""


def decode(cls: type[Message], body: bytes, codec: str) -> Message:
    """Parse a request; unknown JSON fields are ignored, as Connect's servers do."""
    msg = cls()
    try:
        if codec == JSON:
            doc = json.loads(body or b"{}")
            if not isinstance(doc, dict):
                raise json_format.ParseError(f"a JSON object is needed, not {type(doc).__name__}")
            json_format.ParseDict(doc, msg, ignore_unknown_fields=True)
        else:
            msg.ParseFromString(body)
    except (json_format.ParseError, DecodeError, ValueError, RecursionError) as exc:
        raise BadMessage(f"unmarshal into {cls.DESCRIPTOR.full_name}: {_short(exc)}") from None
    return msg


def _short(exc: Exception) -> str:
    # json_format quotes what it could not parse: keep it short, it may be anything.
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:120]


def encode(msg: Message, codec: str) -> bytes:
    if codec == JSON:
        return json_format.MessageToJson(
            msg, indent=None, always_print_fields_with_no_presence=True
        ).encode()
    return msg.SerializeToString()


def request_pattern(msg: Message) -> str:
    return str(msg.pattern)  # type: ignore[attr-defined]


def version_response(version: str, date: str, commit_hash: str) -> Message:
    return GetVersionResponse(version=version, date=date, commit_hash=commit_hash)


def _set_time(stamp: Any, ns: int | None) -> None:
    if ns is None:
        stamp.seconds = ZERO_TIME_S
    else:
        stamp.FromNanoseconds(ns)


def envelopes_proto(envelopes: Sequence[Envelope]) -> bytes:
    """GetSecretsResponse in binary protobuf."""
    resp: Any = GetSecretsResponse()
    for e in envelopes:
        out = resp.envelopes.add(id=e.id, value=e.value, provider=e.provider, version=e.version)
        _set_time(out.created_at, e.created_ns)
        _set_time(out.resolved_at, e.resolved_ns)
        _set_time(out.expires_at, e.expires_ns)
        out.metadata.update(e.metadata)
    return bytes(resp.SerializeToString())


class _Times:
    """RFC 3339 texts of timestamps as protobuf's formatter writes them (3, 6 or 9
    digits of fraction, as needed), each made once; a test holds them to json_format."""

    def __init__(self) -> None:
        self._seen: dict[int | None, str] = {}

    def text(self, ns: int | None) -> str:
        out = self._seen.get(ns)
        if out is None:
            out = self._seen[ns] = _rfc3339(ns)
        return out


def _rfc3339(ns: int | None) -> str:
    seconds, nanos = (ZERO_TIME_S, 0) if ns is None else divmod(ns, 1_000_000_000)
    t = _EPOCH + datetime.timedelta(seconds=seconds)
    if nanos == 0:
        frac = ""
    elif nanos % 1_000_000 == 0:
        frac = f".{nanos // 1_000_000:03d}"
    elif nanos % 1_000 == 0:
        frac = f".{nanos // 1_000:06d}"
    else:
        frac = f".{nanos:09d}"
    return (
        f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}{frac}Z"
    )


_EPOCH = datetime.datetime(1970, 1, 1)


def envelopes_json(envelopes: Sequence[Envelope]) -> bytes:
    """GetSecretsResponse in the proto3 JSON mapping, as json_format writes it. Written
    in pieces: a value's base64 and the timestamps need no escaping, so the megabytes of
    a `**` are not scanned again by the JSON encoder."""
    times = _Times()
    dumps = json.dumps
    parts = []
    for e in envelopes:
        parts.append(
            b"".join(
                (
                    b'{"id":',
                    dumps(e.id).encode(),
                    b',"value":"',
                    base64.b64encode(e.value),
                    b'","provider":',
                    dumps(e.provider).encode(),
                    b',"version":',
                    dumps(e.version).encode(),
                    b',"createdAt":"',
                    times.text(e.created_ns).encode(),
                    b'","resolvedAt":"',
                    times.text(e.resolved_ns).encode(),
                    b'","expiresAt":"',
                    times.text(e.expires_ns).encode(),
                    b'","metadata":',
                    dumps(e.metadata, separators=(",", ":")).encode(),
                    b"}",
                )
            )
        )
    return b'{"envelopes":[' + b",".join(parts) + b"]}"


def envelopes_body(envelopes: Sequence[Envelope], codec: str) -> bytes:
    return envelopes_json(envelopes) if codec == JSON else envelopes_proto(envelopes)

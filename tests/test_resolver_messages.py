"""The resolver's messages: the fast JSON of envelopes is json_format's, field for field,
and requests parse as Connect's servers parse them."""

from __future__ import annotations

import json

import pytest
from google.protobuf import json_format

from secretfs.resolver import messages
from secretfs.resolver.messages import JSON, PROTO, BadMessage, Envelope

ENVELOPES = [
    Envelope(
        "deployment/db",
        b"hunter2",
        "3",
        1_700_000_000_123_456_789,
        1_800_000_000_000_000_000,
        None,
        {"ref": "$S:db"},
    ),
    Envelope(
        "service/api/x",
        bytes(range(256)),
        "1",
        1_700_000_000_000_000_000,
        1_800_000_000_000_001_000,
        1_900_000_000_500_000_000,
        {"ref": "$S:@api/x", "k": "\u00e9"},
    ),
    Envelope("env/e/empty", b"", "12", 0, 1, 2, {}),
]


def test_the_fast_json_is_json_formats() -> None:
    parsed = messages.GetSecretsResponse()
    parsed.ParseFromString(messages.envelopes_proto(ENVELOPES))
    reference = json_format.MessageToDict(parsed, always_print_fields_with_no_presence=True)
    assert json.loads(messages.envelopes_json(ENVELOPES)) == reference
    first = reference["envelopes"][0]
    assert first["expiresAt"] == "0001-01-01T00:00:00Z"  # Go's zero time: no expiry
    assert first["createdAt"] == "2023-11-14T22:13:20.123456789Z"


def test_requests_parse_in_both_codecs_and_ignore_unknown_json_fields() -> None:
    msg = messages.decode(messages.GetSecretsRequest, b'{"pattern":"a/**","later":[1]}', JSON)
    assert messages.request_pattern(msg) == "a/**"
    binary = messages.GetSecretsRequest(pattern="x/*").SerializeToString()
    assert (
        messages.request_pattern(messages.decode(messages.GetSecretsRequest, binary, PROTO))
        == "x/*"
    )
    assert messages.request_pattern(messages.decode(messages.GetSecretsRequest, b"", JSON)) == ""


@pytest.mark.parametrize(
    ("body", "codec"),
    [(b"{", JSON), (b'{"pattern": 5}', JSON), (b"\xff\xff\xff", PROTO), (b"[]", JSON)],
)
def test_a_body_that_is_not_the_message_is_refused(body: bytes, codec: str) -> None:
    with pytest.raises(BadMessage, match=r"unmarshal into resolver\.v1\.GetSecretsRequest"):
        messages.decode(messages.GetSecretsRequest, body, codec)

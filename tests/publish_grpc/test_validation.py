"""Validation without a server: path parsing, normalisation, stored bytes and payload walking."""

from __future__ import annotations

import math
import struct
import uuid

import pytest

from conduit.errors import InvalidArgument, PayloadTooLarge
from conduit.v1alpha.publish_pb2 import Phase, PublishRequest
from publish_grpc.validation import (
    UINT64_MAX,
    PathIds,
    describe_value,
    parse_path,
    validate_publish,
)
from tests.publish_grpc.conftest import ORG_ID, make_request

CHANNEL = "97f58c19-ce38-4c6b-8a5b-47f3405691f0"
MAX_BYTES = 4096


@pytest.mark.parametrize(
    ("org_id", "expected"),
    [("0", 0), ("123", 123), ("007", 7), (str(UINT64_MAX), UINT64_MAX)],
)
def test_parse_path_valid_org(org_id: str, expected: int) -> None:
    assert parse_path(org_id, CHANNEL) == PathIds(org_id=expected, channel_id=CHANNEL)


@pytest.mark.parametrize("org_id", ["", "+5", " 5", "5 ", "1e3", "0x10", "5_000", "\u0665", "1.0"])
def test_parse_path_malformed_org_rejected(org_id: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        parse_path(org_id, CHANNEL)

    assert raised.value.message == f"org_id in the path must be a non-negative integer, got {org_id!r}"


def test_parse_path_uppercase_channel_normalised() -> None:
    assert parse_path("1", CHANNEL.upper()).channel_id == CHANNEL


@pytest.mark.parametrize(
    "channel_id",
    [
        CHANNEL.replace("-", ""),
        "{" + CHANNEL + "}",
        "urn:uuid:" + CHANNEL,
        CHANNEL + "\n",
        CHANNEL[:-1] + "g",
    ],
)
def test_parse_path_non_canonical_uuid_rejected(channel_id: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        parse_path("1", channel_id)

    assert raised.value.message == (
        f"channel_id in the path must be a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx), got {channel_id!r}"
    )


def test_describe_value_long_value_shortened() -> None:
    described = describe_value("a" * 1000)

    assert described == repr("a" * 64) + "... (1000 characters)"


def test_validate_canonical_request_stored_as_received() -> None:
    data = make_request(org_id=ORG_ID, channel_id=CHANNEL).SerializeToString()
    # A field this version does not know stays in the stored bytes.
    data += b"\xa0\x06\x01"

    publish = validate_publish(data, max_message_bytes=MAX_BYTES)

    assert publish.data is data
    assert publish.stream_key == f"stream:{ORG_ID}:{CHANNEL}"
    assert publish.end is False


def test_validate_uppercase_ids_re_encoded() -> None:
    message_id = str(uuid.uuid4())
    request = make_request(org_id=ORG_ID, channel_id=CHANNEL.upper(), message_id=message_id.upper())

    publish = validate_publish(request.SerializeToString(), max_message_bytes=MAX_BYTES)

    stored = PublishRequest.FromString(publish.data)
    assert (stored.channel_id, stored.message_id) == (CHANNEL, message_id)
    assert (publish.channel_id, publish.message_id) == (CHANNEL, message_id)
    assert stored.payload == request.payload
    assert stored.client_timestamp == request.client_timestamp


@pytest.mark.parametrize(
    ("phase", "end"),
    [(Phase.PHASE_START, False), (Phase.PHASE_DELTA, False), (Phase.PHASE_ERROR, False), (Phase.PHASE_END, True)],
)
def test_validate_end_flag_only_for_end(phase: int, end: bool) -> None:
    data = make_request(org_id=ORG_ID, phase=phase).SerializeToString()

    assert validate_publish(data, max_message_bytes=MAX_BYTES).end is end


def test_validate_path_org_used_when_body_org_zero() -> None:
    data = make_request(channel_id=CHANNEL).SerializeToString()

    publish = validate_publish(data, max_message_bytes=MAX_BYTES, path=PathIds(org_id=0, channel_id=CHANNEL))

    assert publish.stream_key == f"stream:0:{CHANNEL}"


def test_validate_over_size_rejected_before_decoding() -> None:
    with pytest.raises(PayloadTooLarge) as raised:
        validate_publish(b"\xff" * 11, max_message_bytes=10)

    assert raised.value.message == "PublishRequest is 11 bytes, over the limit of 10 bytes"


def test_validate_empty_message_reports_org_first() -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate_publish(b"", max_message_bytes=MAX_BYTES)

    assert raised.value.message == "org_id is missing: set it to the organization that owns the channel"


def test_validate_deeply_nested_nan_found() -> None:
    payload: dict[str, object] = {"leaf": float("nan")}
    # Each level is a Struct, a map entry and a Value; upb decodes up to 100 levels.
    for _ in range(30):
        payload = {"n": payload}
    data = make_request(org_id=ORG_ID, payload=payload).SerializeToString()

    with pytest.raises(InvalidArgument) as raised:
        validate_publish(data, max_message_bytes=MAX_BYTES)

    assert raised.value.message.startswith("'payload.n.n.n.")
    assert raised.value.message.endswith(" is NaN, which JSON cannot represent")


def test_validate_too_deep_payload_rejected() -> None:
    payload: dict[str, object] = {"leaf": 1}
    for _ in range(40):
        payload = {"n": payload}
    data = make_request(org_id=ORG_ID, payload=payload).SerializeToString()

    with pytest.raises(InvalidArgument) as raised:
        validate_publish(data, max_message_bytes=MAX_BYTES)

    assert raised.value.message == (
        "request is not a valid binary-encoded conduit.v1alpha.PublishRequest (JSON is not accepted): messages are nested deeper than the protobuf decoder allows"
    )


def test_validate_finite_numbers_accepted() -> None:
    payload = {"big": 1.7976931348623157e308, "small": -5e-324, "list": [0, -0.0, None, True, "NaN"]}
    data = make_request(org_id=ORG_ID, payload=payload).SerializeToString()

    assert validate_publish(data, max_message_bytes=MAX_BYTES).org_id == ORG_ID


@pytest.mark.parametrize(
    ("number", "name"),
    [(float("nan"), "NaN"), (float("inf"), "Infinity"), (float("-inf"), "-Infinity")],
)
def test_validate_non_finite_in_list_found(number: float, name: str) -> None:
    data = make_request(org_id=ORG_ID, payload={"list": ["a", {"deep": [1.5, number]}]}).SerializeToString()

    with pytest.raises(InvalidArgument) as raised:
        validate_publish(data, max_message_bytes=MAX_BYTES)

    assert raised.value.message == f"'payload.list[1].deep[1]' is {name}, which JSON cannot represent"


def test_validate_nan_bytes_elsewhere_accepted() -> None:
    # An unknown field (number 1000, length-delimited) whose bytes look like a
    # NaN number_value: the byte scan matches, and the walk finds no number.
    nan_lookalike = b"\x11" + b"\x00" * 6 + b"\xf8\x7f"
    unknown_field = b"\xc2\x3e" + bytes([len(nan_lookalike)]) + nan_lookalike
    data = make_request(org_id=ORG_ID, payload={"number": 2.5}).SerializeToString() + unknown_field

    assert validate_publish(data, max_message_bytes=MAX_BYTES).org_id == ORG_ID


@pytest.mark.parametrize("tag", [b"\x91\x00", b"\x91\x80\x00", b"\x91\x80\x80\x80\x00"], ids=["2-byte", "3-byte", "5-byte"])
def test_validate_overlong_tag_nan_found(tag: bytes) -> None:
    # upb decodes a tag written as an overlong varint, so the number_value tag
    # (17) need not be the single byte 0x11.
    value = tag + struct.pack("<d", float("nan"))
    entry = b"\x0a\x01x" + b"\x12" + bytes([len(value)]) + value
    payload = b"\x0a" + bytes([len(entry)]) + entry
    data = make_request(org_id=ORG_ID, payload={}).SerializeToString() + b"\x32" + bytes([len(payload)]) + payload
    assert math.isnan(PublishRequest.FromString(data).payload.fields["x"].number_value)

    with pytest.raises(InvalidArgument) as raised:
        validate_publish(data, max_message_bytes=MAX_BYTES)

    assert raised.value.message == "'payload.x' is NaN, which JSON cannot represent"

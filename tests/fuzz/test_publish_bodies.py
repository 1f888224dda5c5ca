"""Fuzz the PublishRequest bytes that both front doors accept: HTTP body and gRPC request."""

from __future__ import annotations

import math
import uuid

import pytest
from google.protobuf.internal.encoder import _VarintBytes  # type: ignore[attr-defined]
from google.protobuf.struct_pb2 import Struct, Value
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz import cases
from tests.fuzz.cases import ORG_ID, UINT64_MAX, count_case, fuzz_settings
from tests.fuzz.conftest import Stack

DOORS = ["http", "grpc"]


def key(field_number: int, wire_type: int) -> bytes:
    return _VarintBytes((field_number << 3) | wire_type)


def length_delimited(field_number: int, data: bytes) -> bytes:
    return key(field_number, 2) + _VarintBytes(len(data)) + data


def send(stack: Stack, door: str, data: bytes, channel_id: str) -> None:
    """Publish ``data`` through ``door`` and check the outcome that the interface predicts."""
    count_case(stack)
    before = stack.stream_entry_count()
    if door == "http":
        outcome = cases.expected_publish(data, path=(ORG_ID, channel_id))
        response = cases.post_publish(stack, str(ORG_ID), channel_id, data)
        cases.assert_http_outcome(stack, response, outcome, before)
    else:
        outcome = cases.expected_publish(data, path=None)
        cases.assert_grpc_outcome(stack, cases.grpc_publish(stack, data), outcome, before)


# Building blocks

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_leaf,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=8), children, max_size=4),
    ),
    max_leaves=20,
)


def struct_of(mapping: dict[str, object]) -> Struct:
    struct = Struct()
    for name, item in mapping.items():
        struct.fields[name].CopyFrom(value_of(item))
    return struct


def value_of(item: object) -> Value:
    value = Value()
    if item is None:
        value.null_value = 0  # type: ignore[assignment]
    elif isinstance(item, bool):
        value.bool_value = item
    elif isinstance(item, float):
        value.number_value = item
    elif isinstance(item, str):
        value.string_value = item
    elif isinstance(item, list):
        value.list_value.values.extend(value_of(element) for element in item)
    else:
        assert isinstance(item, dict)
        value.struct_value.CopyFrom(struct_of(item))
    return value


# Tests

@pytest.mark.parametrize("door", DOORS)
@fuzz_settings(150)
@given(data=st.binary(max_size=300))
def test_publish_random_bytes(stack: Stack, door: str, data: bytes) -> None:
    send(stack, door, data, str(uuid.uuid4()))


@pytest.mark.parametrize("door", DOORS)
@fuzz_settings(80)
@given(cut=st.integers(min_value=0, max_value=200), sequence=st.sampled_from([0, 1, 2**32, UINT64_MAX]))
def test_publish_truncated_message(stack: Stack, door: str, cut: int, sequence: int) -> None:
    channel_id = str(uuid.uuid4())
    data = cases.valid_request(channel_id, sequence=sequence).SerializeToString()
    send(stack, door, data[: min(cut, len(data))], channel_id)


@pytest.mark.parametrize("door", DOORS)
@fuzz_settings(80)
@given(
    field_number=st.integers(min_value=8, max_value=2**29 - 1),
    wire_type=st.sampled_from([0, 1, 2, 5]),
    content=st.binary(max_size=40),
)
def test_publish_unknown_fields(stack: Stack, door: str, field_number: int, wire_type: int, content: bytes) -> None:
    channel_id = str(uuid.uuid4())
    data = cases.valid_request(channel_id).SerializeToString()
    if wire_type == 0:
        extra = key(field_number, 0) + _VarintBytes(int.from_bytes(content[:8].ljust(8, b"\0"), "little"))
    elif wire_type == 1:
        extra = key(field_number, 1) + content[:8].ljust(8, b"\0")
    elif wire_type == 5:
        extra = key(field_number, 5) + content[:4].ljust(4, b"\0")
    else:
        extra = length_delimited(field_number, content)
    send(stack, door, data + extra, channel_id)


@pytest.mark.parametrize("door", DOORS)
@fuzz_settings(60)
@given(field_number=st.integers(min_value=1, max_value=7), wire_type=st.sampled_from([0, 1, 2, 5]),
       content=st.binary(min_size=8, max_size=16))
def test_publish_wrong_wire_type(stack: Stack, door: str, field_number: int, wire_type: int, content: bytes) -> None:
    channel_id = str(uuid.uuid4())
    data = cases.valid_request(channel_id).SerializeToString()
    if wire_type == 0:
        extra = key(field_number, 0) + _VarintBytes(int.from_bytes(content[:8], "little"))
    elif wire_type == 1:
        extra = key(field_number, 1) + content[:8]
    elif wire_type == 5:
        extra = key(field_number, 5) + content[:4]
    else:
        extra = length_delimited(field_number, content)
    send(stack, door, data + extra, channel_id)


@pytest.mark.parametrize("door", DOORS)
@fuzz_settings(100)
@given(payload=st.dictionaries(st.text(max_size=8), json_values, max_size=5))
def test_publish_payload_values(stack: Stack, door: str, payload: dict[str, object]) -> None:
    channel_id = str(uuid.uuid4())
    request = cases.valid_request(channel_id)
    request.payload.CopyFrom(struct_of(payload))
    send(stack, door, request.SerializeToString(), channel_id)


@pytest.mark.parametrize("door", DOORS)
@fuzz_settings(40)
@given(depth=st.integers(min_value=1, max_value=400), poison=st.sampled_from([None, math.nan, math.inf, -math.inf]))
def test_publish_deep_struct(stack: Stack, door: str, depth: int, poison: float | None) -> None:
    channel_id = str(uuid.uuid4())
    payload: dict[str, object] = {"leaf": poison if poison is not None else 1.0}
    for _ in range(depth):
        payload = {"n": payload}
    request = cases.valid_request(channel_id)
    # Built from the inside out by bytes: the Python API would refuse to build past its own depth limit.
    inner = struct_of({"leaf": poison if poison is not None else 1.0}).SerializeToString()
    for _ in range(depth):
        value = length_delimited(5, inner)  # Value.struct_value
        entry = length_delimited(1, b"n") + length_delimited(2, value)  # Struct.FieldsEntry
        inner = length_delimited(1, entry)  # Struct.fields
    request.ClearField("payload")
    data = request.SerializeToString() + length_delimited(6, inner)
    send(stack, door, data, channel_id)


@pytest.mark.parametrize("door", DOORS)
@fuzz_settings(30)
@given(field_count=st.integers(min_value=1, max_value=3000), value_size=st.integers(min_value=0, max_value=64))
def test_publish_huge_struct(stack: Stack, door: str, field_count: int, value_size: int) -> None:
    channel_id = str(uuid.uuid4())
    request = cases.valid_request(channel_id)
    request.payload.update({f"k{index}": "v" * value_size for index in range(field_count)})
    send(stack, door, request.SerializeToString(), channel_id)


@pytest.mark.parametrize("door", DOORS)
@fuzz_settings(60)
@given(
    field=st.sampled_from(["channel_id", "message_id", "payload_key", "payload_string"]),
    raw=st.one_of(
        # Surrogates and overlong forms that lenient UTF-8 decoders accept.
        st.sampled_from([b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xc0\xaf", b"\xe0\x80\xaf", b"\xf4\x90\x80\x80"]),
        st.binary(min_size=1, max_size=20).filter(lambda raw: not _is_utf8(raw)),
    ),
)
def test_publish_strings_not_utf8(stack: Stack, door: str, field: str, raw: bytes) -> None:
    channel_id = str(uuid.uuid4())
    request = cases.valid_request(channel_id)
    if field in ("channel_id", "message_id"):
        request.ClearField(field)
        extra = length_delimited(1 if field == "channel_id" else 2, raw)
    else:
        request.ClearField("payload")
        name, text = (raw, b"v") if field == "payload_key" else (b"k", raw)
        value = length_delimited(3, text)  # Value.string_value
        extra = length_delimited(6, length_delimited(1, length_delimited(1, name) + length_delimited(2, value)))
    send(stack, door, request.SerializeToString() + extra, channel_id)


@pytest.mark.parametrize("door", DOORS)
@fuzz_settings(40)
@given(
    sequence=st.sampled_from([0, UINT64_MAX, UINT64_MAX - 1, 2**63, 2**63 - 1]),
    phase=st.integers(min_value=-(2**31), max_value=2**31 - 1),
    org_id=st.sampled_from([0, ORG_ID, ORG_ID + 1, UINT64_MAX]),
)
def test_publish_numeric_fields(stack: Stack, door: str, sequence: int, phase: int, org_id: int) -> None:
    channel_id = str(uuid.uuid4())
    request = cases.valid_request(channel_id, sequence=sequence, org_id=org_id)
    # Open enums keep unknown numbers, so any int32 can be set and sent.
    request.phase = phase  # type: ignore[assignment]
    send(stack, door, request.SerializeToString(), channel_id)


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True

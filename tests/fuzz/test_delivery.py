"""Accepted hostile input must also reach subscribers: the gateway forwards every stored message as JSON."""

from __future__ import annotations

import json
import math
import uuid

from hypothesis import given
from hypothesis import strategies as st

from conduit.v1alpha.publish_pb2 import Phase
from tests.fuzz import cases
from tests.fuzz.cases import ORG_ID, UINT64_MAX, count_case, fuzz_settings
from tests.fuzz.conftest import Stack
from tests.fuzz.test_publish_bodies import key, length_delimited, struct_of

_MAX_SAFE_INTEGER = 2**53 - 1

finite_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, 2.0**53, 2.0**53 + 2, 1e308, -1e308, 5e-324]),
    st.text(max_size=20),
)
finite_values = st.recursive(
    finite_leaf,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=8), children, max_size=4),
    ),
    max_leaves=20,
)


def as_json(value: object) -> object:
    """Return ``value`` as the gateway writes it: integral numbers up to 2**53 become integers."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer() and abs(value) <= _MAX_SAFE_INTEGER:
        return int(value)
    if isinstance(value, list):
        return [as_json(item) for item in value]
    if isinstance(value, dict):
        return {key: as_json(item) for key, item in value.items()}
    return value


@fuzz_settings(40)
@given(
    payload=st.dictionaries(st.text(max_size=8), finite_values, max_size=5),
    sequence=st.sampled_from([0, 1, 2**53 + 1, UINT64_MAX]),
)
def test_delivery_of_accepted_payload(stack: Stack, payload: dict[str, object], sequence: int) -> None:
    count_case(stack)
    channel_id = str(uuid.uuid4())
    message = cases.valid_request(channel_id, sequence=sequence)
    message.payload.CopyFrom(struct_of(payload))
    end = cases.valid_request(channel_id, sequence=sequence, phase=Phase.PHASE_END)
    end.ClearField("payload")
    for request in (message, end):
        response = cases.post_publish(stack, str(ORG_ID), channel_id, request.SerializeToString())
        assert response.status_code == 200, response.text

    params = {"token": cases.subscriber_token(stack, channel_id), "channel_id": channel_id}
    response = stack.http.get(f"{stack.gateway_url}/events/{ORG_ID}", params=params)

    assert response.status_code == 200
    frames = [frame for frame in response.text.split("\n\n") if frame.startswith("event: stream")]
    events = [json.loads(frame.partition("\ndata: ")[2]) for frame in frames]
    assert [event["phase"] for event in events] == ["PHASE_DELTA", "PHASE_END"]
    assert events[0]["payload"] == as_json(payload)
    assert events[0]["sequence"] == sequence
    assert events[0]["message_id"] == message.message_id
    stack.assert_no_problem_logged()
    for key in stack.redis.scan_iter(match="stream:*", count=1000):
        stack.redis.delete(key)


@fuzz_settings(30)
@given(
    extra=st.one_of(
        st.tuples(st.integers(min_value=8, max_value=2**29 - 1), st.binary(max_size=30)).map(
            lambda field: length_delimited(field[0], field[1])
        ),
        st.tuples(st.integers(min_value=1, max_value=7), st.binary(min_size=8, max_size=8)).map(
            lambda field: key(field[0], 1) + field[1]
        ),
    ),
    depth=st.integers(min_value=0, max_value=120),
)
def test_delivery_of_odd_encodings(stack: Stack, extra: bytes, depth: int) -> None:
    """Unknown fields, wrong wire types and deep payloads that publish accepts must reach subscribers."""
    count_case(stack)
    channel_id = str(uuid.uuid4())
    message = cases.valid_request(channel_id)
    message.ClearField("payload")
    payload = struct_of({"leaf": 1.0}).SerializeToString()
    for _ in range(depth):
        entry = length_delimited(1, b"n") + length_delimited(2, length_delimited(5, payload))
        payload = length_delimited(1, entry)
    data = message.SerializeToString() + length_delimited(6, payload) + extra
    end = cases.valid_request(channel_id, phase=Phase.PHASE_END)

    response = cases.post_publish(stack, str(ORG_ID), channel_id, data)
    if cases.expected_publish(data, path=(ORG_ID, channel_id)) != "accepted":
        assert response.status_code == 400, response.text
        return
    assert response.status_code == 200, response.text
    assert cases.post_publish(stack, str(ORG_ID), channel_id, end.SerializeToString()).status_code == 200

    params = {"token": cases.subscriber_token(stack, channel_id), "channel_id": channel_id}
    response = stack.http.get(f"{stack.gateway_url}/events/{ORG_ID}", params=params)

    assert response.status_code == 200
    frames = [frame for frame in response.text.split("\n\n") if frame.startswith("event: stream")]
    events = [json.loads(frame.partition("\ndata: ")[2]) for frame in frames]
    assert [event["phase"] for event in events] == ["PHASE_DELTA", "PHASE_END"]
    assert events[0]["message_id"] == message.message_id
    stack.assert_no_problem_logged()
    for stream in stack.redis.scan_iter(match="stream:*", count=1000):
        stack.redis.delete(stream)


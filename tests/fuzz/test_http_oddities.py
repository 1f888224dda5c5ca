"""HTTP and gRPC transport oddities: Content-Type, chunked and slow bodies, bad framing, wrong methods."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz import cases
from tests.fuzz.cases import BODY_READ_TIMEOUT_S, MAX_MESSAGE_BYTES, ORG_ID, count_case, fuzz_settings
from tests.fuzz.conftest import Stack

# Unknown field 15, length-delimited: padding that a PublishRequest decoder skips.
_PADDING_TAG = bytes([15 << 3 | 2])


def padded_request(channel_id: str, size_bytes: int) -> bytes:
    """Return a valid encoded request of exactly ``size_bytes``, padded with an unknown field."""
    data = cases.valid_request(channel_id).SerializeToString()
    for length_bytes in range(1, 6):
        padding = size_bytes - len(data) - len(_PADDING_TAG) - length_bytes
        if padding >= 0 and len(_varint(padding)) == length_bytes:
            return data + _PADDING_TAG + _varint(padding) + b"p" * padding
    raise AssertionError(f"cannot pad a request to {size_bytes} bytes")


def _varint(value: int) -> bytes:
    encoded = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        encoded.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(encoded)


def publish_head(channel_id: str, headers: dict[str, str]) -> bytes:
    lines = [f"POST /publish/{ORG_ID}/{channel_id} HTTP/1.1", "Host: fuzz",
             f"Authorization: Bearer {cases.publisher_token()}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


content_types = st.one_of(
    st.none(),
    st.sampled_from([
        "application/x-protobuf", "application/protobuf", "application/octet-stream", "application/json",
        "text/plain; charset=utf-8", "multipart/form-data; boundary=xyz", "application/x-www-form-urlencoded",
        "application/grpc", "", "*/*", ";;;", "text/html; charset=nonsense",
    ]),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40).map(str.strip),
)


@fuzz_settings(60)
@given(content_type=content_types)
def test_publish_any_content_type(stack: Stack, content_type: str | None) -> None:
    """The body is always read as an encoded PublishRequest, whatever its Content-Type."""
    count_case(stack)
    channel_id = str(uuid.uuid4())
    headers = {"authorization": f"Bearer {cases.publisher_token()}"}
    if content_type is not None:
        headers["content-type"] = content_type
    before = stack.stream_entry_count()
    response = stack.http.post(
        f"{stack.publish_url}/publish/{ORG_ID}/{channel_id}",
        content=cases.valid_request(channel_id).SerializeToString(),
        headers=headers,
    )
    cases.assert_http_outcome(stack, response, 200, before)


@fuzz_settings(60)
@given(
    size_bytes=st.integers(min_value=MAX_MESSAGE_BYTES - 64, max_value=MAX_MESSAGE_BYTES * 4),
    # Chunks of a few bytes each would take longer than the stack's short body read deadline.
    chunk_bytes=st.integers(min_value=512, max_value=MAX_MESSAGE_BYTES * 2),
)
def test_publish_chunked_body(stack: Stack, size_bytes: int, chunk_bytes: int) -> None:
    """A chunked body has no Content-Length: the cap must still stop it at the limit."""
    count_case(stack)
    channel_id = str(uuid.uuid4())
    data = padded_request(channel_id, size_bytes)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(data), chunk_bytes):
            yield data[start:start + chunk_bytes]

    before = stack.stream_entry_count()
    response = stack.http.post(
        f"{stack.publish_url}/publish/{ORG_ID}/{channel_id}",
        content=chunks(),
        headers={"authorization": f"Bearer {cases.publisher_token()}"},
    )
    cases.assert_http_outcome(stack, response, 200 if len(data) <= MAX_MESSAGE_BYTES else 413, before)


@pytest.mark.parametrize("declared_extra", [1, 100, MAX_MESSAGE_BYTES // 2])
def test_publish_body_shorter_than_content_length(stack: Stack, declared_extra: int) -> None:
    """A client that sends less than its Content-Length and waits gets 400 once the read deadline passes."""
    count_case(stack)
    channel_id = str(uuid.uuid4())
    data = cases.valid_request(channel_id).SerializeToString()
    head = publish_head(channel_id, {"Content-Length": str(len(data) + declared_extra)})
    before = stack.stream_entry_count()

    started = time.monotonic()
    status, body = cases.raw_http(stack.publish.http_port, head, [data])

    assert status == 400, body
    assert b"did not arrive within" in body
    # The response came from the server's deadline, not from the client's own timeout.
    assert time.monotonic() - started < cases.CLIENT_TIMEOUT_S
    cases.assert_entries(stack, before, added=0)
    stack.assert_no_problem_logged()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_publish_slow_body_times_out(stack: Stack, chunked: bool) -> None:
    """A body that trickles in slower than the read deadline is rejected with 400, and nothing is stored."""
    count_case(stack)
    channel_id = str(uuid.uuid4())
    data = cases.valid_request(channel_id).SerializeToString()
    half = len(data) // 2
    if chunked:
        head = publish_head(channel_id, {"Transfer-Encoding": "chunked"})
        parts = [f"{half:x}\r\n".encode() + data[:half] + b"\r\n",
                 f"{len(data) - half:x}\r\n".encode() + data[half:] + b"\r\n0\r\n\r\n"]
    else:
        head = publish_head(channel_id, {"Content-Length": str(len(data))})
        parts = [data[:half], data[half:]]
    before = stack.stream_entry_count()

    status, body = cases.raw_http(stack.publish.http_port, head, parts, pause_s=BODY_READ_TIMEOUT_S * 1.5)

    assert status == 400, body
    assert f"did not arrive within {BODY_READ_TIMEOUT_S:g} s".encode() in body
    cases.assert_entries(stack, before, added=0)
    stack.assert_no_problem_logged()


def test_publish_body_in_pieces_within_deadline(stack: Stack) -> None:
    count_case(stack)
    channel_id = str(uuid.uuid4())
    data = cases.valid_request(channel_id).SerializeToString()
    head = publish_head(channel_id, {"Content-Length": str(len(data))})
    parts = [data[index:index + 16] for index in range(0, len(data), 16)]
    before = stack.stream_entry_count()

    status, body = cases.raw_http(stack.publish.http_port, head, parts, pause_s=0.01)

    assert status == 200, body
    cases.assert_entries(stack, before, added=1)
    stack.assert_no_problem_logged()


@pytest.mark.parametrize(
    "framing",
    [
        {"Content-Length": "-1"},
        {"Content-Length": "abc"},
        {"Content-Length": "9" * 5000},
        {"Content-Length": "１０"},
        {"Content-Length": "10, 20"},
        {"Transfer-Encoding": "gzip"},
        {"Transfer-Encoding": "chunked", "Content-Length": "5"},
    ],
    ids=["negative", "text", "5000-digits", "fullwidth-digits", "two-lengths", "unknown-coding", "chunked-and-length"],
)
def test_publish_bad_framing(stack: Stack, framing: dict[str, str]) -> None:
    count_case(stack)
    channel_id = str(uuid.uuid4())
    head = publish_head(channel_id, framing)
    before = stack.stream_entry_count()

    status, body = cases.raw_http(stack.publish.http_port, head, [b"0\r\n\r\n"])

    assert 400 <= status < 500, (status, body)
    cases.assert_entries(stack, before, added=0)
    stack.assert_no_problem_logged()


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_publish_wrong_method(stack: Stack, method: str) -> None:
    count_case(stack)
    channel_id = str(uuid.uuid4())
    before = stack.stream_entry_count()
    response = stack.http.request(method, f"{stack.publish_url}/publish/{ORG_ID}/{channel_id}",
                                  headers={"authorization": f"Bearer {cases.publisher_token()}"})
    assert response.status_code == 405
    cases.assert_entries(stack, before, added=0)
    stack.assert_no_problem_logged()


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_events_wrong_method(stack: Stack, method: str) -> None:
    count_case(stack)
    response = stack.http.request(method, f"{stack.gateway_url}/events/{ORG_ID}",
                                  params={"channel_id": str(uuid.uuid4())}, content=b"x")
    assert response.status_code == 405
    stack.assert_no_problem_logged()


def test_publish_expect_continue(stack: Stack) -> None:
    count_case(stack)
    channel_id = str(uuid.uuid4())
    data = cases.valid_request(channel_id).SerializeToString()
    head = publish_head(channel_id, {"Content-Length": str(len(data)), "Expect": "100-continue"})
    before = stack.stream_entry_count()

    status, body = cases.raw_http(stack.publish.http_port, head, [data])

    assert status == 200, body
    cases.assert_entries(stack, before, added=1)
    stack.assert_no_problem_logged()


def test_grpc_unknown_method(stack: Stack) -> None:
    count_case(stack)
    call = stack.grpc_channel.unary_unary("/conduit.v1alpha.PublishService/Nope", request_serializer=None,
                                          response_deserializer=None)
    with pytest.raises(grpc.RpcError) as raised:
        call(b"", timeout=cases.CLIENT_TIMEOUT_S)
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    stack.assert_no_problem_logged()


@pytest.mark.parametrize("size_bytes", [MAX_MESSAGE_BYTES + 1, MAX_MESSAGE_BYTES + 4096, MAX_MESSAGE_BYTES * 8])
def test_grpc_message_over_limit(stack: Stack, size_bytes: int) -> None:
    count_case(stack)
    channel_id = str(uuid.uuid4())
    before = stack.stream_entry_count()
    result = cases.grpc_publish(stack, padded_request(channel_id, size_bytes))
    cases.assert_grpc_outcome(stack, result, grpc.StatusCode.RESOURCE_EXHAUSTED, before)


@fuzz_settings(30)
@given(bodies=st.lists(st.one_of(st.binary(max_size=40), st.just(b"valid")), min_size=1, max_size=6))
def test_grpc_publish_stream_mixed(stack: Stack, bodies: list[bytes]) -> None:
    """PublishStream returns a stream id for each valid message until the first invalid one ends the call with its status."""
    count_case(stack)
    channel_id = str(uuid.uuid4())
    requests = [
        cases.valid_request(channel_id, sequence=index).SerializeToString() if body == b"valid" else body
        for index, body in enumerate(bodies)
    ]
    outcomes = [cases.expected_publish(request, path=None) for request in requests]
    accepted = next((index for index, outcome in enumerate(outcomes) if outcome != "accepted"), len(outcomes))
    before = stack.stream_entry_count()
    call = stack.grpc_channel.stream_stream(cases.PUBLISH_STREAM_METHOD, request_serializer=None,
                                            response_deserializer=None)

    responses = call(iter(requests), metadata=(("authorization", f"Bearer {cases.publisher_token()}"),),
                     timeout=cases.CLIENT_TIMEOUT_S)
    received = []
    try:
        received.extend(responses)
        code = grpc.StatusCode.OK
    except grpc.RpcError as error:
        code = error.code()

    assert len(received) == accepted
    assert code == (grpc.StatusCode.OK if accepted == len(outcomes) else grpc.StatusCode.INVALID_ARGUMENT)
    assert stack.stream_entry_count() == before + accepted
    cases.assert_entries(stack, before + accepted, added=0)
    stack.assert_no_problem_logged()


"""Encoding of stream entries and gateway messages as SSE frames."""

from __future__ import annotations

import json
import uuid

import pytest
from google.protobuf import struct_pb2

from broker.base import Entry
from conduit.v1alpha import publish_pb2
from gateway_http.events import (
    KEEPALIVE_FRAME,
    RETRY_FRAME,
    UndecodableEntry,
    control_frame,
    encode_entry,
    error_frame,
)

CHANNEL = "97f58c19-ce38-4c6b-8a5b-47f3405691f0"
MESSAGE = "2b5a3c1e-8f0d-4c7e-9a6b-1d2e3f4a5b6c"


def entry_of(request: publish_pb2.PublishRequest, entry_id: str = "1733350000000-0") -> Entry:
    return Entry(entry_id, request.SerializeToString())


def request_with(payload: dict[str, object] | None = None, **fields: object) -> publish_pb2.PublishRequest:
    request = publish_pb2.PublishRequest(
        channel_id=CHANNEL, message_id=MESSAGE, phase=publish_pb2.PHASE_DELTA, sequence=2, org_id=7
    )
    for name, value in fields.items():
        setattr(request, name, value)
    request.client_timestamp.GetCurrentTime()
    request.payload.update(payload or {})
    return request


def data_of(frame: bytes) -> str:
    return frame.decode().split("\n")[2].removeprefix("data: ")


def test_encode_entry_exact_frame() -> None:
    event = encode_entry(entry_of(request_with({"value": "hello,"})))

    assert event.frame == (
        b"event: stream\nid: 1733350000000-0\n"
        b'data: {"event_type":"stream","message_id":"2b5a3c1e-8f0d-4c7e-9a6b-1d2e3f4a5b6c",'
        b'"channel_id":"97f58c19-ce38-4c6b-8a5b-47f3405691f0","sequence":2,"phase":"PHASE_DELTA",'
        b'"payload":{"value":"hello,"}}\n\n'
    )
    assert event.is_end is False


def test_encode_entry_end_phase_ends_stream() -> None:
    event = encode_entry(entry_of(request_with(phase=publish_pb2.PHASE_END)))

    assert event.is_end is True
    assert json.loads(data_of(event.frame))["phase"] == "PHASE_END"


@pytest.mark.parametrize(
    "phase",
    [publish_pb2.PHASE_UNSPECIFIED, publish_pb2.PHASE_START, publish_pb2.PHASE_DELTA, publish_pb2.PHASE_ERROR],
)
def test_encode_entry_other_phases_keep_stream_open(phase: int) -> None:
    event = encode_entry(entry_of(request_with(phase=phase)))

    assert event.is_end is False
    assert json.loads(data_of(event.frame))["phase"] == publish_pb2.Phase.Name(phase)


def test_encode_entry_integral_numbers_as_integers() -> None:
    payload = {"count": 2, "ratio": 2.5, "negative": -3, "nested": [1, {"deep": 4}], "big": 2.0**60}

    text = data_of(encode_entry(entry_of(request_with(payload))).frame)

    assert '"count":2,' in text
    assert '"negative":-3,' in text
    assert '"nested":[1,{"deep":4}]' in text
    assert '"ratio":2.5' in text
    assert '"big":1.152921504606847e+18' in text


def test_encode_entry_payload_keys_sorted() -> None:
    text = data_of(encode_entry(entry_of(request_with({"b": 1, "a": {"z": 1, "y": 2}, "c": None}))).frame)

    assert text.endswith('"payload":{"a":{"y":2,"z":1},"b":1,"c":null}}')


def test_encode_entry_empty_payload_is_object() -> None:
    text = data_of(encode_entry(entry_of(request_with())).frame)

    assert text.endswith('"payload":{}}')


def test_encode_entry_keeps_non_ascii_and_escapes_newlines() -> None:
    event = encode_entry(entry_of(request_with({"value": "naïve\nline\r2"})))

    assert event.frame.count(b"\n") == 4
    assert json.loads(data_of(event.frame))["payload"] == {"value": "naïve\nline\r2"}
    assert "naïve".encode() in event.frame


def test_encode_entry_data_has_six_keys_without_timestamp() -> None:
    data = json.loads(data_of(encode_entry(entry_of(request_with({"v": True}))).frame))

    assert list(data) == ["event_type", "message_id", "channel_id", "sequence", "phase", "payload"]


def test_encode_entry_large_sequence() -> None:
    data = json.loads(data_of(encode_entry(entry_of(request_with(sequence=2**64 - 1))).frame))

    assert data["sequence"] == 2**64 - 1


def test_encode_entry_garbage_is_undecodable() -> None:
    with pytest.raises(UndecodableEntry, match="not a PublishRequest"):
        encode_entry(Entry("1-0", b"\xff\xff not a protobuf"))


def test_encode_entry_unknown_phase_is_undecodable() -> None:
    request = request_with()
    request.phase = 9  # type: ignore[assignment]

    with pytest.raises(UndecodableEntry, match="unknown phase 9"):
        encode_entry(entry_of(request))


def test_encode_entry_nan_payload_is_undecodable() -> None:
    request = request_with()
    request.payload.fields["x"].CopyFrom(struct_pb2.Value(number_value=float("nan")))

    with pytest.raises(UndecodableEntry, match="payload is not valid JSON"):
        encode_entry(entry_of(request))


def test_control_frame_shape() -> None:
    frame = control_frame("server_draining")

    lines = frame.decode().split("\n")
    data = json.loads(lines[1].removeprefix("data: "))
    assert lines[0] == "event: control"
    assert lines[2:] == ["", ""]
    assert list(data) == ["event_type", "message_id", "control_type"]
    assert data["control_type"] == "server_draining"
    assert uuid.UUID(data["message_id"]).version == 4


def test_error_frame_exact() -> None:
    assert error_frame("broker down") == b'event: error\ndata: {"event_type":"error","message":"broker down"}\n\n'


def test_fixed_frames() -> None:
    assert RETRY_FRAME == b"retry: 500\n\n"
    assert KEEPALIVE_FRAME == b": keep-alive\n\n"

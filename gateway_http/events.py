"""Server-Sent Events frames that the gateway writes, byte for byte.

A stream entry becomes::

    event: stream
    id: <broker entry id>
    data: {"event_type":"stream","message_id":"…","channel_id":"…","sequence":2,"phase":"PHASE_DELTA","payload":{…}}

``data`` is one line of compact JSON with exactly those six keys in that
order. The payload is the entry's ``google.protobuf.Struct`` as plain JSON with
its keys sorted, because a Struct keeps no key order. A Struct stores every
number as a double, which ``json_format`` writes as ``2.0``. Here integral
values up to 2**53 are written as integers (``2``), as ``JSON.stringify`` in a
browser writes the same object. Larger or fractional values stay floats.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass
from typing import Literal

from google.protobuf import struct_pb2
from google.protobuf.message import DecodeError

from broker.base import Entry
from broker.ids import parse_entry_id
from conduit.v1alpha import publish_pb2

__all__ = [
    "ENTRIES_MISSED",
    "KEEPALIVE_FRAME",
    "RETRY_FRAME",
    "RETRY_MS",
    "SERVER_DRAINING",
    "SseEvent",
    "UndecodableEntry",
    "control_event",
    "control_frame",
    "encode_entry",
    "error_frame",
    "is_start_entry",
]

RETRY_MS = 500
"""Reconnection delay that the browser's EventSource uses after the connection drops."""
RETRY_FRAME = f"retry: {RETRY_MS}\n\n".encode()
KEEPALIVE_FRAME = b": keep-alive\n\n"

SERVER_DRAINING = "server_draining"
"""Control type sent before the gateway closes a stream because it shuts down."""
ENTRIES_MISSED = "entries_missed"
"""Control type sent before the first entry when entries the client asked for were trimmed away."""

# Largest integer that a JavaScript number represents exactly (Number.MAX_SAFE_INTEGER).
_MAX_SAFE_INTEGER = 2**53 - 1

# json.dumps builds a new JSONEncoder for every call with options; one shared
# encoder gives the same text for about 1 µs less per entry.
_ENCODE_DATA = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
_PHASE_NAMES = {number: name for name, number in publish_pb2.Phase.items()}


class UndecodableEntry(ValueError):
    """A stream entry that is not a PublishRequest the gateway can forward."""


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One SSE event, encoded once and then sent to any number of subscribers."""

    frame: bytes
    kind: Literal["stream", "control"]
    entry_id: str | None = None
    """Broker entry id of a stream event; None for a control event."""
    entry_key: tuple[int, int] | None = None
    """``entry_id`` as ``(ms, seq)``, for ordering without parsing again."""
    is_end: bool = False
    """True for the stream's END entry, after which the response closes."""


def encode_entry(entry: Entry) -> SseEvent:
    """Encode ``entry`` as an ``event: stream`` frame; raise UndecodableEntry when it cannot be."""
    try:
        request = publish_pb2.PublishRequest.FromString(entry.data)
    except DecodeError as error:
        raise UndecodableEntry(f"not a PublishRequest: {error}") from None
    phase = _PHASE_NAMES.get(request.phase)
    if phase is None:
        raise UndecodableEntry(f"unknown phase {request.phase}")

    data = {
        "event_type": "stream",
        "message_id": request.message_id,
        "channel_id": request.channel_id,
        "sequence": request.sequence,
        "phase": phase,
        "payload": _struct_to_json(request.payload),
    }
    try:
        text = _ENCODE_DATA(data)
    except ValueError as error:
        raise UndecodableEntry(f"payload is not valid JSON: {error}") from None

    frame = f"event: stream\nid: {entry.id}\ndata: {text}\n\n".encode()
    return SseEvent(
        frame=frame,
        kind="stream",
        entry_id=entry.id,
        entry_key=parse_entry_id(entry.id),
        is_end=request.phase == publish_pb2.PHASE_END,
    )


def is_start_entry(entry: Entry) -> bool:
    """Return True when ``entry`` is a PublishRequest in PHASE_START; False for any other or undecodable entry."""
    try:
        return publish_pb2.PublishRequest.FromString(entry.data).phase == publish_pb2.PHASE_START
    except DecodeError:
        return False


def control_frame(control_type: str) -> bytes:
    """Encode an ``event: control`` frame with a fresh message id, for example for ``server_draining``."""
    data = {"event_type": "control", "message_id": str(uuid.uuid4()), "control_type": control_type}
    return f"event: control\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def control_event(control_type: str) -> SseEvent:
    """Return ``control_frame(control_type)`` as an event that a subscription can deliver."""
    return SseEvent(frame=control_frame(control_type), kind="control")


def error_frame(message: str) -> bytes:
    """Encode an ``event: error`` frame that gives the client the reason the stream ends."""
    data = {"event_type": "error", "message": message}
    return f"event: error\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _struct_to_json(struct: struct_pb2.Struct) -> dict[str, object]:
    return {key: _value_to_json(struct.fields[key]) for key in sorted(struct.fields)}


def _value_to_json(value: struct_pb2.Value) -> object:
    # Nesting is bounded by the protobuf decoder's recursion limit.
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return _struct_to_json(value.struct_value)
    if kind == "list_value":
        return [_value_to_json(item) for item in value.list_value.values]
    if kind == "number_value":
        return _number_to_json(value.number_value)
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    # null_value, or a Value with no kind set, which JSON can only show as null.
    return None


def _number_to_json(number: float) -> int | float:
    if math.isfinite(number) and number.is_integer() and abs(number) <= _MAX_SAFE_INTEGER:
        return int(number)
    return number

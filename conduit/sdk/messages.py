"""Builders of PublishRequest messages, shared by the publishers, the CLI and dev mode's demo streams."""

from __future__ import annotations

import json
import uuid
from typing import Any

from conduit.v1alpha import publish_pb2

__all__ = [
    "DEFAULT_DEMO_TEXT",
    "PHASES",
    "build_request",
    "demo_requests",
    "parse_payload",
    "split_demo_text",
]

PHASES: dict[str, int] = {
    "start": publish_pb2.PHASE_START,
    "delta": publish_pb2.PHASE_DELTA,
    "end": publish_pb2.PHASE_END,
    "error": publish_pb2.PHASE_ERROR,
}

DEFAULT_DEMO_TEXT = "Hello from Conduit! Each word of this sentence travels as its own DELTA message."


def build_request(
    *,
    org_id: int,
    channel_id: str,
    phase: int,
    sequence: int,
    payload: dict[str, Any] | None = None,
    message_id: str | None = None,
) -> publish_pb2.PublishRequest:
    """Return a PublishRequest with a fresh message id (unless given) and the current time."""
    request = publish_pb2.PublishRequest(
        channel_id=channel_id,
        message_id=message_id or str(uuid.uuid4()),
        phase=phase,  # type: ignore[arg-type]
        sequence=sequence,
        org_id=org_id,
    )
    request.client_timestamp.GetCurrentTime()
    if payload:
        request.payload.update(payload)
    return request


def split_demo_text(text: str) -> list[str]:
    """Split ``text`` into word pieces that keep their leading spaces, so joining them restores it."""
    pieces: list[str] = []
    for index, word in enumerate(text.split(" ")):
        piece = word if index == 0 else " " + word
        if pieces and not word:
            pieces[-1] += " "
        elif piece:
            pieces.append(piece)
    return pieces


def demo_requests(org_id: int, channel_id: str, text: str = DEFAULT_DEMO_TEXT) -> list[publish_pb2.PublishRequest]:
    """Return a whole demo stream: START, one DELTA ``{"value": piece}`` per word of ``text``, END.

    Sequences count from 1 in publish order.
    """
    phases = [publish_pb2.PHASE_START]
    payloads: list[dict[str, Any] | None] = [None]
    for piece in split_demo_text(text):
        phases.append(publish_pb2.PHASE_DELTA)
        payloads.append({"value": piece})
    phases.append(publish_pb2.PHASE_END)
    payloads.append(None)
    return [
        build_request(org_id=org_id, channel_id=channel_id, phase=phase, sequence=sequence, payload=payload)
        for sequence, (phase, payload) in enumerate(zip(phases, payloads, strict=True), start=1)
    ]


def parse_payload(text: str) -> dict[str, Any]:
    """Parse a JSON object for a message payload; raise ValueError naming what is wrong."""

    def reject_constant(name: str) -> None:
        raise ValueError(f"{name} is not valid JSON")

    try:
        value = json.loads(text, parse_constant=reject_constant)
    except json.JSONDecodeError as error:
        raise ValueError(f"not valid JSON: {error.msg} at position {error.pos}") from None
    if not isinstance(value, dict):
        raise ValueError(f"must be a JSON object, got {type(value).__name__}")
    return value

"""Conduit's Python SDK: publish over gRPC or HTTP, subscribe over Server-Sent Events.

See docs/clients.md for a runnable example.
"""

from conduit.sdk.errors import ConduitClientError, PublishRejected, PublishUnreachable, SubscribeFailed
from conduit.sdk.messages import (
    DEFAULT_DEMO_TEXT,
    PHASES,
    build_request,
    demo_requests,
    parse_payload,
    split_demo_text,
)
from conduit.sdk.publisher import GrpcPublisher, HttpPublisher, Publisher
from conduit.sdk.stream import MessageStream
from conduit.sdk.subscriber import ControlEvent, Event, SseEvent, StreamEvent, Subscriber

__all__ = [
    "DEFAULT_DEMO_TEXT",
    "PHASES",
    "ConduitClientError",
    "ControlEvent",
    "Event",
    "GrpcPublisher",
    "HttpPublisher",
    "MessageStream",
    "PublishRejected",
    "PublishUnreachable",
    "Publisher",
    "SseEvent",
    "StreamEvent",
    "SubscribeFailed",
    "Subscriber",
    "build_request",
    "demo_requests",
    "parse_payload",
    "split_demo_text",
]

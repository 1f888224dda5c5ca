"""The first client module, kept so that existing imports go on working; new code uses ``conduit.sdk``."""

from __future__ import annotations

import httpx

from conduit.sdk import (
    DEFAULT_DEMO_TEXT,
    PHASES,
    PublishRejected,
    SseEvent,
    SubscribeFailed,
    build_request,
    demo_requests,
    parse_payload,
    split_demo_text,
)
from conduit.sdk.publisher import DEFAULT_TIMEOUT_S, PROTOBUF_MEDIA_TYPE
from conduit.v1alpha import publish_pb2

__all__ = [
    "DEFAULT_DEMO_TEXT",
    "PHASES",
    "PublishRejected",
    "SseEvent",
    "SubscribeFailed",
    "build_request",
    "demo_requests",
    "parse_payload",
    "publish_http",
    "split_demo_text",
]


async def publish_http(
    client: httpx.AsyncClient, base_url: str, request: publish_pb2.PublishRequest, token: str
) -> str:
    """POST one message to the HTTP shim with ``client`` and return its stream id; raise PublishRejected otherwise."""
    url = f"{base_url.rstrip('/')}/publish/{request.org_id}/{request.channel_id}"
    response = await client.post(
        url,
        content=request.SerializeToString(),
        headers={"content-type": PROTOBUF_MEDIA_TYPE, "authorization": f"Bearer {token}"},
        timeout=DEFAULT_TIMEOUT_S,
    )
    if response.status_code != 200:
        raise PublishRejected(f"HTTP {response.status_code}", response.text.strip() or response.reason_phrase)
    return response.text.strip()

"""Publish over the HTTP shim with a caller's httpx client, as the end-to-end tests need."""

from __future__ import annotations

import httpx

from conduit.sdk import PublishRejected
from conduit.sdk.publisher import DEFAULT_TIMEOUT_S, PROTOBUF_MEDIA_TYPE
from conduit.v1alpha import publish_pb2


async def publish_http(
    client: httpx.AsyncClient, base_url: str, request: publish_pb2.PublishRequest, token: str
) -> str:
    """POST one message with ``client`` and return its stream id; raise PublishRejected otherwise."""
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

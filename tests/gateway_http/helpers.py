"""Helpers shared by the gateway tests: settings, publishing and reading SSE frames."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from broker.base import Broker
from broker.keys import stream_key
from conduit.settings import BrokerSettings, JwtSettings, Settings
from conduit.v1alpha import publish_pb2
from gateway_http.server import GatewayServer

ISSUER = "test-issuer"
AUDIENCE = "test-gateway"
ORG_ID = 123
# Tests publish faster than the default 20 per second.
BROKER_LIMITS = {"rate_limit": 100_000, "stream_ttl_s": 60}

GatewayFactory = Callable[..., Awaitable[GatewayServer]]
"""``await start_gateway(**GatewayServer options)`` returns a started server."""


def make_settings(public_pem: str, redis_url: str | None) -> Settings:
    return Settings(
        host="127.0.0.1",
        gateway_port=0,
        broker=BrokerSettings(redis_url=redis_url, **BROKER_LIMITS),
        gateway_jwt=JwtSettings(key=public_pem, issuer=ISSUER, audience=AUDIENCE),
    )


def encode(
    channel_id: str,
    *,
    sequence: int,
    phase: int = publish_pb2.PHASE_DELTA,
    payload: dict[str, Any] | None = None,
    message_id: str | None = None,
) -> bytes:
    """Return an encoded PublishRequest as the publish service would store it."""
    request = publish_pb2.PublishRequest(
        channel_id=channel_id,
        message_id=message_id or str(uuid.uuid4()),
        phase=phase,
        sequence=sequence,
        org_id=ORG_ID,
    )
    request.client_timestamp.GetCurrentTime()
    request.payload.update(payload or {})
    return request.SerializeToString()


async def publish(broker: Broker, channel_id: str, *, sequence: int, phase: int = publish_pb2.PHASE_DELTA,
                  payload: dict[str, Any] | None = None, message_id: str | None = None) -> str:
    """Append one message to the channel's stream and return its entry id."""
    data = encode(channel_id, sequence=sequence, phase=phase, payload=payload, message_id=message_id)
    return await broker.append(stream_key(ORG_ID, channel_id), data, end=phase == publish_pb2.PHASE_END)


class FrameReader:
    """Splits a streaming SSE response into frames (the text between blank lines)."""

    def __init__(self, response: httpx.Response) -> None:
        self._chunks = response.aiter_bytes()
        self._buffer = b""

    async def next_frame(self, timeout_s: float = 5) -> bytes:
        """Return the next frame with its trailing blank line; raise EOFError at the end of the body."""
        async with asyncio.timeout(timeout_s):
            while b"\n\n" not in self._buffer:
                try:
                    self._buffer += await anext(self._chunks)
                except StopAsyncIteration:
                    raise EOFError(f"response ended; unparsed rest: {self._buffer!r}") from None
        frame, _, self._buffer = self._buffer.partition(b"\n\n")
        return frame + b"\n\n"

    async def rest(self, timeout_s: float = 5) -> bytes:
        """Return everything until the response ends."""
        async with asyncio.timeout(timeout_s):
            async for chunk in self._chunks:
                self._buffer += chunk
        rest, self._buffer = self._buffer, b""
        return rest


async def wait_until(condition: Callable[[], bool], timeout_s: float = 5) -> None:
    """Poll ``condition`` every 20 ms until it holds; fail after ``timeout_s``."""
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.02)

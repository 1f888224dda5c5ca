"""Small clients for the publish service (HTTP shim and gRPC) and the SSE gateway.

``conduit send`` and ``conduit tail`` are built on these, and dev mode uses the
message builders for its demo stream. Every network call has a deadline.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
from conduit.v1alpha import publish_pb2, publish_pb2_grpc

__all__ = [
    "DEFAULT_DEMO_TEXT",
    "PHASES",
    "PublishRejected",
    "SseEvent",
    "SubscribeFailed",
    "build_request",
    "demo_requests",
    "parse_payload",
    "publish_grpc",
    "publish_grpc_stream",
    "publish_http",
    "publish_http_many",
    "split_demo_text",
    "tail_events",
]

PHASES: dict[str, int] = {
    "start": publish_pb2.PHASE_START,
    "delta": publish_pb2.PHASE_DELTA,
    "end": publish_pb2.PHASE_END,
    "error": publish_pb2.PHASE_ERROR,
}

DEFAULT_DEMO_TEXT = "Hello from Conduit! Each word of this sentence travels as its own DELTA message."

PROTOBUF_MEDIA_TYPE = "application/x-protobuf"
_REQUEST_TIMEOUT_S = 10.0
_MAX_RATE_LIMIT_RETRIES = 5


class PublishRejected(Exception):
    """The publish service rejected a message; ``status`` is the HTTP status or gRPC code name."""

    def __init__(self, status: str, detail: str, retry_after_s: float | None = None) -> None:
        super().__init__(f"publish rejected: {status}: {detail}")
        self.status = status
        self.detail = detail
        self.retry_after_s = retry_after_s


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


async def publish_http(
    client: httpx.AsyncClient, base_url: str, request: publish_pb2.PublishRequest, token: str
) -> str:
    """POST one message to the HTTP shim and return its stream id; raise PublishRejected on a non-200 status."""
    url = f"{base_url.rstrip('/')}/publish/{request.org_id}/{request.channel_id}"
    response = await client.post(
        url,
        content=request.SerializeToString(),
        headers={"content-type": PROTOBUF_MEDIA_TYPE, "authorization": f"Bearer {token}"},
        timeout=_REQUEST_TIMEOUT_S,
    )
    if response.status_code != 200:
        retry_after = response.headers.get("retry-after")
        raise PublishRejected(
            f"HTTP {response.status_code}",
            response.text.strip() or response.reason_phrase,
            float(retry_after) if retry_after and retry_after.isdigit() else None,
        )
    return response.text.strip()


async def publish_http_many(
    base_url: str,
    requests: Sequence[publish_pb2.PublishRequest],
    token: str,
    *,
    interval_s: float = 0.0,
) -> AsyncIterator[str]:
    """Publish ``requests`` in order over HTTP, yielding each stream id as it is acknowledged.

    A 429 response is retried with the same message after its Retry-After, at
    most a few times per message. Any other rejection raises PublishRejected.
    """
    async with httpx.AsyncClient() as client:
        for index, request in enumerate(requests):
            if index and interval_s:
                await asyncio.sleep(interval_s)
            for attempt in range(_MAX_RATE_LIMIT_RETRIES + 1):
                try:
                    yield await publish_http(client, base_url, request, token)
                    break
                except PublishRejected as error:
                    if error.retry_after_s is None or attempt == _MAX_RATE_LIMIT_RETRIES:
                        raise
                    await asyncio.sleep(error.retry_after_s)


async def publish_grpc(target: str, request: publish_pb2.PublishRequest, token: str) -> str:
    """Send one message with the unary ``Publish`` call and return its stream id."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = publish_pb2_grpc.PublishServiceStub(channel)
        try:
            response = await stub.Publish(
                request, metadata=_bearer(token), timeout=_REQUEST_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as error:
            raise _grpc_rejection(error) from None
    return response.stream_id


async def publish_grpc_stream(
    target: str,
    requests: Iterable[publish_pb2.PublishRequest],
    token: str,
    *,
    interval_s: float = 0.0,
    timeout_s: float = 120.0,
) -> AsyncIterator[str]:
    """Send ``requests`` over one ``PublishStream`` call, yielding each stream id as it arrives.

    Each message is written only after the response to the previous one has
    arrived. grpcio's asyncio client (1.85) reports INTERNAL instead of the
    server's status when a write fails because the server already ended the
    call, so writing ahead would hide why a publish was rejected.
    """
    async with grpc.aio.insecure_channel(target) as channel:
        stub = publish_pb2_grpc.PublishServiceStub(channel)
        call = stub.PublishStream(metadata=_bearer(token), timeout=timeout_s)
        try:
            for index, request in enumerate(requests):
                if index and interval_s:
                    await asyncio.sleep(interval_s)
                await call.write(request)
                response = await call.read()
                if response is grpc.aio.EOF:
                    break
                yield response.stream_id
            await call.done_writing()
            code = await call.code()
        except grpc.aio.AioRpcError as error:
            raise _grpc_rejection(error) from None
        if code != grpc.StatusCode.OK:
            raise PublishRejected(f"gRPC {code.name}", await call.details() or "no details")


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


def _bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


def _grpc_rejection(error: grpc.aio.AioRpcError) -> PublishRejected:
    code = error.code()
    name = code.name if code is not None else "UNKNOWN"
    return PublishRejected(f"gRPC {name}", error.details() or "no details")


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One dispatched Server-Sent Event."""

    event: str
    data: str
    id: str | None

    @property
    def is_end(self) -> bool:
        """True for the stream event that carries the END phase, after which the gateway closes."""
        if self.event != "stream":
            return False
        try:
            return json.loads(self.data).get("phase") == "PHASE_END"
        except (ValueError, AttributeError):
            return False


class SubscribeFailed(Exception):
    """The gateway rejected the subscription, reported an error, or stayed unreachable."""

    def __init__(self, status: str, detail: str) -> None:
        super().__init__(f"subscribe failed: {status}: {detail}")
        self.status = status
        self.detail = detail


class _SseParser:
    """Incremental parser of the ``text/event-stream`` format, fed one line at a time."""

    def __init__(self) -> None:
        self.retry_ms: int | None = None
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, line: str) -> SseEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            self._id = value
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)
        return None

    def _dispatch(self) -> SseEvent | None:
        event = SseEvent(self._event or "message", "\n".join(self._data), self._id) if self._data else None
        self._event, self._data, self._id = "", [], None
        return event


async def tail_events(
    base_url: str,
    org_id: int,
    channel_id: str,
    token: str,
    *,
    last_event_id: str | None = None,
    max_reconnects: int = 5,
    read_timeout_s: float = 60.0,
) -> AsyncIterator[SseEvent]:
    """Yield a channel's events as they arrive, until the END event.

    A dropped connection, a response that closes before END (for example on a
    gateway drain) or a 5xx status is retried with ``Last-Event-ID`` set to the
    last event seen. At most ``max_reconnects`` retries may follow each other
    without a new event in between. A 4xx status or an ``error`` event raises
    SubscribeFailed at once.
    """
    url = f"{base_url.rstrip('/')}/events/{org_id}"
    params = {"channel_id": channel_id, "token": token}
    timeout = httpx.Timeout(_REQUEST_TIMEOUT_S, read=read_timeout_s)
    failures = 0
    retry_s = 0.5

    async with httpx.AsyncClient(timeout=timeout) as client:
        while True:
            headers = {"accept": "text/event-stream"}
            if last_event_id:
                headers["last-event-id"] = last_event_id
            parser = _SseParser()
            try:
                async with client.stream("GET", url, params=params, headers=headers) as response:
                    if response.status_code != 200:
                        body = (await response.aread()).decode("utf-8", "replace").strip()
                        if response.status_code < 500:
                            raise SubscribeFailed(f"HTTP {response.status_code}", body or response.reason_phrase)
                        reason = f"HTTP {response.status_code}: {body}"
                    else:
                        async for line in response.aiter_lines():
                            event = parser.feed(line)
                            if event is None:
                                continue
                            if event.id:
                                last_event_id = event.id
                                failures = 0
                            yield event
                            if event.event == "error":
                                raise SubscribeFailed("gateway error", event.data)
                            if event.is_end:
                                return
                        reason = "the gateway closed the stream before END"
            except httpx.TransportError as error:
                reason = f"{type(error).__name__}: {error or 'connection lost'}"

            failures += 1
            if failures > max_reconnects:
                raise SubscribeFailed("gave up", f"{reason} (after {max_reconnects} reconnects)")
            if parser.retry_ms is not None:
                retry_s = parser.retry_ms / 1000
            await asyncio.sleep(min(retry_s * failures, 5.0))

"""Async publishers over gRPC and over the HTTP shim, with one call per message or a whole stream.

Both classes share one interface::

    async with GrpcPublisher("127.0.0.1:50051", token, org_id=1) as publisher:
        await publisher.send(channel_id, "delta", {"value": "hi"}, sequence=1)
        async with publisher.stream(channel_id) as stream:   # sends START
            await stream.delta({"value": "hello,"})
            await stream.delta({"value": " world!"})
        # leaving the block sends END (or ERROR when the block raised)

Every network wait has a deadline of ``timeout_s``. A rejection raises
PublishRejected with the HTTP status or gRPC code and the server's message. A
failed connection or a passed deadline raises PublishUnreachable.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from typing import Any, Self

import grpc
import httpx

from conduit.sdk.errors import PublishRejected, PublishUnreachable
from conduit.sdk.messages import PHASES, build_request
from conduit.sdk.stream import MessageStream, StreamSender
from conduit.v1alpha import publish_pb2, publish_pb2_grpc

__all__ = ["DEFAULT_TIMEOUT_S", "GrpcPublisher", "HttpPublisher", "Publisher"]

DEFAULT_TIMEOUT_S = 10.0
PROTOBUF_MEDIA_TYPE = "application/x-protobuf"


class Publisher(ABC):
    """Publishes to one organization with one token; close it (or use ``async with``) when done."""

    def __init__(self, token: str, *, org_id: int, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
        self.org_id = org_id
        self.timeout_s = timeout_s
        self._token = token

    def __repr__(self) -> str:
        # The token is a credential: never part of a repr.
        return f"{type(self).__name__}(org_id={self.org_id})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @abstractmethod
    async def publish(self, request: publish_pb2.PublishRequest) -> str:
        """Send one prepared message and return its stream id (the broker entry id)."""

    @abstractmethod
    async def close(self) -> None:
        """Release the connection; the publisher is unusable afterwards."""

    async def send(
        self,
        channel_id: str,
        phase: str | int,
        payload: dict[str, Any] | None = None,
        *,
        sequence: int,
        message_id: str | None = None,
    ) -> str:
        """Build and send one message; ``phase`` is ``"start"``, ``"delta"``, ``"end"``, ``"error"`` or the enum value."""
        request = build_request(
            org_id=self.org_id,
            channel_id=channel_id,
            phase=_phase(phase),
            sequence=sequence,
            payload=payload,
            message_id=message_id,
        )
        return await self.publish(request)

    async def publish_many(
        self, requests: Sequence[publish_pb2.PublishRequest], *, interval_s: float = 0.0
    ) -> AsyncIterator[str]:
        """Send prepared messages in order, ``interval_s`` apart, yielding each stream id as it is acknowledged.

        GrpcPublisher carries them over one ``PublishStream`` call.
        """
        sender = self._stream_sender()
        try:
            for index, request in enumerate(requests):
                if index and interval_s:
                    await asyncio.sleep(interval_s)
                yield await sender.send(request)
            await sender.close()
        except BaseException:
            sender.abort()
            raise

    def stream(self, channel_id: str, *, start_payload: dict[str, Any] | None = None) -> MessageStream:
        """Return a context manager that sends START on entry and END (or ERROR) on exit.

        Sequence numbers count from 1 and every message gets a fresh message id.
        """
        return MessageStream(self._stream_sender(), self.org_id, channel_id, start_payload=start_payload)

    def _stream_sender(self) -> StreamSender:
        return _OneCallPerMessage(self)


class _OneCallPerMessage(StreamSender):
    def __init__(self, publisher: Publisher) -> None:
        self._publisher = publisher

    async def send(self, request: publish_pb2.PublishRequest) -> str:
        return await self._publisher.publish(request)


class HttpPublisher(Publisher):
    """Publishes with ``POST /publish/{org_id}/{channel_id}`` on the HTTP shim.

    A 429 response is retried with the same message after its Retry-After, at most
    ``max_rate_limit_retries`` times per message.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        org_id: int,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_rate_limit_retries: int = 5,
    ) -> None:
        super().__init__(token, org_id=org_id, timeout_s=timeout_s)
        self.base_url = base_url.rstrip("/")
        self._max_rate_limit_retries = max_rate_limit_retries
        self._client = httpx.AsyncClient(timeout=timeout_s)

    async def publish(self, request: publish_pb2.PublishRequest) -> str:
        for attempt in range(self._max_rate_limit_retries + 1):
            try:
                return await self._post(request)
            except PublishRejected as error:
                if error.retry_after_s is None or attempt == self._max_rate_limit_retries:
                    raise
                await asyncio.sleep(error.retry_after_s)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def close(self) -> None:
        await self._client.aclose()

    async def _post(self, request: publish_pb2.PublishRequest) -> str:
        url = f"{self.base_url}/publish/{request.org_id}/{request.channel_id}"
        headers = {"content-type": PROTOBUF_MEDIA_TYPE, "authorization": f"Bearer {self._token}"}
        try:
            response = await self._client.post(url, content=request.SerializeToString(), headers=headers)
        except httpx.TimeoutException:
            raise PublishUnreachable("timeout", f"{self.base_url} did not respond within {self.timeout_s:g} s") from None
        except httpx.TransportError as error:
            raise PublishUnreachable("unreachable", f"{type(error).__name__}: {error}") from None
        if response.status_code != 200:
            retry_after = response.headers.get("retry-after", "")
            raise PublishRejected(
                f"HTTP {response.status_code}",
                response.text.strip() or response.reason_phrase,
                float(retry_after) if retry_after.isdigit() else None,
            )
        return response.text.strip()


class GrpcPublisher(Publisher):
    """Publishes over gRPC: ``Publish`` for single messages, one ``PublishStream`` call per stream.

    ``stream_timeout_s`` is the deadline of a whole ``PublishStream`` call.
    """

    def __init__(
        self,
        target: str,
        token: str,
        *,
        org_id: int,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        stream_timeout_s: float = 300.0,
    ) -> None:
        super().__init__(token, org_id=org_id, timeout_s=timeout_s)
        self.target = target
        self.stream_timeout_s = stream_timeout_s
        self._channel: grpc.aio.Channel | None = None

    async def publish(self, request: publish_pb2.PublishRequest) -> str:
        try:
            response = await self._stub().Publish(request, metadata=self._metadata(), timeout=self.timeout_s)
        except grpc.aio.AioRpcError as error:
            raise grpc_error(error) from None
        return response.stream_id

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    def _stream_sender(self) -> StreamSender:
        return _GrpcStreamSender(self)

    def _stub(self) -> publish_pb2_grpc.PublishServiceStub:
        # The channel is made on first use, so that it binds to the running event loop.
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self.target)
        return publish_pb2_grpc.PublishServiceStub(self._channel)

    def _metadata(self) -> tuple[tuple[str, str]]:
        return (("authorization", f"Bearer {self._token}"),)


class _GrpcStreamSender(StreamSender):
    """One ``PublishStream`` call; each message is written only after the previous response arrived.

    grpcio's asyncio client reports INTERNAL instead of the server's status when a
    write fails because the server already ended the call, so writing ahead would
    hide why a publish was rejected.
    """

    def __init__(self, publisher: GrpcPublisher) -> None:
        self._publisher = publisher
        self._call: Any = None

    async def send(self, request: publish_pb2.PublishRequest) -> str:
        if self._call is None:
            self._call = self._publisher._stub().PublishStream(
                metadata=self._publisher._metadata(), timeout=self._publisher.stream_timeout_s
            )
        try:
            async with asyncio.timeout(self._publisher.timeout_s):
                await self._call.write(request)
                response = await self._call.read()
        except grpc.aio.AioRpcError as error:
            raise grpc_error(error) from None
        except TimeoutError:
            self.abort()
            raise PublishUnreachable(
                "timeout", f"{self._publisher.target} did not respond within {self._publisher.timeout_s:g} s"
            ) from None
        if response is grpc.aio.EOF:
            raise await self._ended_early()
        return str(response.stream_id)

    async def close(self) -> None:
        if self._call is None:
            return
        try:
            async with asyncio.timeout(self._publisher.timeout_s):
                await self._call.done_writing()
                code = await self._call.code()
        except grpc.aio.AioRpcError as error:
            raise grpc_error(error) from None
        except TimeoutError:
            self.abort()
            raise PublishUnreachable("timeout", "PublishStream did not finish in time") from None
        if code != grpc.StatusCode.OK:
            raise PublishRejected(f"gRPC {code.name}", await self._call.details() or "no details")

    def abort(self) -> None:
        if self._call is not None:
            self._call.cancel()

    async def _ended_early(self) -> PublishRejected:
        with contextlib.suppress(grpc.aio.AioRpcError):
            code = await self._call.code()
            if code != grpc.StatusCode.OK:
                return PublishRejected(f"gRPC {code.name}", await self._call.details() or "no details")
        return PublishRejected("gRPC OK", "the server ended PublishStream before answering")


def grpc_error(error: grpc.aio.AioRpcError) -> PublishRejected | PublishUnreachable:
    """Map a failed call to PublishUnreachable (UNAVAILABLE with no server, DEADLINE_EXCEEDED) or PublishRejected."""
    code = error.code()
    name = code.name if code is not None else "UNKNOWN"
    details = error.details() or "no details"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return PublishUnreachable("timeout", f"gRPC {name}: {details}")
    if code == grpc.StatusCode.UNAVAILABLE and _is_transport_failure(details):
        return PublishUnreachable("unreachable", f"gRPC {name}: {details}")
    return PublishRejected(f"gRPC {name}", details)


# grpc core's wording when no connection to the server could be made or kept. The
# service itself also returns UNAVAILABLE (broker unreachable) with its own message,
# and that is a rejection with a status, like HTTP 503.
_TRANSPORT_FAILURE_MARKERS = (
    "failed to connect",
    "connection refused",
    "dns resolution failed",
    "socket closed",
    "connection reset",
    "connections to all backends failing",
)


def _is_transport_failure(details: str) -> bool:
    lowered = details.lower()
    return any(marker in lowered for marker in _TRANSPORT_FAILURE_MARKERS)


def _phase(phase: str | int) -> int:
    if isinstance(phase, int):
        if phase not in PHASES.values():
            raise ValueError(f"phase must be one of {sorted(PHASES.values())}, got {phase}")
        return phase
    try:
        return PHASES[phase.lower()]
    except KeyError:
        raise ValueError(f"phase must be one of {', '.join(PHASES)}, got {phase!r}") from None

"""The context-managed message stream that both publishers hand out: START, DELTAs, then END."""

from __future__ import annotations

from types import TracebackType
from typing import Any, Self

from conduit.sdk.messages import build_request
from conduit.v1alpha import publish_pb2

__all__ = ["MessageStream", "StreamSender"]


class StreamSender:
    """Transport of a stream's messages: one call each, or one gRPC ``PublishStream`` call for all."""

    async def send(self, request: publish_pb2.PublishRequest) -> str:
        raise NotImplementedError

    async def close(self) -> None:
        """Finish after the last message; raise when the server reports a failure."""

    def abort(self) -> None:
        """Drop the transport at once, without waiting for the server."""


class MessageStream:
    """Sends START on entry, then ``delta()`` messages, then END on a clean exit.

    Sequence numbers count from 1 in send order, and each message gets a fresh
    message id. When the block raises an Exception, an ERROR message
    ``{"error": "<exception class>"}`` ends the stream instead. When the block is
    cancelled, the transport is dropped without a last message, and cleanup later
    deletes the unfinished stream. ``stream_ids`` lists the acknowledged broker
    entry ids in order.
    """

    def __init__(
        self, sender: StreamSender, org_id: int, channel_id: str, *, start_payload: dict[str, Any] | None = None
    ) -> None:
        self.org_id = org_id
        self.channel_id = channel_id
        self.stream_ids: list[str] = []
        self._sender = sender
        self._start_payload = start_payload
        self._sequence = 0
        self._finished = False

    @property
    def finished(self) -> bool:
        """True once END or ERROR was sent."""
        return self._finished

    async def __aenter__(self) -> Self:
        try:
            await self._send(publish_pb2.PHASE_START, self._start_payload)
        except BaseException:
            self._sender.abort()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if exc is not None and not isinstance(exc, Exception):
            # Cancellation or interpreter exit: send nothing more and let it propagate.
            self._sender.abort()
            return
        try:
            if not self._finished:
                if exc is None:
                    await self.end()
                else:
                    await self.error({"error": type(exc).__name__})
            await self._sender.close()
        except BaseException as cleanup_error:
            self._sender.abort()
            if exc is None or not isinstance(cleanup_error, Exception):
                raise
            # The block's own exception explains more than the failed ERROR message, so it propagates.

    async def delta(self, payload: dict[str, Any] | None = None) -> str:
        """Send one DELTA message and return its stream id."""
        return await self._send(publish_pb2.PHASE_DELTA, payload)

    async def end(self, payload: dict[str, Any] | None = None) -> str:
        """Send END now; the stream accepts nothing after it."""
        stream_id = await self._send(publish_pb2.PHASE_END, payload)
        self._finished = True
        return stream_id

    async def error(self, payload: dict[str, Any] | None = None) -> str:
        """Send ERROR now; the stream accepts nothing after it."""
        stream_id = await self._send(publish_pb2.PHASE_ERROR, payload)
        self._finished = True
        return stream_id

    async def _send(self, phase: int, payload: dict[str, Any] | None) -> str:
        if self._finished:
            raise RuntimeError(f"the stream on channel {self.channel_id} has already ended")
        self._sequence += 1
        request = build_request(
            org_id=self.org_id, channel_id=self.channel_id, phase=phase, sequence=self._sequence, payload=payload
        )
        stream_id = await self._sender.send(request)
        self.stream_ids.append(stream_id)
        return stream_id

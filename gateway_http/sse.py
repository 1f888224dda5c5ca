"""The ASGI response that streams one channel to one client as Server-Sent Events.

Three tasks run side by side and the first to finish decides the outcome:

- the pump reads the feed and sends frames until the END entry, a broker
  failure, or the feed dropping a subscriber that fell behind;
- the disconnect watch returns when the client goes away;
- the drain watch returns when the server starts shutting down.

The other two are then cancelled and awaited, so the subscription is closed (in
the pump's ``finally``) before the response returns. A drain sends ``event:
control`` before closing. Every send has a deadline, and the feed queues a
bounded number of events per subscriber, so a client that stops reading is
dropped instead of buffered without bound. Connection limits are checked
before the response starts, and a rejected request gets a 429 instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Literal

from litestar.types import Receive, Scope, Send

from conduit.errors import BrokerUnavailable
from gateway_http.drain import Drain
from gateway_http.events import KEEPALIVE_FRAME, RETRY_FRAME, SERVER_DRAINING, control_frame, error_frame
from gateway_http.feed import Feed, SubscriberLagging
from gateway_http.limits import ConnectionLimiter, ConnectionLimitExceeded
from gateway_http.metrics import EVENTS_SENT, OPEN_STREAMS

__all__ = ["KEEPALIVE_INTERVAL_S", "SEND_TIMEOUT_S", "SseStream"]

logger = logging.getLogger(__name__)

KEEPALIVE_INTERVAL_S = 15.0
"""Idle time after which a ``: keep-alive`` comment is sent, so proxies keep the connection open."""
SEND_TIMEOUT_S = 10.0
"""Maximum wait for the client to take one frame. A slower client is dropped."""

# A closing stream waits at most 50 x 0.1 s = 5 s for its tasks to finish.
_CANCEL_ATTEMPTS = 50
_CANCEL_WAIT_S = 0.1
_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    # Proxies (nginx honours X-Accel-Buffering) must pass each frame on at once.
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]

EventKind = Literal["stream", "control", "error", "keepalive", "retry"]


class _SendTimedOut(Exception):
    """The client did not take a frame within the send timeout."""


class _FrameSender:
    """Sends body frames with a deadline and counts them, the single edge where frames leave."""

    def __init__(self, send: Send, timeout_s: float) -> None:
        self._send = send
        self._timeout_s = timeout_s

    async def start(self) -> None:
        await self._call({"type": "http.response.start", "status": 200, "headers": _HEADERS})

    async def frame(self, frame: bytes, kind: EventKind) -> None:
        await self._call({"type": "http.response.body", "body": frame, "more_body": True})
        EVENTS_SENT.labels(kind).inc()

    async def finish(self) -> None:
        await self._call({"type": "http.response.body", "body": b"", "more_body": False})

    async def _call(self, message: dict[str, object]) -> None:
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._send(message)  # type: ignore[arg-type]
        except TimeoutError:
            raise _SendTimedOut from None


class SseStream:
    """ASGI app for one subscriber of one stream; build one per accepted request."""

    def __init__(
        self,
        *,
        feed: Feed,
        stream: str,
        after_id: str,
        drain: Drain,
        log_fields: dict[str, object],
        limiter: ConnectionLimiter,
        token_key: bytes,
        keepalive_interval_s: float = KEEPALIVE_INTERVAL_S,
        send_timeout_s: float = SEND_TIMEOUT_S,
    ) -> None:
        self._feed = feed
        self._limiter = limiter
        self._token_key = token_key
        self._stream = stream
        self._after_id = after_id
        self._drain = drain
        self._log_fields = log_fields
        self._keepalive_interval_s = keepalive_interval_s
        self._send_timeout_s = send_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The connection counts from here to the return, so no path can leave it counted.
        client = scope.get("client")
        try:
            lease = self._limiter.acquire(client[0] if client else None, self._token_key)
        except ConnectionLimitExceeded as error:
            await _send_rejection(send, error, str(scope.get("path")), self._log_fields, self._send_timeout_s)
            return
        try:
            await self._serve(receive, send)
        finally:
            lease.release()

    async def _serve(self, receive: Receive, send: Send) -> None:
        sender = _FrameSender(send, self._send_timeout_s)
        reason = "cancelled"
        with self._drain.track(), OPEN_STREAMS.track_inprogress():
            logger.info("stream opened", extra={**self._log_fields, "after_id": self._after_id})
            try:
                await sender.start()
                await sender.frame(RETRY_FRAME, "retry")
                reason = await self._run(sender, receive)
            except _SendTimedOut:
                reason = "client stopped reading"
                # NOTE: ASGI gives no way to abort a response, so uvicorn logs that
                # this one ended incomplete and closes the connection.
                logger.warning("dropping slow client", extra=self._log_fields)
            finally:
                logger.info("stream closed", extra={**self._log_fields, "reason": reason})

    async def _run(self, sender: _FrameSender, receive: Receive) -> str:
        """Run the pump and both watches until one finishes; return why the stream ended."""
        pump = asyncio.create_task(self._pump(sender), name="sse-pump")
        disconnect = asyncio.create_task(_wait_for_disconnect(receive), name="sse-disconnect")
        draining = asyncio.create_task(self._drain.wait_draining(), name="sse-drain")
        tasks = (pump, disconnect, draining)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await _cancel_and_wait(tasks)

        if not pump.cancelled():
            reason = pump.result()  # re-raises _SendTimedOut and unexpected errors
        elif not disconnect.cancelled():
            disconnect.result()  # re-raises an error from receive()
            return "client disconnected"
        else:
            await sender.frame(control_frame(SERVER_DRAINING), "control")
            reason = "server draining"
        await sender.finish()
        return reason

    async def _pump(self, sender: _FrameSender) -> str:
        """Send the stream's events, with keep-alives while idle, until END, a broker failure or a lag."""
        try:
            subscription = await self._feed.subscribe(self._stream, self._after_id)
        except BrokerUnavailable as error:
            await sender.frame(error_frame(error.message), "error")
            return "broker unavailable"
        try:
            while True:
                try:
                    batch = await subscription.next_batch(self._keepalive_interval_s)
                except BrokerUnavailable as error:
                    logger.warning("closing stream: broker unavailable", extra={**self._log_fields, "error": str(error)})
                    await sender.frame(error_frame(error.message), "error")
                    return "broker unavailable"
                except SubscriberLagging:
                    # Closing lets the client reconnect with its Last-Event-ID.
                    logger.warning("dropping subscriber that fell behind", extra=self._log_fields)
                    return "subscriber fell behind"

                if not batch:
                    await sender.frame(KEEPALIVE_FRAME, "keepalive")
                    continue

                for event in batch:
                    await sender.frame(event.frame, event.kind)
                    if event.is_end:
                        return "stream ended"
        finally:
            await subscription.close()


async def _cancel_and_wait(tasks: tuple[asyncio.Task[object], ...]) -> None:
    """Cancel ``tasks`` and wait until each has finished, cancelling again any that keeps running.

    On Python 3.11, an ``asyncio.wait_for`` whose inner await completes just as
    the cancellation arrives returns normally, so one ``cancel()`` can be lost.
    """
    pending = {task for task in tasks if not task.done()}
    for _ in range(_CANCEL_ATTEMPTS):
        if not pending:
            return
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=_CANCEL_WAIT_S)
    if pending:
        logger.error("SSE tasks ignored cancellation", extra={"tasks": sorted(task.get_name() for task in pending)})


async def _send_rejection(
    send: Send, error: ConnectionLimitExceeded, path: str, log_fields: dict[str, object], timeout_s: float
) -> None:
    """Send a 429 shaped like the app's other error responses, in place of the stream."""
    logger.info("request rejected", extra={"path": path, **log_fields, "status_code": 429, "error": error.message})
    body = json.dumps({"status_code": 429, "detail": error.message}).encode()
    headers = [(b"content-type", b"application/json"), (b"retry-after", error.retry_after_header.encode())]
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await send({"type": "http.response.start", "status": 429, "headers": headers})
            await send({"type": "http.response.body", "body": body, "more_body": False})


async def _wait_for_disconnect(receive: Receive) -> None:
    # A GET has no body to read, so everything before the disconnect is ignored.
    while (await receive())["type"] != "http.disconnect":
        pass

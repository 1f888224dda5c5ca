"""The ASGI response that streams one channel to one client as Server-Sent Events.

A gateway keeps many mostly idle streams open and sends each live event to every
one of them, so a stream runs in the request's task alone, and a frame
costs one ASGI send and no timer:

- the request's task runs the pump, which reads the feed and sends frames
  until the END entry, a broker failure, or the feed dropping a subscriber
  that fell behind. All events that are ready go out in one send;
- ``_DisconnectWatch`` drives ``receive()`` from callbacks, without a task,
  until the client goes away;
- the drain calls the stream back when the server starts shutting down;
- a send in progress has a deadline in ``Deadlines``, one timer shared by
  every stream of the app, so a frame costs a dict update instead of a timer;
- while the pump waits with nothing queued, the hub's reader writes live
  events itself through ``_Connection.write_now``, so a live event costs one
  ASGI send and no task switch. A send that has to wait for the client
  (write buffer full) finishes in a task of its own, which the pump awaits
  before its next send, so frames keep their order.

The disconnect, the drain and a missed send deadline each cancel the pump
with their reason, so the subscription is closed (in the pump's ``finally``)
before the response returns. A drain sends ``event: control`` before closing.
The feed queues a bounded number of events per subscriber, and a client that
does not take a frame within the send timeout is dropped, so nothing is
buffered without bound. Connection limits are checked before the response
starts, and a rejected request gets a 429 instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Literal

from litestar.types import Receive, Scope, Send

from conduit.errors import BrokerUnavailable
from gateway_http.deadlines import Deadlines
from gateway_http.direct_write import release_request_url, streaming_transport, uvicorn_cycle, write_live
from gateway_http.drain import Drain
from gateway_http.events import KEEPALIVE_FRAME, RETRY_FRAME, SERVER_DRAINING, SseEvent, control_frame, error_frame
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
# Labelled once: a label lookup per frame costs more than the increment.
_SENT = {kind: EVENTS_SENT.labels(kind) for kind in ("stream", "control", "error", "keepalive", "retry")}

_CLIENT_DISCONNECTED = "client disconnected"
_CLIENT_STOPPED_READING = "client stopped reading"
_SERVER_DRAINING = "server draining"
_SEND_FAILED = "send failed"


class _Resumed:
    """Awaitable that finishes a coroutine which was started by hand and is waiting for ``waiting_for``."""

    __slots__ = ("_coroutine", "_waiting_for")

    def __init__(self, coroutine: Coroutine[Any, Any, None], waiting_for: Any) -> None:
        self._coroutine = coroutine
        self._waiting_for = waiting_for

    def __await__(self) -> Generator[Any, Any, None]:
        coroutine, waiting_for = self._coroutine, self._waiting_for
        while True:
            try:
                value = yield waiting_for
            except BaseException as error:  # a cancellation goes into the coroutine, as with await
                try:
                    waiting_for = coroutine.throw(error)
                except StopIteration:
                    return
                continue
            try:
                waiting_for = coroutine.send(value)
            except StopIteration:
                return


class _Connection:
    """One response's sends, with their deadline, and the interruption of the task that streams it.

    Built in the task that runs the response. While ``interruptible`` is True,
    ``interrupt`` cancels that task and records why in ``stop_reason``.
    """

    __slots__ = (
        "_deadlines", "_direct", "_headers", "_pending", "_send", "_task", "_timeout_s", "error", "interruptible",
        "stop_reason",
    )

    def __init__(self, send: Send, deadlines: Deadlines, timeout_s: float, headers: list[tuple[bytes, bytes]]) -> None:
        self._send = send
        self._direct = uvicorn_cycle(send)
        if self._direct is not None:
            release_request_url(self._direct)
        self._headers = headers
        self._deadlines = deadlines
        self._timeout_s = timeout_s
        self._task = asyncio.current_task()
        self.interruptible = False
        self.stop_reason: str | None = None
        self.error: Exception | None = None
        # A send that write_now started and that waits for the client.
        self._pending: asyncio.Task[None] | None = None

    def write_now(self, batch: list[SseEvent]) -> bool:
        """Send live stream events from the caller's task; return False to leave them to the pump.

        Declines while a send is pending or the stream is ending, and any
        batch with a control event or the END, which the pump handles.
        """
        if self._pending is not None or not self.interruptible or self.stop_reason is not None:
            return False
        if self._direct is not None:
            if self._client_gone():
                return False
            try:
                if write_live(self._direct, batch):
                    return True
            except Exception as error:  # noqa: BLE001 - raised again in the pump's task by _run
                self.error = error
                self.interrupt(_SEND_FAILED)
                return True
        for event in batch:
            if event.kind != "stream" or event.is_end:
                return False
        body = batch[0].frame if len(batch) == 1 else b"".join(event.frame for event in batch)
        send = self._send({"type": "http.response.body", "body": body, "more_body": True})  # type: ignore[arg-type]
        try:
            waiting_for = send.send(None)
        except StopIteration:
            _SENT["stream"].inc(len(batch))
            return True
        except Exception as error:  # noqa: BLE001 - raised again in the pump's task by _run
            self.error = error
            self.interrupt(_SEND_FAILED)
            return True
        # Task.__step drives the rest of the send as if the task had awaited it from the start.
        pending = self._pending = asyncio.ensure_future(_Resumed(send, waiting_for))
        pending.add_done_callback(self._pending_done)
        self._deadlines.set(self, time.monotonic() + self._timeout_s)
        _SENT["stream"].inc(len(batch))
        return True

    def live_transport(self) -> asyncio.WriteTransport | None:
        """Return the transport that takes live event chunks as ``write_now`` would write them; None while it does not."""
        if self._direct is None or self._pending is not None or not self.interruptible or self.stop_reason is not None:
            return None
        return streaming_transport(self._direct)

    def _pending_done(self, task: asyncio.Task[None]) -> None:
        if self._pending is task:
            self._pending = None
            self._deadlines.discard(self)
            if not task.cancelled() and task.exception() is not None:
                self.error = task.exception()  # type: ignore[assignment]
                self.interrupt(_SEND_FAILED)

    def interrupt(self, reason: str) -> None:
        if self.stop_reason is None and self.interruptible and self._task is not None:
            self.stop_reason = reason
            self._task.cancel()

    def take_interruption(self) -> str | None:
        """Return the reason of the interruption that cancelled the task; None for a cancellation from elsewhere."""
        if self.stop_reason is None or self._task is None or self._task.uncancel() > 0:
            return None
        return self.stop_reason

    def drain_started(self) -> None:
        self.interrupt(_SERVER_DRAINING)

    def deadline_passed(self) -> None:
        self.interrupt(_CLIENT_STOPPED_READING)

    def client_disconnected(self) -> None:
        self.interrupt(_CLIENT_DISCONNECTED)

    async def start(self) -> None:
        await self._call({"type": "http.response.start", "status": 200, "headers": self._headers})

    async def frame(self, frame: bytes, kind: EventKind) -> None:
        await self._call({"type": "http.response.body", "body": frame, "more_body": True})
        _SENT[kind].inc()

    async def events(self, batch: list[SseEvent]) -> bool:
        """Send ``batch`` up to its END in one body message; return True when it held the END."""
        ended = False
        controls = 0
        frames = []
        for event in batch:
            frames.append(event.frame)
            if event.kind != "stream":
                controls += 1
            if event.is_end:
                ended = True
                break
        body = frames[0] if len(frames) == 1 else b"".join(frames)
        await self._call({"type": "http.response.body", "body": body, "more_body": True})
        if len(frames) > controls:
            _SENT["stream"].inc(len(frames) - controls)
        if controls:
            _SENT["control"].inc(controls)
        return ended

    async def finish(self) -> None:
        await self._call({"type": "http.response.body", "body": b"", "more_body": False})

    def close(self) -> None:
        self.interruptible = False
        self._deadlines.discard(self)
        if self._pending is not None:
            self._pending.cancel()

    def pending_sends(self) -> tuple[asyncio.Task[None], ...]:
        """Return the send that ``write_now`` started and that still waits for the client, if any."""
        return () if self._pending is None else (self._pending,)

    def _client_gone(self) -> bool:
        """Return True, and interrupt the stream, when uvicorn's transport of this response is closing.

        uvicorn stops reading a connection that has pipelined a request behind
        this response, and reports the connection's loss to that request, not
        to this one. So the stream learns of a client that left after
        pipelining only here, at its next write, which the transport would drop.
        """
        if not self._direct.transport.is_closing():
            return False
        # As uvicorn's connection_lost marks the request it reports to, so that
        # uvicorn neither sends more nor logs this response as incomplete.
        self._direct.disconnected = True
        self.interrupt(_CLIENT_DISCONNECTED)
        return True

    async def _call(self, message: dict[str, object]) -> None:
        pending = self._pending
        if pending is not None:
            # Its deadline is set; a failure or cancellation ends the stream here.
            await pending
        if self._direct is not None and self._client_gone():
            # The interruption cancels this task here. While the stream closes
            # it is not interruptible, and the message goes nowhere instead.
            await asyncio.sleep(0)
            return
        self._deadlines.set(self, time.monotonic() + self._timeout_s)
        try:
            await self._send(message)  # type: ignore[arg-type]
        finally:
            self._deadlines.discard(self)


class SseStream:
    """ASGI app for one subscriber of one stream; build one per accepted request."""

    __slots__ = (
        "_after_id", "_drain", "_feed", "_keepalive_interval_s", "_limiter", "_log_fields", "_send_deadlines",
        "_send_timeout_s", "_stream_key", "_token_key",
    )

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
        send_deadlines: Deadlines,
        keepalive_interval_s: float = KEEPALIVE_INTERVAL_S,
        send_timeout_s: float = SEND_TIMEOUT_S,
    ) -> None:
        """``send_deadlines`` is shared by the app's streams and watches their sends."""
        self._feed = feed
        self._limiter = limiter
        self._token_key = token_key
        self._stream_key = stream
        self._after_id = after_id
        self._drain = drain
        self._log_fields = log_fields
        self._send_deadlines = send_deadlines
        self._keepalive_interval_s = keepalive_interval_s
        self._send_timeout_s = send_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.serve(scope, receive, send)

    async def serve(
        self, scope: Scope, receive: Receive, send: Send, *, extra_headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        """Run the response; ``extra_headers`` go on its start, such as the CORS headers that the app adds."""
        # The connection counts from here to the return, so no path can leave it counted.
        client = scope.get("client")
        try:
            lease = self._limiter.acquire(client[0] if client else None, self._token_key)
        except ConnectionLimitExceeded as error:
            await _send_rejection(
                send, error, str(scope.get("path")), self._log_fields, self._send_timeout_s, extra_headers or []
            )
            return
        headers = [*_HEADERS, *extra_headers] if extra_headers else _HEADERS
        connection = _Connection(send, self._send_deadlines, self._send_timeout_s, headers)
        reason = "cancelled"
        # Plain calls instead of context managers: an open stream keeps every
        # frame of its coroutines in memory, and each level costs some.
        self._drain.stream_opened()
        OPEN_STREAMS.inc()
        try:
            logger.info("stream opened", extra={**self._log_fields, "after_id": self._after_id})
            # Streaming happens in this frame, not in a nested coroutine: see above.
            disconnect = _DisconnectWatch(receive, connection.client_disconnected)
            connection.interruptible = True
            # A client that is already gone interrupts the pump at its first await.
            disconnect.start()
            self._drain.add_listener(connection)
            try:
                reason = await self._pump(connection)
            except asyncio.CancelledError:
                interruption = connection.take_interruption()
                if interruption is None:
                    raise
                reason = interruption
            finally:
                connection.interruptible = False
                self._drain.remove_listener(connection)
                disconnect.close()
            reason = await self._end(connection, disconnect, reason)
            if reason == _CLIENT_STOPPED_READING:
                # NOTE: ASGI gives no way to abort a response, so uvicorn logs that
                # this one ended incomplete and closes the connection.
                logger.warning("dropping slow client", extra=self._log_fields)
        finally:
            connection.close()
            await _cancel_and_wait(connection.pending_sends())
            OPEN_STREAMS.dec()
            self._drain.stream_closed()
            lease.release()
            logger.info("stream closed", extra={**self._log_fields, "reason": reason})

    async def _end(self, connection: _Connection, disconnect: _DisconnectWatch, reason: str) -> str:
        """Close the response after the pump ended or was interrupted for ``reason``; return the final reason."""
        if reason in (_SEND_FAILED, _CLIENT_STOPPED_READING, _CLIENT_DISCONNECTED):
            # The client will not take the frame that is still waiting.
            await _cancel_and_wait(connection.pending_sends())
        if reason == _SEND_FAILED and connection.error is not None:
            raise connection.error
        if reason == _CLIENT_STOPPED_READING:
            return reason
        if reason == _CLIENT_DISCONNECTED:
            if disconnect.error is not None:
                raise disconnect.error
            return reason
        try:
            async with asyncio.timeout(self._send_timeout_s):
                if reason == _SERVER_DRAINING:
                    await connection.frame(control_frame(SERVER_DRAINING), "control")
                await connection.finish()
        except TimeoutError:
            return _CLIENT_STOPPED_READING
        return reason

    async def _pump(self, connection: _Connection) -> str:
        """Send the stream's events, with keep-alives while idle, until END, a broker failure or a lag."""
        await connection.start()
        await connection.frame(RETRY_FRAME, "retry")
        if self._drain.is_draining:
            return _SERVER_DRAINING
        try:
            subscription = await self._feed.subscribe(self._stream_key, self._after_id)
        except BrokerUnavailable as error:
            await connection.frame(error_frame(error.message), "error")
            return "broker unavailable"
        subscription.set_sink(connection.write_now, connection.live_transport)
        try:
            while True:
                try:
                    batch = await subscription.next_batch(self._keepalive_interval_s)
                except BrokerUnavailable as error:
                    logger.warning("closing stream: broker unavailable", extra={**self._log_fields, "error": str(error)})
                    await connection.frame(error_frame(error.message), "error")
                    return "broker unavailable"
                except SubscriberLagging:
                    # Closing lets the client reconnect with its Last-Event-ID.
                    logger.warning("dropping subscriber that fell behind", extra=self._log_fields)
                    return "subscriber fell behind"

                if not batch:
                    await connection.frame(KEEPALIVE_FRAME, "keepalive")
                elif await connection.events(batch):
                    return "stream ended"
        finally:
            subscription.set_sink(None)
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
    send: Send,
    error: ConnectionLimitExceeded,
    path: str,
    log_fields: dict[str, object],
    timeout_s: float,
    extra_headers: list[tuple[bytes, bytes]],
) -> None:
    """Send a 429 shaped like the app's other error responses, in place of the stream."""
    logger.info("request rejected", extra={"path": path, **log_fields, "status_code": 429, "error": error.message})
    body = json.dumps({"status_code": 429, "detail": error.message}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"retry-after", error.retry_after_header.encode()),
        *extra_headers,
    ]
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await send({"type": "http.response.start", "status": 429, "headers": headers})
            await send({"type": "http.response.body", "body": body, "more_body": False})


class _DisconnectWatch:
    """Runs ``receive()`` until the client disconnects, then calls ``on_disconnect``; no task of its own.

    A task costs about 0.7 KB per open stream, so the watch drives the
    ``receive()`` coroutine by hand: it resumes the coroutine from a callback
    on the future that the coroutine waits for, as a task would. A GET has no
    body to read, so every message before the disconnect is ignored. An error
    from ``receive()`` also ends the watch, kept in ``error``.
    """

    __slots__ = ("_coroutine", "_on_disconnect", "_receive", "_waiting_for", "disconnected", "error")

    def __init__(self, receive: Receive, on_disconnect: Callable[[], None]) -> None:
        self._receive = receive
        self._on_disconnect = on_disconnect
        self._coroutine: Coroutine[Any, Any, Any] | None = None
        self._waiting_for: asyncio.Future[Any] | None = None
        self.disconnected = False
        self.error: BaseException | None = None

    def start(self) -> None:
        self._coroutine = self._receive()  # type: ignore[assignment]
        self._step()

    def close(self) -> None:
        """Stop watching; the coroutine's cleanup (such as uvicorn's waiter list) runs now."""
        waiting_for, self._waiting_for = self._waiting_for, None
        if waiting_for is not None:
            waiting_for.remove_done_callback(self._resume)
        coroutine, self._coroutine = self._coroutine, None
        if coroutine is not None:
            coroutine.close()

    def _resume(self, _: object = None) -> None:
        self._waiting_for = None
        self._step()

    def _step(self) -> None:
        # Bounded: each pass either waits, ends the watch, or takes one message the client sent.
        while self._coroutine is not None:
            try:
                waiting_for = self._coroutine.send(None)
            except StopIteration as stop:
                if stop.value["type"] == "http.disconnect":
                    self._finish(None)
                    return
                self._coroutine = self._receive()  # type: ignore[assignment]
                continue
            except Exception as error:  # noqa: BLE001 - kept and raised again by the stream
                self._finish(error)
                return
            if waiting_for is None:
                # A bare yield resumes this coroutine on the next loop pass.
                asyncio.get_running_loop().call_soon(self._resume)
            else:
                waiting_for._asyncio_future_blocking = False
                self._waiting_for = waiting_for
                waiting_for.add_done_callback(self._resume)
            return

    def _finish(self, error: BaseException | None) -> None:
        self._coroutine = None
        self.disconnected = True
        self.error = error
        self._on_disconnect()

"""The asyncio protocol of one publish-port connection: httptools parsing, keep-alive, pipelining.

``serve_publish`` handles ``POST /publish/{org_id}/{channel_id}`` without
an ASGI scope, and the fallback ASGI app handles every other request through
``call_asgi``. Responses go out in request order, one
``transport.write`` each. The connection closes after a response when the
client requested it (HTTP/1.0, ``Connection: close`` or a half-close), or when
the response went out before the whole request body arrived. It also closes
after an error about the connection itself: a malformed request (400), a head
too large (431), too many pipelined requests (503), a transfer coding (501) or
HTTP version (505) not supported. Last, it closes when the server is stopping.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from typing import Any

import httptools
from litestar.types import ASGIApp

from publish_grpc.http_bridge import call_asgi
from publish_grpc.http_head import MALFORMED_MESSAGE, route_head
from publish_grpc.http_publish import PublishResponse, serve_publish, start_publish
from publish_grpc.http_request import HttpRequest, encode_response
from publish_grpc.publisher import Publisher

__all__ = ["LINGER_S", "HttpShimContext", "PublishHttpProtocol"]

logger = logging.getLogger(__name__)

MAX_HEADER_FIELDS = 100
"""Cap on the header fields of one request (Apache's LimitRequestFields default); more get 431."""

# Bytes per header field that the callbacks do not pass: ": " and CRLF.
_FIELD_OVERHEAD_BYTES = 4

# llhttp's reason for the "PRI * HTTP/2.0" preface of a client that assumes HTTP/2.
_LLHTTP_HTTP2_PREFACE = "Pause on PRI/Upgrade"

LINGER_S = 2.0
"""Time a connection keeps reading after a response sent before its request ended (an error, or 413)."""

_TEXT_PLAIN = b"content-type: text/plain; charset=utf-8\r\n"
_UPGRADE_MESSAGE = "protocol upgrade is not supported: send the publish without Upgrade and Connection: upgrade"


MAX_PIPELINED_REQUESTS = 100
"""Cap on the requests parsed ahead of their responses on one connection; the next one gets 503 and a close.

httptools parses a whole socket read at once, up to 256 KiB, so without it a
read of small pipelined requests would queue thousands of requests and their responses.
"""


class _PipelineTooDeep(Exception):
    pass


class _HeadTooLarge(Exception):
    """A callback found the head, or the trailer section, over a limit; the message names which."""


class HttpShimContext:
    """Settings and state that the connections of one publish port share."""

    def __init__(
        self, publisher: Publisher, fallback: ASGIApp, *, body_read_timeout_s: float, max_head_bytes: int
    ) -> None:
        self.publisher = publisher
        self.fallback = fallback
        self.body_read_timeout_s = body_read_timeout_s
        self.max_head_bytes = max_head_bytes
        self.connections: set[PublishHttpProtocol] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = False
        self.all_closed = asyncio.Event()


class PublishHttpProtocol(asyncio.Protocol):
    """One client connection; it handles one request at a time, and later ones wait in order."""

    def __init__(self, context: HttpShimContext) -> None:
        self._context = context
        self._loop = asyncio.get_running_loop()
        self._parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        # Respond to the requests up to a "Connection: close" one and ignore the bytes after it.
        self._parser.set_dangerous_leniencies(lenient_data_after_close=True)
        self._transport: asyncio.Transport = None  # type: ignore[assignment]

        self._parsing: HttpRequest | None = None
        self._head_open = False
        # Bytes of the head, and then of the trailer section, counted from the callbacks.
        self._head_bytes = 0
        # Bytes of the open head estimated from the chunks, since the callbacks
        # see a header field only once it ends.
        self._open_head_bytes = 0
        self._heads_completed = 0
        self._chunk_body_bytes = 0
        # Bytes fed since the last parser callback while a request is being parsed:
        # httptools buffers a header or trailer field until it ends, and no callback
        # receives a chunk extension, so these bytes are capped as well.
        self._stalled_bytes = 0
        self._callbacks = 0

        self._active: HttpRequest | None = None
        self._active_started = False
        # Set while the parser runs on a read. A publish whose head completes then waits for
        # the end of that read, so that a body in the same read lets it start without a task.
        self._feeding = False
        self._publish_deferred = False
        self._body_timer: asyncio.TimerHandle | None = None
        self._waiting: deque[HttpRequest] = deque()
        self._write_paused = False
        self._reading_paused = False
        self._linger_timer: asyncio.TimerHandle | None = None
        self._close_seen_at: float | None = None
        # The client has shut down its sending side: the responses still owed go out, then the connection closes.
        self._peer_eof = False
        self.idle_since = self._loop.time()

    # Transport callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._context.connections.add(self)
        if self._context.stopping:
            # Accepted just before the listening socket closed.
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._context.connections.discard(self)
        for request in (self._parsing, self._active, *self._waiting):
            if request is not None:
                request.disconnect()
        self._waiting.clear()
        self._parser = None
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        self._cancel_body_timer()
        if self._context.stopping and not self._context.connections:
            self._context.all_closed.set()

    def data_received(self, data: bytes) -> None:
        if self._parser is None:
            return
        callbacks_before = self._callbacks
        heads_before = self._heads_completed
        parsing_before = self._parsing
        self._chunk_body_bytes = 0
        self._feeding = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._end_parsing_after_upgrade()
            return
        except httptools.HttpParserCallbackError as error:
            if isinstance(error.__context__, _PipelineTooDeep):
                logger.info("publish HTTP: a client pipelined more than %d requests", MAX_PIPELINED_REQUESTS)
                self._fail(
                    503,
                    f"too many pipelined requests: wait for responses before sending more than {MAX_PIPELINED_REQUESTS}",
                )
                return
            if not isinstance(error.__context__, _HeadTooLarge):
                logger.error("publish HTTP: a parser callback failed", exc_info=error.__context__)
                self._parser = None
                self._transport.close()
                return
            self._fail_too_large(str(error.__context__))
            return
        except httptools.HttpParserError as error:
            logger.info("publish HTTP: malformed request: %s", error)
            reason = str(error)
            if reason == _LLHTTP_HTTP2_PREFACE:
                reason = "HTTP/2 is not supported: send HTTP/1.1 or HTTP/1.0"
            self._fail(400, f"{MALFORMED_MESSAGE}: {reason}", reason)
            return
        finally:
            self._feeding = False
            if self._publish_deferred:
                # The publish's body did not end in this read, so it starts now and waits for the rest.
                self._publish_deferred = False
                if self._active is not None and not self._active_started:
                    self._start_active()

        # A head still open counts the bytes of this chunk that were not body,
        # so that a field that never ends cannot grow without bound.
        if self._head_open and heads_before == self._heads_completed:
            # When an earlier request ended in this chunk, its framing and trailer
            # bytes are in the chunk too, so only the next chunk counts whole.
            if parsing_before is None or parsing_before is self._parsing:
                self._open_head_bytes += len(data) - self._chunk_body_bytes
                if self._open_head_bytes > self._context.max_head_bytes:
                    self._fail_too_large(self._head_too_large_message())
            return
        # After the head, a chunk in which no callback ran continues one chunk
        # extension or trailer field, which counts towards the same cap. A chunk
        # with callbacks may leave up to its own length of such a field uncounted.
        if self._parsing is None or callbacks_before != self._callbacks:
            self._stalled_bytes = 0
            return
        self._stalled_bytes += len(data)
        if self._stalled_bytes > self._context.max_head_bytes:
            message = f"a chunk extension or trailer field exceeds {self._context.max_head_bytes} bytes"
            self._fail(400, f"{MALFORMED_MESSAGE}: {message}", message)

    def eof_received(self) -> bool | None:
        """Keep the connection open to send the responses still owed after the client's shutdown(SHUT_WR)."""
        self._peer_eof = True
        request = self._parsing
        self._parsing = None
        self._parser = None
        if request is not None and not self._head_open:
            # A request whose body will never end: a publish fails reading it, another request gets 400.
            request.disconnect()
            if request.publish_ids is None and request.failure is None:
                request.failure = (400, "request body is incomplete: the client closed its side before sending it all")
                if request is self._active and not self._active_started:
                    self._start_active()
        if self._active is None or self._linger_timer is not None:
            return None
        return True

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._callbacks += 1
        if len(self._waiting) >= MAX_PIPELINED_REQUESTS:
            raise _PipelineTooDeep
        self._parsing = HttpRequest(self._transport, self._context.publisher.max_message_bytes)
        self._head_open = True
        self._head_bytes = 0
        self._open_head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._callbacks += 1
        self._parsing.url += url  # type: ignore[union-attr]
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        # httptools also calls this for the fields of a chunked body's trailer section.
        self._callbacks += 1
        name = name.lower()
        # llhttp keeps trailing whitespace, which RFC 9110 section 5.5 excludes from the value.
        value = value.rstrip(b" \t")
        request = self._parsing
        assert request is not None
        # _count_head inlined: this runs for every header field of every request.
        self._head_bytes += len(name) + len(value) + _FIELD_OVERHEAD_BYTES
        if self._head_bytes > self._context.max_head_bytes:
            self._count_head(0)
        if len(request.headers) >= MAX_HEADER_FIELDS:
            raise _HeadTooLarge(f"request has more than {MAX_HEADER_FIELDS} header fields")
        if not self._head_open:
            # A trailer field: kept out of the headers that a handler reads.
            return
        if name == b"expect" and value.lower() == b"100-continue":
            request.expect_continue = True
        request.headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        request = self._parsing
        assert parser is not None and request is not None
        self._callbacks += 1
        self._head_open = False
        self._heads_completed += 1
        request.method = parser.get_method()
        request.http_version = parser.get_http_version()
        request.keep_alive = request.http_version != "1.0" and parser.should_keep_alive()
        if request.http_version == "1.0":
            # RFC 9110 section 10.1.1: an HTTP/1.0 client does not expect a 100 response.
            request.expect_continue = False
        route_head(request)
        if parser.should_upgrade():
            # llhttp ends an upgrade request at its head and leaves the bytes after
            # it unparsed. This port offers no upgrade, so it handles the request
            # as plain HTTP and closes, and it rejects a publish, whose body is lost.
            request.keep_alive = False
            if request.publish_ids is not None:
                request.publish_ids = None
                request.failure = (400, _UPGRADE_MESSAGE)
        self._enqueue(request)

    def on_body(self, body: bytes) -> None:
        self._callbacks += 1
        self._chunk_body_bytes += len(body)
        self._parsing.add_body(body)  # type: ignore[union-attr]

    def on_chunk_header(self) -> None:
        self._callbacks += 1

    def on_chunk_complete(self) -> None:
        self._callbacks += 1

    def on_message_complete(self) -> None:
        request = self._parsing
        assert request is not None
        self._callbacks += 1
        self._parsing = None
        request.finish()
        if request is self._active and not self._active_started:
            self._start_active()

    # Requests and responses

    def _head_too_large_message(self) -> str:
        return f"request head is too large: the request line and headers exceed {self._context.max_head_bytes} bytes"

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self._context.max_head_bytes:
            if self._head_open:
                raise _HeadTooLarge(self._head_too_large_message())
            raise _HeadTooLarge(f"the head and trailer section exceed {self._context.max_head_bytes} bytes")

    def _fail_too_large(self, message: str) -> None:
        """Respond 431 to a head over a limit, or 400 to a body whose trailer section is."""
        if self._head_open:
            self._fail(431, message)
        else:
            self._fail(400, f"{MALFORMED_MESSAGE}: {message}", message)

    def _fail(self, status: int, message: str, detail: str = "") -> None:
        """Stop parsing and respond ``status`` after the requests before it, then close.

        ``detail`` names the parser's complaint for a request whose head was
        fine, so that a publish rejects its body with it.
        """
        self._parser = None
        request = self._parsing
        self._parsing = None
        if request is not None and not self._head_open:
            # The request is queued or being handled already, and only its body broke.
            if request.publish_ids is not None:
                request.fail_body(f"request body is malformed: {detail or message}")
            else:
                request.failure = (status, message)
                if request is self._active and not self._active_started:
                    self._start_active()
        else:
            request = HttpRequest(self._transport, 0)
            request.failure = (status, message)
            request.keep_alive = False
            self._enqueue(request)
        self._update_reading()

    def _fail_slow_body(self, request: HttpRequest) -> None:
        """Respond 400 to a fallback request whose body has not arrived in time, then close."""
        self._body_timer = None
        if request is not self._active or self._active_started or request.complete:
            return
        timeout_s = self._context.body_read_timeout_s
        request.failure = (
            400,
            f"request body timed out: it did not arrive within {timeout_s:g} s, so send the whole body without pausing",
        )
        self._parsing = None
        self._parser = None
        self._start_active()

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _end_parsing_after_upgrade(self) -> None:
        # on_headers_complete has already marked the request to close the connection.
        self._parser = None
        self._update_reading()

    def _enqueue(self, request: HttpRequest) -> None:
        if self._active is None:
            self._active = request
            self._start_active()
        else:
            self._waiting.append(request)
            self._update_reading()

    def _start_active(self) -> None:
        request = self._active
        assert request is not None
        # A fallback request waits for its whole body, unless its client waits for
        # "100 Continue" first, which only a publish sends. A publish reads its body itself.
        waits_for_body = not (request.complete or request.expect_continue or request.failure is not None)
        if request.publish_ids is not None and waits_for_body and self._feeding:
            self._publish_deferred = True
            return
        if request.publish_ids is None and waits_for_body:
            if self._body_timer is None:
                self._body_timer = self._loop.call_later(
                    self._context.body_read_timeout_s, self._fail_slow_body, request
                )
            return
        self._cancel_body_timer()
        self._active_started = True
        task: asyncio.Task[None]
        if request.publish_ids is not None and request.complete:
            started = start_publish(self._context.publisher, request, functools.partial(self._respond_publish, request))
            if started is None:
                return
            if isinstance(started, tuple):
                # Sent from the next loop pass, because this may run inside a parser callback.
                self._loop.call_soon(self._respond_publish, request, started)
                return
            task = started
        else:
            task = self._loop.create_task(self._answer(request))
        self._context.tasks.add(task)
        task.add_done_callback(self._context.tasks.discard)

    def _respond_publish(self, request: HttpRequest, response: PublishResponse) -> None:
        self._respond(request, *response, False)

    async def _answer(self, request: HttpRequest) -> None:
        if request.publish_ids is not None:
            context = self._context
            status, lines, body = await serve_publish(context.publisher, request, context.body_read_timeout_s)
            lines_close = False
        elif request.failure is not None:
            status, text = request.failure
            body = text.encode()
            lines = b"%scontent-length: %d\r\n" % (_TEXT_PLAIN, len(body))
            lines_close = False
        else:
            path, raw_path, query = request.target
            status, lines, body, lines_close = await call_asgi(
                self._context.fallback, request, path, raw_path, query, self._connection_scope()
            )
        self._respond(request, status, lines, body, lines_close)

    def _respond(self, request: HttpRequest, status: int, lines: bytes, body: bytes, lines_close: bool) -> None:
        transport = self._transport
        if transport.is_closing():
            return
        keep_alive = (
            request.keep_alive and request.complete and request.failure is None
            and not lines_close and not self._context.stopping
        )
        transport.write(encode_response(status, lines, body, keep_alive=keep_alive or lines_close))
        if not keep_alive:
            if (request.complete and request.failure is None) or self._peer_eof:
                transport.close()
            else:
                self._linger()
            return

        self._active = None
        self._active_started = False
        self.idle_since = self._loop.time()
        if self._waiting:
            self._active = self._waiting.popleft()
            self._start_active()
        elif self._peer_eof:
            transport.close()
            return
        self._update_reading()

    def _linger(self) -> None:
        """Send FIN and read and drop what the client still sends, for up to ``LINGER_S``.

        Closing with unread bytes in the socket would send a reset, which can
        destroy the response before the client reads it.
        """
        self._parser = None
        self._waiting.clear()
        if self._transport.can_write_eof():
            try:
                self._transport.write_eof()
            except OSError as error:
                # shutdown() fails with ENOTCONN once the client has reset the connection.
                logger.debug("publish HTTP: connection reset before the response ended: %s", error)
                self._transport.abort()
                return
        self._linger_timer = self._loop.call_later(LINGER_S, self._transport.close)
        self._update_reading()

    def _update_reading(self) -> None:
        if self._peer_eof:
            # The transport has stopped reading; resuming would report the EOF again and again.
            return
        lingering = self._linger_timer is not None
        paused = not lingering and (bool(self._waiting) or self._write_paused or self._parser is None)
        if paused != self._reading_paused and not self._transport.is_closing():
            self._reading_paused = paused
            if paused:
                self._transport.pause_reading()
            else:
                self._transport.resume_reading()

    def _connection_scope(self) -> dict[str, Any]:
        server = self._transport.get_extra_info("sockname")
        client = self._transport.get_extra_info("peername")
        return {
            "server": (str(server[0]), int(server[1])) if server else None,
            "client": (str(client[0]), int(client[1])) if client else None,
            "scheme": "http",
        }

    # Server control

    def close_if_idle(self, now: float, idle_timeout_s: float) -> None:
        """Close the connection when no request is being handled and it has been idle long enough.

        A head that has not completed within ``idle_timeout_s`` of the
        connection going idle is cut off the same way.
        A connection already closing is aborted once it has been seen closing
        for ``idle_timeout_s``: ``close`` waits for the write buffer to drain,
        which a client that does not read never lets happen.
        """
        if self._transport.is_closing():
            if self._close_seen_at is None:
                self._close_seen_at = now
            elif now - self._close_seen_at >= idle_timeout_s:
                self._transport.abort()
            return
        if self._active is None and now - self.idle_since >= idle_timeout_s:
            self._transport.close()

    def shutdown(self) -> None:
        """Close now when idle; otherwise close after the response being prepared."""
        if self._active is None:
            self._transport.close()

    def reject_unfinished_body(self) -> None:
        """Respond 503 and close when the request being handled still waits for its body.

        The server calls it when the stop's grace period has run out, so that
        such a client learns to retry instead of seeing the connection drop.
        """
        request = self._active
        if request is None or request.complete or self._transport.is_closing():
            return
        if self._active_started and not request.waiting_for_body:
            return
        body = b"the server is stopping and the request body did not arrive in time: retry the request"
        lines = b"%scontent-length: %d\r\n" % (_TEXT_PLAIN, len(body))
        self._parser = None
        self._transport.write(encode_response(503, lines, body, keep_alive=False))
        self._transport.close()

    def abort(self) -> None:
        """Close the connection at once, dropping unsent data."""
        self._transport.abort()

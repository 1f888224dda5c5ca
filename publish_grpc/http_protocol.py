"""The asyncio protocol of one publish-port connection: httptools parsing, keep-alive, pipelining.

``serve_publish`` handles ``POST /publish/{org_id}/{channel_id}`` without
an ASGI scope, and the fallback ASGI app handles every other request through
``call_asgi``. Responses go out in request order, one
``transport.write`` each. The connection closes after a response in four
cases: the client requested it (HTTP/1.0 or ``Connection: close``), the
response went out before the whole request body arrived, the request was
malformed (400) or its head too large (431), or the server is stopping.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from typing import Any

import httptools
from litestar.types import ASGIApp

from publish_grpc.http_bridge import call_asgi, split_target
from publish_grpc.http_publish import serve_publish
from publish_grpc.http_request import HttpRequest, encode_response
from publish_grpc.publisher import Publisher

__all__ = ["LINGER_S", "HttpShimContext", "PublishHttpProtocol"]

logger = logging.getLogger(__name__)

# The route Litestar would match for "/publish/{org_id:str}/{channel_id:str}":
# two non-empty segments of the decoded path, and an optional trailing slash.
# The segments stay plain strings so that our validation writes the 400 message,
# and so that org_id can use all of uint64.
_PUBLISH_PATH = re.compile(r"/publish/([^/]+)/([^/]+)/?")

LINGER_S = 2.0
"""Time a connection keeps reading after a response sent before its request ended (an error, or 413)."""

_TEXT_PLAIN = b"content-type: text/plain; charset=utf-8\r\n"
_MALFORMED_BODY = "Invalid HTTP request received."
_UPGRADE_MESSAGE = "protocol upgrade is not supported: send the publish without Upgrade and Connection: upgrade"


class _HeadTooLarge(Exception):
    pass


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
        # Bytes of the open head: counted exactly from the callbacks, and
        # estimated from the chunks while a field has not ended yet.
        self._head_bytes = 0
        self._open_head_bytes = 0
        self._heads_completed = 0
        self._chunk_body_bytes = 0
        self._active: HttpRequest | None = None
        self._active_started = False
        self._waiting: deque[HttpRequest] = deque()
        self._write_paused = False
        self._reading_paused = False
        self._linger_timer: asyncio.TimerHandle | None = None
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
        if self._context.stopping and not self._context.connections:
            self._context.all_closed.set()

    def data_received(self, data: bytes) -> None:
        if self._parser is None:
            return
        heads_before = self._heads_completed
        self._chunk_body_bytes = 0
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._end_parsing_after_upgrade()
            return
        except httptools.HttpParserCallbackError as error:
            if not isinstance(error.__context__, _HeadTooLarge):
                logger.error("publish HTTP: a parser callback failed", exc_info=error.__context__)
                self._parser = None
                self._transport.close()
                return
            self._fail(431, self._head_too_large_message())
            return
        except httptools.HttpParserError as error:
            logger.info("publish HTTP: malformed request: %s", error)
            self._fail(400, _MALFORMED_BODY, str(error))
            return

        # The callbacks see a header only once it ends, so a head that is still
        # open counts the bytes of this chunk that were not body: a field that
        # never ends cannot grow without bound.
        if self._head_open and heads_before == self._heads_completed:
            self._open_head_bytes += len(data) - self._chunk_body_bytes
            if self._open_head_bytes > self._context.max_head_bytes:
                self._fail(431, self._head_too_large_message())

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._parsing = HttpRequest(self._transport, self._context.publisher.max_message_bytes)
        self._head_open = True
        self._head_bytes = 0
        self._open_head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._parsing.url += url  # type: ignore[union-attr]
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        # llhttp keeps trailing whitespace, which RFC 9110 section 5.5 excludes from the value.
        value = value.rstrip(b" \t")
        request = self._parsing
        assert request is not None
        if name == b"expect" and value.lower() == b"100-continue":
            request.expect_continue = True
        request.headers.append((name, value))
        self._count_head(len(name) + len(value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        request = self._parsing
        assert parser is not None and request is not None
        self._head_open = False
        self._heads_completed += 1
        request.method = parser.get_method()
        request.http_version = parser.get_http_version()
        request.keep_alive = request.http_version != "1.0" and parser.should_keep_alive()
        try:
            request.target = split_target(request.url)
        except (httptools.HttpParserInvalidURLError, UnicodeDecodeError):
            request.failure = (400, _MALFORMED_BODY)
        else:
            if request.method == b"POST":
                match = _PUBLISH_PATH.fullmatch(request.target[0])
                if match is not None:
                    request.publish_ids = (match[1], match[2])
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
        self._chunk_body_bytes += len(body)
        self._parsing.add_body(body)  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        request = self._parsing
        assert request is not None
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
            raise _HeadTooLarge

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
        # A fallback request waits for its whole body; a publish reads its body itself.
        if request.publish_ids is None and not request.complete and request.failure is None:
            return
        self._active_started = True
        task = self._loop.create_task(self._answer(request))
        self._context.tasks.add(task)
        task.add_done_callback(self._context.tasks.discard)

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
            if request.complete and request.failure is None:
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
        self._update_reading()

    def _linger(self) -> None:
        """Send FIN and read and drop what the client still sends, for up to ``LINGER_S``.

        Closing with unread bytes in the socket would send a reset, which can
        destroy the response before the client reads it.
        """
        self._parser = None
        self._waiting.clear()
        if self._transport.can_write_eof():
            self._transport.write_eof()
        self._linger_timer = self._loop.call_later(LINGER_S, self._transport.close)
        self._update_reading()

    def _update_reading(self) -> None:
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
        """
        if self._active is None and now - self.idle_since >= idle_timeout_s:
            self._transport.close()

    def shutdown(self) -> None:
        """Close now when idle; otherwise close after the response being prepared."""
        if self._active is None:
            self._transport.close()

    def abort(self) -> None:
        """Close the connection at once, dropping unsent data."""
        self._transport.abort()

"""One parsed HTTP/1.1 request of the publish port, and the bytes of a response to it."""

from __future__ import annotations

import asyncio
import http
import time
from email.utils import formatdate

from conduit.errors import InvalidArgument, PayloadTooLarge

__all__ = ["HttpRequest", "encode_response"]

# Status lines as uvicorn 0.55 writes them, so that responses keep their bytes.
_STATUS_LINE = {status: f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n".encode() for status in http.HTTPStatus}

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

_date_second = -1
_date_line = b""


def _date_header_line() -> bytes:
    """Return ``date: <IMF-fixdate>\\r\\n`` for the current second, formatting it once per second."""
    global _date_second, _date_line
    now = int(time.time())
    if now != _date_second:
        _date_second = now
        _date_line = b"date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
    return _date_line


def encode_response(status: int, header_lines: bytes, body: bytes, *, keep_alive: bool) -> bytes:
    """Return a whole response: status line, date, ``header_lines`` (each ending CRLF), body.

    The date header comes first and ``connection: close`` last, as uvicorn writes them.
    """
    return b"".join(
        (
            _STATUS_LINE[status],
            _date_header_line(),
            header_lines,
            b"" if keep_alive else b"connection: close\r\n",
            b"\r\n",
            body,
        )
    )


class HttpRequest:
    """The head of one request and its body as it arrives, capped at ``max_body_bytes``.

    The protocol fills it from httptools callbacks. A handler reads the body
    with ``read_body``, which waits for the rest when it has not arrived yet.
    Bytes past the cap are dropped and only counted, so a request keeps at
    most ``max_body_bytes`` bytes of body in memory.
    """

    __slots__ = (
        "method", "url", "headers", "http_version", "keep_alive", "expect_continue", "complete",
        "disconnected", "publish_ids", "target", "failure", "_body_failure", "_body", "_body_bytes", "_max_body_bytes", "_waiter", "_transport",
    )

    def __init__(self, transport: asyncio.Transport, max_body_bytes: int) -> None:
        self.method = b""
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.http_version = "1.1"
        self.keep_alive = True
        self.expect_continue = False
        self.complete = False
        self.disconnected = False
        # (org_id, channel_id) of a ``POST /publish/{org_id}/{channel_id}``, else None.
        self.publish_ids: tuple[str, str] | None = None
        # Decoded path, raw path and query string.
        self.target: tuple[str, bytes, bytes] = ("", b"", b"")
        # Status and message of the error response to a request that is not handled.
        self.failure: tuple[int, str] | None = None
        self._body_failure: str | None = None
        self._body: bytes | list[bytes] = b""
        self._body_bytes = 0
        self._max_body_bytes = max_body_bytes
        self._waiter: asyncio.Future[None] | None = None
        self._transport = transport

    def header(self, name: bytes) -> str | None:
        """Return the first value of header ``name`` (lower case) as text, or None."""
        for key, value in self.headers:
            if key == name:
                return value.decode("latin-1")
        return None

    def add_body(self, data: bytes) -> None:
        self._body_bytes += len(data)
        if self._body_bytes > self._max_body_bytes:
            self._body = b""
            self._wake()
            return
        if not self._body:
            # The common case: the whole body in one piece, which is then not copied.
            self._body = data
        elif isinstance(self._body, bytes):
            self._body = [self._body, data]
        else:
            self._body.append(data)
        if self._waiter is not None:
            self._wake()

    def finish(self) -> None:
        """Mark the body complete."""
        self.complete = True
        self._wake()

    def fail_body(self, message: str) -> None:
        """Mark the body as broken, so that ``read_body`` raises InvalidArgument with ``message``."""
        self._body_failure = message
        self._wake()

    def disconnect(self) -> None:
        self.disconnected = True
        self._wake()

    @property
    def waiting_for_body(self) -> bool:
        """Whether a handler is in ``read_body``, waiting for more of the body."""
        return self._waiter is not None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def read_body(self, timeout_s: float) -> bytes:
        """Return the whole body once it has arrived.

        Raises PayloadTooLarge as soon as the body passes the cap, and
        InvalidArgument when the client disconnects first or the body has not
        arrived within ``timeout_s`` or the parser found it malformed. Sends ``100 Continue`` first when the
        client asked for it and the body is still missing.
        """
        if not self._has_outcome():
            if self.expect_continue and not self._transport.is_closing():
                self._transport.write(_CONTINUE)
            try:
                async with asyncio.timeout(timeout_s):
                    while not self._has_outcome():
                        self._waiter = asyncio.get_running_loop().create_future()
                        await self._waiter
            except TimeoutError:
                raise InvalidArgument(
                    f"request body timed out: it did not arrive within {timeout_s:g} s,"
                    " so send the whole body without pausing"
                ) from None
            finally:
                self._waiter = None

        return self.body()

    def body(self) -> bytes:
        """Return the whole body, or raise as ``read_body`` does; for a request whose body has stopped arriving."""
        if self._body_failure is not None:
            raise InvalidArgument(self._body_failure)
        if self._body_bytes > self._max_body_bytes:
            raise PayloadTooLarge(f"PublishRequest is over the limit of {self._max_body_bytes} bytes")
        if not self.complete:
            raise InvalidArgument("request body is incomplete: the client disconnected while sending it")
        return self._body if isinstance(self._body, bytes) else b"".join(self._body)

    def _has_outcome(self) -> bool:
        return (
            self.complete or self.disconnected or self._body_failure is not None
            or self._body_bytes > self._max_body_bytes
        )

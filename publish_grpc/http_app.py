"""The HTTP shim: ``POST /publish/{org_id}/{channel_id}`` with an encoded PublishRequest body.

A publish returns 200 with the stream id as text/plain. An error returns the
status that ``HTTP_STATUS`` maps, with a text/plain body that names the
problem, and 429 carries Retry-After. The body is read with a cap, so a request over the size
limit is rejected without reading more than ``max_message_bytes + 1`` bytes,
and at once when its Content-Length is already too large. The body must also
arrive within ``body_read_timeout_s``: uvicorn bounds neither a slow body nor
a missing one, so a client that stalls would otherwise hold its request open.

The publish route is a plain ASGI handler in front of Litestar, because
Litestar's routing, handler signature and response objects cost more CPU than
the publish itself (docs/benchmarks.md). Every other request, including the
lifespan events, a publish path with another method (405, or 204 for
OPTIONS), and /healthz, /readyz and /metrics, goes to Litestar, which also
has the publish route. Both run ``_publish`` and return the same statuses,
bodies and headers.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

from litestar import Litestar, MediaType, Request, Response, post
from litestar.params import FromPath
from litestar.types import ASGIApp, Receive, Scope, Send

from conduit.errors import HTTP_STATUS, ConduitError, InvalidArgument, PayloadTooLarge, RateLimited
from conduit.health import health_handlers
from publish_grpc.publisher import Publisher
from publish_grpc.validation import parse_path

__all__ = ["BODY_READ_TIMEOUT_S", "create_http_app"]

BODY_READ_TIMEOUT_S = 10.0
"""Time from the start of reading a publish body to its last byte. A slower request gets 400."""

# The route Litestar would match for "/publish/{org_id:str}/{channel_id:str}":
# two non-empty segments of the decoded path, and an optional trailing slash.
# The segments stay plain strings so that our validation writes the 400 message,
# and so that org_id can use all of uint64.
_PUBLISH_PATH = re.compile(r"/publish/([^/]+)/([^/]+)/?")

_TEXT_PLAIN = (b"content-type", b"text/plain; charset=utf-8")
_INTERNAL_ERROR_BODY = b'{"status_code":500,"detail":"Internal Server Error"}'


def create_http_app(
    publisher: Publisher,
    *,
    is_draining: Callable[[], bool] = lambda: False,
    body_read_timeout_s: float = BODY_READ_TIMEOUT_S,
) -> ASGIApp:
    """Build the ASGI app: the publish route plus /healthz, /readyz and /metrics."""

    @post("/publish/{org_id:str}/{channel_id:str}", status_code=200, media_type=MediaType.TEXT)
    async def publish(request: Request, org_id: FromPath[str], channel_id: FromPath[str]) -> str:
        return await _publish(
            publisher, request.scope, request.receive, org_id, channel_id, body_read_timeout_s
        )

    fallback = Litestar(
        route_handlers=[publish, *health_handlers(publisher.broker, is_draining=is_draining)],
        exception_handlers={ConduitError: _error_response},
        openapi_config=None,
        logging_config=None,
    )
    return _PublishRoute(publisher, fallback, body_read_timeout_s)


class _PublishRoute:
    """ASGI app that serves ``POST /publish/...`` itself and passes every other request to ``fallback``."""

    def __init__(self, publisher: Publisher, fallback: ASGIApp, body_read_timeout_s: float) -> None:
        self._publisher = publisher
        self._fallback = fallback
        self._body_read_timeout_s = body_read_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            match = _PUBLISH_PATH.fullmatch(scope["path"])
            if match is not None:
                await self._serve_publish(scope, receive, send, match[1], match[2])
                return
        await self._fallback(scope, receive, send)

    async def _serve_publish(
        self, scope: Scope, receive: Receive, send: Send, org_id: str, channel_id: str
    ) -> None:
        try:
            stream_id = await _publish(
                self._publisher, scope, receive, org_id, channel_id, self._body_read_timeout_s
            )
        except ConduitError as error:
            await _send_error(send, error)
            return
        except Exception:
            # PublishAttempt has logged it with the ids. The client gets the
            # generic 500 that Litestar sends for a text route, content type included.
            await _send(send, 500, [_TEXT_PLAIN], _INTERNAL_ERROR_BODY)
            return
        await _send(send, 200, [_TEXT_PLAIN], stream_id.encode())


async def _publish(
    publisher: Publisher, scope: Scope, receive: Receive, org_id: str, channel_id: str, body_read_timeout_s: float
) -> str:
    """Authenticate, validate and append one publish; return the stream id or raise ConduitError."""
    with publisher.attempt("http") as attempt:
        attempt.note_path(org_id, channel_id)
        publisher.authenticate(_header(scope, b"authorization"))

        path = parse_path(org_id, channel_id)

        data = await _read_body(scope, receive, publisher.max_message_bytes, body_read_timeout_s)

        return await publisher.publish(attempt, data, path=path)


def _header(scope: Scope, name: bytes) -> str | None:
    """Return the first value of header ``name`` (lower case) as text, or None."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


async def _read_body(scope: Scope, receive: Receive, max_bytes: int, timeout_s: float) -> bytes:
    """Read the request body, raising PayloadTooLarge as soon as it passes ``max_bytes``.

    Raises InvalidArgument when the whole body has not arrived within ``timeout_s``.
    """
    declared = _header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(
            f"PublishRequest is {int(declared)} bytes (Content-Length), over the limit of {max_bytes} bytes"
        )

    try:
        async with asyncio.timeout(timeout_s):
            return await _receive_body(receive, max_bytes)
    except TimeoutError:
        raise InvalidArgument(
            f"request body timed out: it did not arrive within {timeout_s:g} s,"
            " so send the whole body without pausing"
        ) from None


async def _receive_body(receive: Receive, max_bytes: int) -> bytes:
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidArgument("request body is incomplete: the client disconnected while sending it")
        # A body that arrives in one message, the common case, is not copied.
        body = body + message.get("body", b"") if body else message.get("body", b"")
        if len(body) > max_bytes:
            raise PayloadTooLarge(f"PublishRequest is over the limit of {max_bytes} bytes")
        if not message.get("more_body", False):
            return body


async def _send_error(send: Send, error: ConduitError) -> None:
    headers = [_TEXT_PLAIN]
    if isinstance(error, RateLimited):
        headers.insert(0, (b"retry-after", error.retry_after_header.encode()))
    await _send(send, HTTP_STATUS[type(error)], headers, error.message.encode())


async def _send(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _error_response(_: Request, error: ConduitError) -> Response[str]:
    headers = {"Retry-After": error.retry_after_header} if isinstance(error, RateLimited) else None
    return Response(error.message, status_code=HTTP_STATUS[type(error)], media_type=MediaType.TEXT, headers=headers)

"""The HTTP shim: ``POST /publish/{org_id}/{channel_id}`` with an encoded PublishRequest body.

A publish returns 200 with the stream id as text/plain. An error returns the
status that ``HTTP_STATUS`` maps, with a text/plain body that names the
problem, and 429 carries Retry-After. The body is read with a cap, so a request over the size
limit is rejected without reading more than ``max_message_bytes + 1`` bytes,
and at once when its Content-Length is already too large. The body must also
arrive within ``body_read_timeout_s``: uvicorn bounds neither a slow body nor
a missing one, so a client that stalls would otherwise hold its request open.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from litestar import Litestar, MediaType, Request, Response, post
from litestar.params import FromPath

from conduit.errors import HTTP_STATUS, ConduitError, InvalidArgument, PayloadTooLarge, RateLimited
from conduit.health import health_handlers
from publish_grpc.publisher import Publisher
from publish_grpc.validation import parse_path

__all__ = ["BODY_READ_TIMEOUT_S", "create_http_app"]

BODY_READ_TIMEOUT_S = 10.0
"""Time from the start of reading a publish body to its last byte. A slower request gets 400."""


def create_http_app(
    publisher: Publisher,
    *,
    is_draining: Callable[[], bool] = lambda: False,
    body_read_timeout_s: float = BODY_READ_TIMEOUT_S,
) -> Litestar:
    """Build the Litestar app: the publish route plus /healthz, /readyz and /metrics."""

    # The path parameters are plain strings so that our validation, not
    # Litestar's, writes the 400 message, and so that org_id can use all of uint64.
    @post("/publish/{org_id:str}/{channel_id:str}", status_code=200, media_type=MediaType.TEXT)
    async def publish(request: Request, org_id: FromPath[str], channel_id: FromPath[str]) -> str:
        with publisher.attempt("http") as attempt:
            attempt.note_path(org_id, channel_id)
            publisher.authenticate(request.headers.get("authorization"))

            path = parse_path(org_id, channel_id)

            data = await _read_body(request, publisher.max_message_bytes, body_read_timeout_s)

            return await publisher.publish(attempt, data, path=path)

    return Litestar(
        route_handlers=[publish, *health_handlers(publisher.broker, is_draining=is_draining)],
        exception_handlers={ConduitError: _error_response},
        openapi_config=None,
        logging_config=None,
    )


async def _read_body(request: Request, max_bytes: int, timeout_s: float) -> bytes:
    """Read the request body, raising PayloadTooLarge as soon as it passes ``max_bytes``.

    Raises InvalidArgument when the whole body has not arrived within ``timeout_s``.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(
            f"PublishRequest is {int(declared)} bytes (Content-Length), over the limit of {max_bytes} bytes"
        )

    try:
        async with asyncio.timeout(timeout_s):
            return await _receive_body(request, max_bytes)
    except TimeoutError:
        raise InvalidArgument(
            f"request body timed out: it did not arrive within {timeout_s:g} s,"
            " so send the whole body without pausing"
        ) from None


async def _receive_body(request: Request, max_bytes: int) -> bytes:
    body = bytearray()
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise InvalidArgument("request body is incomplete: the client disconnected while sending it")
        body += message.get("body", b"")
        if len(body) > max_bytes:
            raise PayloadTooLarge(f"PublishRequest is over the limit of {max_bytes} bytes")
        if not message.get("more_body", False):
            return bytes(body)


def _error_response(_: Request, error: ConduitError) -> Response[str]:
    headers = {"Retry-After": error.retry_after_header} if isinstance(error, RateLimited) else None
    return Response(error.message, status_code=HTTP_STATUS[type(error)], media_type=MediaType.TEXT, headers=headers)

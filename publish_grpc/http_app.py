"""The Litestar app behind the publish port: every request other than ``POST /publish/...``.

``PublishHttpProtocol`` answers ``POST /publish/{org_id}/{channel_id}``
itself and passes the rest here: /healthz, /readyz and /metrics, unknown
paths (404), and a publish path with another method (405, or 204 for
OPTIONS). Litestar needs the publish route to return those 405 and 204
responses, so it has one, whose handler never runs.
"""

from __future__ import annotations

from collections.abc import Callable

from litestar import Litestar, MediaType, Request, Response, post
from litestar.types import ASGIApp

from conduit.errors import HTTP_STATUS, ConduitError, RateLimited
from conduit.health import health_handlers
from publish_grpc.publisher import Publisher

__all__ = ["BODY_READ_TIMEOUT_S", "create_http_app"]

BODY_READ_TIMEOUT_S = 10.0
"""Time from the start of reading a publish body to its last byte. A slower request gets 400."""


def create_http_app(publisher: Publisher, *, is_draining: Callable[[], bool] = lambda: False) -> ASGIApp:
    """Build the ASGI app for the requests of the publish port that are not publishes."""

    @post("/publish/{org_id:str}/{channel_id:str}", status_code=200, media_type=MediaType.TEXT)
    async def publish() -> str:
        raise RuntimeError("POST /publish is handled by PublishHttpProtocol, never by this route")

    return Litestar(
        route_handlers=[publish, *health_handlers(publisher.broker, is_draining=is_draining)],
        exception_handlers={ConduitError: _error_response},
        openapi_config=None,
        logging_config=None,
    )


def _error_response(_: Request, error: ConduitError) -> Response[str]:
    headers = {"Retry-After": error.retry_after_header} if isinstance(error, RateLimited) else None
    return Response(error.message, status_code=HTTP_STATUS[type(error)], media_type=MediaType.TEXT, headers=headers)

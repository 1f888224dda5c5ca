"""The gateway's Litestar app: ``GET /events/{org_id}``, health and metrics, and optional extra routes.

CORS allows any origin, because the credential is the token in the query, never
a cookie. By default CORS allows GET only. ``cors_allow_all_methods=True``
widens it to every method and request header, preflight included, so that
extra routes such as the dev mode's ``POST /dev/...`` handlers work from another
origin. Litestar applies one CORS configuration per app, so extra handlers
cannot bring their own.

When a request carries both a ``Last-Event-ID`` header and a ``last_event_id``
query parameter, the header wins. A browser's EventSource reconnects to the
same URL and puts the newest id it saw in the header, so the query value is the
older one. Both are validated.

Litestar validates a request for ``/events`` and answers its errors, but the
stream itself runs after Litestar has returned (``_GatewayApp``): an open
stream then holds none of Litestar's per-request objects and middleware
frames, and its frames go straight to the server's ``send``. The stream adds
the CORS headers that Litestar's CORS middleware would have added.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence

from litestar import Litestar, Request, Response, get
from litestar.config.cors import CORSConfig
from litestar.exceptions import HTTPException
from litestar.params import FromPath
from litestar.datastructures import Headers
from litestar.types import ControllerRouterHandler, Receive, Scope, Send

from broker.base import Broker
from broker.keys import stream_key
from conduit.errors import HTTP_STATUS, ConduitError, ConfigError, InvalidArgument
from conduit.health import health_handlers
from conduit.settings import Settings
from gateway_http.auth import TokenVerifier
from gateway_http.deadlines import Deadlines
from gateway_http.drain import Drain
from gateway_http.feed import Feed
from gateway_http.limits import ConnectionLimiter, token_digest
from gateway_http.params import parse_channel_id, parse_last_event_id, parse_org_id, parse_query
from gateway_http.sse import KEEPALIVE_INTERVAL_S, SEND_TIMEOUT_S, SseStream

__all__ = ["create_app"]

logger = logging.getLogger(__name__)

_STREAM_START_ID = "0-0"
# Scope key under which a validated /events request hands its stream to _GatewayApp.
_HANDOFF_KEY = "conduit.sse_stream"


def create_app(
    settings: Settings,
    broker: Broker,
    feed: Feed,
    *,
    drain: Drain,
    extra_route_handlers: Sequence[ControllerRouterHandler] = (),
    cors_allow_all_methods: bool = False,
    keepalive_interval_s: float = KEEPALIVE_INTERVAL_S,
    send_timeout_s: float = SEND_TIMEOUT_S,
) -> Litestar:
    """Build the gateway app; ``settings.gateway_jwt`` must be set, and its key is parsed here once.

    ``drain`` counts the open streams and signals them to close on shutdown.
    Each app counts its streams against the settings' per-IP and per-token
    connection limits and returns 429 over a limit.
    While it drains, ``/readyz`` returns 503. ``feed`` delivers the entries.
    The app neither opens nor closes ``feed`` or ``broker``.
    """
    if settings.gateway_jwt is None:
        raise ConfigError("GATEWAY_JWT_PUBLIC_KEY is required for the gateway but not set")
    verifier = TokenVerifier(settings.gateway_jwt)
    limiter = ConnectionLimiter(
        max_per_ip=settings.gateway_max_connections_per_ip,
        max_per_token=settings.gateway_max_connections_per_token,
    )
    # One timer watches the sends of every stream; it stops while no send is pending.
    send_deadlines = Deadlines()

    @get("/events/{org_id:str}", include_in_schema=False)
    async def events(request: Request[object, object, object], org_id: FromPath[str]) -> _StreamHandoff:
        query = parse_query(request.scope["query_string"])
        token = query.get("token")
        org = parse_org_id(org_id)
        channel = parse_channel_id(query.get("channel_id"))
        header_after_id = parse_last_event_id(request.headers.get("last-event-id"))
        query_after_id = parse_last_event_id(query.get("last_event_id"))

        verifier.authorize(token, org_id=org, channel_id=channel)

        return _StreamHandoff(SseStream(
            feed=feed,
            stream=stream_key(org, channel),
            after_id=header_after_id or query_after_id or _STREAM_START_ID,
            drain=drain,
            log_fields={"org_id": org, "channel_id": channel},
            limiter=limiter,
            token_key=token_digest(token or ""),
            send_deadlines=send_deadlines,
            keepalive_interval_s=keepalive_interval_s,
            send_timeout_s=send_timeout_s,
        ))

    if cors_allow_all_methods:
        cors = CORSConfig(allow_origins=["*"], allow_methods=["*"], allow_headers=["*"])
    else:
        # Last-Event-ID is not a CORS-safelisted header, so a cross-origin
        # reconnect that sends it needs a preflight that allows it.
        cors = CORSConfig(allow_origins=["*"], allow_methods=["GET"], allow_headers=["last-event-id", "cache-control"])

    return _GatewayApp(
        route_handlers=[
            events,
            *health_handlers(broker, is_draining=lambda: drain.is_draining),
            *extra_route_handlers,
        ],
        cors_config=cors,
        exception_handlers={ConduitError: _conduit_error_response},
        after_exception=[_log_unexpected_error],
        openapi_config=None,
        # Logging is configured once per process by conduit.logs.
        logging_config=None,
    )


class _StreamHandoff:
    """The response of a valid /events request: passes its stream to ``_GatewayApp`` to run."""

    __slots__ = ("stream",)

    def __init__(self, stream: SseStream) -> None:
        self.stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handoff = scope.get(_HANDOFF_KEY)  # type: ignore[misc]
        if isinstance(handoff, list):
            handoff.append(self.stream)
        else:
            # Called by something other than _GatewayApp: stream inside Litestar.
            await self.stream(scope, receive, send)


class _GatewayApp(Litestar):
    """Litestar, with SSE streams run after Litestar returns; see the module docstring."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:  # type: ignore[override]
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        handoff: list[SseStream] = []
        scope_keys = set(scope)
        state_keys = set(scope.get("state", ()))
        scope[_HANDOFF_KEY] = handoff  # type: ignore[literal-required]
        await super().__call__(scope, receive, send)
        if handoff:
            stream = handoff.pop()
            extra_headers = _cors_headers(self.cors_config, scope)
            # Drop what Litestar cached in the scope for this request, which
            # would otherwise stay in memory as long as the stream is open.
            for key in set(scope) - scope_keys:
                del scope[key]  # type: ignore[misc]
            state = scope.get("state", {})
            for key in set(state) - state_keys:
                del state[key]
            del scope_keys, state_keys, state
            # The query carries the token, which the open stream no longer needs.
            scope["query_string"] = b""
            await stream.serve(scope, receive, send, extra_headers=extra_headers)


def _cors_headers(cors: CORSConfig | None, scope: Scope) -> list[tuple[bytes, bytes]]:
    """Return the headers that Litestar's CORS middleware adds to the start of a response to ``scope``."""
    headers = Headers.from_scope(scope)
    origin = headers.get("origin")
    if cors is None or not origin:
        return []
    added = dict(cors.simple_headers)
    if (cors.is_allow_all_origins and "cookie" in headers) or (
        not cors.is_allow_all_origins and cors.is_origin_allowed(origin)
    ):
        added["Access-Control-Allow-Origin"] = origin
        added["Vary"] = "Origin"
    added["Access-Control-Allow-Headers"] = ", ".join(sorted(set(cors.allow_headers)))
    added["Access-Control-Allow-Methods"] = ", ".join(sorted(set(cors.allow_methods)))
    return [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in added.items()]


def _conduit_error_response(request: Request[object, object, object], error: ConduitError) -> Response[dict[str, object]]:
    """Build the error response: the status from HTTP_STATUS and a body shaped like Litestar's own errors."""
    status_code = next((HTTP_STATUS[cls] for cls in type(error).__mro__ if cls in HTTP_STATUS), 500)
    logger.info(
        "request rejected",
        extra={"path": request.url.path, **_request_ids(request), "status_code": status_code, "error": error.message},
    )
    return Response({"status_code": status_code, "detail": error.message}, status_code=status_code)


def _request_ids(request: Request[object, object, object]) -> dict[str, object]:
    """Return the org_id and channel_id that a request names, for its log line; None for one that is malformed."""
    ids: dict[str, object] = {"org_id": None, "channel_id": None}
    with contextlib.suppress(InvalidArgument):
        ids["org_id"] = parse_org_id(str(request.path_params.get("org_id", "")))
    with contextlib.suppress(InvalidArgument):
        ids["channel_id"] = parse_channel_id(parse_query(request.scope.get("query_string", b"")).get("channel_id"))
    return ids


async def _log_unexpected_error(error: Exception, scope: Scope) -> None:
    if isinstance(error, (ConduitError, HTTPException)):
        return
    # Only the path: the query string can carry a token.
    logger.error("request failed", exc_info=error, extra={"path": scope.get("path")})

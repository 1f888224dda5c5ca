"""The gateway as a server that its owner starts and drains: app, feed and HTTP listener together."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from litestar import Litestar
from litestar.types import ControllerRouterHandler

from broker.base import Broker
from conduit.http_server import HttpServer
from conduit.settings import PORT_SETTINGS, Settings
from gateway_http.app import create_app
from gateway_http.direct_write import frame_live
from gateway_http.drain import Drain
from gateway_http.feed import Feed
from gateway_http.hub import BROKER_RETRY_BUDGET_S, SUBSCRIBER_BUFFER_EVENTS, HubFeed
from gateway_http.sse import KEEPALIVE_INTERVAL_S, SEND_TIMEOUT_S

__all__ = ["DRAIN_GRACE_S", "GatewayServer"]

logger = logging.getLogger(__name__)

DRAIN_GRACE_S = 10.0
"""Default time that open streams get to close after the drain event."""

# Time that uvicorn gives requests still running after the drain, such as a
# slow client's last frame, before it cancels them.
_HTTP_SHUTDOWN_TIMEOUT_S = 2


class GatewayServer:
    """Serves ``GET /events/{org_id}``, ``/healthz``, ``/readyz`` and ``/metrics`` on ``settings.gateway_port``.

    The broker belongs to the caller: ``stop`` leaves it open.
    """

    def __init__(
        self,
        settings: Settings,
        broker: Broker,
        *,
        extra_route_handlers: Sequence[ControllerRouterHandler] = (),
        cors_allow_all_methods: bool = False,
        keepalive_interval_s: float = KEEPALIVE_INTERVAL_S,
        broker_retry_budget_s: float = BROKER_RETRY_BUDGET_S,
        send_timeout_s: float = SEND_TIMEOUT_S,
        subscriber_buffer_events: int = SUBSCRIBER_BUFFER_EVENTS,
        feed: Feed | None = None,
    ) -> None:
        self._drain = Drain()
        self._started = False
        if feed is None:
            feed = HubFeed(
                broker,
                max_stream_len=settings.broker.max_stream_len,
                retry_budget_s=broker_retry_budget_s,
                buffer_events=subscriber_buffer_events,
                frame_live=frame_live,
            )
        self._feed = feed
        self.app: Litestar = create_app(
            settings,
            broker,
            self._feed,
            drain=self._drain,
            extra_route_handlers=extra_route_handlers,
            cors_allow_all_methods=cors_allow_all_methods,
            keepalive_interval_s=keepalive_interval_s,
            send_timeout_s=send_timeout_s,
        )
        self._http = HttpServer(
            self.app,
            settings.host,
            settings.gateway_port,
            name="gateway",
            port_setting=PORT_SETTINGS["gateway_port"],
            shutdown_timeout_s=_HTTP_SHUTDOWN_TIMEOUT_S,
        )

    @property
    def port(self) -> int:
        """Port actually bound; differs from ``settings.gateway_port`` when that was 0."""
        return self._http.port

    @property
    def open_stream_count(self) -> int:
        """Number of SSE streams open now."""
        return self._drain.open_count

    @property
    def feed(self) -> Feed:
        """The feed that delivers entries to the SSE responses."""
        return self._feed

    @property
    def is_draining(self) -> bool:
        """True once ``stop`` has begun."""
        return self._drain.is_draining

    async def start(self) -> None:
        """Bind ``settings.host:settings.gateway_port`` and start serving."""
        await self._http.start()
        self._started = True

    async def stop(self, grace_s: float = DRAIN_GRACE_S) -> None:
        """Drain open streams, then stop the listener and the feed.

        In order: ``/readyz`` turns 503. Every open stream, and any that opens
        meanwhile, gets ``event: control`` (``server_draining``) and is closed.
        This waits up to ``grace_s`` for them to close. Then the HTTP server
        stops and cancels what is left after a short timeout. After a
        ``start`` that failed, only the feed is closed.
        """
        if not self._started:
            await self._feed.close()
            return
        self._started = False
        self._drain.start()
        open_count = self._drain.open_count
        logger.info("gateway draining", extra={"open_streams": open_count})
        if not await self._drain.wait_closed(grace_s):
            logger.warning(
                "streams still open after the drain grace period",
                extra={"open_streams": self._drain.open_count, "grace_s": grace_s},
            )

        await self._http.stop()
        await self._feed.close()
        logger.info("gateway stopped")

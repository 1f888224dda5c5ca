"""The publish service: the gRPC server and the HTTP shim on one event loop and one broker."""

from __future__ import annotations

import asyncio
import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from broker.base import Broker
from conduit.errors import ConfigError
from conduit.http_server import port_sharing_enabled
from conduit.settings import PORT_SETTINGS, Settings
from publish_grpc.auth import CLOCK_SKEW_LEEWAY_S, TokenVerifier
from publish_grpc.grpc_service import SERVICE_NAME, PublishServicer, add_publish_servicer
from publish_grpc.http_app import BODY_READ_TIMEOUT_S, create_http_app
from publish_grpc.http_listener import PublishHttpServer
from publish_grpc.publisher import Publisher

__all__ = ["GRPC_KEEPALIVE_TIMEOUT_S", "GRPC_KEEPALIVE_TIME_S", "GRPC_RECEIVE_HEADROOM_BYTES", "PublishServer"]

logger = logging.getLogger(__name__)

GRPC_RECEIVE_HEADROOM_BYTES = 1024
"""Bytes over ``max_message_bytes`` that the gRPC server still receives.

A request slightly over the limit thus gets our PayloadTooLarge message, which
gives its size and the limit. A larger one gets gRPC's own RESOURCE_EXHAUSTED."""

GRPC_KEEPALIVE_TIME_S = 60.0
"""Seconds after which the gRPC server pings a connection that has calls open but sent nothing.

Without it, grpc's default is two hours, and a publisher whose host went
away without closing its connection would keep its PublishStream calls,
their read-ahead tasks and their buffered messages for that long."""

GRPC_KEEPALIVE_TIMEOUT_S = 20.0
"""Seconds the gRPC server waits for a keepalive ping's acknowledgement before it closes the connection."""

_HEALTH_SERVICE_NAME: str = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


class PublishServer:
    """gRPC ``PublishService`` with health and reflection, plus the HTTP shim.

    The caller owns ``broker``: it is used but never closed here.
    """

    def __init__(
        self,
        settings: Settings,
        broker: Broker,
        *,
        body_read_timeout_s: float = BODY_READ_TIMEOUT_S,
        keepalive_time_s: float = GRPC_KEEPALIVE_TIME_S,
        keepalive_timeout_s: float = GRPC_KEEPALIVE_TIMEOUT_S,
    ) -> None:
        if settings.publish_jwt is None:
            raise ConfigError("PUBLISH_JWT_SECRET is required but not set")
        self._settings = settings
        self._keepalive_time_s = keepalive_time_s
        self._keepalive_timeout_s = keepalive_timeout_s
        self._draining = False
        self._publisher = Publisher(
            broker,
            TokenVerifier(settings.publish_jwt, leeway_s=CLOCK_SKEW_LEEWAY_S),
            max_message_bytes=settings.max_message_bytes,
        )
        self._health = health.aio.HealthServicer()
        self._http = PublishHttpServer(
            self._publisher,
            create_http_app(self._publisher, is_draining=lambda: self._draining),
            settings.host,
            settings.publish_port,
            body_read_timeout_s=body_read_timeout_s,
        )
        self._grpc: grpc.aio.Server | None = None
        self._grpc_port: int | None = None
        self._http_port: int | None = None

    @property
    def grpc_port(self) -> int:
        """gRPC port actually bound; differs from the setting when that was 0."""
        if self._grpc_port is None:
            raise RuntimeError("publish server is not started")
        return self._grpc_port

    @property
    def http_port(self) -> int:
        """HTTP port actually bound; differs from the setting when that was 0."""
        if self._http_port is None:
            raise RuntimeError("publish server is not started")
        return self._http_port

    async def start(self) -> None:
        """Bind and start the gRPC server, then the HTTP shim; raise OSError when a port is taken."""
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", self._settings.max_message_bytes + GRPC_RECEIVE_HEADROOM_BYTES),
                # Share the port only with the other workers of `serve --workers`;
                # otherwise fail when another process is bound to it.
                ("grpc.so_reuseport", 1 if port_sharing_enabled() else 0),
                # Pings go out only while calls are open, so an idle connection costs nothing.
                # In grpcio 1.85 the ping timeout, not the keepalive timeout, bounds
                # the wait for a ping's acknowledgement, so both are set.
                ("grpc.keepalive_time_ms", round(self._keepalive_time_s * 1000)),
                ("grpc.keepalive_timeout_ms", round(self._keepalive_timeout_s * 1000)),
                ("grpc.http2.ping_timeout_ms", round(self._keepalive_timeout_s * 1000)),
            ]
        )
        add_publish_servicer(PublishServicer(self._publisher), server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection([SERVICE_NAME, _HEALTH_SERVICE_NAME, reflection.SERVICE_NAME], server)
        for service in ("", SERVICE_NAME):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)

        address = _grpc_address(self._settings.host, self._settings.publish_grpc_port)
        try:
            self._grpc_port = server.add_insecure_port(address)
        except RuntimeError as error:
            # grpc reports only "Failed to bind"; the usual cause is a port in use.
            raise OSError(
                f"publish: cannot bind gRPC on {address}: the address is in use or not available; "
                f"choose another port with {PORT_SETTINGS['publish_grpc_port']}"
            ) from error
        await server.start()
        self._grpc = server
        logger.info("publish gRPC listening", extra={"host": self._settings.host, "port": self._grpc_port})

        try:
            await self._http.start()
        except BaseException:
            await server.stop(0)
            self._grpc = None
            raise
        self._http_port = self._http.port

    async def stop(self, grace_s: float = 10) -> None:
        """Drain and stop both servers.

        Readiness and gRPC health turn NOT_SERVING first. Then both servers stop
        accepting, and requests in flight get up to ``grace_s`` to finish. Any
        request still running after that is cancelled.
        """
        self._draining = True
        await self._health.enter_graceful_shutdown()

        stops = [self._http.stop(grace_s)]
        if self._grpc is not None:
            stops.append(self._grpc.stop(grace_s))
        await asyncio.gather(*stops)
        self._grpc = None
        logger.info("publish server stopped")


def _grpc_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

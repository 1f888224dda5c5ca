"""The publish service and a gateway in the test process, on free loopback ports.

Several test packages need both servers running against one broker with
tokens they can mint. ``LocalService`` starts and stops them, and
``Credentials`` carries what differs between packages: the org, the publish
secret and the subscriber key pair.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from broker.base import Broker
from conduit.settings import BrokerSettings, JwtSettings, Settings
from conduit.tokens import mint_publisher_token, mint_subscriber_token
from gateway_http.server import GatewayServer
from publish_grpc.server import PublishServer

__all__ = ["GATEWAY_AUDIENCE", "PUBLISH_AUDIENCE", "Credentials", "LocalService", "local_settings"]

PUBLISH_AUDIENCE = "conduit-publish"
GATEWAY_AUDIENCE = "conduit-gateway"
_STOP_GRACE_S = 5


@dataclass(frozen=True)
class Credentials:
    """The org that tokens name, the publish secret and the subscriber key pair (PEM)."""

    org_id: int
    publish_secret: str
    issuer: str
    private_pem: str
    public_pem: str


def local_settings(credentials: Credentials, broker: BrokerSettings | None = None) -> Settings:
    """Return settings for both servers on 127.0.0.1 with every port chosen by the kernel."""
    return Settings(
        host="127.0.0.1",
        publish_port=0,
        publish_grpc_port=0,
        gateway_port=0,
        broker=broker or BrokerSettings(),
        publish_jwt=JwtSettings(key=credentials.publish_secret, issuer=credentials.issuer, audience=PUBLISH_AUDIENCE),
        gateway_jwt=JwtSettings(key=credentials.public_pem, issuer=credentials.issuer, audience=GATEWAY_AUDIENCE),
    )


class LocalService:
    """A running PublishServer and GatewayServer, their addresses and token helpers.

    The publish service and the gateway use the brokers given to ``start``;
    the caller owns those brokers and closes them after ``stop``.
    """

    def __init__(self, settings: Settings, credentials: Credentials) -> None:
        self.settings = settings
        self.credentials = credentials
        self._publish: PublishServer | None = None
        self._gateway: GatewayServer | None = None
        self._brokers: tuple[Broker, Broker] | None = None

    @property
    def broker(self) -> Broker:
        """The publish service's broker."""
        if self._brokers is None:
            raise RuntimeError("the service is not started")
        return self._brokers[0]

    @property
    def publish(self) -> PublishServer:
        if self._publish is None:
            raise RuntimeError("the service is not started")
        return self._publish

    @property
    def gateway(self) -> GatewayServer:
        if self._gateway is None:
            raise RuntimeError("the service is not started")
        return self._gateway

    async def start(
        self, publish_broker: Broker, gateway_broker: Broker | None = None, **gateway_options: Any
    ) -> None:
        """Start the publish service, then the gateway (on ``publish_broker`` unless another is given)."""
        self._brokers = (publish_broker, gateway_broker or publish_broker)
        self._publish = PublishServer(self.settings, publish_broker)
        await self._publish.start()
        self._gateway = GatewayServer(self.settings, self._brokers[1], **gateway_options)
        await self._gateway.start()

    async def stop(self) -> None:
        """Drain and stop the gateway, then the publish service; a server never started is skipped."""
        if self._gateway is not None:
            await self._gateway.stop(grace_s=_STOP_GRACE_S)
        if self._publish is not None:
            await self._publish.stop(grace_s=_STOP_GRACE_S)

    async def restart_gateway(self) -> None:
        """Drain the gateway (its streams get ``server_draining``) and start a new one on the same port and broker."""
        assert self._brokers is not None
        port = self.gateway.port
        await self.gateway.stop(grace_s=_STOP_GRACE_S)
        self._gateway = GatewayServer(dataclasses.replace(self.settings, gateway_port=port), self._brokers[1])
        await self._gateway.start()

    @property
    def publish_url(self) -> str:
        return f"http://127.0.0.1:{self.publish.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.publish.grpc_port}"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.port}"

    @property
    def events_url(self) -> str:
        return f"{self.gateway_url}/events/{self.credentials.org_id}"

    def publisher_token(self) -> str:
        credentials = self.credentials
        return mint_publisher_token(credentials.publish_secret, issuer=credentials.issuer, audience=PUBLISH_AUDIENCE)

    def subscriber_token(self, channel_id: str, org_id: int | None = None) -> str:
        """Mint a subscriber token for ``channel_id`` of ``org_id`` (the service's org by default)."""
        credentials = self.credentials
        return mint_subscriber_token(
            credentials.private_pem,
            issuer=credentials.issuer,
            audience=GATEWAY_AUDIENCE,
            org_id=credentials.org_id if org_id is None else org_id,
            channel_id=channel_id,
        )

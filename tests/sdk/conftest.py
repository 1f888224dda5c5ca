"""A publish service and a gateway on the session's Redis, in this process, on free loopback ports."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator

import pytest

from broker import create_broker
from broker.base import Broker
from conduit.settings import BrokerSettings, JwtSettings, Settings
from conduit.tokens import generate_rsa_key_pair, mint_publisher_token, mint_subscriber_token
from gateway_http.server import GatewayServer
from publish_grpc.server import PublishServer

ORG_ID = 7
_SECRET = "sdk-test-publish-secret-0123456789abcdef"
_ISSUER = "sdk-tests"
_PUBLISH_AUDIENCE = "conduit-publish"
_GATEWAY_AUDIENCE = "conduit-gateway"


@pytest.fixture(scope="session")
def rsa_keys() -> tuple[str, str]:
    return generate_rsa_key_pair()


class Service:
    """The running servers, their addresses and token helpers; ``restart_gateway`` drains and replaces the gateway."""

    def __init__(self, settings: Settings, broker: Broker, publish: PublishServer, gateway: GatewayServer,
                 private_pem: str) -> None:
        self.settings = settings
        self.broker = broker
        self.publish = publish
        self.gateway = gateway
        self._private_pem = private_pem

    @property
    def publish_url(self) -> str:
        return f"http://127.0.0.1:{self.publish.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.publish.grpc_port}"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.port}"

    def publisher_token(self) -> str:
        return mint_publisher_token(_SECRET, issuer=_ISSUER, audience=_PUBLISH_AUDIENCE)

    def subscriber_token(self, channel_id: str, org_id: int = ORG_ID) -> str:
        return mint_subscriber_token(
            self._private_pem, issuer=_ISSUER, audience=_GATEWAY_AUDIENCE, org_id=org_id, channel_id=channel_id
        )

    async def restart_gateway(self) -> None:
        """Drain the gateway (its streams get ``server_draining``) and start a new one on the same port."""
        port = self.gateway.port
        await self.gateway.stop(grace_s=5)
        self.gateway = GatewayServer(dataclasses.replace(self.settings, gateway_port=port), self.broker)
        await self.gateway.start()


@pytest.fixture
async def service(redis_url: str, rsa_keys: tuple[str, str]) -> AsyncIterator[Service]:
    private_pem, public_pem = rsa_keys
    settings = Settings(
        host="127.0.0.1",
        publish_port=0,
        publish_grpc_port=0,
        gateway_port=0,
        publish_jwt=JwtSettings(key=_SECRET, issuer=_ISSUER, audience=_PUBLISH_AUDIENCE),
        gateway_jwt=JwtSettings(key=public_pem, issuer=_ISSUER, audience=_GATEWAY_AUDIENCE),
    )
    broker = create_broker(BrokerSettings(redis_url=redis_url))
    publish = PublishServer(settings, broker)
    gateway = GatewayServer(settings, broker)
    await publish.start()
    await gateway.start()
    running = Service(settings, broker, publish, gateway, private_pem)
    yield running
    await running.gateway.stop(grace_s=5)
    await publish.stop(grace_s=5)
    await broker.close()


@pytest.fixture
def channel_id() -> str:
    return str(uuid.uuid4())

"""Fixtures for the gateway tests: keys, tokens, a broker of each kind and running gateways."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import uvloop

from broker import create_broker
from broker.base import Broker
from broker.keys import stream_key
from conduit.settings import BrokerSettings
from conduit.tokens import generate_rsa_key_pair, mint_subscriber_token
from gateway_http.server import GatewayServer
from tests.gateway_http.helpers import AUDIENCE, BROKER_LIMITS, ISSUER, ORG_ID, GatewayFactory, make_settings

# Test files whose tests also run on uvloop, the loop of `conduit serve`. The
# hub's direct writes depend on a transport's buffered bytes, and uvloop
# buffers and flushes writes differently from asyncio's own loop.
_ON_BOTH_LOOPS = frozenset({"test_hub_direct_hostile.py"})


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Return the event loops that ``item`` runs on: asyncio's, and uvloop too for the files above."""
    if item.path.name in _ON_BOTH_LOOPS:
        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}


@pytest.fixture(scope="session")
def rsa_keys() -> tuple[str, str]:
    """``(private_pem, public_pem)`` that signs and verifies subscriber tokens."""
    return generate_rsa_key_pair()


@pytest.fixture
def channel_id() -> str:
    return str(uuid.uuid4())


@pytest.fixture
def stream(channel_id: str) -> str:
    return stream_key(ORG_ID, channel_id)


@pytest.fixture
def mint(rsa_keys: tuple[str, str]) -> Callable[..., str]:
    """Mint a subscriber token for ``ORG_ID`` and the given channel."""

    def mint_token(channel_id: str, *, org_id: int = ORG_ID, ttl_s: int = 3600) -> str:
        return mint_subscriber_token(
            rsa_keys[0], issuer=ISSUER, audience=AUDIENCE, org_id=org_id, channel_id=channel_id, ttl_s=ttl_s
        )

    return mint_token


@pytest.fixture(params=["memory", "redis"])
def broker_kind(request: pytest.FixtureRequest) -> str:
    """Which broker a test runs on; a test limited to one kind parametrizes this indirectly."""
    return str(request.param)


@pytest.fixture
def broker_redis_url(request: pytest.FixtureRequest, broker_kind: str) -> str | None:
    """None for the embedded broker, else the test Redis URL."""
    if broker_kind == "memory":
        return None
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture
async def broker(broker_redis_url: str | None) -> AsyncIterator[Broker]:
    """A broker of each kind: the embedded one and Redis."""
    instance = create_broker(BrokerSettings(redis_url=broker_redis_url, **BROKER_LIMITS))
    yield instance
    await instance.close()


@pytest.fixture
async def start_gateway(rsa_keys: tuple[str, str], broker: Broker) -> AsyncIterator[GatewayFactory]:
    """Start a GatewayServer on a free port over ``broker``; each is stopped before the broker closes."""
    servers: list[GatewayServer] = []

    async def start(**options: Any) -> GatewayServer:
        server = GatewayServer(make_settings(rsa_keys[1], None), broker, **options)
        servers.append(server)
        await server.start()
        return server

    yield start
    for server in servers:
        await server.stop(grace_s=2)


@pytest.fixture
async def gateway(start_gateway: GatewayFactory) -> GatewayServer:
    """A gateway with default options over ``broker``."""
    return await start_gateway()


@pytest.fixture
async def client(gateway: GatewayServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.port}", timeout=10) as http:
        yield http

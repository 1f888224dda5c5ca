"""Concurrent connection limits per IP address and per token: the limiter, the settings and the 429."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from broker.base import Broker
from conduit.errors import ConfigError
from conduit.settings import load_settings
from gateway_http.limits import ConnectionLimiter, ConnectionLimitExceeded, token_digest
from gateway_http.server import GatewayServer
from tests.gateway_http.helpers import ORG_ID, FrameReader, make_settings, wait_until

RETRY = b"retry: 500\n\n"
TOKEN = token_digest("token-a")
OTHER_TOKEN = token_digest("token-b")

LimitedGateway = Callable[..., Awaitable[GatewayServer]]


def test_limiter_unlimited_by_default_zero() -> None:
    limiter = ConnectionLimiter(max_per_ip=0, max_per_token=0)

    leases = [limiter.acquire("127.0.0.1", TOKEN) for _ in range(100)]

    assert limiter.open_connections(ip="127.0.0.1") == 100
    assert limiter.open_connections(token=TOKEN) == 100
    for lease in leases:
        lease.release()
    assert limiter.open_connections(ip="127.0.0.1") == 0


def test_limiter_per_ip_limit_rejects() -> None:
    limiter = ConnectionLimiter(max_per_ip=2, max_per_token=0)
    limiter.acquire("10.0.0.1", TOKEN)
    limiter.acquire("10.0.0.1", OTHER_TOKEN)

    with pytest.raises(ConnectionLimitExceeded) as raised:
        limiter.acquire("10.0.0.1", TOKEN)

    assert raised.value.message == (
        "too many concurrent connections from 10.0.0.1: at most 2 (GATEWAY_MAX_CONNECTIONS_PER_IP); close one and retry"
    )
    # A rejection counts nothing, and other addresses are unaffected.
    assert limiter.open_connections(ip="10.0.0.1") == 2
    assert limiter.open_connections(token=TOKEN) == 1
    limiter.acquire("10.0.0.2", TOKEN)


def test_limiter_per_token_limit_rejects() -> None:
    limiter = ConnectionLimiter(max_per_ip=0, max_per_token=1)
    limiter.acquire("10.0.0.1", TOKEN)

    with pytest.raises(ConnectionLimitExceeded, match=r"at most 1 \(GATEWAY_MAX_CONNECTIONS_PER_TOKEN\)"):
        limiter.acquire("10.0.0.2", TOKEN)
    limiter.acquire("10.0.0.2", OTHER_TOKEN)


def test_limiter_release_frees_a_slot_once() -> None:
    limiter = ConnectionLimiter(max_per_ip=1, max_per_token=1)
    lease = limiter.acquire("10.0.0.1", TOKEN)

    lease.release()
    lease.release()

    second = limiter.acquire("10.0.0.1", TOKEN)
    assert limiter.open_connections(ip="10.0.0.1") == 1
    second.release()
    assert limiter.open_connections(token=TOKEN) == 0


def test_limiter_rejects_negative_limits() -> None:
    with pytest.raises(ValueError, match="connection limits must be at least 0, got -1 per IP, 0 per token"):
        ConnectionLimiter(max_per_ip=-1, max_per_token=0)


def test_settings_connection_limits_from_environment(rsa_keys: tuple[str, str]) -> None:
    environ = {
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "GATEWAY_JWT_PUBLIC_KEY": rsa_keys[1],
        "GATEWAY_JWT_ISSUER": "issuer",
        "GATEWAY_JWT_AUDIENCE": "audience",
        "GATEWAY_MAX_CONNECTIONS_PER_IP": "50",
        "GATEWAY_MAX_CONNECTIONS_PER_TOKEN": "3",
    }

    settings = load_settings("gateway", environ)

    assert settings.gateway_max_connections_per_ip == 50
    assert settings.gateway_max_connections_per_token == 3


def test_settings_connection_limits_default_unlimited() -> None:
    settings = load_settings("dev", {})

    assert settings.gateway_max_connections_per_ip == 0
    assert settings.gateway_max_connections_per_token == 0


def test_settings_connection_limit_negative_rejected() -> None:
    with pytest.raises(ConfigError, match="GATEWAY_MAX_CONNECTIONS_PER_TOKEN must be at least 0, got -2"):
        load_settings("dev", {"GATEWAY_MAX_CONNECTIONS_PER_TOKEN": "-2"})


@pytest.fixture
async def limited_gateway(rsa_keys: tuple[str, str], broker: Broker) -> AsyncIterator[LimitedGateway]:
    """Start gateways with the given connection limits over ``broker``."""
    servers: list[GatewayServer] = []

    async def start(*, per_ip: int = 0, per_token: int = 0) -> GatewayServer:
        settings = dataclasses.replace(
            make_settings(rsa_keys[1], None),
            gateway_max_connections_per_ip=per_ip,
            gateway_max_connections_per_token=per_token,
        )
        server = GatewayServer(settings, broker)
        servers.append(server)
        await server.start()
        return server

    yield start
    for server in servers:
        await server.stop(grace_s=2)


@pytest.mark.parametrize("broker_kind", ["memory"], indirect=True)
async def test_events_per_token_limit_answers_429(
    limited_gateway: LimitedGateway, channel_id: str, mint: Callable[..., str]
) -> None:
    server = await limited_gateway(per_token=1)
    params = {"token": mint(channel_id), "channel_id": channel_id}

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=10) as http:
        async with http.stream("GET", f"/events/{ORG_ID}", params=params) as first:
            assert await FrameReader(first).next_frame() == RETRY
            rejected = await http.get(f"/events/{ORG_ID}", params=params)
        await wait_until(lambda: server.open_stream_count == 0)
        async with http.stream("GET", f"/events/{ORG_ID}", params=params) as again:
            assert await FrameReader(again).next_frame() == RETRY

    assert first.status_code == 200
    assert rejected.status_code == 429
    assert rejected.headers["content-type"] == "application/json"
    assert rejected.headers["retry-after"] == "1"
    assert rejected.json() == {
        "status_code": 429,
        "detail": "too many concurrent connections with this token: at most 1 "
        "(GATEWAY_MAX_CONNECTIONS_PER_TOKEN); close one and retry",
    }
    assert again.status_code == 200


@pytest.mark.parametrize("broker_kind", ["memory"], indirect=True)
async def test_events_per_ip_limit_answers_429(
    limited_gateway: LimitedGateway, channel_id: str, mint: Callable[..., str]
) -> None:
    server = await limited_gateway(per_ip=2)
    other_channel = "0b7d7c4e-6a8e-4c43-9a43-1f4d6b2c8e11"

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=10) as http:
        async with (
            http.stream("GET", f"/events/{ORG_ID}", params={"token": mint(channel_id), "channel_id": channel_id}) as one,
            http.stream(
                "GET", f"/events/{ORG_ID}", params={"token": mint(other_channel), "channel_id": other_channel}
            ) as two,
        ):
            for response in (one, two):
                assert await FrameReader(response).next_frame() == RETRY
            rejected = await http.get(
                f"/events/{ORG_ID}",
                params={"token": mint(channel_id), "channel_id": channel_id},
                headers={"Origin": "http://example.test:3000"},
            )

    assert rejected.status_code == 429
    assert rejected.json()["detail"] == (
        "too many concurrent connections from 127.0.0.1: at most 2 (GATEWAY_MAX_CONNECTIONS_PER_IP); close one and retry"
    )
    # Browsers show a cross-origin client the 429 only with the CORS header.
    assert rejected.headers["access-control-allow-origin"] == "*"

"""Fixtures for the fault tests: keys, an in-process service on the test Redis, and recorded figures.

Each test that measures something records its figures with ``record_figures``.
They are printed in the terminal summary ("fault test figures") and written to
``fault-figures.json`` in pytest's base temporary folder.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from broker import create_broker
from broker.base import Broker
from conduit.settings import BrokerSettings, JwtSettings, Settings
from conduit.tokens import generate_rsa_key_pair, mint_publisher_token, mint_subscriber_token
from gateway_http.server import GatewayServer
from publish_grpc.server import PublishServer
from tests.faults.helpers import (
    GATEWAY_AUDIENCE,
    ISSUER,
    ORG_ID,
    PUBLISH_AUDIENCE,
    PUBLISH_SECRET,
    RATE_LIMIT,
)

_FIGURES: dict[str, dict[str, Any]] = {}
_FIGURES_FILE = "fault-figures.json"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _FIGURES:
        return
    terminalreporter.section("fault test figures")
    for name, figures in _FIGURES.items():
        terminalreporter.write_line(f"{name}: {json.dumps(figures, sort_keys=True)}")


@pytest.fixture
def record_figures(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, dict[str, Any]], Path]:
    """Record a test's figures for the terminal summary and the JSON file; return the file's path."""

    def record(name: str, figures: dict[str, Any]) -> Path:
        _FIGURES[name] = figures
        path = tmp_path_factory.getbasetemp() / _FIGURES_FILE
        path.write_text(json.dumps(_FIGURES, indent=2, sort_keys=True))
        return path

    return record


@pytest.fixture(scope="session")
def rsa_keys() -> tuple[str, str]:
    """``(private_pem, public_pem)`` of subscriber tokens."""
    return generate_rsa_key_pair()


def service_settings(public_pem: str, redis_url: str) -> Settings:
    return Settings(
        host="127.0.0.1",
        publish_port=0,
        publish_grpc_port=0,
        gateway_port=0,
        broker=BrokerSettings(redis_url=redis_url, rate_limit=RATE_LIMIT),
        publish_jwt=JwtSettings(key=PUBLISH_SECRET, issuer=ISSUER, audience=PUBLISH_AUDIENCE),
        gateway_jwt=JwtSettings(key=public_pem, issuer=ISSUER, audience=GATEWAY_AUDIENCE),
    )


class Service:
    """The publish service and a gateway in this process, each on its own broker client, as in production."""

    def __init__(self, settings: Settings, private_pem: str) -> None:
        self.settings = settings
        self._private_pem = private_pem
        self.brokers: list[Broker] = []
        self.publish: PublishServer | None = None
        self.gateway: GatewayServer | None = None

    async def start(self, **gateway_options: Any) -> None:
        publish_broker = create_broker(self.settings.broker)
        gateway_broker = create_broker(self.settings.broker)
        self.brokers = [publish_broker, gateway_broker]
        self.publish = PublishServer(self.settings, publish_broker)
        self.gateway = GatewayServer(self.settings, gateway_broker, **gateway_options)
        await self.publish.start()
        await self.gateway.start()

    async def stop(self) -> None:
        if self.gateway is not None:
            await self.gateway.stop(grace_s=5)
        if self.publish is not None:
            await self.publish.stop(grace_s=5)
        for broker in self.brokers:
            await broker.close()

    @property
    def publish_url(self) -> str:
        assert self.publish is not None
        return f"http://127.0.0.1:{self.publish.http_port}"

    @property
    def gateway_url(self) -> str:
        assert self.gateway is not None
        return f"http://127.0.0.1:{self.gateway.port}"

    @property
    def events_url(self) -> str:
        return f"{self.gateway_url}/events/{ORG_ID}"

    def publisher_token(self) -> str:
        return mint_publisher_token(PUBLISH_SECRET, issuer=ISSUER, audience=PUBLISH_AUDIENCE)

    def subscriber_token(self, channel_id: str) -> str:
        return mint_subscriber_token(
            self._private_pem, issuer=ISSUER, audience=GATEWAY_AUDIENCE, org_id=ORG_ID, channel_id=channel_id
        )


@pytest.fixture
async def service_factory(redis_url: str, rsa_keys: tuple[str, str]) -> AsyncIterator[Callable[..., Any]]:
    """``await service_factory(**GatewayServer options)`` starts a Service; every one is stopped afterwards."""
    started: list[Service] = []

    async def start(**gateway_options: Any) -> Service:
        service = Service(service_settings(rsa_keys[1], redis_url), rsa_keys[0])
        started.append(service)
        await service.start(**gateway_options)
        return service

    yield start
    for service in started:
        await service.stop()

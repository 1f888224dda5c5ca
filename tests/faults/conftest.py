"""Fixtures for the fault tests: keys, in-process services on the test Redis, and recorded figures.

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
from conduit.settings import BrokerSettings
from conduit.tokens import generate_rsa_key_pair
from tests.faults.helpers import ISSUER, ORG_ID, PUBLISH_SECRET, RATE_LIMIT
from tests.services import Credentials, LocalService, local_settings

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


@pytest.fixture
async def service_factory(redis_url: str, rsa_keys: tuple[str, str]) -> AsyncIterator[Callable[..., Any]]:
    """``await service_factory(**GatewayServer options)`` starts a LocalService; every one is stopped afterwards.

    The publish service and the gateway each get their own broker client, as in production.
    """
    credentials = Credentials(ORG_ID, PUBLISH_SECRET, ISSUER, private_pem=rsa_keys[0], public_pem=rsa_keys[1])
    settings = local_settings(credentials, BrokerSettings(redis_url=redis_url, rate_limit=RATE_LIMIT))
    started: list[LocalService] = []
    brokers: list[Broker] = []

    async def start(**gateway_options: Any) -> LocalService:
        service = LocalService(settings, credentials)
        started.append(service)
        publish_broker = create_broker(settings.broker)
        gateway_broker = create_broker(settings.broker)
        brokers.extend((publish_broker, gateway_broker))
        await service.start(publish_broker, gateway_broker, **gateway_options)
        return service

    yield start
    for service in started:
        await service.stop()
    for broker in brokers:
        await broker.close()

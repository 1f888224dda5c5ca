"""A publish service and a gateway on the session's Redis, in this process, on free loopback ports."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from broker import create_broker
from broker.base import Broker
from conduit.settings import BrokerSettings
from conduit.tokens import generate_rsa_key_pair
from tests.services import Credentials, LocalService, local_settings

ORG_ID = 7
_SECRET = "sdk-test-publish-secret-0123456789abcdef"
_ISSUER = "sdk-tests"


@pytest.fixture(scope="session")
def rsa_keys() -> tuple[str, str]:
    return generate_rsa_key_pair()


@pytest.fixture
async def service(redis_url: str, rsa_keys: tuple[str, str]) -> AsyncIterator[LocalService]:
    credentials = Credentials(ORG_ID, _SECRET, _ISSUER, private_pem=rsa_keys[0], public_pem=rsa_keys[1])
    running = LocalService(local_settings(credentials), credentials)
    broker = create_broker(BrokerSettings(redis_url=redis_url))
    await running.start(broker)
    yield running
    await running.stop()
    await broker.close()


@pytest.fixture
def channel_id() -> str:
    return str(uuid.uuid4())

"""create_broker: which broker the settings select, and how a bad Redis URL is reported."""

from __future__ import annotations

import pytest

from broker.factory import create_broker
from broker.instrumented import InstrumentedBroker
from broker.memory import MemoryBroker
from broker.redis_broker import RedisBroker
from conduit.errors import ConfigError
from conduit.settings import BrokerSettings


async def test_create_broker_without_url_is_memory() -> None:
    broker = create_broker(BrokerSettings())

    assert isinstance(broker, InstrumentedBroker)
    assert isinstance(broker.inner, MemoryBroker)
    await broker.close()


async def test_create_broker_with_url_is_redis(redis_url: str) -> None:
    broker = create_broker(BrokerSettings(redis_url=redis_url))

    assert isinstance(broker, InstrumentedBroker)
    assert isinstance(broker.inner, RedisBroker)
    await broker.ping()
    await broker.close()


async def test_create_broker_cluster_builds_without_connecting() -> None:
    broker = create_broker(BrokerSettings(redis_url="redis://127.0.0.1:1/0", redis_cluster=True))

    assert isinstance(broker, InstrumentedBroker)
    assert isinstance(broker.inner, RedisBroker)
    await broker.close()


def test_create_broker_invalid_url_hides_password() -> None:
    with pytest.raises(ConfigError) as raised:
        create_broker(BrokerSettings(redis_url="redis://:hunter2@127.0.0.1:notaport/0"))

    assert str(raised.value).startswith("REDIS_URL is not a valid Redis URL")
    assert "hunter2" not in str(raised.value)
    assert raised.value.__cause__ is None


def test_create_broker_cluster_rejects_unix_url() -> None:
    with pytest.raises(ConfigError) as raised:
        create_broker(BrokerSettings(redis_url="unix:///tmp/redis.sock", redis_cluster=True))

    assert "REDIS_CLUSTER=1 needs a redis:// or rediss:// URL" in str(raised.value)


def test_create_broker_zero_connections_raises() -> None:
    with pytest.raises(ValueError) as raised:
        create_broker(BrokerSettings(redis_url="redis://127.0.0.1:6379/0"), max_connections=0)

    assert str(raised.value) == "max_connections must be at least 1, got 0"

"""InstrumentedBroker: broker metrics for successful and failed calls."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from broker.factory import create_broker
from conduit.errors import BrokerUnavailable
from conduit.settings import BrokerSettings
from tests.redis_process import free_port


def _sample(name: str, operation: str) -> float:
    return REGISTRY.get_sample_value(name, {"operation": operation}) or 0.0


async def test_instrumented_append_observes_duration(redis_url: str) -> None:
    broker = create_broker(BrokerSettings(redis_url=redis_url))
    before = _sample("conduit_broker_duration_seconds_count", "append")

    try:
        await broker.append("stream:1:instrumented", b"data", end=False)
    finally:
        await broker.close()

    assert _sample("conduit_broker_duration_seconds_count", "append") == before + 1


async def test_instrumented_outage_counts_errors() -> None:
    broker = create_broker(BrokerSettings(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    ping_errors = _sample("conduit_broker_errors_total", "ping")
    read_errors = _sample("conduit_broker_errors_total", "read")

    try:
        with pytest.raises(BrokerUnavailable):
            await broker.ping()
        with pytest.raises(BrokerUnavailable):
            await broker.read("stream:1:instrumented", "0-0", count=1, block_ms=0)
    finally:
        await broker.close()

    assert _sample("conduit_broker_errors_total", "ping") == ping_errors + 1
    assert _sample("conduit_broker_errors_total", "read") == read_errors + 1


async def test_instrumented_memory_read_group_forwards() -> None:
    broker = create_broker(BrokerSettings())

    assert broker.read_group("stream:1:instrumented") == ""
    await broker.close()


async def test_instrumented_append_nowait_closed_counts_error() -> None:
    broker = create_broker(BrokerSettings())
    await broker.close()
    errors = _sample("conduit_broker_errors_total", "append")
    appends = _sample("conduit_broker_duration_seconds_count", "append")

    with pytest.raises(BrokerUnavailable, match="broker is closed"):
        broker.append_nowait("stream:1:instrumented", b"data")

    assert _sample("conduit_broker_errors_total", "append") == errors + 1
    assert _sample("conduit_broker_duration_seconds_count", "append") == appends + 1

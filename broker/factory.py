"""Build the broker that the settings select: Redis, Redis Cluster or the embedded one."""

from __future__ import annotations

from broker.base import Broker
from broker.memory import MemoryBroker
from conduit.settings import BrokerSettings

__all__ = ["create_broker"]


def create_broker(settings: BrokerSettings) -> Broker:
    """Return a MemoryBroker when ``settings.redis_url`` is None, else a RedisBroker.

    No connection is made here: the first command connects, so an unreachable
    Redis surfaces as BrokerUnavailable from that command.
    """
    if settings.redis_url is None:
        return MemoryBroker(settings)
    # TODO: return the RedisBroker, which lands in the next commit.
    raise NotImplementedError("the Redis broker is not available yet")

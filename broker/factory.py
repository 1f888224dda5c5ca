"""Build the broker that the settings select: Redis, Redis Cluster or the embedded one.

The Redis clients are set up so that an outage surfaces as BrokerUnavailable
quickly instead of hanging: connecting gives up after CONNECT_TIMEOUT_S, a
command after COMMAND_TIMEOUT_S, and a refused or dropped connection is retried
once. Blocking reads stay one second below the command timeout.
"""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ConstantBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from broker.base import Broker
from broker.instrumented import InstrumentedBroker
from broker.memory import MemoryBroker
from broker.redis_broker import RedisBroker
from conduit.errors import ConfigError
from conduit.settings import BrokerSettings

__all__ = [
    "CLUSTER_SLOT_COUNT",
    "COMMAND_TIMEOUT_S",
    "CONNECT_TIMEOUT_S",
    "DEFAULT_MAX_CONNECTIONS",
    "create_broker",
]

CONNECT_TIMEOUT_S = 1.0
COMMAND_TIMEOUT_S = 3.0
DEFAULT_MAX_CONNECTIONS = 256
"""Connections per Redis node; a blocked read holds one for its whole wait."""
CLUSTER_SLOT_COUNT = 16384
"""Hash slots of a Redis Cluster: the most blocked reads that per-slot ``read_many`` calls hold."""

_POOL_TIMEOUT_S = 1.0
_HEALTH_CHECK_INTERVAL_S = 15
_RETRY_BACKOFF_S = 0.05
_CLIENT_NAME = "conduit"


def create_broker(
    settings: BrokerSettings, *, max_connections: int = DEFAULT_MAX_CONNECTIONS
) -> Broker:
    """Return a MemoryBroker when ``settings.redis_url`` is None, else a RedisBroker.

    Either comes wrapped in an InstrumentedBroker, which records broker metrics.

    ``settings.redis_cluster`` selects a Redis Cluster client, whose pool per
    node allows ``max_connections`` plus CLUSTER_SLOT_COUNT. No connection is
    made here: the first command connects, so an unreachable Redis surfaces as
    BrokerUnavailable from that command. Raises ConfigError naming REDIS_URL
    when redis-py rejects the URL, without echoing it (it may carry a password).
    """
    if settings.redis_url is None:
        return InstrumentedBroker(MemoryBroker(settings))
    if max_connections < 1:
        raise ValueError(f"max_connections must be at least 1, got {max_connections}")

    try:
        if settings.redis_cluster:
            # One XREAD cannot span hash slots, so the gateway's hub blocks once
            # per slot in use. redis-py's cluster pool raises when full instead
            # of waiting, so each node gets room for every slot's blocked read.
            # NOTE: a gateway may then hold one connection per active slot, and
            # each master's maxclients must allow for it (docs/redis.md).
            client = _cluster_client(settings.redis_url, max_connections + CLUSTER_SLOT_COUNT)
        else:
            client = _single_client(settings.redis_url, max_connections)
    except (ValueError, RedisError, RedisClusterException):
        raise ConfigError(
            "REDIS_URL is not a valid Redis URL for this mode; check its host, port, "
            "database and query options (REDIS_CLUSTER=1 needs a redis:// or rediss:// URL)"
        ) from None

    max_block_ms = int((COMMAND_TIMEOUT_S - 1) * 1000)
    return InstrumentedBroker(RedisBroker(client, settings, max_block_ms=max_block_ms))


def _retry() -> Retry:
    # Only connection errors are retried: one retry replaces a pooled connection
    # that a Redis restart broke, while a timeout already took its full budget.
    return Retry(
        ConstantBackoff(_RETRY_BACKOFF_S), retries=1, supported_errors=(RedisConnectionError,)
    )


def _single_client(url: str, max_connections: int) -> Redis:
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=_POOL_TIMEOUT_S,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=COMMAND_TIMEOUT_S,
        health_check_interval=_HEALTH_CHECK_INTERVAL_S,
        retry=_retry(),
        client_name=_CLIENT_NAME,
    )
    return Redis.from_pool(pool)


class _ClusterClient(RedisCluster):
    """A RedisCluster client that never sends a command again after it timed out.

    redis-py's cluster client (8.2) resends a command that failed with any error in
    ``ERRORS_ALLOW_RETRY``, whatever the ``Retry`` object's supported errors.
    A timed-out command may still run on its master, for example one that was
    frozen and resumes, so a resent append would be stored twice. The other
    errors are kept: a cluster-down or uncovered-slot reply means nothing ran,
    and connection errors are retried as on a single Redis.

    NOTE: redis-py's cluster pipeline reads ``RedisCluster.ERRORS_ALLOW_RETRY``
    from the base class, so a pipeline would still resend a timed-out command.
    The broker sends no cluster pipeline.
    """

    ERRORS_ALLOW_RETRY = tuple(
        error for error in RedisCluster.ERRORS_ALLOW_RETRY if not issubclass(error, RedisTimeoutError)
    )


def _cluster_client(url: str, max_connections: int) -> RedisCluster:
    return _ClusterClient.from_url(
        url,
        max_connections=max_connections,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=COMMAND_TIMEOUT_S,
        health_check_interval=_HEALTH_CHECK_INTERVAL_S,
        retry=_retry(),
        client_name=_CLIENT_NAME,
    )

"""Errors raised at the broker's edge, worded the same by every implementation."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from redis.exceptions import RedisClusterException, RedisError

from conduit.errors import BrokerUnavailable, RateLimited

__all__ = ["broker_closed", "rate_limited", "redis_errors_as_unavailable"]


def rate_limited(stream: str, limit: int, window_s: int, retry_after_s: float) -> RateLimited:
    """Build the error for a publish over ``limit`` per ``window_s`` on ``stream``."""
    return RateLimited(
        f"publish rate limit exceeded for {stream}: at most {limit} publishes per "
        f"{window_s} s; retry in {retry_after_s:.3f} s",
        retry_after_s=retry_after_s,
    )


def broker_closed() -> BrokerUnavailable:
    """Build the error for a call on a broker after ``close()``."""
    return BrokerUnavailable("broker is closed")


@contextmanager
def redis_errors_as_unavailable(action: str) -> Iterator[None]:
    """Raise BrokerUnavailable, chained, for any redis-py or socket error inside the block.

    The message names ``action`` and the error class only: redis-py messages may
    carry the server address, which callers should not see.
    """
    try:
        yield
    except (RedisError, RedisClusterException, OSError) as error:
        raise BrokerUnavailable(f"Redis {action} failed ({type(error).__name__})") from error

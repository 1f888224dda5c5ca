"""A feed that gives every subscription its own blocking broker reads.

Simple and isolated, but each open SSE connection keeps one broker read in
flight, so the broker serves one blocked read per subscriber.

NOTE: on Redis a blocked read holds one pooled connection, so the broker's pool
size (``broker.factory.DEFAULT_MAX_CONNECTIONS``) caps the open streams of a
process. Past it, reads fail with BrokerUnavailable after the pool timeout and
streams end with the error event once the retry budget is spent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from broker.base import Broker, Entry
from conduit.errors import BrokerUnavailable
from gateway_http.feed import Feed, Subscription

__all__ = ["BROKER_RETRY_BUDGET_S", "MAX_BLOCK_MS", "READ_COUNT", "PollingFeed"]

logger = logging.getLogger(__name__)

READ_COUNT = 100
"""Maximum number of entries that one broker read returns."""
MAX_BLOCK_MS = 5_000
"""Maximum wait of one broker read for new entries."""
BROKER_RETRY_BUDGET_S = 10.0
"""How long a subscription keeps retrying a failing broker before it gives up."""

_READ_DEADLINE_SLACK_S = 5.0
_BACKOFF_INITIAL_S = 0.1
_BACKOFF_MAX_S = 2.0


@dataclass(frozen=True, slots=True)
class _ReadPolicy:
    broker: Broker
    retry_budget_s: float
    read_count: int
    max_block_ms: int


class PollingFeed(Feed):
    """Subscriptions that each read their stream with ``Broker.read(..., block_ms=...)``."""

    def __init__(
        self,
        broker: Broker,
        *,
        retry_budget_s: float = BROKER_RETRY_BUDGET_S,
        read_count: int = READ_COUNT,
        max_block_ms: int = MAX_BLOCK_MS,
    ) -> None:
        if retry_budget_s < 0 or read_count < 1 or max_block_ms < 1:
            raise ValueError("retry_budget_s must be >= 0, read_count and max_block_ms >= 1")
        self._policy = _ReadPolicy(broker, retry_budget_s, read_count, max_block_ms)

    async def subscribe(self, stream: str, after_id: str) -> Subscription:
        return _PollingSubscription(self._policy, stream, after_id)

    async def close(self) -> None:
        # Subscriptions own nothing but their in-flight read, which their SSE response cancels.
        return None


class _PollingSubscription(Subscription):
    def __init__(self, policy: _ReadPolicy, stream: str, after_id: str) -> None:
        self._policy = policy
        self._stream = stream
        self._last_id = after_id
        self._failing_since: float | None = None
        self._retry_at = 0.0
        self._backoff_s = _BACKOFF_INITIAL_S
        self._finished = False

    async def next_batch(self, timeout_s: float) -> list[Entry]:
        if self._finished:
            raise RuntimeError("subscription is closed or has failed")
        deadline = time.monotonic() + timeout_s

        # Each pass either waits on the broker or sleeps, and the deadline or
        # the retry budget ends the loop.
        while True:
            if not await self._wait_for_retry(deadline):
                return []

            block_ms = min(self._policy.max_block_ms, max(1, int((deadline - time.monotonic()) * 1000)))
            try:
                async with asyncio.timeout(block_ms / 1000 + _READ_DEADLINE_SLACK_S):
                    entries = await self._policy.broker.read(
                        self._stream, self._last_id, count=self._policy.read_count, block_ms=block_ms
                    )
            except (BrokerUnavailable, TimeoutError) as error:
                self._record_failure(error)
                if time.monotonic() >= deadline:
                    return []
                continue

            self._record_success()
            if entries:
                self._last_id = entries[-1].id
                return entries
            if time.monotonic() >= deadline:
                return []

    async def close(self) -> None:
        self._finished = True

    async def _wait_for_retry(self, deadline: float) -> bool:
        """Sleep out the current back-off; return False when the deadline comes first."""
        now = time.monotonic()
        if self._retry_at <= now:
            return True
        await asyncio.sleep(max(0.0, min(self._retry_at, deadline) - now))
        return time.monotonic() >= self._retry_at

    def _record_failure(self, error: Exception) -> None:
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
            logger.warning("broker read failed; retrying", extra={"stream": self._stream, "error": str(error)})
        elif now - self._failing_since >= self._policy.retry_budget_s:
            self._finished = True
            raise BrokerUnavailable(
                f"broker unreachable for {now - self._failing_since:.1f} s; gave up reading the stream"
            ) from error
        self._retry_at = now + self._backoff_s
        self._backoff_s = min(self._backoff_s * 2, _BACKOFF_MAX_S)

    def _record_success(self) -> None:
        if self._failing_since is not None:
            logger.info("broker read recovered", extra={"stream": self._stream})
        self._failing_since = None
        self._retry_at = 0.0
        self._backoff_s = _BACKOFF_INITIAL_S

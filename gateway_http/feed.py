"""The interface through which an SSE response receives the entries of one stream.

The response handler depends only on ``Feed`` and ``Subscription``. How
entries reach a subscription (one broker read per connection, or one shared
reader per channel that fans out) is up to the implementation.
"""

from __future__ import annotations

import abc

from broker.base import Entry

__all__ = ["Feed", "Subscription"]


class Subscription(abc.ABC):
    """The entries of one stream after a given id, for one consumer, in order."""

    @abc.abstractmethod
    async def next_batch(self, timeout_s: float) -> list[Entry]:
        """Return the next entries, oldest first, or an empty list when none arrived within about ``timeout_s``.

        Never returns an entry twice or out of order. Raises
        ``conduit.errors.BrokerUnavailable`` when the broker stayed unreachable
        for longer than the feed's retry budget; the subscription is then
        finished and only ``close`` may follow.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Release what the subscription holds; safe to call more than once and after a failure."""


class Feed(abc.ABC):
    """Hands out subscriptions to broker streams."""

    @abc.abstractmethod
    async def subscribe(self, stream: str, after_id: str) -> Subscription:
        """Return a subscription to ``stream`` that starts after ``after_id`` (``"0-0"`` for the start)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop background work; subscriptions still open fail or end. The broker stays open."""

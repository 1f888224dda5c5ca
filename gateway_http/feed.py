"""The interface through which an SSE response receives the events of one stream.

The response handler depends only on ``Feed`` and ``Subscription``: it sends
the frames it is given, in order, and closes after an END. How the events
reach a subscription, and how often each entry is encoded, is up to the
implementation (``gateway_http.hub.HubFeed``).
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable

from gateway_http.events import SseEvent

__all__ = ["Feed", "LiveFrame", "LiveSink", "LiveTransport", "SubscriberLagging", "Subscription"]

LiveSink = Callable[[list[SseEvent]], bool]
"""Takes live events straight from the reader, without waking the consumer; returns False to decline them."""

LiveTransport = Callable[[], asyncio.WriteTransport | None]
"""A callable that returns the transport taking framed live events as they are, or None while it must not."""

LiveFrame = Callable[[list[SseEvent]], bytes | None]
"""A callable that frames live events as a ``LiveTransport``'s transport takes them, or returns None for events it must not take."""


class SubscriberLagging(Exception):
    """The subscriber fell too far behind the live stream and was dropped; it can resume with its Last-Event-ID."""


class Subscription(abc.ABC):
    """The events of one stream after a given id, for one consumer, in order."""

    __slots__ = ()

    @abc.abstractmethod
    async def next_batch(self, timeout_s: float) -> list[SseEvent]:
        """Return the next events, oldest first, or an empty list when none arrived within about ``timeout_s``.

        Never returns an entry twice or out of order, and leaves no entry out
        unless a control event (``entries_missed``) reports the gap first. Raises
        ``conduit.errors.BrokerUnavailable`` when the broker stayed unreachable
        for longer than the feed's retry budget, and SubscriberLagging when the
        consumer fell more than the feed's buffer behind. The subscription is
        then finished and only ``close`` may follow.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Release what the subscription holds; safe to call more than once and after a failure."""

    def set_sink(  # noqa: B027 - optional; the default delivers through next_batch
        self, sink: LiveSink | None, transport: LiveTransport | None = None
    ) -> None:
        """Offer ``sink`` the live events that arrive while the consumer waits in ``next_batch`` with nothing queued.

        Events the sink accepts are delivered and never returned by
        ``next_batch``; declined ones are queued as usual. The sink must not
        block. An implementation may ignore the sink.

        A feed that frames live events (``LiveFrame``) may also ask
        ``transport`` once per wait and write the framed events to the
        transport it returns, skipping the sink, while that transport has
        nothing buffered and is not closing. The caller offers a transport
        only where such a write sends the same bytes as the sink would.
        """


class Feed(abc.ABC):
    """Hands out subscriptions to broker streams."""

    @abc.abstractmethod
    async def subscribe(self, stream: str, after_id: str) -> Subscription:
        """Return a subscription to ``stream`` that starts after ``after_id`` (``"0-0"`` for the start)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop background work; subscriptions still open fail or end. The broker stays open."""

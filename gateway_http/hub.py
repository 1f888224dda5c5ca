"""The gateway's fan-out hub: one shared reader per broker read group feeds every local subscriber.

Per process, a channel (one stream) with at least one subscriber is active.
Active channels are grouped by ``Broker.read_group``, and each group has one
``ChannelReader`` that reads all its channels with one blocking
``read_many``. Broker work and blocked connections therefore grow with the
number of groups in use, never with the number of subscribers. That is one
reader on a single Redis or the embedded broker, and one per hash slot in use
on Redis Cluster. A channel closes with its last subscriber and a reader stops
with its last channel.

Subscribers replay history with their own paged, non-blocking reads, which
borrow a pooled connection only for each call. ``hub_subscription`` describes
the hand-over from replay to the live events.
"""

from __future__ import annotations

import asyncio

from broker.base import Broker
from conduit.errors import BrokerUnavailable
from gateway_http.deadlines import Deadlines
from gateway_http.feed import Feed, LiveFrame, Subscription
from gateway_http.hub_reader import Channel, ChannelReader, ReadPolicy
from gateway_http.hub_subscription import HubSubscription, SubscriptionPolicy

__all__ = [
    "BROKER_RETRY_BUDGET_S",
    "CONCURRENT_CALLS",
    "MAX_BLOCK_MS",
    "READ_COUNT",
    "REPLAY_PAGE",
    "SUBSCRIBER_BUFFER_EVENTS",
    "HubFeed",
]

READ_COUNT = 100
"""Maximum entries per channel that one live read returns."""
MAX_BLOCK_MS = 5_000
"""Maximum wait of one live read for new entries; the Redis broker caps it lower."""
REPLAY_PAGE = 100
"""Entries per history read of a joining subscriber."""
SUBSCRIBER_BUFFER_EVENTS = 1_000
"""Live events queued per subscriber before it counts as too slow and is dropped."""
BROKER_RETRY_BUDGET_S = 10.0
"""How long readers and subscriptions keep retrying a failing broker before they give up."""
CONCURRENT_CALLS = 8
"""Broker calls (channel opens, history pages) that the subscriptions of one hub make at once.

Each call in flight borrows a pooled connection, so a burst of joins would
otherwise grow the pool, and the gateway's memory, up to the pool's size.
"""


class HubFeed(Feed):
    """Subscriptions that share one live reader per read group; see the module docstring."""

    def __init__(
        self,
        broker: Broker,
        *,
        max_stream_len: int,
        retry_budget_s: float = BROKER_RETRY_BUDGET_S,
        read_count: int = READ_COUNT,
        max_block_ms: int = MAX_BLOCK_MS,
        replay_page: int = REPLAY_PAGE,
        buffer_events: int = SUBSCRIBER_BUFFER_EVENTS,
        frame_live: LiveFrame | None = None,
    ) -> None:
        """``frame_live`` frames each live event list once per pass for the transports offered to ``set_sink``."""
        if retry_budget_s < 0:
            raise ValueError(f"retry_budget_s must be at least 0, got {retry_budget_s}")
        for name, value in (
            ("max_stream_len", max_stream_len),
            ("read_count", read_count),
            ("max_block_ms", max_block_ms),
            ("replay_page", replay_page),
            ("buffer_events", buffer_events),
        ):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        self._broker = broker
        self._frame_live = frame_live
        self._read_policy = ReadPolicy(read_count, max_block_ms, retry_budget_s)
        self._subscription_policy = SubscriptionPolicy(buffer_events, replay_page, max_stream_len, retry_budget_s)
        self._channels: dict[str, Channel] = {}
        self._readers: dict[str, ChannelReader] = {}
        self._stopping: set[ChannelReader] = set()
        self._opening: dict[str, asyncio.Future[None]] = {}
        self._closed = False
        # Ends the live waits of all subscriptions with one timer.
        self._wait_deadlines = Deadlines()
        self._call_slots = asyncio.Semaphore(CONCURRENT_CALLS)

    @property
    def active_streams(self) -> frozenset[str]:
        """Streams that have a live channel now."""
        return frozenset(self._channels)

    @property
    def reader_count(self) -> int:
        """Number of readers running, including those still finishing after their last channel left."""
        return len(self._readers) + len(self._stopping)

    def subscriber_count(self, stream: str) -> int:
        """Number of subscriptions in the live channel of ``stream``."""
        channel = self._channels.get(stream)
        return 0 if channel is None else len(channel.subscribers)

    async def subscribe(self, stream: str, after_id: str) -> Subscription:
        if self._closed:
            raise BrokerUnavailable("the gateway is shutting down")
        return HubSubscription(
            self, self._broker, stream, after_id, self._subscription_policy, self._wait_deadlines, self._call_slots
        )

    async def close(self) -> None:
        self._closed = True
        subscribers = [subscriber for channel in self._channels.values() for subscriber in channel.subscribers]
        readers = [*self._readers.values(), *self._stopping]
        for reader in readers:
            reader.stop()
        for reader in readers:
            await reader.wait_stopped()
        for subscriber in subscribers:
            subscriber.fail(BrokerUnavailable("the gateway is shutting down"))
        self._channels.clear()
        for stream in list(self._opening):
            self.end_opening(stream)
        self._wait_deadlines.close()

    def join(self, subscription: HubSubscription) -> str | None:
        self._check_open()
        channel = self._channels.get(subscription.stream)
        if channel is None:
            return None
        channel.subscribers.add(subscription)
        return channel.position

    def open_channel(self, subscription: HubSubscription, last_id: str) -> str:
        self._check_open()
        position = self.join(subscription)
        if position is not None:
            return position
        channel = self._channels[subscription.stream] = Channel(subscription.stream, last_id, {subscription})
        group = self._broker.read_group(subscription.stream)
        reader = self._readers.get(group)
        if reader is None:
            reader = self._readers[group] = ChannelReader(
                self._broker, group, self._read_policy, self._reader_stopped, self._frame_live
            )
        reader.add(channel)
        return last_id

    def opening(self, stream: str) -> asyncio.Future[None] | None:
        return self._opening.get(stream)

    def begin_opening(self, stream: str) -> None:
        self._opening[stream] = asyncio.get_running_loop().create_future()

    def end_opening(self, stream: str) -> None:
        opening = self._opening.pop(stream, None)
        if opening is not None and not opening.done():
            opening.set_result(None)

    def leave(self, subscription: HubSubscription) -> None:
        channel = self._channels.get(subscription.stream)
        if channel is None or subscription not in channel.subscribers:
            return
        channel.subscribers.discard(subscription)
        if channel.subscribers:
            return
        del self._channels[subscription.stream]
        group = self._broker.read_group(subscription.stream)
        reader = self._readers.get(group)
        if reader is None:
            return
        reader.remove(subscription.stream)
        if not reader.channels:
            del self._readers[group]
            self._stopping.add(reader)

    def _reader_stopped(self, reader: ChannelReader) -> None:
        """Forget a reader whose task ended, and the channels it still served after a failure."""
        self._stopping.discard(reader)
        if self._readers.get(reader.group) is reader:
            del self._readers[reader.group]
        for stream, channel in reader.channels.items():
            if self._channels.get(stream) is channel:
                del self._channels[stream]
        reader.channels.clear()

    def _check_open(self) -> None:
        if self._closed:
            raise BrokerUnavailable("the gateway is shutting down")

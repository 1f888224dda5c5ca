"""One subscriber of a hub: replays history from its own position, then takes the shared live events.

Hand-over without gap or duplicate:

1. The subscription joins its channel and records ``live_from``, the
   channel's position at that moment. The channel's reader delivers every
   entry after ``live_from`` to it from then on, into a bounded queue. When
   the channel is new, its position is the stream's last id from
   ``Broker.info``, so every entry appended after that reaches the reader.
2. When the client's position is before ``live_from``, the subscription
   reads the stream itself, a page at a time and only as fast as the client
   takes the events, and keeps the entries up to ``live_from``.
3. Then it sends the queued live events, skipping any with an id at or
   before the last id sent, and from then on every live event.

Before the first replayed entry it checks whether the client asked for
entries that trimming removed; see ``_entries_were_trimmed``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from broker.base import Broker, Entry
from broker.ids import parse_entry_id
from broker.keys import stream_log_fields
from conduit.errors import BrokerUnavailable
from gateway_http.deadlines import Deadlines
from gateway_http.encoding import encode_entries
from gateway_http.events import ENTRIES_MISSED, SseEvent, control_event, is_start_entry
from gateway_http.feed import LiveSink, LiveTransport, SubscriberLagging, Subscription
from gateway_http.metrics import LAGGING_SUBSCRIBERS
from gateway_http.retry import RetryBudget

__all__ = ["ChannelRegistry", "HubSubscription", "SubscriptionPolicy"]

# Extra time one non-blocking broker call gets before it counts as failed.
_CALL_TIMEOUT_S = 5.0
_START_ID = "0-0"


def _cancel_requests() -> int:
    """Return the pending cancellation requests of the current task."""
    task = asyncio.current_task()
    return 0 if task is None else task.cancelling()


def _raise_if_cancel_lost(cancel_requests: int) -> None:
    """Raise CancelledError when the task was cancelled since it had ``cancel_requests`` pending.

    redis-py can end a cancelled command with an error or a result instead of
    CancelledError, so without this check a cancelled SSE response could keep
    waiting for events.
    """
    if _cancel_requests() > cancel_requests:
        raise asyncio.CancelledError


class ChannelRegistry(Protocol):
    """The hub's side of a subscription: joining and leaving live channels."""

    def join(self, subscription: HubSubscription) -> str | None:
        """Add ``subscription`` to its live channel and return the channel's position; None when no channel is open."""

    def open_channel(self, subscription: HubSubscription, last_id: str) -> str:
        """Open the channel at ``last_id`` unless it opened meanwhile, add ``subscription`` and return the position."""

    def opening(self, stream: str) -> asyncio.Future[None] | None:
        """Return the future that ends when another subscription finishes opening ``stream``; None when none is."""

    def begin_opening(self, stream: str) -> None:
        """Record that the caller is opening ``stream``; ``end_opening`` must follow."""

    def end_opening(self, stream: str) -> None:
        """Wake the subscriptions that wait for ``stream`` to open, whether it opened or not."""

    def leave(self, subscription: HubSubscription) -> None:
        """Remove ``subscription`` from its channel; the channel closes with its last subscriber."""


@dataclass(frozen=True, slots=True)
class SubscriptionPolicy:
    """Bounds of one subscription."""

    buffer_events: int
    """Maximum live events queued for the subscriber; one more and it is dropped."""
    replay_page: int
    """Entries per history read."""
    max_stream_len: int
    """The broker's MAX_STREAM_LEN: only a stream that long can have been trimmed."""
    retry_budget_s: float


class HubSubscription(Subscription):
    """A subscription of ``HubFeed``; see the module docstring for the hand-over.

    A gateway has many of these, mostly idle, so each keeps little state. Its
    queue is a plain list, and it has a future only while a consumer waits.
    The end of that wait sits in ``wait_deadlines``, which the hub's
    subscriptions share, instead of a timer of its own.
    """

    __slots__ = (
        "_broker", "_budget", "_call_slots", "_closed", "_cursor", "_cursor_key", "_failure", "_live_from",
        "_live_transport", "_policy", "_queue", "_registry", "_replaying", "_sent_at", "_sink", "_transport",
        "_trim_checked", "_wait_deadlines", "_wait_timeout_s", "_waiter", "stream",
    )

    def __init__(
        self,
        registry: ChannelRegistry,
        broker: Broker,
        stream: str,
        after_id: str,
        policy: SubscriptionPolicy,
        wait_deadlines: Deadlines,
        call_slots: asyncio.Semaphore,
    ) -> None:
        """``call_slots`` bounds the broker calls that the hub's subscriptions make at once."""
        self.stream = stream
        self._wait_deadlines = wait_deadlines
        self._call_slots = call_slots
        self._registry = registry
        self._broker = broker
        self._policy = policy
        self._cursor = after_id
        self._cursor_key = parse_entry_id(after_id)
        self._live_from: tuple[int, int] | None = None
        self._replaying = True
        self._trim_checked = False
        self._queue: list[SseEvent] = []
        self._waiter: asyncio.Future[None] | None = None
        self._wait_timeout_s = 0.0
        self._sink: LiveSink | None = None
        self._live_transport: LiveTransport | None = None
        # The sink's transport, taken at the start of a wait and dropped as
        # soon as anything but a direct write happens; see deliver().
        self._transport: asyncio.WriteTransport | None = None
        # When the last live events went out without waking the consumer.
        self._sent_at = -math.inf
        self._failure: Exception | None = None
        self._closed = False
        self._budget: RetryBudget | None = None

    def deliver(self, events: list[SseEvent], frame: bytes | None, now: float) -> bool:
        # The fast path of a fan-out pass reads only this object and the
        # transport. Reading the sink's objects per subscriber as well cost
        # about 2 µs per delivery at 5,000 subscribers (docs/benchmarks.md).
        # _transport is set only while the consumer waits with an empty
        # queue and no failure, and the sink offers it only while it would
        # write there itself. An empty buffer means flow control has not
        # paused it.
        transport = self._transport
        if (
            transport is not None
            and frame is not None
            and events[0].entry_key > self._cursor_key  # type: ignore[operator]
            and not transport.get_write_buffer_size()
            and not transport.is_closing()
        ):
            try:
                transport.write(frame)
            except Exception:  # noqa: BLE001, S110 - the sink below meets the same error and ends the stream with it
                pass
            else:
                self._cursor_key = events[-1].entry_key  # type: ignore[assignment]
                self._sent_at = now
                return True
        self._transport = None
        if self._failure is not None or self._closed:
            return False
        waiter = self._waiter
        if (
            self._sink is not None
            and waiter is not None
            and not waiter.done()
            and not self._queue
            and events[0].entry_key is not None
            and events[0].entry_key > self._cursor_key
            and self._sink(events)
        ):
            # Sent without waking the consumer, which keeps waiting; the
            # keep-alive counts from this send.
            self._cursor_key = events[-1].entry_key or self._cursor_key
            self._sent_at = now
            return False
        if len(self._queue) + len(events) > self._policy.buffer_events:
            LAGGING_SUBSCRIBERS.inc()
            self._queue.clear()
            self.fail(SubscriberLagging(f"subscriber fell more than {self._policy.buffer_events} events behind"))
            self._registry.leave(self)
            return False
        self._queue.extend(events)
        self._wake()
        return False

    def set_sink(self, sink: LiveSink | None, transport: LiveTransport | None = None) -> None:
        self._sink = sink
        self._live_transport = transport if sink is not None else None
        self._transport = None

    def fail(self, error: Exception) -> None:
        if self._failure is None:
            self._failure = error
        self._wake()

    def _wake(self) -> None:
        self._transport = None
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def next_batch(self, timeout_s: float) -> Coroutine[Any, Any, list[SseEvent]]:
        # A plain function, so a subscriber waiting for live events keeps one
        # coroutine frame rather than two.
        if not self._closed and not self._replaying and self._live_from is not None:
            return self._next_live(timeout_s)
        return self._catch_up(timeout_s)

    async def _catch_up(self, timeout_s: float) -> list[SseEvent]:
        if self._closed:
            raise RuntimeError("subscription is closed")
        if self._failure is not None:
            # The live channel is gone, so replaying further would leave a gap.
            raise self._failure
        deadline = time.monotonic() + timeout_s
        cancel_requests = _cancel_requests()

        # Each pass makes one broker call, waits out a back-off or waits for
        # live events, and the deadline or the retry budget ends the loop.
        while True:
            _raise_if_cancel_lost(cancel_requests)
            if self._live_from is not None and not self._replaying:
                return await self._next_live(deadline - time.monotonic())

            delay_s = self._budget.delay_s() if self._budget is not None else 0.0
            if delay_s > 0:
                await asyncio.sleep(min(delay_s, max(0.0, deadline - time.monotonic())))
                if time.monotonic() >= deadline:
                    return []
                continue
            try:
                async with asyncio.timeout(_CALL_TIMEOUT_S):
                    events = await self._catch_up_step()
            except (BrokerUnavailable, TimeoutError) as error:
                _raise_if_cancel_lost(cancel_requests)
                self._record_failure(error)
                if time.monotonic() >= deadline:
                    return []
                continue
            _raise_if_cancel_lost(cancel_requests)
            if self._budget is not None:
                self._budget.succeeded()
            if events or time.monotonic() >= deadline:
                return events

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._sink = None
        self._live_transport = self._transport = None
        self._queue.clear()
        self._wait_deadlines.discard(self)
        self._registry.leave(self)

    def _record_failure(self, error: Exception) -> None:
        if self._budget is None:
            self._budget = RetryBudget(self._policy.retry_budget_s, log_fields=stream_log_fields(self.stream))
        try:
            self._budget.failed(error)
        except BrokerUnavailable as final:
            self.fail(final)
            raise

    async def _catch_up_step(self) -> list[SseEvent]:
        """Join the channel, or replay one page of history; return the events to send."""
        if self._live_from is None:
            await self._join()
            return []
        return await self._replay_page()

    async def _join(self) -> None:
        # Subscribers that arrive together wait for the first one to open the
        # channel, so a burst of joins costs one broker call and one pooled
        # connection instead of one of each per subscriber.
        while (position := self._registry.join(self)) is None:
            opening = self._registry.opening(self.stream)
            if opening is not None:
                await asyncio.shield(opening)
                continue
            self._registry.begin_opening(self.stream)
            try:
                async with self._call_slots:
                    info = await self._broker.info(self.stream)
                last_id = info.last_id if info is not None and info.last_id is not None else _START_ID
                position = self._registry.open_channel(self, last_id)
            finally:
                self._registry.end_opening(self.stream)
            break
        self._live_from = parse_entry_id(position)
        if self._cursor_key >= self._live_from:
            self._replaying = False

    async def _replay_page(self) -> list[SseEvent]:
        assert self._live_from is not None
        async with self._call_slots:
            entries = await self._broker.read(self.stream, self._cursor, count=self._policy.replay_page, block_ms=0)
        missed = not self._trim_checked and bool(entries) and await self._entries_were_trimmed(entries[0])
        self._trim_checked = True

        before_live = [entry for entry in entries if parse_entry_id(entry.id) <= self._live_from]
        if before_live:
            self._cursor = before_live[-1].id
            self._cursor_key = parse_entry_id(self._cursor)
        if len(entries) < self._policy.replay_page or len(before_live) < len(entries) or self._cursor_key >= self._live_from:
            # Everything after live_from arrives through the live queue.
            self._replaying = False
            self._cursor_key = max(self._cursor_key, self._live_from)

        events = encode_entries(before_live, self.stream)
        return [control_event(ENTRIES_MISSED), *events] if missed else events

    async def _entries_were_trimmed(self, first: Entry) -> bool:
        """Return True when trimming removed entries between the client's position and ``first``.

        ``first`` is the first entry after the client's position. When it is a
        START, the stream still begins at its start and nothing is missing.
        Otherwise entries are missing when the client's position is before the
        oldest entry kept and the stream is as long as MAX_STREAM_LEN. A stream
        that never reached that length was never trimmed, so a publisher that
        sends no START does not trigger the event. Redis trims MAXLEN ~ in
        whole nodes and the embedded broker exactly, so neither leaves a
        trimmed stream shorter than MAX_STREAM_LEN.
        """
        if is_start_entry(first):
            return False
        async with self._call_slots:
            info = await self._broker.info(self.stream)
        if info is None or info.first_id is None:
            return False
        return self._cursor_key < parse_entry_id(info.first_id) and info.length >= self._policy.max_stream_len

    async def _next_live(self, timeout_s: float) -> list[SseEvent]:
        if isinstance(self._failure, SubscriberLagging):
            raise self._failure
        events = self._take_queued()
        if events:
            return events
        if self._failure is not None:
            raise self._failure
        if timeout_s <= 0:
            return []
        self._wait_timeout_s = timeout_s
        self._sent_at = -math.inf
        self._wait_deadlines.set(self, time.monotonic() + timeout_s)
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        if self._live_transport is not None:
            self._transport = self._live_transport()
        try:
            await waiter
        finally:
            self._waiter = None
            self._transport = None
        if isinstance(self._failure, SubscriberLagging):
            raise self._failure
        events = self._take_queued()
        if not events and self._failure is not None:
            raise self._failure
        return events

    def deadline_passed(self) -> None:
        """End the wait for live events with no events, so the consumer can send a keep-alive.

        Live events sent without waking the consumer move the deadline to one
        wait timeout after the last of them.
        """
        due = self._sent_at + self._wait_timeout_s
        if self._waiter is not None and due > time.monotonic():
            self._wait_deadlines.set(self, due)
            return
        self._wake()

    def _take_queued(self) -> list[SseEvent]:
        """Return the queued events after the cursor, emptying the queue."""
        queue = self._queue
        if not queue:
            return []
        self._queue = []
        cursor_key = self._cursor_key
        events = []
        for event in queue:
            assert event.entry_key is not None
            if event.entry_key > cursor_key:
                events.append(event)
                cursor_key = event.entry_key
        self._cursor_key = cursor_key
        return events

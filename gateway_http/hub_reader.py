"""One task that reads the live entries of many channels with one blocking read and fans them out.

A reader serves the active channels of one broker read group: every channel
on a single Redis or on the embedded broker, one hash slot on Redis Cluster.
Each pass issues one ``Broker.read_many`` over all of them, from each
channel's ``position``, encodes every entry once, and hands the same events to
every subscriber of the channel. While the read waits, it occupies one broker
connection, whatever the number of channels or subscribers. The positions stay
in one ``ReadCursors`` between passes, so the Redis broker re-encodes only the
streams that moved.

Redis still spends time on every stream of an XREAD. So after a pass that
returned entries, a reader of 100 channels or more pauses 2 µs per channel, at
most 2 ms, and the next read collects what arrived meanwhile. After a read
that returned nothing there is no pause, so the first entry after a quiet
spell is not delayed.

A channel added while a read waits interrupts that read, so the next read
includes it at once. On Redis, redis-py closes a connection whose command is
cancelled, so each interruption costs one reconnect.

NOTE: redis-py 8 sometimes finishes a cancelled command normally. The
interrupted read then returns when its block ends, at most 2 s later, and
entries of the new channel arrive that much later, none lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from broker.base import Broker, Entry
from broker.cursors import ReadCursors
from broker.ids import parse_entry_id
from conduit.errors import BrokerUnavailable
from gateway_http.encoding import encode_entries
from gateway_http.events import SseEvent
from gateway_http.feed import LiveFrame
from gateway_http.metrics import EVENTS_SENT
from gateway_http.retry import RetryBudget

__all__ = ["Channel", "ChannelReader", "LiveSubscriber", "ReadPolicy"]

logger = logging.getLogger(__name__)

_STREAM_SENT = EVENTS_SENT.labels("stream")

# Extra time a blocking read gets beyond its block before it counts as failed.
_READ_DEADLINE_SLACK_S = 5.0


class LiveSubscriber(Protocol):
    """The subscriber side of a reader: a queue for events and a way to fail the subscription."""

    def deliver(self, events: list[SseEvent], frame: bytes | None, now: float) -> bool:
        """Take ``events`` in order; must not block.

        ``frame`` is ``events`` framed by the reader's ``LiveFrame``, or None,
        and ``now`` the ``time.monotonic()`` of the pass. Returns True when
        the subscriber wrote ``frame`` to its client itself, which the reader
        then counts in the ``events_sent`` metric.
        """

    def fail(self, error: BrokerUnavailable) -> None:
        """End the subscription with ``error`` after the events already delivered."""


@dataclass(eq=False)
class Channel:
    """One stream with live subscribers in this process."""

    stream: str
    position: str
    """Id of the newest entry fanned out, or the stream's last id when the channel opened."""
    subscribers: set[LiveSubscriber] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class ReadPolicy:
    """Read size, block time, retry budget and pause of a hub's readers."""

    read_count: int
    """Maximum entries per channel that one read returns."""
    max_block_ms: int
    retry_budget_s: float
    pause_per_channel_s: float = 2e-6
    """Pause per channel after a read that returned entries, so that the next read collects more of them.

    Redis 7.0 spent 0.5-1.3 µs per stream on each blocking XREAD of
    ``bench.run --scenarios many`` (1,000 channels, 2-CPU VM). A pause at
    least as long as the read keeps Redis busy with a busy reader's reads for
    at most about half the time, an estimate. The gateway also sends every
    stream's key and id with each read, about 74 KB for 1,000 channels, so
    fewer reads save its CPU too. In that scenario, 2 µs per channel and at
    most 2 ms instead of 1 µs and 1 ms cost the gateway 45.8 instead of 54.2
    µs per delivery and raised the p50 latency from 3.0 to 3.3 ms.
    """
    max_pause_s: float = 0.002
    """Upper bound of that pause, and so of the delay it adds before the next read."""
    min_pause_channels: int = 100
    """Readers with fewer channels read again at once, because their reads cost Redis little."""


class ChannelReader:
    """Reads the channels of one read group in one task until the last channel leaves."""

    def __init__(
        self,
        broker: Broker,
        group: str,
        policy: ReadPolicy,
        on_stopped: Callable[[ChannelReader], None],
        frame_live: LiveFrame | None = None,
    ) -> None:
        self.group = group
        self.channels: dict[str, Channel] = {}
        # The position of every channel, kept between reads so that the broker
        # re-encodes only the streams that moved.
        self._cursors = ReadCursors()
        self._broker = broker
        self._policy = policy
        self._on_stopped = on_stopped
        self._frame_live = frame_live
        self._task: asyncio.Task[None] | None = None
        self._started = False
        self._read: asyncio.Task[dict[str, list[Entry]]] | None = None

    def add(self, channel: Channel) -> None:
        """Start reading ``channel`` after its position, interrupting a read in progress."""
        self.channels[channel.stream] = channel
        self._cursors[channel.stream] = channel.position
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"hub-reader-{self.group or 'all'}")
            self._task.add_done_callback(self._report_unstarted_stop)
        elif self._read is not None:
            self._read.cancel()

    def remove(self, stream: str) -> None:
        """Stop reading ``stream``; the reader stops when it was the last channel."""
        self.channels.pop(stream, None)
        self._cursors.pop(stream, None)
        if not self.channels:
            self.stop()

    def stop(self) -> None:
        """Cancel the reader's task; ``wait_stopped`` waits for it."""
        if self._task is not None:
            self._task.cancel()

    async def wait_stopped(self) -> None:
        """Wait until the task has finished."""
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _report_unstarted_stop(self, _task: asyncio.Task[None]) -> None:
        # A task cancelled before its first step never enters _run, so only
        # this callback can tell the owner that the reader stopped.
        if not self._started:
            self._on_stopped(self)

    async def _run(self) -> None:
        self._started = True
        budget = RetryBudget(self._policy.retry_budget_s, log_fields={"read_group": self.group})
        pause_s = 0.0
        try:
            while self.channels:
                await asyncio.sleep(max(budget.delay_s(), pause_s))
                pause_s = 0.0
                try:
                    found = await self._read_once()
                except asyncio.CancelledError:
                    if self._interrupted():
                        continue
                    raise
                except (BrokerUnavailable, TimeoutError) as error:
                    try:
                        budget.failed(error)
                    except BrokerUnavailable as final:
                        self._fail_all(final)
                        return
                    continue
                budget.succeeded()
                self._fan_out(found)
                if found:
                    pause_s = self._pause_s()
        finally:
            # The owner forgets the channels that are still here, such as after a failure.
            self._on_stopped(self)

    async def _read_once(self) -> dict[str, list[Entry]]:
        """Run one ``read_many`` over every channel; a cancelled read raises CancelledError."""
        read = self._read = asyncio.create_task(
            self._broker.read_many(self._cursors, count=self._policy.read_count, block_ms=self._policy.max_block_ms)
        )
        try:
            done, _ = await asyncio.wait([read], timeout=self._policy.max_block_ms / 1000 + _READ_DEADLINE_SLACK_S)
            if not done:
                raise TimeoutError("broker read did not return within its block time")
            return read.result()
        finally:
            self._read = None
            if not read.done():
                read.cancel()
                # Wait for the cancelled read, so no task outlives this reader.
                await asyncio.wait([read])
            if not read.cancelled():
                read.exception()  # mark retrieved; result() above raised it when it mattered

    def _pause_s(self) -> float:
        """Return the pause before the read that follows one with entries."""
        policy = self._policy
        if len(self.channels) < policy.min_pause_channels:
            return 0.0
        return min(policy.max_pause_s, len(self.channels) * policy.pause_per_channel_s)

    def _interrupted(self) -> bool:
        """Return True when a cancellation came from ``add`` and not from ``stop``."""
        task = asyncio.current_task()
        return task is not None and task.cancelling() == 0

    def _fan_out(self, found: dict[str, list[Entry]]) -> None:
        now = time.monotonic()
        # Events that subscribers wrote themselves, counted once per pass: an
        # increment takes 0.35 µs (prometheus_client, in a loop), and with one
        # subscriber per channel a pass can hold a thousand channels.
        written = 0
        for stream, entries in found.items():
            channel = self.channels.get(stream)
            if channel is None or not entries:
                continue
            # A channel that closed and opened again during the read may
            # already be past some of these entries. Entries come in id order,
            # so the first one settles the usual case.
            position = parse_entry_id(channel.position)
            fresh = entries
            if parse_entry_id(entries[0].id) <= position:
                fresh = [entry for entry in entries if parse_entry_id(entry.id) > position]
                if not fresh:
                    continue
            channel.position = self._cursors[stream] = fresh[-1].id
            events = encode_entries(fresh, stream)
            if not events:
                continue
            frame = self._frame_live(events) if self._frame_live is not None else None
            # A subscriber that overflows leaves the set while this loop runs.
            for subscriber in list(channel.subscribers):
                if subscriber.deliver(events, frame, now):
                    written += len(events)
        if written:
            _STREAM_SENT.inc(written)

    def _fail_all(self, error: BrokerUnavailable) -> None:
        logger.warning(
            "closing live channels: broker unavailable",
            extra={"read_group": self.group, "channels": len(self.channels), "error": error.message},
        )
        for channel in self.channels.values():
            for subscriber in list(channel.subscribers):
                subscriber.fail(error)
